"""Data layer: lists format, label mapping, RGB conversion, errors, transforms, demo set, loaders."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler
from torchvision.transforms.v2 import functional as TF

from configs.base_config import Config
from data.lists import DataSplits, class_order
from data.loading import get_data, make_loader, make_pair_loader
from data.synthetic import SyntheticShapes, ensure_synthetic_shapes
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_resize,
    eval_transform,
    load_rgb,
    train_transform,
)
from tests.datagen import make_lists_dataset, write_list
from tests.helpers import error_of
from utils.cs_kd import PairBatchSampler

SET = "Flower102Pytorch"


def make_cfg(root, set_name=SET, *extra):
    return Config().parse(["--set", set_name, "--data", str(root), "--image_size", "32",
                           "-t", "0", "-b", "4", *extra])


def folder_class(dataset, i) -> str:
    """The label written in the image's sub-folder name by datagen (class_<label>/...)."""
    return dataset.files[i].split("/")[0][len("class_"):]


# ---- label mapping -------------------------------------------------------------------------------

def test_int_labels_sort_numerically(tmp_path):
    make_lists_dataset(tmp_path, num_classes=3, per_class=(2, 1, 1), labels=[10, 2, 1])
    splits = get_data(make_cfg(tmp_path))
    assert isinstance(splits, DataSplits)
    assert splits.classes == [1, 2, 10]            # numeric, not "1" < "10" < "2"
    assert splits.num_classes == 3
    for ds in (splits.train, splits.val, splits.test):
        for i in range(len(ds)):
            assert splits.classes[ds.targets[i]] == int(folder_class(ds, i))
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert isinstance(y, int) and y == splits.train.targets[0]


def test_string_labels_sort_as_strings(tmp_path):
    make_lists_dataset(tmp_path, num_classes=3, per_class=(2, 1, 1),
                       labels=["tulip", "daisy", "rose"])
    splits = get_data(make_cfg(tmp_path))
    assert splits.classes == ["daisy", "rose", "tulip"]
    ds = splits.val
    assert [splits.classes[t] for t in ds.targets] == [folder_class(ds, i) for i in range(len(ds))]


def test_class_order_rules():
    assert class_order(["10", "9", "2", "9"]) == [2, 9, 10]
    assert class_order(["-1", "3", "0"]) == [-1, 0, 3]
    assert class_order(["b", "1", "a"]) == ["1", "a", "b"]     # one non-int: all strings


def test_class_count_mismatch_is_only_a_warning(tmp_path, caplog):
    make_lists_dataset(tmp_path, num_classes=3, per_class=(1, 1, 1))
    with caplog.at_level(logging.WARNING):
        splits = get_data(make_cfg(tmp_path))          # Flowers usually has 102 classes
    assert splits.num_classes == 3
    assert any("3 classes" in r.getMessage() and "102" in r.getMessage() for r in caplog.records)

    cfg = make_cfg(tmp_path)
    cfg.num_cls = 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        get_data(cfg)
    assert not any("classes" in r.getMessage() for r in caplog.records)


