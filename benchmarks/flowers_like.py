"""A generated JPEG set shaped like Oxford Flowers-102, for the input and epoch benchmarks.

102 classes; by default 10 training, 2 validation and 2 test images per class (1,020 training
images, like Flowers-102's trn split), each a JPEG of about 500 x 375 (landscape or portrait, sizes
jittered by up to 10%) with photo-like content: a smooth colour field, a few soft blobs in the
class colour and sensor noise, at quality 90. Written once, in the lists layout the toolkit
reads (`<root>/flower102/jpg/` + `lists/{trn,val,tst}.csv`), so `--data <root> --set
Flower102Pytorch` uses it. Deterministic: the same files on every machine.
"""
import argparse
import csv
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

NUM_CLASSES = 102
PER_CLASS = {"trn": 10, "val": 2, "tst": 2}
BASE_SIZE = (500, 375)
SEED = 102
DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), "ke_bench_flowers_like")


def _image(rng: np.random.Generator, label: int) -> Image.Image:
    w, h = BASE_SIZE
    if rng.random() < 0.3:
        w, h = h, w                                   # some portrait images
    w, h = (int(round(v * rng.uniform(0.9, 1.1))) for v in (w, h))
    field = Image.fromarray(rng.integers(30, 225, size=(4, 5, 3), dtype=np.uint8)).resize(
        (w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    hue = np.array(Image.new("HSV", (1, 1), (int(255 * label / NUM_CLASSES), 190, 230))
                   .convert("RGB").getpixel((0, 0)))
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.2) * min(w, h)
        colour = tuple(int(c) for c in np.clip(hue + rng.normal(0, 20, 3), 0, 255))
        draw.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=colour)
    field = field.filter(ImageFilter.GaussianBlur(1.5))
    pixels = np.asarray(field, dtype=np.float32) + rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def ensure_dataset(root: str = DEFAULT_ROOT, per_class=None) -> str:
    """Write the set under `root` unless it is there already; return `root` (the --data dir)."""
    per_class = dict(PER_CLASS if per_class is None else per_class)
    folder = os.path.join(root, "flower102")
    marker = os.path.join(folder, "lists", "complete")
    tag = ",".join(f"{k}={v}" for k, v in sorted(per_class.items()))
    if os.path.isfile(marker) and Path(marker).read_text() == tag:
        return root
    rng = np.random.default_rng(SEED)
    os.makedirs(os.path.join(folder, "lists"), exist_ok=True)
    for split, count in per_class.items():
        rows = []
        for label in range(NUM_CLASSES):
            sub = os.path.join(folder, "jpg", f"{label:03d}")
            os.makedirs(sub, exist_ok=True)
            for i in range(count):
                name = f"{label:03d}/{split}_{i:02d}.jpg"
                _image(rng, label).save(os.path.join(folder, "jpg", name), "JPEG", quality=90)
                rows.append((name, label))
        with open(os.path.join(folder, "lists", f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("file_name", "label"))
            writer.writerows(rows)
    with open(marker, "w") as f:
        f.write(tag)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT)
    root = ensure_dataset(parser.parse_args().root)
    print(root)
