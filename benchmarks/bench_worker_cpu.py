"""CPU cost of the cached training input, in the training process against through loader workers.

The decoded cache of the generated Flowers-102-shaped set (benchmarks/flowers_like.py, 1,020
training images), the trainer's own loader (`loading.make_loader`, seeded samples), no model.
Each epoch's CPU time is that of the training process (`time.process_time`) plus that of its
loader workers (their utime + stime in /proc): CPU time counts the work done rather than the
time spent waiting for a core, so it can be measured on a shared machine (use
OMP_NUM_THREADS=1: idle OpenMP threads spin, and would be counted). Loaders:

- `in-process`: crops per image, 0 workers;
- `1 worker`: the same through one worker, each batch built at once into one of the worker's
  reused shared buffers and copied out by the training process (data.batches);
- `1 worker, per sample`: the same with the batch fetched item by item and collated (the way
  before data.batches; `--no_per_sample` leaves it out);
- `batched crops, 1 worker`: the uncropped images and their draws (--batched_crops), built
  the same way (the crops themselves are left to the device, not done here).

Epochs interleaved (order rotated every round) after one untimed epoch each; prints the median
images per CPU-second (and ms of CPU an image: all, and that of the worker alone) of each, and
the ratio of 1 worker to in-process.

    OMP_NUM_THREADS=1 python benchmarks/bench_worker_cpu.py [--rounds 3] [--image_size 224]
"""
import argparse
import os
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from common import interleave, machine, median
from flowers_like import DEFAULT_ROOT, ensure_dataset

from configs.base_config import Config
from data import loading
from data.samplers import EpochShuffleSampler, SeededSamples

TICKS = os.sysconf("SC_CLK_TCK")


class PerSample(SeededSamples):
    """SeededSamples without __getitems__: the loader fetches items one by one and collates."""
    __getitems__ = None


def worker_cpu(loader) -> float:
    """CPU seconds (user + system) of `loader`'s live worker processes so far."""
    iterator = getattr(loader, "_iterator", None)
    total = 0.0
    for worker in getattr(iterator, "_workers", []) or []:
        with open(f"/proc/{worker.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_ROOT, help="where the generated set is (written once)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each loader")
    p.add_argument("--no_per_sample", action="store_true", help="leave out the per-sample loader")
    args = p.parse_args(argv)
    ensure_dataset(args.data)
    cfg = Config().parse(["--data", args.data, "--set", "Flower102Pytorch", "--image_size",
                          str(args.image_size), "-b", str(args.batch_size), "--cache_images"])
    cached = loading.get_data(cfg).train
    contenders = {"in-process": (SeededSamples, 0, False),
                  "1 worker": (SeededSamples, 1, False),
                  "1 worker, per sample": (PerSample, 1, False),
                  "batched crops, 1 worker": (SeededSamples, 1, True)}
    if args.no_per_sample:
        del contenders["1 worker, per sample"]
    names = list(contenders)
    samplers, loaders = [], []
    for name in names:
        wrap, workers, crops_later = contenders[name]
        sampler = EpochShuffleSampler(len(cached), seed=0)
        samplers.append(sampler)
        loaders.append(loading.make_loader(wrap(cached), args.batch_size, workers, train=True,
                                           sampler=sampler, crops_later=crops_later))
    epoch_of = [0] * len(loaders)

    in_workers = [[] for _ in loaders]       # ms of worker CPU an image

    def epoch(k) -> float:
        samplers[k].set_epoch(epoch_of[k])
        epoch_of[k] += 1
        count = 0
        main, workers = time.process_time(), worker_cpu(loaders[k])
        for _, target in loaders[k]:       # persistent workers: started in the untimed epoch
            count += len(target)
        main, workers = time.process_time() - main, worker_cpu(loaders[k]) - workers
        in_workers[k].append(1e3 * workers / count)
        return count / (main + workers)

    for k in range(len(loaders)):
        epoch(k)                                    # untimed: starts the workers
    rates = [[] for _ in loaders]
    for order in interleave(len(loaders), args.rounds):
        for k in order:
            rates[k].append(epoch(k))
    print(f"# worker CPU: batch {args.batch_size}, {args.image_size}px, {len(cached)} images, "
          f"{args.rounds} rounds, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load {os.getloadavg()[0]:.1f}; {machine(torch.device('cpu'))}")
    medians = [median(r) for r in rates]
    ratio = median([b / a for a, b in zip(rates[0], rates[1], strict=True)])
    print(" | ".join(f"{name} {rate:.0f} img/CPU-s ({1e3 / rate:.2f} ms"
                     + (f", {median(in_workers[k]):.2f} in the worker)" if contenders[name][1]
                        else ")")
                     for k, (name, rate) in enumerate(zip(names, medians, strict=True)))
          + f" | 1 worker / in-process {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