def test_extra_columns_and_blank_lines_are_fine(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    write_list(os.path.join(folder, "lists", "trn.csv"),
               [("0", "class_0/trn_000.jpg", "x", "0"), (), ("1", "class_1/trn_001.jpg", "y", "1")],
               header=("id", "file_name", "note", " label"))
    splits = get_data(make_cfg(tmp_path))
    assert splits.train.files == ["class_0/trn_000.jpg", "class_1/trn_001.jpg"]
    assert splits.train.targets == [0, 1]


# ---- RGB conversion ------------------------------------------------------------------------------

def _write_modes(folder):
    """One image per awkward mode; returns {file name: expected RGB of pixel (0, 0)}."""
    expected = {}
    Image.new("L", (20, 16), 100).save(os.path.join(folder, "gray.png"))
    expected["gray.png"] = (100, 100, 100)
    pal = Image.new("P", (20, 16), 0)
    pal.putpalette([200, 10, 30] + [0, 0, 0] * 255)
    pal.save(os.path.join(folder, "palette.png"))
    expected["palette.png"] = (200, 10, 30)
    pal.info["transparency"] = 0
    pal.save(os.path.join(folder, "palette_transparent.png"), transparency=0)
    expected["palette_transparent.png"] = (200, 10, 30)
    Image.new("RGBA", (20, 16), (10, 20, 30, 40)).save(os.path.join(folder, "rgba.png"))
    expected["rgba.png"] = (10, 20, 30)
    Image.new("LA", (20, 16), (70, 0)).save(os.path.join(folder, "la.png"))
    expected["la.png"] = (70, 70, 70)
    Image.new("CMYK", (20, 16), (0, 0, 0, 0)).save(os.path.join(folder, "cmyk.jpg"), quality=95)
    expected["cmyk.jpg"] = (255, 255, 255)
    Image.fromarray(np.full((16, 20), 51200, dtype=np.uint16)).save(os.path.join(folder, "g16.png"))
    expected["g16.png"] = (200, 200, 200)
    return expected


def test_every_mode_loads_as_rgb(tmp_path):
    expected = _write_modes(str(tmp_path))
    for name, rgb in expected.items():
        img = load_rgb(os.path.join(tmp_path, name))
        assert img.mode == "RGB", name
        assert img.size == (20, 16), name
        got = img.getpixel((0, 0))
        assert max(abs(a - b) for a, b in zip(got, rgb, strict=True)) <= 3, (name, got, rgb)


def test_dataset_of_mixed_modes_gives_3_channel_tensors(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(1, 1, 1))
    image_dir = os.path.join(folder, "jpg")
    names = sorted(_write_modes(image_dir))
    write_list(os.path.join(folder, "lists", "trn.csv"),
               [(n, i % 2) for i, n in enumerate(names)])
    splits = get_data(make_cfg(tmp_path))
    assert len(splits.train) == len(names)
    for i in range(len(names)):
        x, _ = splits.train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32


# ---- optional splits -----------------------------------------------------------------------------

def test_missing_val_uses_test_split_with_warning(tmp_path, caplog):
    make_lists_dataset(tmp_path, per_class=(2, 1, 2), with_val=False)
    with caplog.at_level(logging.WARNING):
        splits = get_data(make_cfg(tmp_path))
    assert splits.val_is_test is True
    assert splits.val is splits.test and len(splits.test) == 6
    assert any("val.csv" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_missing_test_gives_none(tmp_path, caplog):
    make_lists_dataset(tmp_path, per_class=(2, 1, 2), with_tst=False)
    with caplog.at_level(logging.WARNING):
        splits = get_data(make_cfg(tmp_path))
    assert splits.test is None
    assert splits.val_is_test is False and len(splits.val) == 3
    assert any("tst.csv" in r.getMessage() for r in caplog.records)


def test_neither_val_nor_test_is_an_error(tmp_path):
    make_lists_dataset(tmp_path, per_class=(2, 1, 1), with_val=False, with_tst=False)
    msg = error_of(make_cfg(tmp_path))
    assert "val.csv" in msg and "tst.csv" in msg


# ---- errors --------------------------------------------------------------------------------------

def test_error_dataset_folder_missing(tmp_path):
    msg = error_of(make_cfg(tmp_path / "nowhere"))
    assert os.path.join(str(tmp_path / "nowhere"), "flower102") in msg
    assert "lists/" in msg and "trn.csv" in msg and "file_name,label" in msg
    assert "--set SyntheticShapes" in msg and "--data" in msg


def test_error_image_folder_missing(tmp_path):
    os.makedirs(tmp_path / "flower102" / "lists")
    msg = error_of(make_cfg(tmp_path))
    assert "image folder not found" in msg and os.path.join("flower102", "jpg") in msg


def test_error_trn_csv_missing(tmp_path):
    folder = make_lists_dataset(tmp_path, per_class=(1, 1, 1))
    os.remove(os.path.join(folder, "lists", "trn.csv"))
    msg = error_of(make_cfg(tmp_path))
    assert os.path.join(folder, "lists", "trn.csv") in msg and "file_name,label" in msg


@pytest.mark.parametrize("split", ["trn", "val", "tst"])
def test_error_csv_without_label_column(tmp_path, split):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(1, 1, 1))
    path = os.path.join(folder, "lists", f"{split}.csv")
    write_list(path, [("class_0/trn_000.jpg", "0")], header=("file_name", "class"))
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "'label'" in msg and "file_name, class" in msg


def test_error_csv_without_file_name_column(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(1, 1, 1))
    path = os.path.join(folder, "lists", "trn.csv")
    write_list(path, [("class_0/trn_000.jpg", "0")], header=("path", "label"))
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "'file_name'" in msg and "path, label" in msg


def test_error_empty_trn_csv(tmp_path):
    folder = make_lists_dataset(tmp_path, per_class=(1, 1, 1))
    path = os.path.join(folder, "lists", "trn.csv")
    write_list(path, [])                                    # header only
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "no rows" in msg
    open(path, "w").close()                                 # not even a header
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "empty" in msg


def test_error_listed_images_missing(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(3, 1, 1))
    path = os.path.join(folder, "lists", "trn.csv")
    rows = [("class_0/trn_000.jpg", 0), ("gone/a.jpg", 0), ("class_1/trn_000.jpg", 1),
            ("gone/b.jpg", 1), ("gone/c.jpg", 1), ("gone/d.jpg", 0), ("gone/e.jpg", 1)]
    write_list(path, rows)
    msg = error_of(make_cfg(tmp_path))
    assert path in msg
    assert "5 of 7" in msg
    assert "line 3: gone/a.jpg" in msg                      # header is line 1
    assert "gone/b.jpg" in msg and "gone/c.jpg" in msg
    assert "gone/e.jpg" not in msg and "2 more" in msg
    assert os.path.join(folder, "jpg") in msg


def test_error_missing_images_in_test_list_found_up_front(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(1, 1, 1))
    path = os.path.join(folder, "lists", "tst.csv")
    write_list(path, [("class_0/tst_000.jpg", 0), ("missing.jpg", 1)])
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "1 of 2" in msg and "line 3: missing.jpg" in msg


def test_error_eval_labels_absent_from_training(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=3, per_class=(1, 1, 1))
    path = os.path.join(folder, "lists", "val.csv")
    write_list(path, [("class_0/val_000.jpg", 0), ("class_1/val_000.jpg", 7),
                      ("class_2/val_000.jpg", "x")])
    msg = error_of(make_cfg(tmp_path))
    assert path in msg and "trn.csv" in msg
    assert "2 row(s)" in msg and "7" in msg and "x" in msg and "line 3" in msg


# ---- transforms ----------------------------------------------------------------------------------

def test_eval_resize_rule():
    assert eval_resize(224) == 256
    assert eval_resize(32) == 37          # 36.57 rounds up
    assert eval_resize(64) == 73
    assert eval_resize(112) == 128


def test_transform_shapes_and_normalisation():
    torch.manual_seed(0)
    rect = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    for tf in (train_transform(32), eval_transform(32)):
        x = tf(rect)
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert x.shape == (3, 32, 32)
    mean_colour = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)
    flat = eval_transform(32)(Image.new("RGB", (40, 40), mean_colour))
    assert flat.abs().max() < 0.5 / 255 / min(IMAGENET_STD)      # mean colour -> ~0
    white = train_transform(32)(Image.new("RGB", (40, 40), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    assert torch.allclose(white.mean(dim=(1, 2)), expected, atol=1e-4)


def test_eval_transform_is_resize_then_centre_crop():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    got = eval_transform(32)(img)
    resized = TF.resize(img, [37], antialias=True)            # PIL in, PIL out
    assert resized.size == (61, 37)                            # shorter side -> 37
    ref = TF.to_image(TF.center_crop(resized, [32, 32]))
    ref = TF.normalize(TF.to_dtype(ref, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(got, ref, atol=1e-6)
    # and evaluation is deterministic, training is not
    assert torch.equal(eval_transform(32)(img), got)
    torch.manual_seed(0)
    a = train_transform(32)(img)
    b = train_transform(32)(img)
    assert not torch.equal(a, b)


# ---- the synthetic demo set ----------------------------------------------------------------------

def _tree(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def test_synthetic_is_deterministic_and_complete(tmp_path):
    a = ensure_synthetic_shapes(str(tmp_path / "a"))
    b = ensure_synthetic_shapes(str(tmp_path / "b"))
    assert a == str(tmp_path / "a" / "synthetic_shapes")
    ta, tb = _tree(a), _tree(b)
    assert ta.keys() == tb.keys()
    assert all(ta[k] == tb[k] for k in ta), "generation must write identical bytes"
    n = len(SyntheticShapes.classes)
    assert n == 10
    counts = SyntheticShapes.per_class
    assert counts["trn"] * n >= 300
    assert sum(k.endswith(".jpg") for k in ta) == sum(counts.values()) * n
    assert os.listdir(tmp_path / "a") == ["synthetic_shapes"]      # no temporary folder left
    with Image.open(os.path.join(a, "images", "star", "trn_000.jpg")) as img:
        assert img.mode == "RGB" and img.size == (SyntheticShapes.size, SyntheticShapes.size)
    # different images inside one class
    assert ta[os.path.join("images", "star", "trn_000.jpg")] != \
        ta[os.path.join("images", "star", "trn_001.jpg")]

    cfg = make_cfg(tmp_path / "a", "SyntheticShapes", "--seed", "123")
    splits = get_data(cfg)
    assert splits.num_classes == 10 and sorted(splits.classes) == sorted(SyntheticShapes.classes)
    assert (len(splits.train), len(splits.val), len(splits.test)) == \
        (counts["trn"] * n, counts["val"] * n, counts["tst"] * n)
    assert not splits.val_is_test
    assert np.bincount(splits.train.targets).tolist() == [counts["trn"]] * n
    assert splits.train[0][0].shape == (3, 32, 32)


def test_synthetic_generated_by_get_data_and_not_twice(tmp_path):
    cfg = make_cfg(tmp_path, "SyntheticShapes")
    get_data(cfg)
    marker = os.path.join(tmp_path, "synthetic_shapes", "lists", "trn.csv")
    before = os.stat(marker).st_mtime_ns
    get_data(cfg)
    assert os.stat(marker).st_mtime_ns == before


def test_synthetic_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = SyntheticShapes.render.__func__

    def failing(cls, class_index, rng):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(cls, class_index, rng)

    monkeypatch.setattr(SyntheticShapes, "render", classmethod(failing))
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_shapes(str(tmp_path))
    assert os.listdir(tmp_path) == []


# ---- loaders -------------------------------------------------------------------------------------

def test_make_loader_batches(tmp_path):
    make_lists_dataset(tmp_path, num_classes=2, per_class=(5, 3, 1))   # 10 train, 6 val
    cfg = make_cfg(tmp_path, SET, "--cache_budget", "0")            # float batches: per sample
    splits = get_data(cfg)
    train = make_loader(splits.train, cfg.batch_size, cfg.num_threads, train=True)
    shapes = [tuple(x.shape) for x, _ in train]
    assert shapes == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]   # the last 2 are kept
    x, y = next(iter(train))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    val = make_loader(splits.val, cfg.batch_size, cfg.num_threads, train=False)
    assert [len(y) for _, y in val] == [4, 2]               # evaluation keeps every image
    assert [t for _, y in val for t in y.tolist()] == splits.val.targets   # in order

    nine = torch.utils.data.Subset(splits.train, range(9))  # a last batch of 1 image: dropped
    assert [len(y) for _, y in make_loader(nine, 4, 0, train=True)] == [4, 4]
    assert [len(y) for _, y in make_loader(nine, 4, 0, train=False)] == [4, 4, 1]

    cfg.batch_size = 16                                     # one batch only: keep it
    assert [len(y) for _, y in make_loader(splits.train, cfg.batch_size, cfg.num_threads, train=True)] == [10]


def test_make_loader_shuffles_reproducibly(tmp_path):
    make_lists_dataset(tmp_path, num_classes=4, per_class=(4, 1, 1))
    cfg = make_cfg(tmp_path)
    cfg.batch_size = 16
    ds = get_data(cfg).train

    def order(seed):
        g = torch.Generator()
        g.manual_seed(seed)
        loader = make_loader(ds, cfg.batch_size, cfg.num_threads, train=True, generator=g)
        return [t for _, y in loader for t in y.tolist()]

    assert order(3) == order(3)
    assert order(3) != ds.targets                           # shuffled
    sampled = make_loader(ds, cfg.batch_size, cfg.num_threads, train=True, sampler=SequentialSampler(ds))
    assert [t for _, y in sampled for t in y.tolist()] == ds.targets


def test_make_loader_settings(tmp_path):
    make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    cfg = make_cfg(tmp_path, SET, "-t", "2")
    ds = get_data(cfg).train
    loader = make_loader(ds, cfg.batch_size, cfg.num_threads, train=False)  # not iterated: no workers
    assert loader.num_workers == 2 and loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
    assert loader.batch_size == 4 and not loader.drop_last
    cfg.num_threads = 0
    assert not make_loader(ds, cfg.batch_size, cfg.num_threads, train=True).persistent_workers


def test_iterating_a_loader_leaves_the_global_generator_alone(tmp_path):
    """Dropout and the re-drawn reset hypothesis draw from the global generator; a loader that
    drew from it each epoch without workers (once per run with persistent workers) would make
    the weights depend on --num_threads."""
    make_lists_dataset(tmp_path, num_classes=2, per_class=(1, 3, 1))
    ds = get_data(make_cfg(tmp_path)).val                  # no random augmentation
    pairs = PairBatchSampler(ds.targets, 2, seed=1)
    loaders = [make_loader(ds, 2, 0, train=True), make_loader(ds, 2, 0, train=False),
               make_loader(ds, 2, 0, train=True, sampler=SequentialSampler(ds)),
               make_pair_loader(ds, pairs)]
    torch.manual_seed(5)
    before = torch.get_rng_state()
    for loader in loaders:
        for _ in range(3):                                  # three epochs
            assert sum(len(y) for _, y in loader) > 0
    assert torch.equal(torch.get_rng_state(), before)

    def shuffled_under(seed):                               # the shuffle follows the run's seed
        torch.manual_seed(seed)
        return [i for _, y in make_loader(ds, 6, 0, train=True) for i in y.tolist()]

    assert shuffled_under(5) == shuffled_under(5) != shuffled_under(6)


class _PartwaySampler(torch.utils.data.Sampler):
    """A resumable sampler set to start part-way: 2 of its 10 samples are left this epoch."""
    epoch_length = 10

    def __iter__(self):
        return iter([8, 9])

    def __len__(self):
        return 2


def test_make_loader_drops_only_a_last_batch_of_one_image_of_the_full_epoch(tmp_path):
    make_lists_dataset(tmp_path, num_classes=2, per_class=(5, 1, 1))
    cfg = make_cfg(tmp_path)
    ds = get_data(cfg).train
    # the sampler's whole epoch has 10 samples: batches of 3 end with a batch of 1, of 4 with 2
    for batch_size, dropped in ((3, True), (9, True), (4, False), (10, False), (32, False)):
        loader = make_loader(ds, batch_size, 0, train=True, sampler=_PartwaySampler())
        assert loader.drop_last is dropped, batch_size
        assert not make_loader(ds, batch_size, 0, train=False, sampler=_PartwaySampler()).drop_last


# ---- paths outside the image folder --------------------------------------------------------------

def test_paths_outside_the_image_folder_are_refused_unless_allowed(tmp_path):
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    outside = tmp_path / "elsewhere.jpg"
    os.replace(os.path.join(folder, "jpg", "class_0", "val_000.jpg"), outside)
    path = os.path.join(folder, "lists", "val.csv")
    write_list(path, [(str(outside), 0), ("class_1/val_000.jpg", 1), ("../../elsewhere.jpg", 0),
                      ("class_1/../class_1/val_000.jpg", 1)])       # stays inside: fine
    msg = error_of(make_cfg(tmp_path))
    assert msg == (f"{path}: 2 file_name(s) outside the image folder (line 2: {outside}; line 4: "
                   f"../../elsewhere.jpg); file_name must be relative to {folder}/jpg and stay "
                   f"inside it (no absolute path, no leading ..): move the images into it and fix "
                   f"those rows, or pass --allow_outside_paths to read them where they are")
    write_list(path, [(str(outside), 0), ("../../elsewhere.jpg", 0), ("class_1/val_000.jpg", 1)])
    splits = get_data(make_cfg(tmp_path, SET, "--allow_outside_paths"))
    assert splits.val.files[:2] == [str(outside), "../../elsewhere.jpg"]
    assert splits.val.path(0) == str(outside)
    assert os.path.samefile(splits.val.path(1), outside) and splits.val.targets == [0, 0, 1]
    x, _ = splits.val[1]
    assert x.shape == (3, 32, 32)


# ---- files that are not images: never opened for reading, refused by line ---------------------

def test_non_regular_files_listed_as_images_are_refused_by_line_without_reading(tmp_path):
    """A FIFO would block the first read forever (this test would hang); a folder and a device
    (behind a symlink) are the other kinds."""
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    image_dir = os.path.join(folder, "jpg")
    os.mkfifo(os.path.join(image_dir, "fifo.jpg"))
    os.mkdir(os.path.join(image_dir, "folder.jpg"))
    os.symlink("/dev/null", os.path.join(image_dir, "device.jpg"))
    path = os.path.join(folder, "lists", "trn.csv")
    rows = [("class_0/trn_000.jpg", 0), ("fifo.jpg", 0), ("class_1/trn_000.jpg", 1),
            ("folder.jpg", 1), ("device.jpg", 1)]
    write_list(path, rows)
    msg = error_of(make_cfg(tmp_path))
    assert msg.startswith(f"{path}: 3 of 5 listed images under {image_dir} cannot be read"), msg
    assert "line 3: fifo.jpg is a FIFO, not a regular file" in msg
    assert "line 5: folder.jpg is a folder, not an image" in msg
    assert "line 6: device.jpg is a device, not a regular file" in msg


def test_fifo_in_an_image_folder_class_folder_is_refused(tmp_path):
    for split in ("train", "val"):
        os.makedirs(tmp_path / split / "cat")
        Image.new("RGB", (20, 16), (200, 10, 10)).save(tmp_path / split / "cat" / "0.png")
    os.mkfifo(tmp_path / "train" / "cat" / "1.png")
    msg = error_of(make_cfg(tmp_path, "ImageFolder", "--image_size", "16"))
    assert "1 of 2 listed images" in msg and "cat/1.png is a FIFO, not a regular file" in msg


# ---- the pixel limit: read from the header, refused before decoding ------------------------------

def write_flat_png(path, width: int, height: int):
    """A valid single-colour greyscale PNG of any size, compressed row by row (a few kB for
    8000 x 8000): a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    packer, row, body = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height):
        body.append(packer.compress(row))
    body.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("limit, needle", [
    (1_000_000, "has 64000000 pixels, more than --max_image_pixels 1000000"),    # PIL's error
    (40_000_000, "has 64000000 pixels, more than --max_image_pixels 40000000")])  # its warning
def test_image_over_the_pixel_limit_is_refused_without_decoding(tmp_path, monkeypatch, limit,
                                                                 needle):
    from PIL import ImageFile
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)    # restored after
    folder = make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    bomb = tmp_path / "bomb.png"
    write_flat_png(bomb, 8000, 8000)
    assert bomb.stat().st_size < 200_000
    os.replace(bomb, os.path.join(folder, "jpg", "bomb.png"))
    path = os.path.join(folder, "lists", "trn.csv")
    write_list(path, [("class_0/trn_000.jpg", 0), ("class_1/trn_000.jpg", 1), ("bomb.png", 1)])
    decoded, real_load = [], ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return real_load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    msg = error_of(make_cfg(tmp_path, SET, "--max_image_pixels", str(limit)))
    assert f"line 4: bomb.png {needle}" in msg, msg
    assert (8000, 8000) not in decoded and len(decoded) >= 2       # the others were decoded
    assert limit == Image.MAX_IMAGE_PIXELS


def test_default_pixel_limit_is_set_and_bounded(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    make_lists_dataset(tmp_path, num_classes=2, per_class=(2, 1, 1))
    cfg = make_cfg(tmp_path)
    assert cfg.max_image_pixels == 50_000_000
    get_data(cfg)
    assert Image.MAX_IMAGE_PIXELS == 50_000_000
    with pytest.raises(SystemExit) as info:
        make_cfg(tmp_path, SET, "--max_image_pixels", str(2**31))
    assert info.value.code == 2
    assert "--max_image_pixels: expected an integer in [1, 2147483647]" in capsys.readouterr().err
