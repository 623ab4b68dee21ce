"""SIGINT / SIGTERM during training: the run saves where it is, says how to resume, and the
resumed run ends exactly where an uninterrupted one ends."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL, run_cli

EPOCHS = 4
GENERATIONS = 1
ARGS = ["--image_size", "32", "--batch_size", "4", "--lr", "0.05", "--warmup_length", "1",
        "--test_interval", "1", "--seed", "3", "--num_generations", str(GENERATIONS),
        "--epochs", str(EPOCHS), "--save_every_minutes", "0", *SMALL]   # a resume state every epoch


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny dataset (6 training batches per epoch) and an uninterrupted reference run."""
    base = tmp_path_factory.mktemp("signals")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(8, 2, 2),
                       size=(36, 36))
    result = run_cli("--data", str(base / "datasets"), "--log-dir", str(base / "ckpt"),
                     "--name", "reference", "--num_threads", "0", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return base


def outcome(exp):
    """Final weights, the results rows without the columns that differ between runs, and the
    per-epoch train statistics logged to TensorBoard."""
    ckpt = torch.load(exp / "gen_0" / "checkpoints" / f"epoch_{EPOCHS - 1}.state",
                      weights_only=True)
    rows = pd.read_csv(exp / f"{exp.name}.csv").drop(columns=["Date Finished", "Name"])
    events = EventAccumulator(str(exp / "gen_0" / "logs"))
    events.Reload()
    train = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
             for tag in ("train/loss", "train/top1", "train/top5", "val/top1")}
    return ckpt["state_dict"], rows, train


def start(base, name, threads=0):
    """The run, started in `base` with a relative --data (the printed command makes it absolute)."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train_KE_cls.py"), "--data", "datasets",
         "--log-dir", str(base / "ckpt"), "--name", name, "--num_threads", str(threads), *ARGS],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)   # its own process group, as a shell job would have


def wait_for(proc, path, timeout=300):
    """Poll until `path` exists (the first epoch is done); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


def interrupt(base, name, signum, threads=0, group=False, twice=False):
    """Start a run, signal it once the first epoch's resume.state exists, return its output."""
    proc = start(base, name, threads)
    try:
        wait_for(proc, base / "ckpt" / name / "gen_0" / "checkpoints" / "resume.state")
        send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
        send(signum)
        seen = ""
        if twice:   # the second signal once the first one is acknowledged
            while "received" not in seen and proc.poll() is None:
                seen += proc.stdout.readline()
            send(signum)
        stdout, stderr = proc.communicate(timeout=300)
        stdout = seen + stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr


def printed_resume_command(stderr):
    """The printed command, which must work as pasted in any folder: absolute paths only."""
    lines = [line for line in stderr.splitlines() if "--resume" in line]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0].strip())
    assert argv[:2] == [sys.executable, os.path.join(ROOT, "train_KE_cls.py")], lines[0]
    data = argv[argv.index("--data") + 1]
    assert os.path.isabs(data) and os.path.isabs(argv[argv.index("--log-dir") + 1]), lines[0]
    return argv


def assert_same_as_reference(base, name):
    expected_weights, expected_rows, expected_train = outcome(base / "ckpt" / "reference")
    weights, rows, train = outcome(base / "ckpt" / name)
    assert weights.keys() == expected_weights.keys()
    assert [k for k in weights if not torch.equal(weights[k], expected_weights[k])] == []
    pd.testing.assert_frame_equal(rows, expected_rows)
    for tag, points in expected_train.items():   # the interrupted epoch's statistics included
        assert [s for s, _ in train[tag]] == [s for s, _ in points], tag
        assert [v for _, v in train[tag]] == pytest.approx([v for _, v in points], rel=1e-5), tag


@pytest.mark.parametrize("signum, group, threads", [
    # a terminal's Ctrl-C: SIGINT reaches the whole process group, data-loading workers included
    pytest.param(signal.SIGINT, True, 1, marks=pytest.mark.slow),
    # a scheduler or `kill`: SIGTERM to the main process only
    (signal.SIGTERM, False, 0),
], ids=["SIGINT-to-group-with-workers", "SIGTERM-to-main"])
def test_signal_saves_says_how_to_resume_and_resumes_exactly(workspace, signum, group, threads):
    signame = signal.Signals(signum).name
    name = f"stopped_{signame}"
    code, stdout, stderr = interrupt(workspace, name, signum, threads=threads, group=group)
    assert code == 128 + signum, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert stdout.count(f"{signame} received") == 1, stdout     # workers stay quiet
    assert f"stopped by {signame}" in stderr and "--resume" in stderr
    state = torch.load(workspace / "ckpt" / name / "gen_0" / "checkpoints" / "resume.state",
                       weights_only=True)
    assert 1 <= state["epoch"] <= EPOCHS - 1 and 1 <= state["batch"] <= 6   # mid-epoch
    assert not (workspace / "ckpt" / name / f"{name}.csv").exists()         # mid-run

    elsewhere = workspace / "elsewhere"                   # pasted in another folder
    elsewhere.mkdir(exist_ok=True)
    resumed = subprocess.run(printed_resume_command(stderr), cwd=elsewhere, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    # one position, named identically when stopping and resuming (utils.counting)
    e = state["epoch"]
    where = f"generation 0 (1 of {GENERATIONS}), epoch {e} ({e + 1} of {EPOCHS}), after batch " \
            f"{state['batch']}"
    assert f"stopped by {signame} at {where};" in stderr
    assert f"resuming at {where}\n" in resumed.stdout
    assert_same_as_reference(workspace, name)


def test_second_signal_stops_at_once_without_traceback(workspace):
    name = "twice"
    code, stdout, stderr = interrupt(workspace, name, signal.SIGINT, twice=True)
    assert code == 128 + signal.SIGINT, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "--resume" in stderr
    # checkpoints are replaced atomically: whichever is there is complete
    state = torch.load(workspace / "ckpt" / name / "gen_0" / "checkpoints" / "resume.state",
                       weights_only=True)
    assert state["epoch"] >= 0
