"""Shared fixtures for the test suite."""
import os
import shutil

import pytest

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
        for name in set(os.listdir(base)) - before:
            shutil.rmtree(base / name, ignore_errors=True)
