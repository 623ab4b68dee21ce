"""SyntheticShapes: a small procedural dataset so the whole pipeline runs with no download.

Ten classes, one per shape (circle, ring, triangle, square, pentagon, hexagon, star, cross,
crescent, heart), each drawn with a random colour, size, position and rotation over a textured,
noisy background with a few distractor strokes. Written once, on first use, into
`<datasets_dir>/synthetic_shapes/` in the ordinary lists layout (`images/` + `lists/*.csv`) and
then read by the same code as every other dataset. The split sizes suit Knowledge Evolution's
setting: few training images per class (a network trained from scratch over-fits them) and a
test split of 500 images, so one image moves the test top-1 by 0.2 points.

The folder holds a `VERSION` file. A copy written by another version of this generator (or
without the file) is regenerated and replaced rather than reused, so changing the parameters
below never leaves a stale dataset behind; bump `version` whenever the files would change.

Generation is deterministic: every image is drawn from its own random stream, derived from a fixed
seed and the image's split, class and index (never from --seed), so every machine writes the same
files. The dataset is written into a temporary folder next to the destination and renamed into
place at the end, so an interrupted run never leaves half a dataset behind.
"""
import contextlib
import csv
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from data import DataError
from data.catalog import CATALOG

INFO = CATALOG["SyntheticShapes"]
VERSION_FILE = "VERSION"


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    """HSV in [0, 1] to an RGB float array in [0, 255]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255


class SyntheticShapes:
    """Parameters of the demo dataset (class attributes) and its generator."""
    classes = ("circle", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross",
               "crescent", "heart")
    version = 2             # written to VERSION; bump it whenever the generated files change
    per_class = {"trn": 40, "val": 10, "tst": 50}     # images per class in each split
    size = 64               # images are size x size RGB JPEGs
    seed = 20210619         # fixed: the files never depend on --seed
    jpeg_quality = 90
    hue_jitter = 0.06       # std of the per-image hue around the class hue (None: any hue)
    _supersample = 4        # shapes are rasterised at 4x and box-filtered down (anti-aliasing)

    # ---- drawing -------------------------------------------------------------------------------
    @staticmethod
    def _polygon(n, radius, rotation, cx, cy, inner=None):
        """A regular n-gon (or an n-point star when `inner` is a radius ratio) as PIL points."""
        pts = []
        steps = 2 * n if inner else n
        for k in range(steps):
            r = radius * (inner if inner and k % 2 else 1.0)
            a = rotation + 2 * math.pi * k / steps
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts

    @staticmethod
    def _rotated(points, rotation, cx, cy, radius):
        c, s = math.cos(rotation), math.sin(rotation)
        return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points]

    @classmethod
    def _shape_mask(cls, name, cx, cy, radius, rotation) -> Image.Image:
        """Anti-aliased coverage mask ('L', size x size) of one shape."""
        ss = cls._supersample
        big = cls.size * ss
        cx, cy, radius = cx * ss, cy * ss, radius * ss
        mask = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(mask)

        def disc(x, y, r, fill):
            d.ellipse((x - r, y - r, x + r, y + r), fill=fill)

        if name == "circle":
            disc(cx, cy, radius, 255)
        elif name == "ring":
            disc(cx, cy, radius, 255)
            disc(cx, cy, 0.55 * radius, 0)
        elif name in ("triangle", "square", "pentagon", "hexagon"):
            n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
            d.polygon(cls._polygon(n, radius, rotation, cx, cy), fill=255)
        elif name == "star":
            d.polygon(cls._polygon(5, radius, rotation, cx, cy, inner=0.45), fill=255)
        elif name == "cross":
            w = 0.32
            arm = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                   (-w, w), (-1, w), (-1, -w), (-w, -w)]
            d.polygon(cls._rotated(arm, rotation, cx, cy, radius), fill=255)
        elif name == "crescent":
            disc(cx, cy, radius, 255)
            off = 0.5 * radius
            disc(cx + off * math.cos(rotation), cy + off * math.sin(rotation), 0.85 * radius, 0)
        elif name == "heart":
            ts = np.linspace(0, 2 * math.pi, 72, endpoint=False)
            hx = 16 * np.sin(ts) ** 3 / 17.0
            hy = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 17.0
            d.polygon(cls._rotated(list(zip(hx, hy + 0.1, strict=True)), rotation, cx, cy, radius), fill=255)
        else:
            raise ValueError(f"unknown shape {name!r}")
        return mask.resize((cls.size, cls.size), Image.BOX)

    @classmethod
    def _background(cls, rng) -> np.ndarray:
        """size x size x 3 float image: a muted base colour, a gradient, blotches, pixel noise."""
        s = cls.size
        base = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9))
        yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (xx * math.cos(angle) + yy * math.sin(angle))[..., None]
        img = base + ramp * rng.uniform(-50, 50, size=3)
        coarse = rng.normal(0, 1, size=(6, 6, 3)).astype(np.float32)
        blotch = np.asarray(Image.fromarray(((coarse + 4) * 32).clip(0, 255).astype(np.uint8))
                            .resize((s, s), Image.BICUBIC), dtype=np.float64) / 32 - 4
        img += blotch * rng.uniform(5, 20)
        img += rng.normal(0, rng.uniform(3, 10), size=img.shape)
        return img

    @classmethod
    def _distractors(cls, rng, img: np.ndarray) -> np.ndarray:
        """A few random strokes and dots over the background."""
        canvas = Image.new("L", (cls.size, cls.size), 0)
        d = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0, x1, y1 = rng.uniform(0, cls.size, size=4)
            d.line((x0, y0, x1, y1), fill=255, width=int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, cls.size, size=2)
            r = rng.uniform(1.5, 3.5)
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)
        alpha = np.asarray(canvas, dtype=np.float64)[..., None] / 255 * rng.uniform(0.3, 0.8)
        colour = rng.uniform(0, 255, size=3)
        return img * (1 - alpha) + colour * alpha

    @classmethod
    def render(cls, class_index: int, rng: np.random.Generator) -> Image.Image:
        """One RGB image of class `class_index` drawn from `rng`."""
        s = cls.size
        img = cls._distractors(rng, cls._background(rng))
        radius = rng.uniform(0.24, 0.4) * s
        margin = radius * 0.85
        cx, cy = rng.uniform(margin, s - margin, size=2)
        rotation = rng.uniform(0, 2 * math.pi)
        if cls.hue_jitter is None:
            hue = rng.uniform(0, 1)
        else:   # each class leans towards its own hue: a weak cue that shape must complete
            hue = (class_index / len(cls.classes) + rng.normal(0, cls.hue_jitter)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        shade = rng.normal(0, 10, size=(s, s, 1))          # mottled shape surface
        alpha = np.asarray(cls._shape_mask(cls.classes[class_index], cx, cy, radius, rotation),
                           dtype=np.float64)[..., None] / 255
        img = img * (1 - alpha) + (colour + shade) * alpha
        return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))

    # ---- files ---------------------------------------------------------------------------------
    @classmethod
    def generate(cls, folder: str):
        """Write the whole dataset (images/ and lists/) into the empty or new `folder`."""
        image_dir = os.path.join(folder, INFO.images)
        lists_dir = os.path.join(folder, "lists")
        os.makedirs(lists_dir, exist_ok=True)
        for name in cls.classes:
            os.makedirs(os.path.join(image_dir, name), exist_ok=True)
        for split_index, (split, count) in enumerate(cls.per_class.items()):
            rows = []
            for c, name in enumerate(cls.classes):
                for i in range(count):
                    rng = np.random.default_rng([cls.seed, split_index, c, i])
                    rel = f"{name}/{split}_{i:03d}.jpg"
                    cls.render(c, rng).save(os.path.join(image_dir, rel), format="JPEG",
                                            quality=cls.jpeg_quality)
                    rows.append((rel, name))
            with open(os.path.join(lists_dir, f"{split}.csv"), "w", newline="",
                      encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(("file_name", "label"))
                writer.writerows(rows)

    @classmethod
    def is_current(cls, folder: str) -> bool:
        """Whether `folder` holds a complete copy written by this version of the generator."""
        try:
            with open(os.path.join(folder, VERSION_FILE), encoding="utf-8") as f:
                return f.read().strip() == str(cls.version)
        except OSError:
            return False

    @classmethod
    def ensure(cls, datasets_dir: str) -> str:
        """The dataset folder under `datasets_dir`, (re)generated unless a current copy is there."""
        target = os.path.join(datasets_dir, INFO.folder)
        if cls.is_current(target):
            return target
        try:
            os.makedirs(datasets_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{INFO.folder}.partial-", dir=datasets_dir)
        except OSError as e:
            raise DataError(f"cannot create the SyntheticShapes demo under {datasets_dir}: "
                            f"{e.strerror or e}; pass --data a writable folder") from None
        try:
            os.chmod(tmp, 0o755)            # mkdtemp makes it private; the dataset is not
            cls.generate(tmp)
            with open(os.path.join(tmp, VERSION_FILE), "w", encoding="utf-8") as f:
                f.write(f"{cls.version}\n")
            _replace(tmp, target, is_current=cls.is_current)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        return target


def _replace(new: str, target: str, is_current) -> None:
    """Rename the folder `new` to `target`, moving an outdated `target` out of the way first."""
    if os.path.isdir(target) and not is_current(target):
        stale = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.stale-",
                                 dir=os.path.dirname(target))
        with contextlib.suppress(FileNotFoundError):    # a concurrent writer moved it first
            os.rename(target, os.path.join(stale, "old"))
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(new, target)
    except OSError:
        if not is_current(target):      # not a concurrent writer finishing first
            raise

def ensure_synthetic_shapes(datasets_dir: str) -> str:
    """Generate `<datasets_dir>/synthetic_shapes/` if missing or outdated; return its path."""
    return SyntheticShapes.ensure(datasets_dir)
