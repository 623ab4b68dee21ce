"""The image cache: decode every image once and keep it, as uint8, in shared memory.

Taken when `--cache_images` forces it or when the decoded splits fit under `--cache_budget`
(`cache_decision`).

Without the cache every epoch decodes every JPEG again and augments it as a PIL image. With it:

- Each image is decoded once, when the data is loaded, by a pool of threads (PIL releases the
  GIL while it decodes and resizes). When the cache is taken, that decode is the image check's
  (data.image_checks): the check decodes at full size and hands each image, already in its
  stored form, to the cache (`CheckedDecodes`), which then decodes nothing again.
- What is stored depends on the split's transform (a `v2.Compose`):
  * evaluation (`Resize, CenterCrop, ...`): the deterministic leading steps (`Resize`,
    `CenterCrop`) are applied once, on the PIL image, exactly as the uncached pipeline applies
    them, and only the rest (`ToImage, ToDtype, Normalize`) runs per access. The tensors are
    therefore bit-identical to the uncached ones.
  * training (`RandomResizedCrop, ...`): the image is stored at a shorter side of
    `--cache_short_side` (default 2 x --image_size; smaller images are stored as they are) and
    the whole transform runs on the uint8 tensor (torchvision.transforms.v2 works on tensors, the
    resize of RandomResizedCrop uses torch's antialiased uint8 kernel). At the default size a random
    crop covering a quarter of the image or more (four draws out of five) holds at least
    --image_size pixels a side, so it is only ever scaled down, never up, as from the original; the
    smallest crops (8% of the area) hold ~0.28 x 2 x size = 127 pixels at 224 instead of, say, 141
    in a 500-pixel original.
- Images live in a few large shared-memory tensors (segments of ~64 MB, `tensor.is_shared()`);
  data-loading workers, forked or spawned, map the same pages instead of copying the cache.
- The random draws of an item come only from torch's global RNG inside `__getitem__` (the
  transform's own draws), so `SeededSamples` keys (index, seed) reproduce them exactly: the same
  batches with any number of workers, and after a resume.

The price is memory: about short_side^2 x aspect x 3 bytes per training image (~0.8 MB at 448
for a 4:3 image) and image_size^2 x 3 per evaluation image (~150 kB at 224), in /dev/shm.
"""
import copy
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from data import DataError
from data.batches import BuiltBatch, batch_buffers
from data.transforms import (
    EvalTransform,
    TrainTransform,
    crop_box,
    draw_flip,
    eval_pixels,
    normalize_batch,
    resize_shorter,
    resized_crop,
)
from errors import one_line

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 << 20          # images are packed into shared segments of about this size
DECODE_BATCH = 64                 # images handed to the thread pool at a time
KEEP_CHECKED_DECODES = True       # tests turn it off: the cache decodes every image again
_checked = None                   # the CheckedDecodes of the get_data call in progress


