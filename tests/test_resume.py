"""A run killed at any moment and resumed ends exactly where an uninterrupted run ends."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL, run_cli

ARGS = ["--image_size", "32", "--batch_size", "6", "--num_threads", "0", "--lr", "0.05",
        "--warmup_length", "1", "--test_interval", "1", "--seed", "7", "--num_generations", "2",
        "--epochs", "3", "--save_every_minutes", "0", *SMALL]   # a resume state every epoch


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(6, 2, 2),
                       size=(36, 36))
    result = run_cli("--data", str(base / "datasets"), "--log-dir", str(base / "ckpt"),
                     "--name", "reference", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return base


def final_state(exp):
    weights = {}
    for g in (0, 1):
        ckpt = torch.load(exp / f"gen_{g}" / "checkpoints" / "epoch_2.state", weights_only=True)
        weights.update({f"gen{g}.{k}": v for k, v in ckpt["state_dict"].items()})
    rows = pd.read_csv(exp / f"{exp.name}.csv").drop(columns=["Date Finished", "Name"])
    return weights, rows


def kill_when(base, log_dir, name, trigger, extra=()):
    """Start a run, SIGKILL it as soon as `trigger(exp_dir)` holds, and return its exit code."""
    exp = log_dir / name
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_KE_cls.py"), "--data",
                             str(base / "datasets"), "--log-dir", str(log_dir), "--name",
                             name, *ARGS, *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not trigger(exp) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def gen_file(g, name):
    return lambda exp: (exp / f"gen_{g}" / "checkpoints" / name).exists()


@pytest.mark.parametrize("name, trigger, extra", [
    # mid-epoch in generation 0 is also where tests/test_signals.py stops and resumes its run
    pytest.param("mid_generation_0", gen_file(0, "resume.state"), [], marks=pytest.mark.slow),
    pytest.param("generation_boundary", gen_file(1, "initial.state"), [],
                 marks=pytest.mark.slow),
    # more data-loading workers after the restart: augmentations are seeded per sample, and the
    # loaders leave the global generator, which dropout draws from, alone
    ("during_generation_1", gen_file(1, "resume.state"), ["--num_threads", "2"]),
    pytest.param("after_first_row", lambda exp: (exp / "after_first_row.csv").exists(), [],
                 marks=pytest.mark.slow),
])
def test_killed_run_resumes_to_identical_results(workspace, tmp_path, name, trigger, extra):
    assert kill_when(workspace, tmp_path, name, trigger) == -signal.SIGKILL
    result = run_cli("--log-dir", str(tmp_path), "--name", name, "--data",
                     str(workspace / "datasets"), "--resume", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    expected_weights, expected_rows = final_state(workspace / "ckpt" / "reference")
    weights, rows = final_state(tmp_path / name)
    assert weights.keys() == expected_weights.keys()
    different = [k for k in weights if not torch.equal(weights[k], expected_weights[k])]
    assert different == []
    pd.testing.assert_frame_equal(rows, expected_rows)


@pytest.mark.slow      # the pacing itself: tests/test_speed.py counts the resume states written
def test_a_kill_between_paced_resume_states_resumes_to_identical_results(workspace, tmp_path):
    """With the resume state paced by time (--save_every_minutes 10), a kill -9 after two epochs
    of generation 1 finds no resume state of it: generation 1 trains again from its start
    (its best weights of those epochs were not on disk either) and ends as a straight run."""
    def second_epoch_of_generation_1(exp):
        log = exp / "train_log.txt"
        return log.exists() and "generation 1 (2 of 2), epoch 1 (2 of 3)" in log.read_text()
    assert kill_when(workspace, tmp_path, "paced", second_epoch_of_generation_1,
                     ["--save_every_minutes", "10"]) == -signal.SIGKILL
    assert second_epoch_of_generation_1(tmp_path / "paced")
    assert not (tmp_path / "paced" / "gen_1" / "checkpoints" / "resume.state").exists()
    result = run_cli("--log-dir", str(tmp_path), "--name", "paced", "--data",
                     str(workspace / "datasets"), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    expected_weights, expected_rows = final_state(workspace / "ckpt" / "reference")
    weights, rows = final_state(tmp_path / "paced")
    assert [k for k in weights if not torch.equal(weights[k], expected_weights[k])] == []
    pd.testing.assert_frame_equal(rows, expected_rows)


@pytest.mark.slow
def test_killed_run_with_batched_crops_resumes_to_identical_results(workspace, tmp_path):
    """Crops on the device (drawn per sample in the loader, cropped in the training process):
    killed in generation 0, resumed with more workers, the same weights as a straight run."""
    crops = ["--cache_images", "--batched_crops", "on"]
    straight = run_cli("--data", str(workspace / "datasets"), "--log-dir", str(tmp_path),
                       "--name", "straight", *ARGS, *crops)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "training crops: batched on cpu" in straight.stdout
    assert kill_when(workspace, tmp_path, "killed", gen_file(0, "resume.state"),
                     crops) == -signal.SIGKILL
    result = run_cli("--log-dir", str(tmp_path), "--name", "killed", "--data",
                     str(workspace / "datasets"), "--resume", "--num_threads", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training crops: batched on cpu (--batched_crops on)" in result.stdout
    expected_weights, expected_rows = final_state(tmp_path / "straight")
    weights, rows = final_state(tmp_path / "killed")
    assert [k for k in weights if not torch.equal(weights[k], expected_weights[k])] == []
    pd.testing.assert_frame_equal(rows, expected_rows)


def test_a_generation_whose_epochs_are_all_saved_is_not_trained_again(workspace, tmp_path):
    """Killed between the last epoch's checkpoint and the results row: where_to_start sends the
    run straight to the rows, and they are those of the run that was never stopped."""
    import argparse
    import json
    import shutil

    from trainers.experiment import Experiment
    from trainers.resume import where_to_start
    from utils.checkpoint import load_checkpoint
    exp = tmp_path / "reference"
    shutil.copytree(workspace / "ckpt" / "reference", exp)
    rows = (exp / "reference.csv").read_text().splitlines()
    (exp / "reference.csv").write_text("\n".join(rows[:3]) + "\n")        # generation 0's rows
    checkpoints = exp / "gen_1" / "checkpoints"
    shutil.copy(checkpoints / "epoch_2.state", checkpoints / "resume.state")
    cfg = argparse.Namespace(**json.loads((exp / "settings.json").read_text()))
    start = where_to_start(cfg, Experiment(str(exp), "reference"), False, True)
    assert (start.generation, start.first.train, start.first.dense, start.first.slim) == \
        (1, False, True, True)
    mid_epoch = load_checkpoint(checkpoints / "epoch_2.state")
    mid_epoch["batch"] = 1
    start = where_to_start(cfg, Experiment(str(exp), "reference"), False, True, mid_epoch)
    assert start.first.train and (start.first.state.next_epoch, start.first.state.next_batch) == (2, 1)

    result = run_cli("--log-dir", str(tmp_path), "--name", "reference", "--data",
                     str(workspace / "datasets"), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at" not in result.stdout                     # nothing trained
    pd.testing.assert_frame_equal(final_state(exp)[1], final_state(workspace / "ckpt" / "reference")[1])
