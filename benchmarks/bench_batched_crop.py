"""Random resized crop + flip + normalise of one batch: per sample (the cached path's
`resized_crop`, then `normalize_batch`) against one `batched_resized_crops` call (roi_align),
on smooth synthetic images; prints the time per batch and the difference in grey levels.

    python benchmarks/bench_batched_crop.py [--device cuda] [--batch_size 32] [--rounds 5]
"""
import argparse
import time

import torch
import torch.nn.functional as F
from common import median  # also puts the repository on sys.path

from data.batched_crops import batched_resized_crops
from data.transforms import IMAGENET_STD, crop_box, draw_flip, normalize_batch, resized_crop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cached_side", type=int, default=448)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    device, n, size = torch.device(args.device), args.batch_size, args.size
    height, width = args.cached_side, args.cached_side * 4 // 3
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, height // 8, width // 8, generator=generator)
    images = (F.interpolate(coarse, size=(height, width), mode="bilinear") * 255).round()
    images = images.to(torch.uint8).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    boxes = torch.tensor([crop_box(height, width) for _ in range(n)])
    flips = torch.tensor([draw_flip() for _ in range(n)])
    on_device = images.to(device)

    def per_sample():
        crops = [resized_crop(images[i], tuple(boxes[i].tolist()), size) for i in range(n)]
        crops = [c.flip(-1) if f else c for c, f in zip(crops, flips.tolist(), strict=True)]
        return normalize_batch(torch.stack(crops).to(device))

    def batched():
        return batched_resized_crops(on_device, boxes, flips, size)

    def timed(fn):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {"per sample (CPU)": [], "batched": []}
    for _ in range(args.rounds):
        times["per sample (CPU)"].append(timed(per_sample))
        times["batched"].append(timed(batched))
    grey = ((per_sample() - batched()).cpu() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs()
    print(f"# batch {n} of {height}x{width} uint8 -> {size}px on {device}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(" | ".join(f"{k} {median(v) * 1e3:.1f} ms" for k, v in times.items())
          + f" | difference: mean {grey.mean():.2f}, max {grey.max():.1f} grey levels")


if __name__ == "__main__":
    main()
