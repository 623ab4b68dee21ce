"""Shared fixtures for the test suite."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from filelock import FileLock

from configs.base_config import Config


@pytest.fixture
def make_cfg():
    """`make_cfg(*argv)`: the configuration `train_KE_cls.py` would resolve for these flags."""
    def make(*argv):
        return Config().parse([str(a) for a in argv])
    return make


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread, restoring the setting afterwards.

    The suite shares two cores with other processes; two OpenMP threads fighting for them are
    several times slower than one (measured: the slim-invariant tests take 3 s instead of 20 s).
    """
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED = "shared"       # the session's shared fixtures (shared_folder), kept until the session ends


@pytest.fixture(scope="module", autouse=True)
def remove_temporary_folders_of_a_passed_module(request, tmp_path_factory):
    """Delete the temporary folders a module made once all its tests passed.

    pytest's retention policy (pytest.ini) deletes a passed test's `tmp_path` when the test ends,
    but the folders of module-wide fixtures (`tmp_path_factory.mktemp`: finished runs that
    several tests read) only at the end of the session; training runs write checkpoints of up to
    100 MB. A module with a failure keeps its folders.
    """
    base = tmp_path_factory.getbasetemp()
    before, failed = set(os.listdir(base)), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for name in set(os.listdir(base)) - before - {SHARED}:
            shutil.rmtree(base / name, ignore_errors=True)


def shared_folder(tmp_path_factory, worker_id, name):
    """A folder that every xdist worker of this session sees (the parent of the workers' base
    folders; the base folder itself without xdist) and a lock that makes one of them build it."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / SHARED
    root.mkdir(exist_ok=True)
    return root / name, FileLock(str(root / f"{name}.lock"))


@pytest.fixture(scope="session")
def two_generations(tmp_path_factory, worker_id):
    """The suite's finished run, built once per session and read by several modules: 2
    generations x 2 epochs of the small network on a 3-class generated dataset (8/4/4 images a
    class), started as a user starts it, in its own process. Its folder is `<base>/ckpt/tiny`,
    its data `<base>/datasets`; its output (stdout) is `<base>/stdout.txt`. Tests only read it
    (copy it to change it)."""
    from tests.datagen import make_lists_dataset
    from tests.helpers import ROOT, SMALL, TINY
    base, lock = shared_folder(tmp_path_factory, worker_id, "two_generations")
    done = base / "done.json"
    with lock:
        if not done.exists():
            shutil.rmtree(base, ignore_errors=True)
            make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3,
                               per_class=(8, 4, 4), size=(40, 36))
            result = subprocess.run(
                [sys.executable, os.path.join(ROOT, "train_KE_cls.py"), "--data",
                 str(base / "datasets"), "--log-dir", str(base / "ckpt"), "--name", "tiny",
                 "--num_generations", "2", "--epochs", "2", *SMALL, *TINY],
                capture_output=True, text=True, cwd=ROOT, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            (base / "stdout.txt").write_text(result.stdout)
            done.write_text(json.dumps({"returncode": result.returncode}))
    return base
