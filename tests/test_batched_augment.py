"""The cached path's augmentation without torchvision (data/transforms.py) against torchvision's
v2 transforms it reproduces: the same crop parameters from the same seeds, the same pixels; and
the batched crops on the device (data/batched_crops.py) against the per-image path."""
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from data import loading
from data.batched_crops import UncroppedBatch, batched_resized_crops, collate_uncropped
from data.cache import CachedImages, can_crop_later
from data.samplers import EpochShuffleSampler, SeededSamples
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_box,
    draw_flip,
    eval_pixels,
    eval_transform,
    normalize_batch,
    resized_crop,
    train_transform,
)
from tests.datagen import make_lists_dataset
from tests.helpers import COMMON, assert_one_line_error, run_cli
from tests.test_performance import data_cfg
from trainers.knowledge_evolution import crops_on_device

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def landscape_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment_data")
    make_lists_dataset(root, "Flower102Pytorch", num_classes=2, per_class=(3, 2, 2),
                       size=(90, 70), seed=4)
    return root


@pytest.mark.parametrize("height,width", [(70, 90), (300, 40), (40, 300), (32, 32), (5, 7)])
def test_crop_boxes_are_torchvisions_for_the_same_seeds(height, width):
    crop = v2.RandomResizedCrop(16, antialias=True)
    image = tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))
    for seed in range(200):
        torch.manual_seed(seed)
        ours = crop_box(height, width)
        ours_flip = draw_flip()
        torch.manual_seed(seed)
        theirs = crop.make_params([image])
        theirs_flip = bool(torch.rand(1) < 0.5)      # RandomHorizontalFlip's one draw
        assert ours == (theirs["top"], theirs["left"], theirs["height"], theirs["width"])
        assert ours_flip == theirs_flip


def test_crop_statistics_match_an_independent_rejection_sampler():
    """Mean area fraction and log aspect ratio of the crops of a 400 x 300 image against numpy's
    draw of the same definition (area in U[0.08, 1], log ratio in U[log 3/4, log 4/3], a draw
    that does not fit re-drawn)."""
    torch.manual_seed(0)
    boxes = np.array([crop_box(300, 400) for _ in range(1500)], dtype=float)
    rng = np.random.default_rng(0)
    area = rng.uniform(0.08, 1.0, 200_000) * 120_000
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), 200_000))
    w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
    fits = (w <= 400) & (h <= 300)
    expected_area = (w * h)[fits].mean() / 120_000
    expected_log_ratio = np.log(w / h)[fits].mean()
    ours_area = (boxes[:, 2] * boxes[:, 3]).mean() / 120_000
    # 1,500 draws: the standard error of either mean is about 0.007
    assert abs(ours_area - expected_area) < 0.02
    assert abs(np.log(boxes[:, 3] / boxes[:, 2]).mean() - expected_log_ratio) < 0.02
    assert boxes[:, 0].min() >= 0 and (boxes[:, 0] + boxes[:, 2]).max() <= 300
    assert boxes[:, 1].min() >= 0 and (boxes[:, 1] + boxes[:, 3]).max() <= 400


def test_cached_train_items_are_the_v2_pipelines_pixels(landscape_root):
    """Random resized crop (torch's uint8 antialiased kernel) + flip + ToDtype + Normalize from
    the cached pixels, item by item, bit-identical to v2 run on the same uint8 tensor."""
    train = loading.get_data(data_cfg(landscape_root)).train
    cached = CachedImages.build(train, short_side=64)
    pipeline = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    flips = 0
    for i in range(len(cached)):
        for seed in range(8):
            torch.manual_seed(seed)
            ours, _ = cached[i]
            torch.manual_seed(seed)
            theirs = pipeline(tv_tensors.Image(cached.images.image(i)))
            assert ours.shape == (3, 32, 32) and torch.equal(ours, theirs)
            torch.manual_seed(seed)
            crop_box(*cached.images.image(i).shape[1:])
            flips += draw_flip()
    assert 0 < flips < 8 * len(cached)                     # both branches were compared


