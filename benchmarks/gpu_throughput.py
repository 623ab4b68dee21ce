"""Training images per second of one run, for a fixed time: what benchmarks/gpu_check.sh starts
1, 2 and 4 of at once on one GPU (the speed of several runs sharing it), and what it starts under
torchrun with one process to count the syncs of a training step.

The trainer's own pieces on the generated Flowers-102-shaped set (benchmarks/flowers_like.py):
the decoded cache, the training loader (`loading.make_loader`, seeded samples, crops batched on
the device unless --per_image_crops), `trainers.engine.train_one_epoch` with the configured
optimizer. After one untimed epoch, epochs run until --seconds have passed (the last one ends the
timing). With --count_syncs, one more epoch runs under `torch.cuda.set_sync_debug_mode("warn")`:
every operation that makes the host wait for the GPU warns once, and the warnings are counted.

Prints one line: `throughput: <img/s> img/s ...` (and `syncs/step`).

    python benchmarks/gpu_throughput.py [--seconds 30] [--amp bf16] [--workers 4] [--count_syncs]
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_throughput.py --count_syncs
"""
import argparse
import os
import time
import warnings

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn as nn
from common import machine, pick_device, sync
from flowers_like import DEFAULT_ROOT, ensure_dataset

from configs.base_config import Config, resolve
from data import loading
from data.samplers import EpochShuffleSampler, SeededSamples
from models.factory import get_model
from trainers.engine import train_one_epoch
from utils import distributed
from utils.optim import build_optimizer
from utils.performance import Precision, compiled, configure_backends, prepare_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_ROOT)
    p.add_argument("-a", "--arch", default="Split_ResNet18")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--amp", default="bf16", choices=("none", "bf16", "fp16"))
    p.add_argument("--seconds", type=float, default=30.0, help="timed training, at least one epoch")
    p.add_argument("--per_image_crops", action="store_true",
                   help="crops per image in the loader workers instead of batched on the device")
    p.add_argument("--count_syncs", action="store_true")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    world = distributed.init_world()          # under torchrun with 1 process: a world of one
    device = pick_device(args.device)
    ensure_dataset(args.data)
    configure_backends(device)
    flags = ["--data", args.data, "--set", "Flower102Pytorch", "-a", args.arch, "--image_size",
             str(args.image_size), "-b", str(args.batch_size), "-t", str(args.workers), "--seed",
             "0", "--epochs", "10", "--cache_images", "--amp", args.amp, "--channels_last"]
    given = Config().parse(flags)
    splits = loading.get_data(given)
    cfg = resolve(given, splits.num_classes, world_size=1, seed=0)
    sampler = EpochShuffleSampler(len(splits.train), seed=0)
    loader = loading.make_loader(SeededSamples(splits.train), cfg.batch_size, cfg.num_threads,
                                 train=True, sampler=sampler,
                                 crops_later=not args.per_image_crops and device.type == "cuda")
    torch.manual_seed(0)
    model = prepare_model(get_model(cfg), cfg, device)
    forward = compiled(model, cfg)
    optimizer = build_optimizer(model, cfg)
    precision = Precision(cfg.amp, device)
    criterion = nn.CrossEntropyLoss()
    epochs = [0]

    def epoch() -> int:
        sampler.set_epoch(epochs[0])
        epochs[0] += 1
        stats = train_one_epoch(forward, loader, criterion, optimizer, device,
                                splits.num_classes, should_stop=lambda: False,
                                precision=precision, channels_last=cfg.channels_last)
        return stats["count"]

    epoch()                                  # untimed: workers, kernels, autotuning
    sync(device)
    images, start = 0, time.perf_counter()
    while True:
        images += epoch()
        if time.perf_counter() - start >= args.seconds:
            break
    sync(device)
    elapsed = time.perf_counter() - start
    line = (f"throughput: {images / elapsed:.0f} img/s ({args.arch}, {args.image_size}px, batch "
            f"{args.batch_size}, {args.amp}, {args.workers} workers, crops "
            f"{'per image' if args.per_image_crops or device.type != 'cuda' else 'batched'}, "
            f"{images} images in {elapsed:.1f} s, pid {os.getpid()}; {machine(device)})")
    if args.count_syncs:
        steps = len(loader)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                epoch()
                sync(device)
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        world_size = os.environ.get("WORLD_SIZE", "1")
        line += (f" | syncs/step {len(syncs) / steps:.3f} ({len(syncs)} in {steps} steps, "
                 f"world of {world_size}{', under torchrun' if 'LOCAL_RANK' in os.environ else ''})")
    print(line, flush=True)
    distributed.shutdown()
    del world


if __name__ == "__main__":
    main()
