"""Predictions of a trained model for image files:

    python -m trainers.predict MODEL IMAGES... [--topk K] [--csv OUT] [--gallery DIR]

MODEL is a slim network exported with --export_slim (`.pt2`) or a training checkpoint
(`epoch_*.state`, `model_best.pth`: its dense model). IMAGES are image files or folders (read
recursively, in sorted order). One row per image: its path, then the top-k class names with their
probabilities; the class names come from the export's metadata (the checkpoint's classes). An
embedding model (--task retrieval) has no classes: with --gallery DIR each image gets its k
nearest gallery images by cosine similarity, without it the command refuses in one line.

The images go through the checks of training (regular files only, the pixel count read from the
header and capped by --max_image_pixels before anything is decoded, a file that does not decode
refused) and the evaluation transform of the model's training (resize, centre crop, normalise).
Bad input is one line on stderr and exit status 2. Paths and flags are checked before torch is
imported.
"""
import argparse
import csv
import os
import sys

from configs.base_config import MAX_IMAGE_PIXELS, OneLineParser, _number
from data import DataError
from errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
BATCH = 32


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainers.predict", allow_abbrev=False,
                      description="Top-k classes (or, for an embedding model, the nearest "
                                  "gallery images) of image files, from an exported .pt2 slim "
                                  "network or a training checkpoint.")
    p.add_argument("model", metavar="MODEL",
                   help="a .pt2 file written by --export_slim, or a training checkpoint "
                        "(epoch_*.state, model_best.pth)")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files, or folders whose images are read recursively")
    p.add_argument("--topk", default=5, type=_number(int, 1, what="an integer >= 1"),
                   metavar="K", help="classes (or neighbours) per image, at most the model's "
                                     "class count (default: 5)")
    p.add_argument("--csv", default=None, metavar="OUT",
                   help="also write the rows to this CSV file (default: none)")
    p.add_argument("--gallery", default=None, metavar="DIR",
                   help="embedding models (--task retrieval): the folder of images to search "
                        "(default: none; an embedding model then refuses)")
    p.add_argument("--max_image_pixels", default=50_000_000, type=_number(
                       int, 1, MAX_IMAGE_PIXELS, what=f"an integer in [1, {MAX_IMAGE_PIXELS}]"),
                   metavar="N", help="refuse images with more pixels than N, read from the "
                                     "header before decoding, as training (default: 50000000)")
    return p


def image_files(paths: list[str], what: str) -> list[str]:
    """The image files that `paths` (files or folders) name, in order; UserError for a path that
    is not there or a folder without images."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path)
                            for name in names if name.lower().endswith(EXTENSIONS))
            if not inside:
                raise UserError(f"{what} {path}: a folder without image files "
                                f"({', '.join(EXTENSIONS[:4])}, ...)")
            found += inside
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UserError(f"{what} {path}: no such file or folder")
    return found


def check_arguments(args):
    """What needs no torch: the model file, the images, the gallery and the CSV's folder."""
    if not os.path.isfile(args.model):
        raise UserError(f"MODEL {args.model}: " + ("is a folder; give a .pt2 file or a checkpoint"
                                                    if os.path.isdir(args.model) else
                                                    "no such file"))
    args.files = image_files(args.images, "IMAGES")
    args.gallery_files = image_files([args.gallery], "--gallery") if args.gallery else None
    if args.csv:
        if os.path.isdir(args.csv):
            raise UserError(f"--csv {args.csv}: is a folder; give a file name such as out.csv")
        folder = os.path.dirname(os.path.abspath(args.csv))
        if not os.path.isdir(folder):
            raise UserError(f"--csv {args.csv}: the folder {folder} does not exist")


class Loaded:
    """A model ready for inference and what its training's evaluation did to an image."""

    def __init__(self, model, classes, image_size, resize, mean, std, task):
        self.model, self.classes, self.image_size = model, classes, image_size
        self.resize, self.mean, self.std, self.task = resize, mean, std, task