def test_eval_pixels_are_v2_resize_and_center_crop():
    rng = np.random.default_rng(0)
    steps = v2.Compose([v2.Resize(37, antialias=True), v2.CenterCrop(32)])
    for height, width in [(70, 90), (90, 70), (37, 37), (33, 200)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours, theirs = eval_pixels(image, 32), steps(image)
        assert ours.size == theirs.size == (32, 32)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_the_lazy_transforms_are_the_v2_composes_on_pil_images():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    reference_train = v2.Compose([v2.RandomResizedCrop(24, antialias=True), v2.RandomHorizontalFlip(),
                                  v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.manual_seed(5)
    ours = train_transform(24)(image)
    torch.manual_seed(5)
    assert torch.equal(ours, reference_train(image))
    assert eval_transform(24)(image).shape == (3, 24, 24)


def test_normalize_batch_of_a_batch_equals_item_by_item():
    pixels = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    batch = normalize_batch(pixels)
    normalize = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    for k in range(5):
        assert torch.equal(batch[k], normalize(v2.functional.to_dtype(pixels[k], torch.float32,
                                                                     scale=True)))
    last = normalize_batch(pixels.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, batch)


def test_loader_hands_out_uint8_batches_that_normalise_to_the_items(landscape_root):
    cfg = data_cfg(landscape_root, "--cache_images")
    splits = loading.get_data(cfg)
    sampler = EpochShuffleSampler(len(splits.train), seed=2)
    sampler.set_epoch(1)
    seeded = SeededSamples(splits.train)
    loader = loading.make_loader(seeded, 3, 0, train=True, sampler=sampler)
    batches = list(loader)
    assert [x.dtype for x, _ in batches] == [torch.uint8, torch.uint8]
    items = [seeded[key][0] for key in sampler]
    assert torch.equal(torch.cat([normalize_batch(x) for x, _ in batches]), torch.stack(items))
    assert seeded.dataset.normalize                        # the loader's copy, not the split
    assert resized_crop(torch.zeros(3, 32, 32, dtype=torch.uint8), (0, 0, 32, 32), 32).shape \
        == (3, 32, 32)


def _smooth_batch(n, height, width, seed=0):
    """uint8 images without pixel-level noise (coarse noise upsampled), as photographs are."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, height // 8, width // 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (images * 255).round().to(torch.uint8)


def _per_sample(images, boxes, flips, size):
    crops = [resized_crop(image, tuple(box.tolist()), size) for image, box in zip(images, boxes, strict=True)]
    return normalize_batch(torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips, strict=True)]))


def test_batched_unscaled_crops_flips_and_normalisation_are_exact():
    images = _smooth_batch(6, 40, 50)
    boxes = torch.tensor([[0, 0, 16, 16], [3, 7, 16, 16], [24, 34, 16, 16]] * 2)
    flips = torch.tensor([True, False, True, False, True, False])
    batched = batched_resized_crops(images, boxes, flips, 16)
    assert torch.equal(batched, _per_sample(images, boxes, flips, 16))


def test_batched_downscaling_crops_are_within_a_grey_level_of_torchvisions_on_average():
    """roi_align's box filter against the antialiased triangle filter of the per-sample path
    (v2's resized_crop(antialias=True) on uint8): on smooth images the mean difference stays
    under 1 grey level (0.53-0.58 measured over four seeds) and no pixel differs by 12 or more
    (5.6-6.2 measured; 0.52 and 7.6 at 448 -> 224 px, benchmarks/bench_batched_crop.py)."""
    images = _smooth_batch(8, 96, 128, seed=3)        # cached at 2 x the crop size, as by default
    torch.manual_seed(5)
    boxes = torch.tensor([crop_box(96, 128) for _ in range(8)])
    flips = torch.tensor([draw_flip() for _ in range(8)])
    assert (boxes[:, 2:] > 48).any()                       # some crops really are scaled down
    grey = ((batched_resized_crops(images, boxes, flips, 48) - _per_sample(images, boxes, flips, 48))
            * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs()
    assert float(grey.mean()) < 1.0 and float(grey.max()) < 12


def _grey_levels(a, b):
    """|a - b| of two normalised batches, in grey levels of the uint8 pixels."""
    return ((a - b) * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs()


def test_uncropped_items_carry_the_per_image_paths_draws(landscape_root):
    """An uncropped item is the stored image with the box and flip the per-image path draws for
    the same seed: cropping it as that path does gives that path's item exactly."""
    train = CachedImages.build(loading.get_data(data_cfg(landscape_root)).train, short_side=64)
    per_image, uncropped = SeededSamples(train.uint8_items()), SeededSamples(train.uncropped_items())
    flips = 0
    for index in range(len(train)):
        for seed in range(6):
            (image, box, flip, size), target = uncropped[(index, seed)]
            expected, expected_target = per_image[(index, seed)]
            assert image.data_ptr() == train.images.image(index).data_ptr()   # not copied
            crop = resized_crop(image, box, size)
            assert torch.equal(crop.flip(-1) if flip else crop, expected)
            assert (size, target) == (32, expected_target)
            flips += flip
    assert 0 < flips < 6 * len(train)
    assert can_crop_later(SeededSamples(train)) and not can_crop_later(train.original)
    validation = CachedImages.build(loading.get_data(data_cfg(landscape_root)).val, short_side=64)
    assert not can_crop_later(validation)
    with pytest.raises(ValueError, match="no random resized crops"):
        validation.uncropped_items()


def test_collate_pads_each_image_with_its_own_edges():
    small = torch.arange(2 * 3 * 3, dtype=torch.uint8).view(3, 2, 3)
    large = torch.full((3, 4, 5), 200, dtype=torch.uint8)
    batch, targets = collate_uncropped([((small, (0, 1, 2, 2), True, 2), 4),
                                        ((large, (1, 0, 3, 3), False, 2), 7)])
    assert batch.images.shape == (2, 3, 4, 5) and batch.images.dtype == torch.uint8
    assert torch.equal(batch.images[0, :, :2, :3], small)
    assert torch.equal(batch.images[0, :, :2, 3:], small[:, :, 2:3].expand(3, 2, 2))
    assert torch.equal(batch.images[0, :, 2:, :], batch.images[0, :, 1:2, :].expand(3, 2, 5))
    assert torch.equal(batch.images[1], large)
    assert batch.boxes.tolist() == [[0, 1, 2, 2], [1, 0, 3, 3]]
    assert batch.flips.tolist() == [True, False] and batch.size == 2
    assert targets.tolist() == [4, 7]
    with pytest.raises(ValueError, match="crop sizes"):
        collate_uncropped([((small, (0, 0, 2, 2), False, 2), 0), ((large, (0, 0, 2, 2), False, 3), 0)])


def test_a_padded_images_crops_at_its_edges_are_those_of_the_image_alone():
    """Crops reaching the right and bottom edges of the smaller image of a batch read that
    image's border, not the padding (a zero fill would darken their last samples)."""
    small, large = _smooth_batch(1, 40, 48, seed=1)[0], _smooth_batch(1, 64, 80, seed=2)[0]
    boxes = [(14, 18, 26, 30), (0, 0, 26, 30), (14, 0, 26, 30)]      # right+bottom, none, bottom
    for box in boxes:
        batch, _ = collate_uncropped([((small, box, False, 16), 0), ((large, box, True, 16), 0)])
        together = batch.on_device("cpu")
        alone = batched_resized_crops(small[None], torch.tensor([box]), torch.tensor([False]), 16)
        assert together.shape == (2, 3, 16, 16)
        torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)


def test_loader_with_crops_later_batches_the_same_draws_with_any_number_of_workers(landscape_root):
    """Uncropped batches from 0 and 2 workers are equal; cropped on the device they are within a
    grey level, on average, of the per-image path's batches of the same seeds."""
    splits = loading.get_data(data_cfg(landscape_root, "--cache_images"))

    def epoch(workers, crops_later):
        sampler = EpochShuffleSampler(len(splits.train), seed=3)
        sampler.set_epoch(2)
        loader = loading.make_loader(SeededSamples(splits.train), 4, workers, train=True,
                                     sampler=sampler, crops_later=crops_later)
        return list(loader)

    alone, with_workers = epoch(0, True), epoch(2, True)
    assert len(alone) == len(with_workers) == 2
    for (a, a_target), (b, b_target) in zip(alone, with_workers, strict=True):
        assert isinstance(a, UncroppedBatch) and isinstance(b, UncroppedBatch)
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a.size == b.size == 32
        assert torch.equal(a_target, b_target)
    per_image = epoch(0, False)
    cropped = torch.cat([batch.on_device("cpu") for batch, _ in alone])
    expected = torch.cat([normalize_batch(images) for images, _ in per_image])
    assert float(_grey_levels(cropped, expected).mean()) < 1.0
    assert torch.equal(torch.cat([t for _, t in alone]), torch.cat([t for _, t in per_image]))


def _train_split(root, *flags):
    return loading.get_data(data_cfg(root, *flags)).train


@pytest.mark.parametrize("flag, device, cache, expected", [
    ("auto", "cuda", True, True), ("auto", "cpu", True, False), ("auto", "cuda", False, False),
    ("on", "cpu", True, True), ("off", "cuda", True, False)])
def test_batched_crops_flag_picks_the_path_and_logs_it(landscape_root, caplog, flag, device,
                                                        cache, expected):
    train = _train_split(landscape_root, *(["--cache_images"] if cache else []))
    with caplog.at_level(logging.INFO, logger="ke"):
        chosen = crops_on_device(SimpleNamespace(batched_crops=flag), train, torch.device(device))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training crops")]
    assert chosen is expected
    assert lines == [f"training crops: batched on {device} (--batched_crops {flag})" if expected
                     else "training crops: per image in the data loader"]


def test_batched_crops_on_without_the_cache_stops_before_the_run(landscape_root, tmp_path):
    result = run_cli("--set", "Flower102Pytorch", "--data", str(landscape_root), "--log-dir",
                     str(tmp_path), "--name", "uncached", "--cache_budget", "0",
                     "--batched_crops", "on", *COMMON)
    assert_one_line_error(result, ["--batched_crops on: the training images are not in the "
                                   "decoded cache; add --cache_images"])
    assert not (tmp_path / "uncached").exists()


def test_a_run_with_batched_crops_trains_and_tests(landscape_root, tmp_path):
    result = run_cli("--set", "Flower102Pytorch", "--data", str(landscape_root), "--log-dir",
                     str(tmp_path), "--name", "batched", "--cache_images", "--batched_crops", "on",
                     *COMMON)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "training crops: batched on cpu (--batched_crops on)" in result.stdout
    rows = pd.read_csv(tmp_path / "batched" / "batched.csv")
    assert rows["Generation"].tolist() == [0] and 0 <= rows["Best Trn Top 1"][0] <= 100
