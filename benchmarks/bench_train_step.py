"""Train-step throughput of our dense Split models vs torchvision's model of the same architecture.

Both models get the same batch (random images and labels, fixed seed), the same loss (cross-entropy
with label smoothing 0.1), the same optimizer (SGD, momentum 0.9, weight decay 1e-4) and the same
--amp / --channels_last settings. A step is zero_grad + forward + loss + backward + optimizer step.
Timing is interleaved in one process: each round times `--steps` single steps of each model, in
an order rotated every round. Reported: images/s from the median step time of each model, and the
median over rounds of the per-round ratio (min-max in brackets), so drifting load cancels out.

Prints one line per architecture:
  <arch>: ours <img/s> vs torchvision <img/s> img/s, ratio <median ours/torchvision> [min-max]
"""
import argparse
import functools

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn as nn
import torchvision
from common import interleave, machine, median, pick_device, timed

from configs.base_config import Config
from models.factory import get_model
from models.graph_split import plain_model, torchvision_name
from utils.performance import Precision, configure_backends, prepare_model

NUM_CLASSES = 102
# Graph-derived architectures are torchvision's own modules with split layers swapped in.
GRAPH_ARCHS = ("Split_resnext50_32x4d", "Split_mobilenet_v2", "Split_mobilenet_v3_large",
               "Split_efficientnet_b0", "Split_regnet_y_400mf", "Split_mnasnet1_0",
               "Split_squeezenet1_1", "Split_wide_resnet50_2")
TORCHVISION = {
    "Split_ResNet18": lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES),
    "Split_ResNet50": lambda: torchvision.models.resnet50(num_classes=NUM_CLASSES),
    "Split_densenet121": lambda: torchvision.models.densenet121(num_classes=NUM_CLASSES),
    "Split_googlenet": lambda: torchvision.models.googlenet(num_classes=NUM_CLASSES,
                                                            aux_logits=False, init_weights=True),
    **{arch: functools.partial(plain_model, torchvision_name(arch), NUM_CLASSES)
       for arch in GRAPH_ARCHS},
}


def train_steps(model, optimizer, precision, criterion, x, y, n: int):
    """`n` training steps of `model` on the one batch (x, y)."""
    for _ in range(n):
        with precision.autocast():
            loss = criterion(model(x), y)
        precision.step(loss, optimizer)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=list(TORCHVISION), choices=list(TORCHVISION),
                   help="default: all (the four hand-written families and the graph-derived ones)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    p.add_argument("--batch_size", type=int, default=None, help="default: 16 on CPU, 128 on GPU")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=None, help="default: 5 on CPU, 10 on GPU")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per model per round (default: 2 on CPU, 20 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model first")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: elapsed time; cpu: this process's CPU time (for a shared CPU "
                        "machine, with --threads 1)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (128 if gpu else 16)
    rounds = args.rounds or (10 if gpu else 5)
    steps = args.steps or (20 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_backends(device)
    setting = (f"{device.type}, batch {batch} at {args.image_size}px, amp {args.amp}"
               f"{', channels_last' if args.channels_last else ''}")
    print(f"# train step: {setting}; {machine(device)}; {rounds} rounds x {steps} steps, "
          f"{args.clock} clock", flush=True)

    for arch in args.arch:
        cfg = Config().parse(["-a", arch, "--amp", args.amp]
                             + (["--channels_last"] if args.channels_last else []))
        torch.manual_seed(0)
        contenders = []
        for build in (functools.partial(get_model, cfg), TORCHVISION[arch]):
            model = prepare_model(build(), cfg, device).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                        weight_decay=1e-4)
            contenders.append((model, optimizer))
        precision = Precision(args.amp, device)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        generator = torch.Generator().manual_seed(1)
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        x = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator)
        x = x.to(device).contiguous(memory_format=layout)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
        steps_of = [functools.partial(train_steps, *contender, precision, criterion, x, y)
                    for contender in contenders]
        for k in range(2):
            timed(functools.partial(steps_of[k], warmup), device)
        times = [[], []]          # seconds per step, every step of every round
        ratios = []               # per round: ours img/s / torchvision img/s
        for order in interleave(2, rounds):
            this_round = [None, None]
            for k in order:
                step_times = [timed(functools.partial(steps_of[k], 1), device, args.clock)
                              for _ in range(steps)]
                times[k] += step_times
                this_round[k] = median(step_times)
            ratios.append(this_round[1] / this_round[0])
        rates = [[batch / t for t in ts] for ts in times]
        tv_name = arch.split("_", 1)[1].lower()
        print(f"{arch}: ours {median(rates[0]):.1f} vs torchvision {tv_name} "
              f"{median(rates[1]):.1f} img/s, ratio {median(ratios):.3f} "
              f"[{min(ratios):.3f}-{max(ratios):.3f}]", flush=True)


if __name__ == "__main__":
    main()
