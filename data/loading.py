"""Datasets and loaders: `get_data(cfg)` reads the dataset named by `--set`, `make_loader` batches it.

Sources (data/catalog.py says which one a `--set` uses):
- the lists layout (data/lists.py): an image folder plus lists/{trn,val,tst}.csv; CUB200, Dog120
  and MIT67 read their original download instead when the dataset folder has no lists/
  (data/originals.py); the built-in demo `SyntheticShapes` is generated in this layout on first
  use (data/synthetic.py);
- original downloads read by torchvision.datasets (data/torchvision_sets.py);
- CSVList, ImageFolder, CIFAR10/100 (data/formats.py).
All image sources go through the same checks before training (`data.splits.build_splits`).
"""
import logging
import os

import torch
from torch.utils.data import DataLoader, Dataset

from data import DataError, originals
from data.augment import augment_training
from data.batched_crops import collate_uncropped
from data.batches import collate_with
from data.cache import uint8_items, with_image_cache
from data.catalog import CATALOG
from data.holdout import HoldOut
from data.image_checks import set_pixel_limit
from data.label_noise import with_noisy_training_labels
from data.lists import DataSplits
from data.precheck import lists_folder_missing
from data.splits import build_splits, load_lists
from utils.cs_kd import PairBatchSampler

log = logging.getLogger(__name__)

SYNTHETIC_SET = "SyntheticShapes"


def _dataset_dir(cfg, info) -> str:
    folder = os.path.join(cfg.data, info.folder)
    if not os.path.isdir(folder):
        original = (f", or the original download ({originals.URLS[info.source(cfg.set)]})"
                    if info.original else "")
        raise DataError(lists_folder_missing(cfg, info, folder, original))
    return folder


def _checks(cfg) -> dict:
    return {"set_name": cfg.set, "skip_bad_images": cfg.skip_bad_images,
            "hold_out": HoldOut.of(cfg)}


def _load_original(cfg, info, folder) -> DataSplits:
    image_dir, lists = originals.read_original(folder, info.source(cfg.set))
    log.info("--set %s: %s has no lists/, so the original download is read (%s)", cfg.set,
             folder, ", ".join(f"{split} {len(lf)}" for split, lf in lists.items()))
    return build_splits(image_dir, lists, cfg.image_size,
                        expected_classes=cfg.num_cls,
                        no_val=f"{cfg.set} has no official validation split (train / test)",
                        **_checks(cfg))


def _load_torchvision(cfg, info) -> DataSplits:
    from data.torchvision_sets import read_torchvision
    image_dir, lists, classes = read_torchvision(cfg.data, info.source(cfg.set))
    return build_splits(image_dir, lists, cfg.image_size, order=classes,
                        expected_classes=cfg.num_cls,
                        no_val=f"{cfg.set} has no official validation split (train / test)",
                        **_checks(cfg))


def get_data(cfg) -> DataSplits:
    """The train / val / test datasets of `cfg.set` under `cfg.data`, validated up front; with
    --val_fraction, validation held out of the training split (data/holdout.py); with
    --label_noise, noisy training labels (data/label_noise.py); with --task retrieval, their
    zero-shot split of the classes (data/zero_shot.py); the training split augmented as
    --augment / --random_erasing say (data/augment.py)."""
    return augment_training(_cached_data(cfg), cfg)


@with_image_cache  # --cache_images: the returned splits read decoded images from shared memory
def _cached_data(cfg) -> DataSplits:
    set_pixel_limit(cfg.max_image_pixels)
    splits = _read_splits(cfg)
    rate = getattr(cfg, "label_noise", 0.0)
    if rate > 0:
        seed = cfg.split_seed if cfg.noise_seed is None else cfg.noise_seed
        splits = with_noisy_training_labels(splits, rate, cfg.noise_type, seed)
    if getattr(cfg, "task", "classification") == "retrieval":
        from data.zero_shot import zero_shot_splits
        splits = zero_shot_splits(splits, cfg.set)
    return splits