class CheckedDecodes:
    """The images the image check decoded, in the form the cache stores them: a training
    image shrunk to the cache's shorter side, an evaluation image resized and centre-cropped,
    as uint8 arrays keyed by (path, kind). Each is handed once per listing to `CachedImages.build`
    (`take`), so none outlives the cache's own copy."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.short_side = cfg.cache_short_side or default_short_side(cfg.image_size)
        self.arrays, self.uses = {}, {}

    def keeper(self, image_dir: str, train, evaluated, image_size: int):
        """`keeper` for data.image_checks.check_images of the training list `train` and the
        evaluation lists `evaluated`: given the header sizes, the `keep` that stores each
        decoded image, or None when the listed images would not be cached."""
        kinds = [(train, ("train", self.short_side))]
        kinds += [(lf, ("eval", int(image_size))) for lf in evaluated]

        def keeper(sizes: dict):
            need = 0
            for lf, kind in kinds:
                for name in lf.files:
                    path = os.path.join(image_dir, name)
                    key = (path, kind)
                    self.uses[key] = self.uses.get(key, 0) + 1
                    if kind[0] == "eval":
                        need += kind[1] ** 2 * 3
                    elif sizes.get(path):           # an image without a header is refused
                        height, width = stored_shape(sizes[path][1], sizes[path][0], kind[1])
                        need += height * width * 3
            if not decide_cache(need, self.cfg)[0]:
                self.uses.clear()
                return None
            wanted = {}
            for path, kind in self.uses:
                wanted.setdefault(path, []).append(kind)

            def keep(path: str, image):
                for kind in wanted.get(path, ()):
                    self.arrays[(path, kind)] = stored_array(image, kind)
            return keep
        return keeper

    def take(self, path: str, kind) -> np.ndarray | None:
        """The kept array of `path` as `kind`, or None; dropped after its last listing."""
        key = (path, kind)
        array = self.arrays.get(key)
        if array is not None:
            self.uses[key] -= 1
            if self.uses[key] <= 0:
                del self.arrays[key]
        return array


def stored_array(image, kind) -> np.ndarray:
    """The uint8 H x W x 3 array the cache stores of the RGB PIL `image` as `kind`:
    ("eval", image size) or ("train", shorter side)."""
    what, size = kind
    image = eval_pixels(image, size) if what == "eval" else _shrink(image, size)
    return np.asarray(image, dtype=np.uint8)


def checked_decodes_keeper(image_dir: str, train, evaluated, image_size: int):
    """The `keeper` (data.image_checks) of the get_data call in progress, or None outside one
    (or with KEEP_CHECKED_DECODES off)."""
    if _checked is None:
        return None
    return _checked.keeper(image_dir, train, evaluated, image_size)


def default_short_side(image_size: int) -> int:
    """Shorter side of the cached training images when --cache_short_side is not given."""
    return 2 * int(image_size)


def split_transform(transform) -> tuple[list[Callable], Callable | None]:
    """(steps to apply once when caching, transform to apply per access) of a v2.Compose (a
    transform of data/formats.py; this toolkit's own are TrainTransform / EvalTransform).

    The steps applied once are the leading deterministic Resize / CenterCrop of a v2.Compose.
    """
    from torchvision.transforms import v2
    if isinstance(transform, v2.Compose):
        steps = list(transform.transforms)
        k = 0
        while k < len(steps) and type(steps[k]) in (v2.Resize, v2.CenterCrop):
            k += 1
        rest = steps[k:]
        return steps[:k], (v2.Compose(rest) if rest else None)
    return [], transform


class SharedImages:
    """Variable-size uint8 RGB images packed into shared-memory segments.

    `image(i)` is a 3 x H x W view of the stored H x W x 3 pixels (channels-last strides, the
    layout torch's fast uint8 resize wants); nothing is copied.
    """

    def __init__(self, count: int):
        self.segments: list[torch.Tensor] = []
        # segment, byte offset, height, width of every image; -1: not stored
        self.location = np.full((count, 4), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.location)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() for s in self.segments)

    def add(self, items: list[tuple[int, np.ndarray]]):
        """Store the (index, H x W x 3 uint8 array) pairs in one new shared segment."""
        if not items:
            return
        total = sum(a.size for _, a in items)
        segment = torch.empty(total, dtype=torch.uint8)
        flat = segment.numpy()
        offset, number = 0, len(self.segments)
        for index, array in items:
            flat[offset:offset + array.size] = array.reshape(-1)
            self.location[index] = (number, offset, array.shape[0], array.shape[1])
            offset += array.size
        try:
            segment.share_memory_()
        except RuntimeError as error:  # /dev/shm full (torch checks with fallocate)
            raise DataError(f"image cache: no room in shared memory for the image cache "
                            f"({(self.nbytes + total) / 2**20:.0f} MB so far, {_shm_free()}); "
                            f"enlarge /dev/shm (docker run --shm-size), lower --cache_short_side "
                            f"or pass --cache_budget 0 without --cache_images "
                            f"({one_line(error)})") from None
        self.segments.append(segment)

    def image(self, index: int) -> torch.Tensor:
        number, offset, height, width = (int(v) for v in self.location[index])
        if number < 0:
            raise IndexError(f"image {index} is not in the cache")
        pixels = self.segments[number][offset:offset + height * width * 3]
        return pixels.view(height, width, 3).permute(2, 0, 1)


def _shm_free() -> str:
    free = _shm_bytes_free()
    return "free space unknown" if free is None else f"/dev/shm has {free / 2**20:.0f} MB free"


def _shrink(image, short_side: int):
    """`image` (PIL) with its shorter side brought down to `short_side`; never enlarged."""
    if min(image.size) <= short_side:
        return image
    return resize_shorter(image, short_side)


class CachedImages(Dataset):
    """The items of a dataset, from decoded images kept in shared memory.

    `CachedImages.build(dataset, ...)` reads `dataset` (which must have a `transform` attribute,
    like ListsDataset and torchvision's folder datasets) once with its transform switched off.
    `__getitem__(i)` returns (transform(image), target) like the original dataset.

    With this toolkit's own transforms (data/transforms.py) an item is computed without
    torchvision: the stored pixels (evaluation) or their random resized crop and flip
    (training, `crop_size`), as uint8; `uint8_items()` is the same dataset handing out those
    pixels, for a loader whose batches the engine normalises on the training device.
    """

    def __init__(self, images: SharedImages, targets: list[int], transform=None, source: str = "",
                 crop_size: int | None = None, normalize: bool = True, original=None):
        self.original = original         # the dataset it was built from (its files, paths, ...)
        self.images = images
        self.targets = list(targets)
        self.transform = transform       # a v2 transform of data/formats.py, else None
        self.crop_size = crop_size       # training: random resized crops of this size
        self.normalize = normalize
        self.crops_later = False         # items: the stored image, its box and flip, uncropped
        self.augment = None              # training: data.augment.ImageAugment after the flip
        self.source = source

    @classmethod
    def build(cls, dataset, short_side: int | None, threads: int = 0, name: str = "images",
              checked: CheckedDecodes | None = None):
        """Decode every item of `dataset` once (in `threads` threads; 0: one per CPU, at most 8).

        `short_side` bounds the stored size when the transform starts with random steps (the
        training split); a leading Resize / CenterCrop (evaluation) is applied once instead.
        Images the image check decoded (`checked`) are taken from it, not decoded again.
        """
        transform, crop_size, kind = dataset.transform, None, None
        if isinstance(transform, EvalTransform):
            once, per_access = [functools.partial(eval_pixels, image_size=transform.image_size)], None
            kind = ("eval", transform.image_size)
        elif isinstance(transform, TrainTransform):
            once, per_access, crop_size = [], None, transform.image_size
            kind = ("train", short_side) if short_side else None
        else:
            once, per_access = split_transform(transform)
        raw = copy.copy(dataset)
        raw.transform = None
        if checked is None or kind is None or not hasattr(raw, "path"):
            checked = None

        def prepare(index: int):
            array = checked.take(raw.path(index), kind) if checked is not None else None
            if array is not None:
                target = raw.targets[index]
            else:
                image, target = raw[index]
                if once:
                    for step in once:
                        image = step(image)
                elif short_side:
                    image = _shrink(image, short_side)
                array = np.asarray(image, dtype=np.uint8)
            if array.ndim != 3 or array.shape[2] != 3:
                raise DataError(f"image cache: {name} item {index} is not an RGB image "
                                f"(array of shape {array.shape})")
            return array, int(target)

        start = time.perf_counter()
        count = len(dataset)
        images, targets = SharedImages(count), [0] * count
        threads = threads or min(8, os.cpu_count() or 1)
        pending, pending_bytes = [], 0
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for first in range(0, count, DECODE_BATCH):
                indices = range(first, min(count, first + DECODE_BATCH))
                for index, (array, target) in zip(indices, pool.map(prepare, indices), strict=True):
                    targets[index] = target
                    pending.append((index, array))
                    pending_bytes += array.size
                    if pending_bytes >= SEGMENT_BYTES:
                        images.add(pending)
                        pending, pending_bytes = [], 0
        images.add(pending)
        what = ("resized and cropped for evaluation" if once
                else f"shorter side at most {short_side}" if short_side else "at full size")
        log.info("cached %d %s (%s): %.0f MB of shared memory, %.1f s", count, name, what,
                 images.nbytes / 2**20, time.perf_counter() - start)
        return cls(images, targets, per_access, source=repr(dataset), crop_size=crop_size,
                   original=raw)

    def uint8_items(self) -> "CachedImages":
        """This dataset with items left as uint8 pixels (see `normalize_batch`); itself when
        its transform is a v2 one, which must run per item."""
        if self.transform is not None:
            return self
        return replace_fields(self, normalize=False)

    @property
    def can_crop_later(self) -> bool:
        """Whether its items can leave their random resized crops to the training device
        (data.batched_crops): training items of this toolkit's own transform."""
        return self.crop_size is not None and self.transform is None and self.augment is None

    def uncropped_items(self) -> "CachedImages":
        """This dataset with items ((stored image, crop box, flip, crop size), target): the
        draws of `__getitem__`, with the crop and flip left to data.batched_crops."""
        if not self.can_crop_later:
            raise ValueError(f"{self!r} has no random resized crops to leave to the device")
        return replace_fields(self, normalize=False, crops_later=True)

    def __getattr__(self, name: str):
        """Attributes of the original dataset (files, root, path(), classes, ...): a cached
        split is still that dataset, read faster."""
        original = self.__dict__.get("original")
        if original is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(original, name)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images.image(index)
        if self.transform is not None:
            from torchvision import tv_tensors
            return self.transform(tv_tensors.Image(image)), self.targets[index]
        if self.crop_size is not None:   # the draws of v2.RandomResizedCrop, then of the flip
            box = crop_box(*image.shape[1:])
            flip = draw_flip()
            if self.crops_later:
                return (image, box, flip, self.crop_size), self.targets[index]
            image = resized_crop(image, box, self.crop_size)
            if flip:
                image = image.flip(-1)
            if self.augment is not None:
                image = self.augment(image)
        return (normalize_batch(image) if self.normalize else image), self.targets[index]

    def __getitems__(self, keys):
        """The items `keys` as one batch (data.batches), or as a list when they are made one by
        one (a v2 transform, normalised items)."""
        return self.build_batch(keys) or [self[key] for key in keys]

    def build_batch(self, keys, seeds=None) -> BuiltBatch | None:
        """The batch the loader's collate would make of the items `keys`, built at once in one
        buffer (data.batches): the uint8 pixels (training: their random resized crops and
        flips; with crops_later uncropped, data.batched_crops.build_uncropped) and the targets.
        With `seeds`, each item's draws come from its seed, as data.samplers.SeededSamples
        draws them. None when the items are made one by one: a v2 transform, normalised
        items, augmented items (their draws follow their crop's, one item at a time), or
        evaluation images of different sizes."""
        if self.transform is not None or self.normalize or self.augment is not None \
                or not len(keys):
            return None
        images, boxes, flips = [], [], []
        generator = torch.default_generator
        saved = generator.get_state() if seeds is not None and self.crop_size is not None else None
        try:
            for k, index in enumerate(keys):
                image = self.images.image(index)
                if self.crop_size is not None:  # the draws of __getitem__, from the item's seed
                    if saved is not None:
                        generator.manual_seed(seeds[k])
                    boxes.append(crop_box(*image.shape[1:]))
                    flips.append(draw_flip())
                images.append(image)
        finally:
            if saved is not None:
                generator.set_state(saved)
        targets = [self.targets[index] for index in keys]
        if self.crops_later:
            from data.batched_crops import build_uncropped
            return build_uncropped(images, boxes, flips, self.crop_size, targets)
        n = len(images)
        shape = (3, self.crop_size, self.crop_size) if self.crop_size is not None else images[0].shape
        if any(image.shape != shape for image in images) and self.crop_size is None:
            return None
        out_targets, pixels = batch_buffers(((n,), torch.int64), ((n, *shape), torch.uint8))
        for k, image in enumerate(images):
            if self.crop_size is not None:
                image = resized_crop(image, boxes[k], self.crop_size)
                if flips[k]:
                    image = image.flip(-1)
            pixels[k].copy_(image)
        out_targets.copy_(torch.tensor(targets, dtype=torch.int64))
        return BuiltBatch((out_targets, pixels), _pixels_and_targets)

    def __repr__(self):
        return f"CachedImages({len(self)} images of {self.source})"


def _pixels_and_targets(tensors):
    targets, pixels = tensors
    return pixels, targets


def replace_fields(original, **changes):
    """A shallow copy of `original` (sharing its images) with `changes` to its attributes."""
    other = copy.copy(original)
    other.__dict__.update(changes)
    return other


def uint8_items(dataset, crops_later: bool = False):
    """`dataset` (possibly inside SeededSamples) with cached items left as uint8 pixels; with
    `crops_later`, uncropped (CachedImages.uncropped_items)."""
    inner = getattr(dataset, "dataset", None)
    if not isinstance(dataset, CachedImages) and isinstance(inner, CachedImages):
        changed = uint8_items(inner, crops_later)
        return dataset if changed is inner else replace_fields(dataset, dataset=changed)
    if isinstance(dataset, CachedImages):
        return dataset.uncropped_items() if crops_later else dataset.uint8_items()
    if crops_later:
        raise ValueError(f"{dataset!r} is not in the image cache: its crops cannot be left to the "
                         f"device")
    return dataset


def can_crop_later(dataset) -> bool:
    """Whether `dataset` (possibly inside SeededSamples) can leave its crops to the device."""
    if not isinstance(dataset, CachedImages):
        dataset = getattr(dataset, "dataset", None)
    return isinstance(dataset, CachedImages) and dataset.can_crop_later


def cache_splits(splits, cfg, checked: CheckedDecodes | None = None):
    """`splits` (a DataSplits) with every dataset replaced by its CachedImages (once each, so a
    validation split that is the test split stays one object); `checked`: the images the image
    check decoded."""
    short_side = cfg.cache_short_side or default_short_side(cfg.image_size)
    if short_side < cfg.image_size:
        log.warning("--cache_short_side %d is below --image_size %d: every training crop will be "
                    "enlarged (blurred); use at least %d", short_side, cfg.image_size,
                    default_short_side(cfg.image_size))
    threads = 0
    done = {}

    def cached(dataset, name):
        if dataset is None:
            return None
        if id(dataset) not in done:
            if not hasattr(dataset, "transform"):
                log.warning("image cache: %s has no transform attribute; %s are read "
                            "uncached", type(dataset).__name__, name)
                done[id(dataset)] = dataset
            else:
                done[id(dataset)] = CachedImages.build(dataset, short_side, threads, name,
                                                       checked)
        return done[id(dataset)]

    return replace(splits, train=cached(splits.train, "training images"),
                   val=cached(splits.val, "validation images"),
                   test=cached(splits.test, "test images"))


def stored_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) a training image of that size is cached at (see `_shrink`)."""
    if not short_side or min(height, width) <= short_side:
        return height, width
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def decoded_bytes(dataset, short_side: int | None) -> int | None:
    """Bytes the cache of `dataset` would take, from the image headers (nothing decoded); None
    when it is not known up front: a dataset without this toolkit's transforms or image paths."""
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, EvalTransform):
        return len(dataset) * transform.image_size ** 2 * 3
    if not isinstance(transform, TrainTransform) or not hasattr(dataset, "path"):
        return None
    from PIL import Image
    total = 0
    for index in range(len(dataset)):
        with Image.open(dataset.path(index)) as image:
            width, height = image.size
        stored = stored_shape(height, width, short_side)
        total += stored[0] * stored[1] * 3
    return total


def _unique_splits(splits):
    datasets = {id(d): (d, name) for d, name in ((splits.train, "training"), (splits.val, "validation"),
                                                 (splits.test, "test")) if d is not None}
    return list(datasets.values())


def default_budget() -> int:
    """A quarter of the machine's RAM (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 0


def human_size(nbytes: float) -> str:
    if nbytes >= 0.95 * 2**30:
        return f"{nbytes / 2**30:.1f} GB".replace(".0 GB", " GB")
    return f"{nbytes / 2**20:.{1 if nbytes < 10 * 2**20 else 0}f} MB"


def cache_decision(splits, cfg) -> tuple[bool, str]:
    """(whether to cache the decoded splits, the log line that says which path was taken).

    --cache_images forces the cache. Otherwise the splits are cached when their decoded size,
    computed from the image headers, fits under --cache_budget (default a quarter of the RAM)
    and in the free shared memory."""
    short_side = cfg.cache_short_side or default_short_side(cfg.image_size)
    sizes = [decoded_bytes(d, short_side) for d, _ in _unique_splits(splits)]
    return decide_cache(None if None in sizes else sum(sizes), cfg)


def decide_cache(need: int | None, cfg) -> tuple[bool, str]:
    """`cache_decision` for splits whose decoded size is `need` bytes (None: not known)."""
    budget = default_budget() if cfg.cache_budget is None else cfg.cache_budget
    known = need is not None
    stated = f"budget {human_size(budget)}" if budget else "--cache_budget 0"
    if cfg.cache_images:
        size = f"a {human_size(need)}" if known else "a"
        return True, f"images: decoded once into {size} cache (--cache_images; {stated})"
    if not budget:
        return False, "images: decoded per sample (--cache_budget 0)"
    if not known:
        return False, ("images: decoded per sample (the decoded size of this dataset is not known "
                       "up front; --cache_images caches it anyway)")
    if need > budget:
        return False, (f"images: decoded per sample (the decoded splits need {human_size(need)}, "
                       f"over the {stated}; raise --cache_budget or pass --cache_images)")
    free = _shm_bytes_free()
    if free is not None and need > free:
        return False, (f"images: decoded per sample (the decoded splits need {human_size(need)}, "
                       f"/dev/shm has {human_size(free)} free)")
    return True, f"images: decoded once into a {human_size(need)} cache ({stated})"


def _shm_bytes_free() -> int | None:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def with_image_cache(get_data):
    """Decorator for `data.loading.get_data`: cache the splits it returns when `cache_decision`
    says so, and log which path was taken."""
    @functools.wraps(get_data)
    def wrapper(cfg, *args, **kwargs):
        global _checked
        checked = CheckedDecodes(cfg) if KEEP_CHECKED_DECODES else None
        _checked = checked
        try:
            splits = get_data(cfg, *args, **kwargs)
        finally:
            _checked = None
        cache, line = cache_decision(splits, cfg)
        log.info(line)
        return cache_splits(splits, cfg, checked) if cache else splits
    return wrapper
