"""A validation split held out of the training split (--val_fraction), for datasets that have
none, so that a configuration is selected on validation rather than on test.

The hold-out is class-stratified: round(F x n) of each class's n training images, drawn from
--split_seed alone (never from the training seed), so every method and every training seed of a
comparison sees the same split. A fraction that would leave a class without a training or a
validation image is refused, from the labels alone, before any image is decoded. The split is
described by `split_record` (written as val_split.csv in the experiment folder).
"""
import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from data import DataError
from data.lists import ListFile
from errors import short

SPLIT_FILE = "val_split.csv"


@dataclass(frozen=True)
class HoldOut:
    fraction: float          # of each class's training images, in (0, 1)
    seed: int                # --split_seed

    @classmethod
    def of(cls, cfg) -> Optional["HoldOut"]:
        """The hold-out `cfg` asks for, or None (--val_fraction 0, the default)."""
        fraction = getattr(cfg, "val_fraction", 0.0) or 0.0
        return cls(fraction, getattr(cfg, "split_seed", 0)) if fraction > 0 else None


def stratified_indices(labels: Sequence, hold_out: HoldOut, where: str) -> tuple[list[int], list[int]]:
    """(training indices, validation indices) of a training split whose rows have `labels`,
    each sorted: round(fraction x n) of every class's n rows go to validation, chosen by a
    generator seeded with the split seed alone. DataError (naming the classes) when a class
    would keep no training row or get no validation row."""
    labels = list(labels)
    by_class = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    counts = {label: len(rows) for label, rows in by_class.items()}
    held = {label: int(np.floor(hold_out.fraction * n + 0.5)) for label, n in counts.items()}
    single = [label for label, n in counts.items() if n < 2]
    if single:
        raise DataError(f"--val_fraction {hold_out.fraction}: {where} has a single training "
                        f"image of class(es) {short(single)}, which cannot give a validation "
                        f"image too; add training images or drop --val_fraction")
    none_held = [label for label in by_class if held[label] == 0]
    if none_held:
        smallest = min(counts[label] for label in none_held)
        raise DataError(f"--val_fraction {hold_out.fraction}: {where} has class(es) "
                        f"{short(none_held)} with too few training images to hold any out (the "
                        f"smallest has {smallest}); use --val_fraction "
                        f"{math.ceil(50 / smallest) / 100} or more, or add training images")
    none_left = [label for label in by_class if held[label] == counts[label]]
    if none_left:
        raise DataError(f"--val_fraction {hold_out.fraction}: {where} would keep no training "
                        f"image of class(es) {short(none_left)}; use a smaller --val_fraction, or "
                        f"add training images")
    rng = np.random.default_rng(hold_out.seed)
    val = []
    for label in sorted(by_class):            # one fixed order: labels of one split share a type
        rows = by_class[label]
        val += [rows[i] for i in rng.permutation(len(rows))[:held[label]]]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def subset(listfile: ListFile, indices: Sequence[int], what: str) -> ListFile:
    """The rows `indices` of `listfile`, keeping their line numbers."""
    return ListFile(f"{listfile.path} ({what})", [listfile.files[i] for i in indices],
                    [listfile.labels[i] for i in indices], [listfile.lines[i] for i in indices],
                    numbered=listfile.numbered)


def hold_out_list(trn: ListFile, hold_out: HoldOut) -> tuple[ListFile, ListFile, str]:
    """(remaining training rows, held-out validation rows, the split's val_split.csv text)."""
    train, val = stratified_indices(trn.labels, hold_out, trn.path)
    record = split_record(train, val, trn.files, trn.labels)
    return subset(trn, train, "training part"), subset(trn, val, "held out"), record


def split_record(train: Sequence[int], val: Sequence[int], files: Sequence[str] | None,
                 labels: Sequence) -> str:
    """The text of val_split.csv: one row per image of the original training split, with its
    split (train or val), its index in that split, its file name (empty for a dataset without
    files) and its label."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["split", "index", "file_name", "label"])
    for split, indices in (("train", train), ("val", val)):
        for i in indices:
            writer.writerow([split, i, files[i] if files is not None else "", labels[i]])
    return out.getvalue()
