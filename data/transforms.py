"""Image loading and the train / eval transforms.

Train: RandomResizedCrop(size), RandomHorizontalFlip, float tensor in [0, 1], ImageNet Normalize.
Eval:  Resize(round(size * 256 / 224)) on the shorter side, CenterCrop(size), tensor, Normalize.

On PIL images (the uncached path) they run as torchvision.transforms.v2, built on first use:
importing torchvision costs a second or more (it imports torch._dynamo), which a run from the
decoded cache (data/cache.py) never pays. The cache reproduces the same steps with the plain
torch and PIL operations below: the crop parameters are drawn with the same numbers from the same
generator as v2.RandomResizedCrop, the flip as v2.RandomHorizontalFlip, and ToDtype + Normalize
run on whole uint8 batches on the training device (`normalize_batch`) with the same operations.
"""
import math

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)              # v2.RandomResizedCrop's defaults
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_PROBABILITY = 0.5

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def eval_resize(image_size: int) -> int:
    """Shorter-side length that evaluation resizes to before the centre crop (256 for 224)."""
    return int(round(image_size * 256 / 224))


def _to_tensor_steps(v2):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]


class _LazyCompose:
    """A v2.Compose built on the first call (so that importing this module needs no torchvision).
    `augment` (data.augment.ImageAugment) adds its steps between ToImage and ToDtype."""

    def __init__(self, image_size: int, augment=None):
        self.image_size = int(image_size)
        self.augment = augment
        self._compose = None

    def __call__(self, image):
        if self._compose is None:
            from torchvision.transforms import v2
            to_image, *to_float = _to_tensor_steps(v2)
            added = self.augment.steps(v2) if self.augment is not None else []
            self._compose = v2.Compose(self.steps(v2) + [to_image] + added + to_float)
        return self._compose(image)

    def with_augment(self, augment) -> "_LazyCompose":
        return type(self)(self.image_size, augment)

    def __getstate__(self):                # workers build their own
        return {"image_size": self.image_size, "augment": self.augment, "_compose": None}

    def __repr__(self):
        extra = f", {self.augment!r}" if self.augment is not None else ""
        return f"{type(self).__name__}({self.image_size}{extra})"


class TrainTransform(_LazyCompose):
    def steps(self, v2):
        return [v2.RandomResizedCrop(self.image_size, scale=CROP_SCALE, ratio=CROP_RATIO,
                                     antialias=True),
                v2.RandomHorizontalFlip(FLIP_PROBABILITY)]


class EvalTransform(_LazyCompose):
    def steps(self, v2):
        return [v2.Resize(eval_resize(self.image_size), antialias=True),
                v2.CenterCrop(self.image_size)]


def train_transform(image_size: int) -> TrainTransform:
    return TrainTransform(image_size)


def eval_transform(image_size: int) -> EvalTransform:
    return EvalTransform(image_size)


# --- the same steps without torchvision (the cached path) -----------------------------------

def crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop of a height x width image, drawn
    from torch's global generator with exactly the draws of v2.RandomResizedCrop."""
    area = height * width
    log_ratio = torch.log(torch.tensor(CROP_RATIO))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(CROP_SCALE[0], CROP_SCALE[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return top, left, h, w
    in_ratio = width / height                   # ten misses: the central crop
    if in_ratio < min(CROP_RATIO):
        w, h = width, int(round(width / min(CROP_RATIO)))
    elif in_ratio > max(CROP_RATIO):
        w, h = int(round(height * max(CROP_RATIO))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_flip() -> bool:
    """Whether v2.RandomHorizontalFlip would flip (its one draw from the global generator)."""
    return bool(torch.rand(1) < FLIP_PROBABILITY)


def resized_crop(image: torch.Tensor, box, size: int) -> torch.Tensor:
    """The uint8 3 x size x size crop `box` of the uint8 3 x H x W `image`, resized with torch's
    antialiased bilinear uint8 kernel, as v2's resized_crop runs it on the CPU."""
    top, left, height, width = box
    crop = image[:, top:top + height, left:left + width]
    if (height, width) == (size, size):
        return crop
    crop = crop.reshape(1, 3, height, width)
    numel, strides = crop.numel(), list(crop.stride())
    if crop.is_contiguous(memory_format=torch.channels_last) and numel != strides[0]:
        strides[0] = numel                      # as v2 does: a batch of one in channels-last
        crop = crop.as_strided((1, 3, height, width), strides)
    return nnf.interpolate(crop, size=[size, size], mode="bilinear", align_corners=False,
                           antialias=True)[0]


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N x 3 x H x W, or 3 x H x W) as v2.ToDtype(float32, scale=True) +
    v2.Normalize(ImageNet) make them, in three elementwise operations on their device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(-1, 1, 1)
    return images.to(torch.float32).mul_(1.0 / 255).sub(mean).div_(std)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """PIL `image` with its shorter side resized to `size`, as v2.Resize(size) does it."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), resample=Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size x size part of PIL `image` (at least size a side), as v2.CenterCrop."""
    width, height = image.size
    if size > width or size > height:
        raise ValueError(f"center_crop: a {width}x{height} image is smaller than {size}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_pixels(image: Image.Image, image_size: int) -> Image.Image:
    """The deterministic steps of EvalTransform on a PIL image (Resize, CenterCrop)."""
    return center_crop(resize_shorter(image, eval_resize(image_size)), image_size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale, palette (with or without transparency), RGBA, LA,
    CMYK, YCbCr and 16-bit grayscale inputs all exist in the usual datasets. Alpha is dropped."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        # PIL clips these to 0..255 when converting; rescale the 16-bit range instead.
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")     # avoids PIL's warning about palette transparency
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open an image file fully (the file is closed on return) and convert it to RGB."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return to_rgb(img)

