"""Training-input throughput: our pipeline, with and without --cache_images, vs the reference style.

The data is the generated Flowers-102-shaped JPEG set (benchmarks/flowers_like.py: 1,020 training
images of about 500 x 375). Four loaders over its training split, with the same batch size and
the same number of worker processes:

- reference-style: what the reference implementation does, a PIL decode of every image every epoch
  and torchvision's (v1) RandomResizedCrop / RandomHorizontalFlip / ToTensor / Normalize, in a
  DataLoader with shuffling and workers started each epoch;
- ours: `loading.get_data` + `loading.make_loader` exactly as training uses them (per-sample seeded
  augmentations, persistent workers), decoding every image each epoch (`--cache_budget 0`);
- ours with --cache_images: the same, reading decoded images from shared memory (the one-off
  cache build time is reported separately);
- the cache with the crops batched on the device (--batched_crops on): the loader hands out
  uncropped images, and each batch is cropped, flipped and normalised on the device.

No model runs; on a GPU each batch is copied to it (non_blocking, from pinned memory), as in
training. Epochs are interleaved in one process (order rotated every round) after one untimed
epoch each. Prints one line: images/s of each (median epoch) and the ratios to the reference.
"""
import argparse
import os
import time

import common  # noqa: F401  (puts the repository on sys.path)
from common import interleave, machine, median, pick_device, sync
from flowers_like import DEFAULT_ROOT, ensure_dataset
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from configs.base_config import Config
from data import loading
from data.batched_crops import UncroppedBatch
from data.samplers import EpochShuffleSampler, SeededSamples
from data.transforms import IMAGENET_MEAN, IMAGENET_STD


class ReferenceStyle(Dataset):
    """PIL decode + torchvision v1 transforms per item, as the reference's data loading does."""

    def __init__(self, root, files, targets, image_size):
        self.root, self.files, self.targets = root, files, targets
        self.transform = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with open(os.path.join(self.root, self.files[index]), "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), self.targets[index]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_ROOT, help="where the generated set is (written once)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers of every loader")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each loader")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    p.add_argument("--cache_short_side", type=int, default=None)
    p.add_argument("--start_up_rounds", type=int, default=0,
                   help="also time get_data with --cache_images this many times each, the image "
                        "check's decode kept for the cache and decoded again, "
                        "alternated; then exit")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    ensure_dataset(args.data)

    argv_cfg = ["--data", args.data, "--set", "Flower102Pytorch", "--image_size",
                str(args.image_size), "-b", str(args.batch_size), "-t", str(args.workers)]
    if args.cache_short_side:
        argv_cfg += ["--cache_short_side", str(args.cache_short_side)]
    if args.start_up_rounds:
        return start_up(Config().parse(argv_cfg + ["--cache_images"]), args.start_up_rounds)
    cfg = Config().parse(argv_cfg + ["--cache_budget", "0"])      # decoded per sample
    ours = loading.get_data(cfg).train
    cached_cfg = Config().parse(argv_cfg + ["--cache_images"])
    start = time.perf_counter()
    cached = loading.get_data(cached_cfg).train
    build = time.perf_counter() - start   # includes get_data's own checks, as a run would

    reference = ReferenceStyle(ours.root, ours.files, ours.targets, args.image_size)
    ref_loader = DataLoader(reference, batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, pin_memory=device.type == "cuda",
                            drop_last=True)
    samplers = [EpochShuffleSampler(len(ours), seed=0), EpochShuffleSampler(len(cached), seed=0),
                EpochShuffleSampler(len(cached), seed=0)]
    loaders = [ref_loader,
               loading.make_loader(SeededSamples(ours), cfg.batch_size, cfg.num_threads,
                                   train=True, sampler=samplers[0]),
               loading.make_loader(SeededSamples(cached), cfg.batch_size, cfg.num_threads,
                                   train=True, sampler=samplers[1]),
               loading.make_loader(SeededSamples(cached), cfg.batch_size, cfg.num_threads,
                                   train=True, sampler=samplers[2], crops_later=True)]
    epoch_of = [0] * len(loaders)

    def epoch(k) -> float:
        if k > 0:
            samplers[k - 1].set_epoch(epoch_of[k])
        epoch_of[k] += 1
        count = 0
        sync(device)
        start = time.perf_counter()
        for images, target in loaders[k]:
            if isinstance(images, UncroppedBatch):      # cropped where training would crop it
                images = images.on_device(device)
            elif device.type == "cuda":
                images = images.to(device, non_blocking=True)
            if device.type == "cuda":
                target = target.to(device, non_blocking=True)
            count += len(target)
        sync(device)
        return count / (time.perf_counter() - start)

    for k in range(len(loaders)):
        epoch(k)                                    # untimed: starts workers, warms caches
    rates = [[] for _ in loaders]
    for order in interleave(len(loaders), args.rounds):
        for k in order:
            rates[k].append(epoch(k))
    ref, plain, fast, batched = (median(r) for r in rates)
    # ratios per round (epochs run back to back), then their median
    plain_x, fast_x, batched_x = (median([b / a for a, b in zip(rates[0], rates[k], strict=True)])
                                  for k in (1, 2, 3))
    print(f"# input: {device.type}, {args.workers} workers, batch {args.batch_size}, "
          f"{args.image_size}px, {len(ours)} images, {args.rounds} rounds; {machine(device)}")
    print(f"input pipeline: reference-style {ref:.0f} img/s | ours {plain:.0f} img/s "
          f"({plain_x:.2f}x) | ours --cache_images {fast:.0f} img/s ({fast_x:.2f}x; "
          f"cache built once in {build:.1f} s) | the cache, crops batched on {device.type} "
          f"{batched:.0f} img/s ({batched_x:.2f}x)", flush=True)


def start_up(cfg, rounds: int):
    """CPU (all threads) and wall time of get_data with the cache, the check's decode kept
    (`kept`) and decoded again (`again`), alternated; the medians and their ratios."""
    import data.cache
    times = {True: [], False: []}
    for k in range(2 * rounds + 2):
        keep = k % 2 == (k // 2) % 2            # kept, again, again, kept, ...
        data.cache.KEEP_CHECKED_DECODES = keep
        cpu, wall = time.process_time(), time.perf_counter()
        splits = loading.get_data(cfg)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        del splits
        if k >= 2:                              # one untimed round each
            times[keep].append((cpu, wall))
    data.cache.KEEP_CHECKED_DECODES = True
    kept, again = ([median([t[i] for t in times[keep]]) for i in (0, 1)] for keep in (True, False))
    print(f"# start-up: get_data --cache_images, {cfg.image_size}px, {rounds} rounds each; "
          f"{machine(pick_device('cpu'))}")
    print(f"get_data with the cache: decoded again {again[0]:.2f} s CPU / {again[1]:.2f} s wall | "
          f"decode kept {kept[0]:.2f} s CPU / {kept[1]:.2f} s wall | {again[0] / kept[0]:.2f}x CPU, "
          f"{again[1] / kept[1]:.2f}x wall", flush=True)


if __name__ == "__main__":
    main()
