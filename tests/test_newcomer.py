"""What a new user meets: defaults, warnings, the log of a failed run, exported files and their
dataset, and how much disk a run keeps."""
import os
import stat

import pytest

from configs.base_config import DEFAULT_WORKERS, Config
from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, run_cli
from trainers.generation import time_left

TINY = [*SMALL, "--set", "CSVList", "--image_size", "32", "--batch_size", "8", "--num_threads", "0",
        "--lr", "0.05", "--test_interval", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def three_generations(tmp_path_factory):
    """3 generations x 1 epoch with --keep_checkpoints last, then its slim network exported."""
    base = tmp_path_factory.mktemp("newcomer")
    data = make_lists_dataset(base / "data", "CSVList", num_classes=3, per_class=(6, 2, 2),
                              labels=["ant", "bee", "cat"])
    run = run_cli("--data", data, "--log-dir", base / "ckpt", "--name", "three",
                  "--num_generations", "3", "--epochs", "1", "--keep_checkpoints", "last", *TINY)
    assert run.returncode == 0, run.stderr[-2000:]
    exp = base / "ckpt" / "three"
    out = base / "exported" / "slim.pt2"
    os.makedirs(out.parent)
    export = run_cli("--export_slim", exp / "gen_2" / "checkpoints" / "epoch_0.state", out)
    assert export.returncode == 0, export.stderr[-2000:]
    return base, exp, out


def test_workers_default_to_the_usable_cores_at_most_8():
    cores = len(os.sched_getaffinity(0))
    assert min(8, cores) == DEFAULT_WORKERS
    assert Config().parse([]).num_threads == min(8, cores)


def test_a_warm_up_longer_than_the_run_is_warned_about(three_generations):
    _, exp, _ = three_generations
    log = (exp / "train_log.txt").read_text()
    assert "--epochs 1 <= --warmup_length 5: the learning rate never leaves its linear warm-up" in log


def test_keep_checkpoints_last_keeps_only_the_last_generation(three_generations):
    _, exp, _ = three_generations
    assert not (exp / "gen_0" / "checkpoints").exists()
    assert not (exp / "gen_1" / "checkpoints").exists()
    assert sorted(os.listdir(exp / "gen_2" / "checkpoints")) == ["epoch_0.state", "initial.state",
                                                                 "model_best.pth"]
    assert "removed gen_0/checkpoints" in (exp / "train_log.txt").read_text()
    # one epoch: its state, the best one, is a single file under two names
    assert os.path.samefile(exp / "gen_2" / "checkpoints" / "epoch_0.state",
                            exp / "gen_2" / "checkpoints" / "model_best.pth")


def test_exported_file_has_the_usual_permissions(three_generations):
    _, exp, out = three_generations
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(exp / "settings.json").st_mode) == 0o666 & ~umask


def test_evaluate_exported_model_on_its_own_dataset_from_anywhere(three_generations, tmp_path):
    _, _, out = three_generations
    result = run_cli("--evaluate", out, cwd=tmp_path)        # no --set, no --data
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("val: top-1 ") and lines[-2].endswith("(6 images)")
    assert lines[-1].startswith("test: top-1 ") and lines[-1].endswith("(6 images)")


def test_evaluate_refuses_data_with_other_class_names(three_generations, tmp_path):
    _, exp, out = three_generations
    other = make_lists_dataset(tmp_path, "CSVList", num_classes=3, per_class=(2, 1, 1),
                               labels=["ant", "bee", "dog"])
    for model in (out, exp / "gen_2" / "checkpoints" / "epoch_0.state"):
        result = run_cli("--evaluate", model, "--set", "CSVList", "--data", other)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "first difference at index 2: cat vs dog" in result.stderr


def test_a_failed_run_logs_its_error_in_the_log_file(tmp_path):
    data = make_lists_dataset(tmp_path / "data", "CSVList", num_classes=2, per_class=(4, 2, 2))
    result = run_cli("--data", data, "--log-dir", tmp_path / "ckpt", "--name", "nan",
                     "--num_generations", "2", "--epochs", "1", *TINY[:-6], "--lr", "1e30",
                     "--warmup_length", "0", "--seed", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip()
    assert error.startswith("error: non-finite loss at generation ")
    log = (tmp_path / "ckpt" / "nan" / "train_log.txt").read_text().splitlines()
    assert log[-1].endswith(error)


def test_the_log_shows_generation_epoch_and_eta(three_generations):
    _, exp, _ = three_generations
    lines = [line for line in (exp / "train_log.txt").read_text().splitlines() if ", eta " in line]
    assert [line.split(" INFO ")[1].split(",")[0:2] for line in lines] == [
        [f"generation {g} ({g + 1} of 3)", " epoch 0 (1 of 1)"] for g in (0, 1, 2)]
    assert lines[-1].endswith("eta 0:00:00")                  # nothing left after the last epoch


def test_time_left_counts_the_epochs_of_the_later_generations_too():
    cfg = Config().parse(["--num_generations", "3", "--epochs", "4"])
    assert time_left(2.0, 0, 0, cfg) == 2.0 * (3 + 2 * 4)
    assert time_left(2.0, 1, 3, cfg) == 2.0 * 4
    assert time_left(2.0, 2, 3, cfg) == 0.0