def _read_splits(cfg) -> DataSplits:
    info = CATALOG.get(cfg.set)
    if info is None:
        raise DataError(f"unknown dataset --set {cfg.set}; choose one of {', '.join(sorted(CATALOG))}")
    if info.format == "torchvision":
        return _load_torchvision(cfg, info)
    if info.format != "lists":                  # CSVList, ImageFolder, CIFAR10/100
        from data.formats import load_format
        return load_format(cfg, info)
    if cfg.set == SYNTHETIC_SET:
        from data.synthetic import ensure_synthetic_shapes
        ensure_synthetic_shapes(cfg.data)
    folder = _dataset_dir(cfg, info)
    if info.original and not os.path.isdir(os.path.join(folder, "lists")):
        return _load_original(cfg, info, folder)
    if info.original:
        log.info("--set %s: reading the lists layout in %s", cfg.set, folder)
    return load_lists(folder, info.images, cfg.image_size,
                      expected_classes=cfg.num_cls,
                      allow_outside_paths=cfg.allow_outside_paths,
                      **_checks(cfg))


def _epoch_length(dataset, sampler) -> int:
    """Samples this process sees in one full epoch: a resumable sampler's whole epoch (even when
    it is set to start part-way), else the sampler's or the dataset's length."""
    if sampler is None:
        return len(dataset)
    return getattr(sampler, "epoch_length", None) or len(sampler)


def loader_generator(generator=None) -> torch.Generator:
    """`generator`, or a private one seeded with the current seed (`torch.initial_seed()`).

    A DataLoader draws one number from its generator whenever an iterator starts: once per
    epoch without workers, once per run with persistent workers. Drawn from the global
    generator, that count would shift every later draw of the training process (dropout's
    masks, for one) and make the weights depend on the number of workers.
    """
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(torch.initial_seed())


def make_loader(dataset: Dataset, batch_size: int, workers: int, train: bool, sampler=None,
                generator=None, crops_later: bool = False) -> DataLoader:
    """A DataLoader over `dataset` with `batch_size` samples per step and `workers` processes.

    Training shuffles (unless a sampler is given) and keeps the epoch's last, smaller batch, as
    the reference does, except when it would hold a single image: BatchNorm cannot train on one
    sample, so only that batch is dropped. Cached images come as uint8 batches, which the engine
    converts and normalises on the training device (data.transforms.normalize_batch); with
    `crops_later`, cached training images come uncropped, as data.batched_crops.UncroppedBatch,
    which the engine crops on the device. A cached dataset builds each batch at once, in one
    buffer (data.batches).
    """
    dataset = uint8_items(dataset, crops_later)
    seen = _epoch_length(dataset, sampler)
    kwargs = {}
    if workers > 0:
        # Workers live across epochs (KE iterates the same loaders for G x E epochs; starting them
        # costs a fork each and a re-import each under spawn). Two batches in flight per worker
        # keep a GPU fed once the first ones are ready, without filling /dev/shm with batches.
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    # Page-locked batches only when training on CUDA (the trainer uses the GPU whenever there is
    # one); they let the engine's non_blocking copies overlap the previous step.
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None,
                      sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(),
                      drop_last=bool(train and seen % batch_size == 1),
                      collate_fn=collate_with(collate_uncropped if crops_later else None),
                      generator=loader_generator(generator), **kwargs)


def make_pair_loader(dataset: Dataset, sampler: PairBatchSampler, num_workers: int = 0,
                     pin_memory: bool | None = None, generator=None,
                     crops_later: bool = False) -> DataLoader:
    """A DataLoader over `dataset` that takes its batches from the CS-KD `sampler` (wrap the
    dataset in data.samplers.SeededSamples when the sampler was made with `with_seeds=True`);
    `crops_later` as in make_loader."""
    dataset = uint8_items(dataset, crops_later)
    kwargs = {"persistent_workers": True} if num_workers > 0 else {}
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=loader_generator(generator),
                      collate_fn=collate_with(collate_uncropped if crops_later else None),
                      **kwargs)
