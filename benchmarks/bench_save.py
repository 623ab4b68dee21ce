"""Per-epoch checkpoint cost in the training thread: a synchronous atomic_save (with fsync)
against snapshot + the background CheckpointWriter, with a few training steps between saves.

    python benchmarks/bench_save.py [--arch Split_ResNet18] [--rounds 6] [--steps 4]

Both write the same state (model, SGD momentum, the random generators) to a temporary folder.
"""
import argparse
import functools
import os
import tempfile
import time

import torch
import torch.nn as nn
from common import machine, median, pick_device

from configs.base_config import Config
from models.factory import get_model
from trainers.state import rng_state
from utils.checkpoint import atomic_save
from utils.checkpoint_writer import CheckpointWriter, snapshot


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="Split_ResNet18")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="training steps between two saves")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    cfg = Config().parse(["-a", args.arch, "--set", "SyntheticShapes"])
    cfg.num_cls = 102
    model = get_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(8, 3, args.image_size, args.image_size, device=device)
    target = torch.randint(0, 102, (8,), device=device)

    def train_steps():
        for _ in range(args.steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), target).backward()
            optimizer.step()

    def state():
        return {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state()}

    writer = CheckpointWriter()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "resume.state")
        cost = {"synchronous": [], "background": []}
        train_steps()
        for r in range(args.rounds):
            for name in (("synchronous", "background") if r % 2 == 0 else ("background", "synchronous")):
                train_steps()
                start = time.perf_counter()
                if name == "synchronous":
                    atomic_save(state(), path)
                else:
                    copy = snapshot(state())
                    writer.submit(functools.partial(atomic_save, copy, path))
                cost[name].append(time.perf_counter() - start)
            writer.wait()                  # each round ends with nothing in flight
        size = os.path.getsize(path) / 2**20
    print(f"# {args.arch}, {size:.0f} MB state, {args.steps} train steps between saves; {machine(device)}")
    sync, background = median(cost["synchronous"]), median(cost["background"])
    print(f"save cost in the training thread: synchronous {sync * 1000:.0f} ms, background "
          f"{background * 1000:.0f} ms ({sync / background:.1f}x less), median of {args.rounds}")


if __name__ == "__main__":
    main()
