"""Cost of the regularisation flags on the default (cached) input path and on the device.

Input: the decoded cache of the generated Flowers-102-shaped set (benchmarks/flowers_like.py),
the trainer's own loader in the training process (0 workers; CPU time of this process, so a shared
machine's waiting is not counted: use OMP_NUM_THREADS=1). Contenders:

- `plain`: crops per image, each batch built at once (data.batches), what a run without the flags
  does on the CPU;
- `batched crops`: the uncropped images and their draws (--batched_crops, the CUDA default; the
  crops themselves run on the device and are not timed here);
- `trivialaugment`, `strong`: --augment trivialaugment (and --random_erasing 0.1, the strong
  recipe's per-image steps): each item made on its own, its steps after its crop. These take the
  per-image crops: with them `--batched_crops auto` crops per image (the run's log says so).

Device: ms per batch of mixing (--mixup 0.2 --cutmix 1.0, one of the two per batch) and of the
--ema update of Split_ResNet18, against the batch's training step.

    OMP_NUM_THREADS=1 python benchmarks/bench_augment.py [--batches 20] [--rounds 3]
        [--image_size 224] [--device auto]
"""
import argparse
import itertools
import os
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from common import interleave, machine, median, pick_device, timed
from flowers_like import DEFAULT_ROOT, ensure_dataset

from configs.base_config import Config, resolve
from data import loading
from data.augment import BatchMix
from data.samplers import EpochShuffleSampler, SeededSamples
from models.factory import get_model
from utils.ema import averaged


def input_rates(args) -> dict:
    """Images per CPU-second of each input contender (median over the rounds)."""
    flags = ["--data", args.data, "--set", "Flower102Pytorch", "--image_size",
             str(args.image_size), "-b", str(args.batch_size), "--cache_images"]
    contenders = {"plain": ([], False), "batched crops": ([], True),
                  "trivialaugment": (["--augment", "trivialaugment"], False),
                  "strong": (["--augment", "trivialaugment", "--random_erasing", "0.1"], False)}
    loaders = []
    for extra, crops_later in contenders.values():
        train = loading.get_data(Config().parse(flags + extra)).train
        sampler = EpochShuffleSampler(len(train), seed=0)
        loaders.append((sampler, loading.make_loader(SeededSamples(train), args.batch_size, 0,
                                                     train=True, sampler=sampler,
                                                     crops_later=crops_later)))
    rates = [[] for _ in loaders]
    for order in interleave(len(loaders), args.rounds):
        for k in order:
            sampler, loader = loaders[k]
            sampler.set_epoch(len(rates[k]))
            count, start = 0, time.process_time()
            for _, target in itertools.islice(loader, args.batches):
                count += len(target)
            rates[k].append(count / (time.process_time() - start))
    return {name: median(r) for name, r in zip(contenders, rates, strict=True)}


def device_costs(args, device) -> dict:
    """ms per batch of the training step, the mixing and the EMA update on `device`."""
    cfg = resolve(Config().parse(["--image_size", str(args.image_size), "-b",
                                  str(args.batch_size), "--seed", "0"]), 102, 1, 0)
    model = get_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 102, (args.batch_size,), device=device)
    mix, average = BatchMix(0.2, 1.0, 102), averaged(model, 0.998)

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    costs = {"training step": step, "mixing": lambda: mix(images, labels),
             "ema update": lambda: average.update_parameters(model)}
    for fn in costs.values():
        fn()                                                  # untimed: warm-up
    clock = "wall" if device.type == "cuda" else "cpu"
    return {name: 1e3 * median([timed(fn, device, clock) for _ in range(args.rounds)])
            for name, fn in costs.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_ROOT, help="where the generated set is (written once)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batches", type=int, default=20, help="timed batches of each input round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    ensure_dataset(args.data)
    device = pick_device(args.device)
    rates = input_rates(args)
    print(f"# input: batch {args.batch_size}, {args.image_size}px, {args.batches} batches x "
          f"{args.rounds} rounds, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load {os.getloadavg()[0]:.1f}; {machine(torch.device('cpu'))}")
    print(" | ".join(f"{name} {rate:.0f} img/CPU-s ({1e3 / rate:.2f} ms)"
                     for name, rate in rates.items()), flush=True)
    costs = device_costs(args, device)
    print(f"# device: {machine(device)}, Split_ResNet18, batch {args.batch_size}")
    print(" | ".join(f"{name} {ms:.1f} ms" for name, ms in costs.items()), flush=True)


if __name__ == "__main__":
    main()
