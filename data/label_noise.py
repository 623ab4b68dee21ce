"""Synthetic label noise on the training split (--label_noise P, --noise_type).

symmetric: each training label is, with probability P, replaced by one of the OTHER classes,
           drawn uniformly (so the label always changes when it is drawn);
pairflip:  each training label is, with probability P, moved to the next class, c -> (c+1) mod C.

The draws come from a generator seeded with --noise_seed alone (default: --split_seed), never
from the training seed, so every method and every training seed of a comparison trains on the
same noisy labels. Only the training split changes, after any validation hold-out was taken:
validation and test keep their clean labels. `noise_record` lists every training image with its
clean and its noisy label (written as noisy_labels.csv in the experiment folder).
"""
import copy
import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from data import NOISE_TYPES, DataError
from data.lists import DataSplits

log = logging.getLogger(__name__)

NOISE_FILE = "noisy_labels.csv"


def noisy_targets(targets: Sequence[int], num_classes: int, rate: float, kind: str,
                  seed: int) -> np.ndarray:
    """`targets` (class indices in [0, num_classes)) with noise of `kind` at `rate`."""
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; one of {', '.join(NOISE_TYPES)}")
    clean = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flip = rng.random(len(clean)) < rate
    if kind == "pairflip":
        moved = (clean + 1) % num_classes
    else:                      # one of the num_classes - 1 other classes, uniformly
        other = rng.integers(0, num_classes - 1, size=len(clean))
        moved = other + (other >= clean)
    return np.where(flip, moved, clean)


def with_noisy_training_labels(splits: DataSplits, rate: float, kind: str, seed: int) -> DataSplits:
    """`splits` whose training split is a copy with noisy targets (the images are shared);
    its record lists every training image with its clean and noisy label."""
    train = splits.train
    if splits.num_classes < 2:
        raise DataError(f"--label_noise {rate}: the training split has {splits.num_classes} "
                        f"class; label noise needs at least 2: drop --label_noise")
    if not hasattr(train, "targets"):
        raise DataError(f"--label_noise: {type(train).__name__} keeps no targets that could be "
                        f"changed; use a lists or folder dataset, or drop --label_noise")
    clean = [int(t) for t in train.targets]
    noisy = [int(t) for t in noisy_targets(clean, splits.num_classes, rate, kind, seed)]
    changed = sum(a != b for a, b in zip(clean, noisy, strict=True))
    log.info("--label_noise %s (%s, noise seed %d): %d of %d training labels changed (%.1f%%); "
             "validation and test labels are clean", rate, kind, seed, changed, len(clean),
             100.0 * changed / max(1, len(clean)))
    noisy_train = copy.copy(train)
    noisy_train.targets = noisy
    record = noise_record(clean, noisy, getattr(train, "files", None), splits.classes)
    return replace(splits, train=noisy_train, records={**splits.records, NOISE_FILE: record})


def noise_record(clean: Sequence[int], noisy: Sequence[int], files, classes: Sequence) -> str:
    """The text of noisy_labels.csv: every training image's index, file name (empty for a
    dataset without files), clean label and noisy label (as the dataset names its classes)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "file_name", "label", "noisy_label"])
    for i, (a, b) in enumerate(zip(clean, noisy, strict=True)):
        writer.writerow([i, files[i] if files is not None else "", classes[a], classes[b]])
    return out.getvalue()
