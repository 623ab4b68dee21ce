"""Image loading and the train / eval transforms (torchvision.transforms.v2).

Train: RandomResizedCrop(size), RandomHorizontalFlip, float tensor in [0, 1], ImageNet Normalize.
Eval:  Resize(round(size * 256 / 224)) on the shorter side, CenterCrop(size), tensor, Normalize.
"""
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def eval_resize(image_size: int) -> int:
    """Shorter-side length that evaluation resizes to before the centre crop (256 for 224)."""
    return int(round(image_size * 256 / 224))


def _to_tensor_steps():
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]


def train_transform(image_size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                       v2.RandomHorizontalFlip()] + _to_tensor_steps())


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(eval_resize(image_size), antialias=True),
                       v2.CenterCrop(image_size)] + _to_tensor_steps())


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
