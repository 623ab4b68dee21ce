"""One Knowledge Evolution epoch end to end: fp32 vs --amp bf16 --channels_last.

On the generated Flowers-102-shaped set (benchmarks/flowers_like.py), an epoch is what the trainer
does per epoch: the training loader (`loading.get_data` + `loading.make_loader` with the resumable
seeded sampler), `trainers.engine.train_one_epoch` over the whole training split (1,020 images)
with the configured optimizer, then `evaluate` on the validation split. Both settings start from
the same initial weights and read the same data; only --amp / --channels_last differ. Epochs are
interleaved (order rotated every round) after a short untimed warm-up of each.

Prints one line: seconds per epoch of each (median), the speed-up, and the last training loss of
each (they should be close: same data, same initial weights).
"""
import argparse
import copy
import functools

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn as nn
from common import interleave, machine, median, pick_device, timed
from flowers_like import DEFAULT_ROOT, ensure_dataset
from torch.utils.data import Subset

from configs.base_config import Config, resolve
from data import loading
from data.samplers import EpochShuffleSampler, SeededSamples
from models.factory import get_model
from trainers.engine import evaluate, train_one_epoch
from utils.optim import build_optimizer
from utils.performance import Precision, compiled, configure_backends, prepare_model

FAST = ["--amp", "bf16", "--channels_last"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_ROOT, help="where the generated set is (written once)")
    p.add_argument("-a", "--arch", default="Split_ResNet18")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=2, help="timed epochs of each setting")
    p.add_argument("--images", type=int, default=None,
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--cache_images", action="store_true", help="for both settings")
    p.add_argument("--batched_crops", action="store_true",
                   help="with --cache_images: crop the training batches on the device, for both "
                        "settings (data/batched_crops.py)")
    p.add_argument("--fast", default=" ".join(FAST),
                   help=f"flags of the second setting (default: {' '.join(FAST)})")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    ensure_dataset(args.data)
    configure_backends(device)

    base = ["--data", args.data, "--set", "Flower102Pytorch", "-a", args.arch,
            "--image_size", str(args.image_size), "-b", str(args.batch_size),
            "-t", str(args.workers), "--seed", "0", "--epochs", "10"]
    if args.cache_images:
        base.append("--cache_images")
    given = [Config().parse(base), Config().parse(base + args.fast.split())]
    splits = loading.get_data(given[0])
    train = splits.train if args.images is None else Subset(splits.train, range(args.images))
    configs = [resolve(cfg, splits.num_classes, world_size=1, seed=0) for cfg in given]
    sampler = EpochShuffleSampler(len(train), seed=0)
    batch, workers = configs[0].batch_size, configs[0].num_threads
    train_loader = loading.make_loader(SeededSamples(train), batch, workers, train=True,
                                       sampler=sampler, crops_later=args.batched_crops)
    val_loader = loading.make_loader(splits.val, batch, workers, train=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=configs[0].label_smoothing)

    torch.manual_seed(0)
    initial = get_model(configs[0])
    runs = []
    for cfg in configs:
        model = prepare_model(copy.deepcopy(initial), cfg, device)
        runs.append({"cfg": cfg, "model": model, "forward": compiled(model, cfg),
                     "optimizer": build_optimizer(model, cfg),
                     "precision": Precision(cfg.amp, device), "epoch": 0, "loss": None})

    def epoch(k, batches=None):
        run = runs[k]
        sampler.set_epoch(run["epoch"])
        run["epoch"] += 1
        done = [0]

        def stop():
            done[0] += 1
            return batches is not None and done[0] >= batches

        stats = train_one_epoch(run["forward"], train_loader, criterion, run["optimizer"], device,
                                splits.num_classes, should_stop=stop, precision=run["precision"],
                                channels_last=run["cfg"].channels_last)
        run["loss"] = stats["loss"]
        if batches is None:
            evaluate(run["forward"], val_loader, criterion, device, splits.num_classes,
                     precision=run["precision"], channels_last=run["cfg"].channels_last)

    for k in range(2):
        timed(functools.partial(epoch, k, batches=3), device)   # warm-up: workers, kernels
    seconds = [[], []]
    ratios = []
    for order in interleave(2, args.rounds):
        this_round = [None, None]
        for k in order:
            this_round[k] = timed(functools.partial(epoch, k), device)
            seconds[k].append(this_round[k])
        ratios.append(this_round[0] / this_round[1])
    slow, fast = median(seconds[0]), median(seconds[1])
    print(f"# epoch: {args.arch}, {device.type}, {args.image_size}px, batch {args.batch_size}, "
          f"{args.workers} workers, {len(train)} train + {len(splits.val)} val images"
          f"{', --cache_images' if args.cache_images else ''}"
          f"{', crops batched on the device' if args.batched_crops else ''}, {args.rounds} rounds; "
          f"{machine(device)}")
    print(f"KE epoch: fp32 {slow:.1f} s | {args.fast} {fast:.1f} s | speed-up "
          f"{median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] | last train loss "
          f"{runs[0]['loss']:.3f} vs {runs[1]['loss']:.3f}", flush=True)


if __name__ == "__main__":
    main()
