"""Tiny on-disk datasets in the lists layout, for tests that need real files.

    make_lists_dataset(tmp_path, "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2))

writes `<root>/<folder>/<images>/class_<label>/<split>_<i>.jpg` (real JPEGs, one dominant colour
per class plus noise, so a model can learn them) and `<root>/<folder>/lists/{trn,val,tst}.csv`,
and returns the dataset folder. Pass `--data <root> --set <set_name>` to use it.
"""
import csv
import os
import pickle
import shutil
import tarfile
from collections.abc import Sequence

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
                       with_tst: bool = True, labels: Sequence | None = None,
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
    for split, count in zip(SPLITS, per_class, strict=True):
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


# ---- original downloads in miniature ------------------------------------------------------------

def write_jpeg(path, class_index: int, num_classes: int, rng, size=(24, 20)):
    """A small JPEG coloured by its class, with the folders it needs."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = class_colour(class_index, num_classes) + rng.normal(0, 12, size=(size[1], size[0], 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def _items(classes, per_split):
    """{split: [(class index, n-th image of that class in the split)]}, classes interleaved."""
    return {split: [(c, i) for i in range(count) for c in range(len(classes))]
            for split, count in per_split.items() if count}


def _savemat(path, **arrays):
    from scipy.io import savemat
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, arrays)


def _text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _flowers(root, classes, items, rng):
    base = os.path.join(root, "flowers-102")
    labels, ids = [], {}
    for split, rows in items.items():
        for c, _ in rows:
            labels.append(c + 1)
            ids.setdefault(split, []).append(len(labels))
            write_jpeg(os.path.join(base, "jpg", f"image_{len(labels):05d}.jpg"), c, len(classes), rng)
    _savemat(os.path.join(base, "imagelabels.mat"), labels=np.array([labels]))
    _savemat(os.path.join(base, "setid.mat"), **{key: np.array([ids[split]]) for split, key in
                                                 (("train", "trnid"), ("val", "valid"), ("test", "tstid"))})
    return {split: [(f"image_{i:05d}.jpg", c) for i, (c, _) in zip(ids[split], rows, strict=True)]
            for split, rows in items.items()}


def _aircraft(root, classes, items, rng):
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    _text(os.path.join(data, "variants.txt"), classes)
    out, n = {}, 0
    for split, rows in items.items():
        out[split] = []
        for c, _ in rows:
            n += 1
            write_jpeg(os.path.join(data, "images", f"{n:07d}.jpg"), c, len(classes), rng)
            out[split].append((f"{n:07d}.jpg", c))
        _text(os.path.join(data, f"images_variant_{split}.txt"),
              [f"{name[:-4]} {classes[c]}" for name, c in out[split]])
    return out


def _cars(root, classes, items, rng):
    base = os.path.join(root, "stanford_cars")
    _savemat(os.path.join(base, "devkit", "cars_meta.mat"),
             class_names=np.array(classes, dtype=object))
    out = {}
    for split, rows in items.items():
        folder = "cars_train" if split == "train" else "cars_test"
        out[split] = [(f"{folder}/{k + 1:05d}.jpg", c) for k, (c, _) in enumerate(rows)]
        annotations = np.zeros(len(rows), dtype=[("bbox_x1", object), ("class", object),
                                                 ("fname", object)])
        for k, (name, c) in enumerate(out[split]):
            write_jpeg(os.path.join(base, name), c, len(classes), rng)
            annotations[k] = (0, c + 1, os.path.basename(name))
        mat = ("devkit/cars_train_annos.mat" if split == "train"
               else "cars_test_annos_withlabels.mat")
        _savemat(os.path.join(base, mat), annotations=annotations)
    return out


def _by_class_folder(image_dir, classes, items, rng, ext=".jpg"):
    """Images at image_dir/<class>/<split>_<i>.jpg; {split: [(relative path, class)]}."""
    out = {}
    for split, rows in items.items():
        out[split] = [(f"{classes[c]}/{split}_{i}{ext}", c) for c, i in rows]
        for name, c in out[split]:
            write_jpeg(os.path.join(image_dir, name), c, len(classes), rng)
    return out


def _dtd(root, classes, items, rng):
    base = os.path.join(root, "dtd", "dtd")
    out = _by_class_folder(os.path.join(base, "images"), classes, items, rng)
    for split, rows in out.items():
        _text(os.path.join(base, "labels", f"{split}1.txt"), [name for name, _ in rows])
    return out


def _pet(root, classes, items, rng):
    base = os.path.join(root, "oxford-iiit-pet")
    out = {}
    for split, rows in items.items():
        file = "trainval" if split == "train" else "test"
        raw = [classes[c].replace(" ", "_") for c in range(len(classes))]
        out[split] = [(f"{raw[c]}_{split}{i}.jpg", c) for c, i in rows]
        for name, c in out[split]:
            write_jpeg(os.path.join(base, "images", name), c, len(classes), rng)
        _text(os.path.join(base, "annotations", f"{file}.txt"),
              [f"{name[:-4]} {c + 1} 1 1" for name, c in out[split]])
    return out


def _food(root, classes, items, rng):
    import json
    base = os.path.join(root, "food-101")
    out = _by_class_folder(os.path.join(base, "images"), classes, items, rng)
    os.makedirs(os.path.join(base, "meta"))
    for split, rows in out.items():
        meta = {}
        for name, c in rows:
            meta.setdefault(classes[c], []).append(name[:-4])
        with open(os.path.join(base, "meta", f"{split}.json"), "w") as f:
            json.dump(meta, f)
    return out


def _cub(root, classes, items, rng):
    base = os.path.join(root, "CUB_200_2011")
    out = _by_class_folder(os.path.join(base, "images"), classes, items, rng)
    rows = [(name, c, split == "train") for split in ("test", "train") for name, c in out[split]]
    _text(os.path.join(base, "images.txt"), [f"{k} {n}" for k, (n, _, _) in enumerate(rows, 1)])
    _text(os.path.join(base, "image_class_labels.txt"),
          [f"{k} {c + 1}" for k, (_, c, _) in enumerate(rows, 1)])
    _text(os.path.join(base, "train_test_split.txt"),
          [f"{k} {int(t)}" for k, (_, _, t) in enumerate(rows, 1)])
    return out


def _dogs(root, classes, items, rng):
    base = os.path.join(root, "stanford_dogs")
    out = _by_class_folder(os.path.join(base, "Images"), classes, items, rng)
    for split, rows in out.items():
        _savemat(os.path.join(base, f"{split}_list.mat"),
                 file_list=np.array([n for n, _ in rows], dtype=object).reshape(-1, 1),
                 labels=np.array([[c + 1] for _, c in rows]))
    return out


def _mit67(root, classes, items, rng):
    base = os.path.join(root, "mit67")
    out = _by_class_folder(os.path.join(base, "Images"), classes, items, rng)
    for split, rows in out.items():
        _text(os.path.join(base, f"{split.capitalize()}Images.txt"), [n for n, _ in rows])
    return out


# --set: (writer, class names in the dataset's own order, the splits it has)
ORIGINALS = {
    "Flowers102": (_flowers, ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
                   ("train", "val", "test")),
    "Aircraft100": (_aircraft, ["Zlin 242", "A300B4", "707-320"], ("train", "val", "test")),
    "StanfordCars": (_cars, ["Volvo 240 Sedan 1993", "Acura, RL Sedan 2012", "BMW M3 Coupe 2012"],
                     ("train", "test")),
    "DTD": (_dtd, ["banded", "dotted", "zigzagged"], ("train", "val", "test")),
    "OxfordIIITPet": (_pet, ["Abyssinian", "american bulldog", "beagle"], ("train", "test")),
    "Food101": (_food, ["apple_pie", "baklava", "waffles"], ("train", "test")),
    "CUB200": (_cub, ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"],
               ("train", "test")),
    "Dog120": (_dogs, ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"],
               ("train", "test")),
    "MIT67": (_mit67, ["airport_inside", "bakery", "winecellar"], ("train", "test")),
}


def make_original(root, set_name: str, per_split=(3, 2, 2), seed: int = 0):
    """Write `set_name`'s original download in miniature under `root` (3 classes, per_split
    images per class in train / val / test where the dataset has the split).

    Returns {split: [(file, class index in the dataset's own order)]}, file relative to the
    folder that the dataset's image paths are relative to."""
    writer, classes, splits = ORIGINALS[set_name]
    wanted = {s: n for s, n in zip(("train", "val", "test"), per_split, strict=True) if s in splits}
    return writer(str(root), classes, _items(classes, wanted), np.random.default_rng(seed))


# ---- CIFAR, the python version of the archives -----------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def _pack(root, folder, archive):
    """Replace `folder` by the .tar.gz `archive` in `root` that holds it, as downloaded."""
    with tarfile.open(os.path.join(root, archive), "w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(folder))
    shutil.rmtree(folder)


def write_pickle(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def cifar_arrays(n, num_classes, seed):
    """n images whose first pixel encodes their label (R=label, G=index) for checking."""
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    data = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    data[:, 0, 0, 0] = labels
    data[:, 1, 0, 0] = np.arange(n)
    return data.reshape(n, 3072), labels


def write_cifar10(root, per_batch=3, test=4, as_tar=False, seed=0):
    """The python-version CIFAR-10 layout with tiny batches; returns (train labels, test labels)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    train_labels = []
    for b in range(1, 6):
        data, labels = cifar_arrays(per_batch, 10, seed + b)
        data[:, 1 * 1024] = np.arange(len(labels)) + 10 * b    # G of pixel 0: unique id
        write_pickle(os.path.join(folder, f"data_batch_{b}"),
                 {"batch_label": f"training batch {b} of 5", "labels": labels, "data": data,
                  "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}, protocol=2)
        train_labels += labels
    data, test_labels = cifar_arrays(test, 10, seed + 100)
    write_pickle(os.path.join(folder, "test_batch"), {"labels": test_labels, "data": data},
                 protocol=2)
    write_pickle(os.path.join(folder, "batches.meta"),
                 {"label_names": CIFAR10_NAMES, "num_vis": 3072, "num_cases_per_batch": per_batch},
                 protocol=pickle.HIGHEST_PROTOCOL)
    if as_tar:
        _pack(root, folder, "cifar-10-python.tar.gz")
    return train_labels, test_labels


def write_cifar100(root, train=6, test=3, as_tar=False, seed=0):
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    names = [f"class_{i:03d}" for i in range(100)]
    tr, tr_labels = cifar_arrays(train, 100, seed)
    te, te_labels = cifar_arrays(test, 100, seed + 1)
    for name, data, labels in (("train", tr, tr_labels), ("test", te, te_labels)):
        write_pickle(os.path.join(folder, name), {"fine_labels": labels, "data": data,
                                                  "coarse_labels": [0] * len(labels)}, protocol=4)
    write_pickle(os.path.join(folder, "meta"), {"fine_label_names": names,
                                                "coarse_label_names": ["c"] * 20}, protocol=2)
    if as_tar:
        _pack(root, folder, "cifar-100-python.tar.gz")
    return tr_labels, te_labels, names
