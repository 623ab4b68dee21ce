"""Random resized crops of a whole training batch on the training device (--batched_crops).

On this path the loader does no pixel work. A cached training item (data.cache.CachedImages) is
its stored uint8 image together with the crop box and flip drawn for it: the same draws, from
the same per-sample seed, as the per-sample path, so resume stays exact and the number of
workers changes nothing. `collate_uncropped` pads a batch's images to one size (a cached
dataset builds the same batch at once, in one buffer: `build_uncropped`), and
`UncroppedBatch.on_device` crops, resizes, flips and normalises the batch on the device in a few
tensor operations (`batched_resized_crops`).

On a CPU the per-sample path is faster: torch's antialiased uint8 resize runs image by image in
the loader's workers (benchmarks/bench_batched_crop.py). That is why `--batched_crops auto` takes
this path on CUDA only.
"""
import math
from typing import NamedTuple

import torch

from data.batches import BuiltBatch, batch_buffers
from data.transforms import IMAGENET_MEAN, IMAGENET_STD


class UncroppedBatch(NamedTuple):
    """A training batch before its crops: what `collate_uncropped` makes of the items."""
    images: torch.Tensor    # N x 3 x H x W uint8, each image at the top left, edges repeated
    boxes: torch.Tensor     # N x 4 int64: top, left, height, width of each crop
    flips: torch.Tensor     # N bool: whether each crop is flipped left to right
    size: int               # side of the square crops

    def on_device(self, device, layout=torch.contiguous_format) -> torch.Tensor:
        """The normalised float32 N x 3 x size x size batch, computed on `device`."""
        images = self.images.to(device, non_blocking=True)
        crops = batched_resized_crops(images, self.boxes, self.flips, self.size)
        return crops.contiguous(memory_format=layout)


def collate_uncropped(items: list[tuple[tuple, int]]) -> tuple[UncroppedBatch, torch.Tensor]:
    """Collate ((image, box, flip, size), target) items into (UncroppedBatch, targets).

    Each image is copied to the top left of the batch's H x W; its last column and row are
    repeated over the rest, so a bilinear sample at a crop's right or bottom edge reads the
    image's own border, as it would in the unpadded image, and never a fill value.
    """
    images = [image for (image, _, _, _), _ in items]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    # channels-last like the cache's views: each copy is a run of whole pixels
    batch = torch.empty(len(images), height, width, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    for out, image in zip(batch, images, strict=True):
        pad_into(out, image)
    boxes = torch.tensor([box for (_, box, _, _), _ in items], dtype=torch.int64)
    flips = torch.tensor([flip for (_, _, flip, _), _ in items], dtype=torch.bool)
    sizes = {size for (_, _, _, size), _ in items}
    if len(sizes) != 1:
        raise ValueError(f"collate_uncropped: items of one batch ask for crop sizes {sorted(sizes)}")
    targets = torch.tensor([target for _, target in items], dtype=torch.int64)
    return UncroppedBatch(batch, boxes, flips, sizes.pop()), targets


def pad_into(out: torch.Tensor, image: torch.Tensor):
    """Copy the 3 x h x w `image` to the top left of the 3 x H x W `out`, its last column and
    row repeated over the rest (see `collate_uncropped`)."""
    h, w = image.shape[1:]
    out[:, :h, :w] = image
    out[:, :h, w:] = image[:, :, w - 1:w]
    out[:, h:, :] = out[:, h - 1:h, :]


def build_uncropped(images: list[torch.Tensor], boxes: list[tuple], flips: list[bool],
                    size: int, targets: list[int]) -> BuiltBatch:
    """What `collate_uncropped` makes of these items, built at once into one buffer (data.batches):
    (UncroppedBatch, targets)."""
    n = len(images)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    out_targets, out_boxes, out_flips, pixels = batch_buffers(
        ((n,), torch.int64), ((n, 4), torch.int64), ((n,), torch.bool),
        ((n, height, width, 3), torch.uint8))
    for out, image in zip(pixels.permute(0, 3, 1, 2), images, strict=True):   # channels-last, as collate's
        pad_into(out, image)
    out_boxes.copy_(torch.tensor(boxes, dtype=torch.int64).view(n, 4))
    out_flips.copy_(torch.tensor(flips, dtype=torch.bool))
    out_targets.copy_(torch.tensor(targets, dtype=torch.int64))
    return BuiltBatch((out_targets, out_boxes, out_flips, pixels), _uncropped_batch, size)


def _uncropped_batch(tensors, size: int) -> tuple[UncroppedBatch, torch.Tensor]:
    targets, boxes, flips, pixels = tensors
    return UncroppedBatch(pixels.permute(0, 3, 1, 2), boxes, flips, size), targets


def batched_resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                          size: int) -> torch.Tensor:
    """Random resized crops of a batch in one call, on the batch's device.

    `images`: N x 3 x H x W uint8 (one size for the batch: see `collate_uncropped`); `boxes`:
    N x 4 (top, left, height, width) as data.transforms.crop_box draws them; `flips`: N booleans
    as data.transforms.draw_flip draws them. Returns the normalised float32 N x 3 x size x size
    batch. torchvision.ops.roi_align averages a grid of bilinear samples per output pixel (a box
    filter, `sampling_ratio` samples a side, enough to cover every source pixel), where the
    per-sample path's antialiased resize weights them with a triangle filter: the two agree
    exactly on an unscaled crop and within the tolerance stated in
    tests/test_batched_augment.py when scaling.
    """
    from torchvision.ops import roi_align
    device = images.device
    # from the boxes where they are (the CPU, from the loader): no wait for the device
    samples = max(1, math.ceil(float(boxes[:, 2:].max()) / size))
    top, left, height, width = boxes.to(device, torch.float32, non_blocking=True).unbind(1)
    rois = torch.stack([torch.arange(len(boxes), device=device, dtype=torch.float32),
                        left, top, left + width, top + height], dim=1)
    crops = roi_align(images.float(), rois, output_size=size, spatial_scale=1.0,
                      sampling_ratio=samples, aligned=True)
    crops = torch.where(flips.to(device, non_blocking=True).view(-1, 1, 1, 1), crops.flip(-1), crops)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(-1, 1, 1)
    return crops.mul_(1.0 / 255).sub_(mean).div_(std)
