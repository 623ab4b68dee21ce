"""Faster without changing a bit: the best weights are not tested again when they are the last
weights, the image check's decode is the one the cache keeps, the resume state is written by
time (--save_every_minutes), and the evaluation batch (--eval_batch_size, 128 by default). A run
with all of them gives the rows and weights of a run with the old behaviour forced and an
evaluation batch of 2 (three validation batches instead of one)."""
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import data.cache
import data.lists
import trainers.knowledge_evolution as ke
from configs.base_config import Config
from configs.flag_kinds import EVALUATE_FROM_COMMAND_LINE, NOT_TRAINING, RESUME_FROM_COMMAND_LINE
from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, assert_one_line_error, run_cli
from trainers.generation import GenerationTrainer
from utils.distributed import World

GENERATIONS, EPOCHS = 2, 2
ARGS = [*SMALL, "--image_size", "32", "--batch_size", "6", "--num_threads", "0", "--lr", "0.05",
        "--warmup_length", "1", "--test_interval", "1", "--seed", "4",   # best: last, first
        "--num_generations", str(GENERATIONS), "--epochs", str(EPOCHS)]
IMAGES = 3 * (6 + 2 + 2)        # listed images: 3 classes of 6 training, 2 val, 2 test each


def counted_run(base, name, *extra, old=False):
    """A run of ARGS in this process, with its test passes, full decodes by the dataset
    (data.lists.load_rgb) and checkpoint writes counted; `old`: every shortcut switched off."""
    counts = {"tests": 0, "decodes": 0, "resume_writes": 0, "deferred_best": 0}
    test, load_rgb, save = ke.KnowledgeEvolution.test, data.lists.load_rgb, GenerationTrainer.save

    def counted_test(self, *args, **kwargs):
        counts["tests"] += 1
        return test(self, *args, **kwargs)

    def counted_load(path):
        counts["decodes"] += 1
        return load_rgb(path)

    def counted_save(self, obj, *paths, best=None):
        counts["resume_writes"] += any(str(p).endswith("resume.state") for p in paths)
        counts["deferred_best"] += best is not None
        return save(self, obj, *paths, best=best)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ke.KnowledgeEvolution, "test", counted_test)
        mp.setattr(data.lists, "load_rgb", counted_load)
        mp.setattr(GenerationTrainer, "save", counted_save)
        if old:
            mp.setattr(ke, "SKIP_TEST_OF_SAME_WEIGHTS", False)
            mp.setattr(data.cache, "KEEP_CHECKED_DECODES", False)
            extra = ("--save_every_minutes", "0", "--eval_batch_size", "2", *extra)
        result = run_cli("--data", base / "datasets", "--log-dir", base / "ckpt", "--name", name,
                         *ARGS, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return counts, result.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """The two runs on one intra-op thread: the best epochs the tests rely on are those of its
    arithmetic (two threads sum in another order)."""
    base = tmp_path_factory.mktemp("speed")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(6, 2, 2),
                       size=(36, 36))
    new = counted_run(base, "new")
    old = counted_run(base, "old", old=True)
    return base / "ckpt", new, old


def checkpoint(exp, g, name):
    return torch.load(exp / f"gen_{g}" / "checkpoints" / name, weights_only=True)


def test_rows_final_weights_and_best_weights_are_those_of_the_old_behaviour(runs):
    ckpt, _, _ = runs
    rows = [pd.read_csv(ckpt / n / f"{n}.csv").drop(columns=["Date Finished", "Name"])
            for n in ("new", "old")]
    pd.testing.assert_frame_equal(*rows)
    for g in range(GENERATIONS):
        for name in (f"epoch_{EPOCHS - 1}.state", "model_best.pth"):
            new, old = checkpoint(ckpt / "new", g, name), checkpoint(ckpt / "old", g, name)
            assert new["epoch"] == old["epoch"], (g, name)
            assert new["state_dict"].keys() == old["state_dict"].keys()
            assert [k for k in new["state_dict"]
                    if not torch.equal(new["state_dict"][k], old["state_dict"][k])] == [], (g, name)