def load_model(path: str) -> Loaded:
    from data.transforms import eval_resize
    if path.endswith(".pt2"):
        from utils.export import load_exported
        model = load_exported(path)
        meta = model.metadata
        return Loaded(model, [str(c) for c in meta["class_names"]], meta["image_size"],
                      meta["eval_resize"], meta["mean"], meta["std"],
                      meta.get("task", "classification"))
    from configs.base_config import Config
    from data.formats import normalisation
    from trainers.tools import _checkpoint_config, _trained_model
    from utils.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    run_cfg = _checkpoint_config(Config().parse([]), ckpt, path)
    model = _trained_model(run_cfg, ckpt, path).eval()
    classes = ckpt.get("classes") or list(range(run_cfg.num_cls))
    mean, std = normalisation(run_cfg.set)
    return Loaded(model, [str(c) for c in classes], run_cfg.image_size,
                  eval_resize(run_cfg.image_size), mean, std,
                  getattr(run_cfg, "task", "classification"))


def pixels(path: str, loaded: Loaded):
    """The image at `path` as the model's evaluation input [3, S, S]; UserError when training's
    image checks refuse it."""
    import numpy as np
    import torch

    from data.image_checks import probe_image
    from data.transforms import center_crop, load_rgb, resize_shorter
    problem = probe_image(path)
    if problem:
        raise UserError(f"{path} {problem}")
    image = center_crop(resize_shorter(load_rgb(path), loaded.resize), loaded.image_size)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean = torch.tensor(loaded.mean).view(-1, 1, 1)
    std = torch.tensor(loaded.std).view(-1, 1, 1)
    return (x - mean) / std


def outputs(files: list[str], loaded: Loaded):
    """The model's outputs for `files`, in batches."""
    import torch
    chunks = []
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            batch = torch.stack([pixels(f, loaded) for f in files[start:start + BATCH]])
            chunks.append(loaded.model(batch).float())
    return torch.cat(chunks)


def predict(args) -> list[list]:
    """Rows [path, (name, score) x k] for every image."""
    import torch
    import torch.nn.functional as F

    from data.image_checks import set_pixel_limit
    set_pixel_limit(args.max_image_pixels)
    loaded = load_model(args.model)
    if loaded.task == "retrieval":
        if args.gallery_files is None:
            raise UserError(f"{args.model} is an embedding model (--task retrieval): it has no "
                            f"classes to predict; give --gallery DIR to list each image's "
                            f"nearest gallery images")
        queries = F.normalize(outputs(args.files, loaded), dim=1)
        gallery = F.normalize(outputs(args.gallery_files, loaded), dim=1)
        similarity = queries @ gallery.T
        same = [[os.path.abspath(q) == os.path.abspath(g) for g in args.gallery_files]
                for q in args.files]
        similarity[torch.tensor(same, dtype=torch.bool)] = -2.0    # an image is not its own match
        k = min(args.topk, len(args.gallery_files))
        scores, index = similarity.topk(k, dim=1)
        names = args.gallery_files
    else:
        if args.gallery_files is not None:
            raise UserError(f"--gallery: {args.model} is a classifier; drop --gallery (it is for "
                            f"embedding models)")
        probabilities = outputs(args.files, loaded).softmax(dim=1)
        k = min(args.topk, probabilities.shape[1])
        scores, index = probabilities.topk(k, dim=1)
        names = loaded.classes
    return [[path] + [(names[i], float(s))
                      for i, s in zip(row_index.tolist(), row_scores.tolist(), strict=True)]
            for path, row_index, row_scores in zip(args.files, index, scores, strict=True)]


def write_csv(path: str, rows: list[list], what: str):
    k = max(len(r) - 1 for r in rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image"] + [c for i in range(1, k + 1)
                                     for c in (f"{what}_{i}", f"score_{i}")])
        for row in rows:
            writer.writerow([row[0]] + [v for name, score in row[1:]
                                        for v in (name, f"{score:.6f}")])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        rows = predict(args)
        for row in rows:
            print(row[0] + "\t" + "\t".join(f"{name} {score:.4f}" for name, score in row[1:]))
        if args.csv:
            write_csv(args.csv, rows, "class" if not args.gallery else "neighbour")
            print(f"wrote {args.csv}: {len(rows)} image(s)", file=sys.stderr)
    except (UserError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
