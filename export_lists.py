"""Write any dataset the toolkit reads in the lists layout, so its splits can be inspected,
edited and trained with `--set CSVList --data OUT`:

    python export_lists.py --set Flowers102 --out DIR [--data ROOT] [--copy]

DIR (new or empty) receives lists/trn.csv, val.csv (only when the source has a validation
split, so the same fallback applies when reading it back), tst.csv (when there is a test split)
with the columns file_name,label (label: the class name or number the source uses), and
images/: a link to the source's image folder, or with --copy a copy of the listed images.
CIFAR images live in memory, so they are always written, as PNG files. The source is read and
checked exactly as training reads it (--skip_bad_images and --allow_outside_paths apply).
Reading the export back numbers the classes by the sorted labels, which can differ from the
source's own class order (the images and labels are the same).
"""
import csv
import logging
import os
import shutil
import sys

from data import DataError
from errors import UserError

log = logging.getLogger(__name__)

SPLIT_FILES = (("train", "trn.csv"), ("val", "val.csv"), ("test", "tst.csv"))


def _parser():
    from configs.base_config import OneLineParser
    from data.catalog import CATALOG
    p = OneLineParser(prog="python export_lists.py",
                      description="Write a dataset in the lists layout (images/ + lists/*.csv).")
    p.add_argument("--set", required=True, choices=sorted(CATALOG), help="dataset to export")
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty folder to write")
    p.add_argument("--data", metavar="DIR",
                   help="as for train_KE_cls.py (default: constants.datasets_dir)")
    p.add_argument("--copy", action="store_true",
                   help="copy the images into DIR/images/ instead of linking the source folder")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="leave out images that are missing or unreadable (logged)")
    p.add_argument("--allow_outside_paths", action="store_true",
                   help="accept list rows outside the image folder (lists layout sources)")
    return p


def _splits(dataset_splits) -> dict:
    """{split: dataset} of the splits to write (the validation split only when it is its own)."""
    found = {"train": dataset_splits.train, "test": dataset_splits.test}
    if not dataset_splits.val_is_test:
        found["val"] = dataset_splits.val
    return {split: found[split] for split, _ in SPLIT_FILES if found.get(split) is not None}


def _prepare_out(out: str):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists and is not an empty folder; name a new "
                        f"folder (nothing is overwritten)")
    os.makedirs(os.path.join(out, "lists"), exist_ok=True)


def _image_root(datasets: dict) -> str:
    """The one image folder that the file names of every split are relative to."""
    roots = sorted({os.path.abspath(d.root) for d in datasets.values()})
    if len(roots) != 1:
        raise UserError(f"the splits read their images from different folders "
                        f"({', '.join(roots)}); export them one by one")
    return roots[0]


def _file_rows(datasets: dict, root: str, out: str, copy: bool) -> dict:
    """{split: [(file_name, target)]} for datasets of image files, with out/images made."""
    images = os.path.abspath(os.path.join(out, "images"))
    rows = {split: list(zip(d.files, d.targets, strict=True)) for split, d in datasets.items()}
    if not copy:
        os.symlink(root, images, target_is_directory=True)
        return rows
    for split, d in datasets.items():
        for i, (name, _) in enumerate(rows[split]):
            target = os.path.normpath(os.path.join(images, name))
            if not target.startswith(images + os.sep):
                raise UserError(f"--copy: {name} lies outside the image folder; export without "
                                f"--copy (the lists then keep that path)")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(d.path(i), target)
    return rows


def _memory_rows(datasets: dict, out: str) -> dict:
    """{split: [(file_name, target)]} for in-memory images (CIFAR), written as PNG files."""
    from PIL import Image
    rows = {}
    for split, d in datasets.items():
        os.makedirs(os.path.join(out, "images", split))
        rows[split] = []
        for i, (pixels, target) in enumerate(zip(d.data, d.targets, strict=True)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(pixels).save(os.path.join(out, "images", name))
            rows[split].append((name, int(target)))
    return rows


def export(splits, out: str, copy: bool = False) -> dict:
    """Write `splits` (a DataSplits) to `out` in the lists layout; {csv path: rows}."""
    datasets = _splits(splits)
    in_memory = not all(hasattr(d, "files") for d in datasets.values())     # CIFAR
    root = None if in_memory else _image_root(datasets)
    _prepare_out(out)
    rows = _memory_rows(datasets, out) if in_memory else _file_rows(datasets, root, out, copy)
    written = {}
    for split, name in SPLIT_FILES:
        if split not in rows:
            continue
        path = os.path.join(out, "lists", name)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("file_name", "label"))
            writer.writerows((file, splits.classes[t]) for file, t in rows[split])
        written[path] = len(rows[split])
    return written


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from configs.base_config import Config
    from data.loading import get_data
    flags = ["--set", args.set] + (["--data", args.data] if args.data else [])
    flags += [f"--{name}" for name in ("skip_bad_images", "allow_outside_paths") if getattr(args, name)]
    try:
        written = export(get_data(Config().parse(flags)), args.out, copy=args.copy)
    except (UserError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, count in written.items():
        print(f"wrote {path} ({count} rows)")
    print(f"train on it with: python train_KE_cls.py --set CSVList --data {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