def test_the_best_weights_are_tested_again_only_when_they_differ_from_the_last(runs):
    ckpt, (new, _), (old, _) = runs
    last = [checkpoint(ckpt / "new", g, f"epoch_{EPOCHS - 1}.state") for g in range(GENERATIONS)]
    best_is_last = sum(state["best_epoch"] == EPOCHS - 1 for state in last)
    assert 0 < best_is_last < GENERATIONS        # this run has both cases
    assert old["tests"] == 3 * GENERATIONS       # dense, best, slim
    assert new["tests"] == old["tests"] - best_is_last


def test_the_cache_decodes_no_image_the_check_decoded(runs):
    _, (new, new_log), (old, old_log) = runs
    assert "decoded at full size for the image cache" in new_log
    assert "images: decoded once into" in new_log and "images: decoded once into" in old_log
    assert new["decodes"] == 0
    assert old["decodes"] == IMAGES


def test_the_resume_state_waits_for_its_minutes_and_best_weights_wait_with_it(runs):
    ckpt, (new, _), (old, _) = runs
    assert old["resume_writes"] == GENERATIONS * EPOCHS and old["deferred_best"] == 0
    assert new["resume_writes"] == GENERATIONS          # the generations' last epochs
    best_before_last = sum(checkpoint(ckpt / "new", g, "model_best.pth")["epoch"] < EPOCHS - 1
                           for g in range(GENERATIONS))
    assert new["deferred_best"] == best_before_last > 0


def test_kept_decodes_are_the_cache_pixels_of_a_second_decode(tmp_path):
    """Training images shrunk to the cache's side, evaluation images resized and cropped:
    the same bytes from the check's decode as from the cache's own."""
    from data.loading import get_data
    make_lists_dataset(tmp_path, "Flower102Pytorch", num_classes=2, per_class=(3, 1, 1),
                       size=(90, 70))
    cfg = Config().parse(["--data", str(tmp_path), "--image_size", "32", "--cache_images"])
    kept = get_data(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.cache, "KEEP_CHECKED_DECODES", False)
        again = get_data(cfg)
    for split in ("train", "val", "test"):
        a, b = getattr(kept, split), getattr(again, split)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert a.images.image(i).shape == b.images.image(i).shape
            assert torch.equal(a.images.image(i), b.images.image(i)), (split, i)
    assert kept.train.images.image(0).shape[1:] == (64, 82)       # shrunk to 2 x 32


def test_eval_batch_size_sets_the_evaluation_loaders_batch():
    cfg = Config().parse(["--eval_batch_size", "20", "--batch_size", "4"])
    runner = SimpleNamespace(cfg=SimpleNamespace(eval_batch_size=20, process_batch_size=4,
                                                 num_threads=0), world=World())
    dataset = torch.utils.data.TensorDataset(torch.zeros(50, 1), torch.zeros(50))
    assert cfg.eval_batch_size == 20
    assert ke.KnowledgeEvolution.eval_loader(runner, dataset).batch_size == 20
    assert Config().parse([]).eval_batch_size == 128


def test_the_new_flags_are_machine_settings():
    for flag in ("eval_batch_size", "save_every_minutes"):
        assert flag in RESUME_FROM_COMMAND_LINE and flag in NOT_TRAINING
    assert "eval_batch_size" in EVALUATE_FROM_COMMAND_LINE
    assert Config().parse([]).save_every_minutes == 10


@pytest.mark.parametrize("flag, value", [("--eval_batch_size", "0"),
                                         ("--save_every_minutes", "-1"),
                                         ("--save_every_minutes", "nan")])
def test_bad_values_are_one_line(flag, value):
    assert_one_line_error(run_cli(flag, value), [flag])
