"""What many test modules share: the repository root, the flags of a tiny run, running
train_KE_cls.py as a user would, reading a data error, and a workspace with one finished run
whose files bad runs must leave untouched."""
import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from data import DataError
from data.loading import get_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small torchvision CNN (1.5 M parameters: a checkpoint of 14 MB, ResNet-18's is 101 MB) for the
# runs whose test is about the plumbing (resume, signals, bad input, safety) rather than the network.
SMALL = ["--arch", "Split_mobilenet_v3_small"]
TINY = ["--image_size", "32", "--batch_size", "8", "--num_threads", "0", "--lr", "0.05",
        "--warmup_length", "1", "--test_interval", "1", "--seed", "0"]


def run_cli(*args, process=False, env=None, cwd=None):
    """`python train_KE_cls.py ARGS`: the CompletedProcess, output captured.

    In a new interpreter with `process` (or `env` or `cwd`); otherwise in this process
    (`run_main`), which gives the same exit status and output without starting Python and
    importing torch again. Tests of what only a process shows (signals, kills, locks, torchrun,
    the environment) ask for a process.
    """
    if not process and env is None and cwd is None:
        return run_main(*args)
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_KE_cls.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=600)


def run_main(*args) -> subprocess.CompletedProcess:
    """`train_KE_cls.main(ARGS)` in this process, its output captured as `run_cli` captures a
    process's: the log on stdout, errors on stderr, and an exception that escapes printed as a
    traceback, as a terminal would show it. One at a time (it redirects this process's output)."""
    from train_KE_cls import main
    out, err = io.StringIO(), io.StringIO()
    root, log_to_stdout = logging.getLogger(), logging.StreamHandler(out)
    log_to_stdout.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    level = root.level
    root.addHandler(log_to_stdout)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:                 # argparse's errors
                code = stop.code
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        root.removeHandler(log_to_stdout)
        root.setLevel(level)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, needles=()):
    """`result` (of run_cli) stopped as bad input must: exit status 2, exactly one line on
    stderr that starts with `error:` (or argparse's prefix) and holds every needle, no
    traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("error: ", "train_KE_cls.py: error: ")), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def error_of(cfg) -> str:
    """The one-line DataError that reading the data of `cfg` raises."""
    with pytest.raises(DataError) as info:
        get_data(cfg)
    msg = str(info.value)
    assert "\n" not in msg, "errors must be one line"
    return msg


DONE = "done"
COMMON = ["--num_generations", "1", "--epochs", "1", *SMALL, *TINY]


def snapshot(*folders) -> dict:
    """{path: (sha256, size, mtime_ns)} of every file under `folders`."""
    state = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                info = os.stat(path)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[path] = (digest, info.st_size, info.st_mtime_ns)
    return state


class Workspace:
    def __init__(self, base: Path):
        self.base = base
        self.datasets = base / "datasets"            # the dataset of the finished run
        self.ckpt = base / "ckpt"
        self.done = self.ckpt / DONE

    def snapshot(self) -> dict:
        return snapshot(self.done, self.datasets)

    def dataset_copy(self, tmp_path: Path) -> Path:
        """A private copy of the dataset to spoil; returns its lists/ folder's parent."""
        shutil.copytree(self.datasets, tmp_path / "datasets")
        return tmp_path / "datasets" / "flower102"

    def finish_a_run(self) -> "Workspace":
        """Make the tiny dataset and run the finished experiment on it (in this process)."""
        from tests.datagen import make_lists_dataset
        make_lists_dataset(self.datasets, "Flower102Pytorch", num_classes=2, per_class=(4, 2, 2),
                           size=(32, 32))
        result = self.run(DONE)
        assert result.returncode == 0, result.stderr[-3000:]
        return self

    def run(self, name: str, *argv, process: bool = False):
        """A tiny run named `name` beside the finished one, in this process unless `process`."""
        return run_cli("--data", str(self.datasets), "--log-dir", str(self.ckpt), "--name", name,
                       *COMMON, *argv, process=process)
