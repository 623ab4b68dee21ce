"""Real handwritten digits in the Flowers-102 lists layout, for whole-run benchmarks.

scikit-learn's bundled digits (1,797 greyscale 8 x 8 images of 10 classes, no download) upscaled
to 32 x 32 RGB PNGs, written once under `<root>/flower102/jpg/` with `lists/{trn,val,tst}.csv`,
so `--data <root> --set Flower102Pytorch` trains on them: 1,020 training images (as many as
Flowers-102's trn split), 200 validation and 577 test images, in the bundled order.
"""
import argparse
import csv
import os
import tempfile

import numpy as np
from PIL import Image

SPLITS = (("trn", 1020), ("val", 200), ("tst", 577))
SIZE = 32
DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), "ke_bench_digits")


def ensure_dataset(root: str = DEFAULT_ROOT) -> str:
    """Write the set under `root` unless it is there already; return `root` (the --data dir)."""
    from sklearn.datasets import load_digits
    folder = os.path.join(root, "flower102")
    marker = os.path.join(folder, "lists", "complete")
    if os.path.isfile(marker):
        return root
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    os.makedirs(os.path.join(folder, "lists"), exist_ok=True)
    os.makedirs(os.path.join(folder, "jpg"), exist_ok=True)
    first = 0
    for split, count in SPLITS:
        rows = []
        for index in range(first, first + count):
            name = f"{split}_{index:04d}.png"
            image = Image.fromarray(pixels[index]).resize((SIZE, SIZE), Image.BILINEAR)
            image.convert("RGB").save(os.path.join(folder, "jpg", name))
            rows.append((name, int(digits.target[index])))
        first += count
        with open(os.path.join(folder, "lists", f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("file_name", "label"))
            writer.writerows(rows)
    with open(marker, "w") as f:
        f.write("digits")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT)
    print(ensure_dataset(parser.parse_args().root))
