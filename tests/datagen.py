"""Tiny on-disk datasets in the lists layout, for tests that need real files.

    make_lists_dataset(tmp_path, "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2))

writes `<root>/<folder>/<images>/class_<label>/<split>_<i>.jpg` (real JPEGs, one dominant colour
per class plus noise, so a model can learn them) and `<root>/<folder>/lists/{trn,val,tst}.csv`,
and returns the dataset folder. Pass `--data <root> --set <set_name>` to use it.
"""
import csv
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from data.catalog import CATALOG

SPLITS = ("trn", "val", "tst")


def write_list(path, rows, header=("file_name", "label")):
    """Write a list CSV: `header` then `rows` (tuples)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if header is not None:
            w.writerow(header)
        w.writerows(rows)


def class_colour(index: int, num_classes: int):
    """A well-separated RGB colour for class `index`."""
    hue = index / max(1, num_classes)
    img = Image.new("HSV", (1, 1), (int(hue * 255), 200, 220)).convert("RGB")
    return np.array(img.getpixel((0, 0)), dtype=np.float64)


def make_lists_dataset(root, set_name: str = "Flower102Pytorch", num_classes: int = 3,
                       per_class: Sequence[int] = (4, 2, 2), size=(40, 32), with_val: bool = True,
                       with_tst: bool = True, labels: Optional[Sequence] = None,
                       seed: int = 0) -> str:
    """Write a tiny dataset for `set_name` under `root`; return `<root>/<folder>`.

    per_class: images per class in (trn, val, tst). size: (width, height) of every image.
    labels: the label written for each class (default 0..num_classes-1).
    """
    info = CATALOG[set_name]
    folder = os.path.join(str(root), info.folder)
    image_dir = os.path.join(folder, info.images)
    labels = list(range(num_classes)) if labels is None else list(labels)
    if len(labels) != num_classes:
        raise ValueError("need one label per class")
    rng = np.random.default_rng(seed)
    w, h = size
    wanted = {"trn": True, "val": with_val, "tst": with_tst}
    for split, count in zip(SPLITS, per_class):
        rows = []
        for c, label in enumerate(labels):
            sub = f"class_{label}"
            os.makedirs(os.path.join(image_dir, sub), exist_ok=True)
            colour = class_colour(c, num_classes)
            for i in range(count):
                pixels = colour + rng.normal(0, 12, size=(h, w, 3))
                name = f"{sub}/{split}_{i:03d}.jpg"
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    os.path.join(image_dir, name), format="JPEG", quality=90)
                rows.append((name, label))
        if wanted[split]:
            write_list(os.path.join(folder, "lists", f"{split}.csv"), rows)
    os.makedirs(os.path.join(folder, "lists"), exist_ok=True)
    return folder
