"""Equal regularisation for every method (--augment, --random_erasing, --mixup, --cutmix, --ema)
and named recipes (--recipe): bad values refused in one line, recipes and their precedence,
the per-image steps on the default (cached) input path, mixing on a hand-checkable batch, the
moving average's arithmetic, and one short run of the strong recipe end to end."""
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torchvision.transforms import v2

from argtypes import METHOD, RECIPE, RUN, roles_of
from configs.base_config import build_parser
from configs.recipes import RECIPES
from data import loading
from data.augment import AUGMENTS, ERASE_FILL, BatchMix, ImageAugment, MixedForward, augmented
from data.cache import CachedImages
from data.samplers import SeededSamples
from tests.datagen import make_lists_dataset
from tests.helpers import COMMON, assert_one_line_error, run_cli
from tests.test_performance import data_cfg
from trainers.knowledge_evolution import crops_on_device
from utils.csv_utils import read_results, row_kind
from utils.ema import EMA_FILE, averaged

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regularise_data")
    make_lists_dataset(root, "Flower102Pytorch", num_classes=2, per_class=(4, 2, 2),
                       size=(40, 32), seed=3)
    return root


# --- flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--random_erasing", "1"], "--random_erasing"),
    (["--random_erasing", "-0.1"], "--random_erasing"),
    (["--mixup", "0"], "--mixup"),
    (["--cutmix", "-1"], "--cutmix"),
    (["--ema", "0"], "--ema"),
    (["--ema", "1"], "--ema"),
    (["--ema", "nan"], "--ema"),
    (["--recipe", "fancy"], "--recipe"),
    (["--augment", "fancy"], "--augment"),
    (["--cs_kd", "--mixup", "0.2"], "--cs_kd"),
    (["--cs_kd", "--recipe", "strong"], "--mixup off"),
    (["--task", "retrieval", "--cutmix", "1"], "--task retrieval"),
    (["--task", "retrieval", "--recipe", "ke_paper"], "--recipe"),
    (["--batched_crops", "on", "--augment", "trivialaugment"], "--batched_crops"),
])
def test_bad_values_stop_in_one_line_before_the_data_is_read(tmp_path, argv, needle):
    result = run_cli("--data", tmp_path / "no_such_folder", "--log-dir", tmp_path, *argv)
    assert_one_line_error(result, [needle])
    assert not os.listdir(tmp_path)


def test_every_regularisation_flag_and_recipe_value_is_a_recipe_setting():
    roles = roles_of(build_parser())
    for dest in ("recipe", "augment", "random_erasing", "mixup", "cutmix", "ema"):
        assert roles[dest] == RECIPE
    for values in RECIPES.values():        # never a method's or a run's setting
        assert not {roles[dest] for dest in values} & {METHOD, RUN}


def test_ke_paper_is_the_reference_recipe_and_todays_defaults(make_cfg):
    plain, paper = vars(make_cfg()), vars(make_cfg("--recipe", "ke_paper"))
    assert paper.pop("recipe") == "ke_paper" and plain.pop("recipe") is None
    paper.pop("given_flags"), plain.pop("given_flags")
    assert paper == plain
    # the reference's hard-coded defaults (SPEC: the paper's Flowers-102 recipe)
    assert (paper["epochs"], paper["lr"], paper["batch_size"], paper["lr_policy"],
            paper["warmup_length"], paper["label_smoothing"]) == (200, 0.256, 32, "cosine_lr", 5,
                                                                  0.1)
    assert (paper["augment"], paper["random_erasing"], paper["mixup"], paper["cutmix"],
            paper["ema"]) == ("none", 0.0, None, None, None)


def test_command_line_beats_config_file_beats_recipe(make_cfg, tmp_path):
    strong = make_cfg("--recipe", "strong")
    assert (strong.augment, strong.random_erasing, strong.mixup, strong.cutmix, strong.ema,
            strong.epochs) == ("trivialaugment", 0.1, 0.2, 1.0, 0.998, 300)
    config = tmp_path / "c.yaml"
    config.write_text("recipe: strong\nepochs: 9\nmixup: 'off'\n")
    from_file = make_cfg("--config_file", config)
    assert (from_file.recipe, from_file.epochs, from_file.mixup, from_file.cutmix) == \
        ("strong", 9, None, 1.0)
    both = make_cfg("--config_file", config, "--epochs", 7, "--cutmix", "off")
    assert (both.epochs, both.mixup, both.cutmix, both.ema) == (7, None, None, 0.998)


# --- per-image steps on the default input path -----------------------------------------------

@pytest.mark.parametrize("augment", AUGMENTS[1:])
def test_each_augmentation_runs_on_cached_crops_from_the_items_seed(tiny_root, augment):
    plain = loading.get_data(data_cfg(tiny_root, "--cache_images")).train
    splits = loading.get_data(data_cfg(tiny_root, "--cache_images", "--augment", augment))
    train = splits.train
    assert isinstance(train, CachedImages) and not train.can_crop_later
    seeded, unaugmented = SeededSamples(train.uint8_items()), SeededSamples(plain.uint8_items())
    keys = [(k % len(train), 1000 + k) for k in range(12)]
    first = [seeded[key][0] for key in keys]
    assert all(x.dtype == torch.uint8 and x.shape == (3, 32, 32) for x in first)
    assert all(torch.equal(x, seeded[key][0]) for x, key in zip(first, keys, strict=True))   # same seed
    assert any(not torch.equal(x, unaugmented[key][0]) for x, key in zip(first, keys, strict=True))
    batch = SeededSamples(train.uint8_items()).__getitems__(keys[:4])     # made item by item
    assert isinstance(batch, list) and torch.equal(batch[0][0], first[0])


def test_the_per_sample_path_takes_the_same_steps_between_to_image_and_to_dtype(tiny_root):
    train = loading.get_data(data_cfg(tiny_root, "--augment", "autoaugment",
                                      "--random_erasing", "0.5")).train     # no cache
    assert not isinstance(train, CachedImages)
    seeded = SeededSamples(train)
    image = seeded[(0, 5)][0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert torch.equal(image, seeded[(0, 5)][0])
    compose = v2.Compose([v2.RandomHorizontalFlip(), v2.ToImage(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
    other = augmented(SimpleNamespace(transform=compose), ImageAugment("randaugment", 0.2))
    assert [type(t).__name__ for t in other.transform.transforms] == [
        "RandomHorizontalFlip", "ToImage", "RandAugment", "RandomErasing", "ToDtype", "Normalize"]
    assert len(compose.transforms) == 4                          # the original is unchanged


def test_random_erasing_fills_a_rectangle_with_the_mean_colour():
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    erased = ImageAugment("none", 0.999)(image)
    filled = (erased != 0).all(dim=0)
    rows, cols = filled.any(dim=1).nonzero().flatten(), filled.any(dim=0).nonzero().flatten()
    assert filled.sum() > 0
    # one axis-aligned rectangle, every pixel the ImageNet mean colour (124, 116, 104)
    assert filled.sum() == len(rows) * len(cols)
    assert erased[:, filled].T.tolist() == [list(ERASE_FILL)] * int(filled.sum())


def test_augmented_training_makes_batched_crops_say_why_they_are_not_taken(tiny_root, caplog):
    cfg = data_cfg(tiny_root, "--cache_images", "--augment", "trivialaugment")
    train = loading.get_data(cfg).train
    with caplog.at_level(logging.INFO, logger="ke"):
        assert not crops_on_device(cfg, train, torch.device("cuda"))
    lines = [r.getMessage() for r in caplog.records if "training crops" in r.getMessage()]
    assert len(lines) == 1 and "--augment" in lines[0] and "per image" in lines[0]


# --- batch mixing -------------------------------------------------------------------------

def test_mixup_mixes_images_and_labels_by_one_lambda():
    """Image 0 is black, image 1 white; v2.MixUp mixes each image with the one before it
    (roll by 1): image 0 becomes (1 - lambda) white, with labels lambda x class 0 + (1 - lambda)
    x class 2; image 1 becomes lambda white, lambda x class 2 + (1 - lambda) x class 0."""
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    labels = torch.tensor([0, 2])
    mixed, soft = BatchMix(mixup=1.0, cutmix=None, num_classes=3)(images, labels)
    lam = 1.0 - float(mixed[0, 0, 0, 0])
    assert 0 < lam < 1
    assert torch.allclose(mixed[0], torch.full((3, 4, 4), 1 - lam))
    assert torch.allclose(mixed[1], torch.full((3, 4, 4), lam))
    assert torch.allclose(soft, torch.tensor([[lam, 0, 1 - lam], [1 - lam, 0, lam]]), atol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area():
    torch.manual_seed(1)
    images = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    mixed, soft = BatchMix(mixup=None, cutmix=1.0, num_classes=2)(images, torch.tensor([0, 1]))
    pasted = float(mixed[0].mean())                      # the white part of image 0
    assert set(mixed.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(soft[0], torch.tensor([1 - pasted, pasted]), atol=1e-6)


def test_mixed_forward_trains_on_probabilities_and_counts_the_true_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    seen = {}

    def criterion(logits, target):
        seen["target"] = target
        return nn.functional.cross_entropy(logits, target)
    forward = MixedForward(BatchMix(mixup=0.5, cutmix=0.5, num_classes=3))
    loss, logits, target = forward(model, images, labels, criterion)
    assert seen["target"].shape == (4, 3) and torch.allclose(seen["target"].sum(1), torch.ones(4))
    assert torch.equal(target, labels) and logits.shape == (4, 3) and loss.ndim == 0


# --- moving average -----------------------------------------------------------------------

def test_ema_averages_weights_and_batchnorm_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = averaged(model, decay=0.75)
    for value in (4.0, 8.0):          # the first update copies; then 0.75 x 4 + 0.25 x 8 = 5
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(value)
        average.update_parameters(model)
    assert torch.allclose(average.module[0].weight, torch.full((2, 2), 5.0))
    assert torch.allclose(average.module[1].running_mean, torch.full((2,), 5.0))


# --- end to end ----------------------------------------------------------------------------

def test_strong_recipe_trains_with_every_step_and_writes_ema_rows(tiny_root, tmp_path):
    result = run_cli("--data", tiny_root, "--log-dir", tmp_path, "--name", "strong",
                     *COMMON, "--recipe", "strong", "--epochs", 2, "--cache_images")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    folder = tmp_path / "strong"
    settings = json.loads((folder / "settings.json").read_text())
    assert (settings["recipe"], settings["augment"], settings["random_erasing"], settings["mixup"],
            settings["cutmix"], settings["ema"], settings["epochs"]) == \
        ("strong", "trivialaugment", 0.1, 0.2, 1.0, 0.998, 2)
    rows = read_results(str(folder / "strong.csv"))
    assert sorted(row_kind(r) for r in rows) == ["dense", "ema"]       # one generation: no slim row
    ema_row = next(r for r in rows if row_kind(r) == "ema")
    assert ema_row["Generation"] == 0 and ema_row["Current Val Top 1"] >= 0
    average = torch.load(folder / "gen_0" / EMA_FILE, weights_only=True)["state_dict"]
    raw = torch.load(folder / "gen_0" / "checkpoints" / "epoch_1.state",
                     weights_only=True)["state_dict"]
    floats = [k for k, v in average.items() if v.is_floating_point()]
    assert floats and any(not torch.equal(average[k], raw[k]) for k in floats)
    from utils.report import load_runs
    runs = load_runs([str(folder)])
    dense = next(r for r in rows if row_kind(r) == "dense")
    assert runs[runs["kind"] == "dense"]["top1"].tolist() == [dense["Current Tst Top 1"]]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--augment", "randaugment", "--mixup", "0.4"],
                                   ["--augment", "autoaugment", "--cutmix", "1", "--ema", "0.9"],
                                   ["--random_erasing", "0.5"]])
def test_other_settings_train_one_generation(tiny_root, tmp_path, flags):
    result = run_cli("--data", tiny_root, "--log-dir", tmp_path, "--name", "other",
                     *COMMON, *flags)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.mark.slow
def test_killed_strong_run_resumes_to_the_same_weights_and_average(tiny_root, tmp_path):
    """Killed (SIGKILL) after its first resume state, the strong recipe's run resumes to the
    weights and the moving average of a straight run: the average is in the resume state, and
    the per-image and mixing draws come from seeds and the saved generators."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT
    flags = ["--data", str(tiny_root), "--log-dir", str(tmp_path), *COMMON, "--recipe", "strong",
             "--epochs", 3, "--save_every_minutes", 0, "--cache_images"]
    straight = run_cli(*flags, "--name", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    resume_state = tmp_path / "killed" / "gen_0" / "checkpoints" / "resume.state"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_KE_cls.py"),
                             *map(str, flags), "--name", "killed"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not resume_state.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed = run_cli("--data", tiny_root, "--log-dir", tmp_path, "--name", "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in (os.path.join("checkpoints", "epoch_2.state"), EMA_FILE):
        a = torch.load(tmp_path / "straight" / "gen_0" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "killed" / "gen_0" / name, weights_only=True)["state_dict"]
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
