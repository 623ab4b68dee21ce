"""Seconds from the command to the end of the first training batch, on the demo's flags, against
a plain torchvision script's floor in the same run.

    python benchmarks/first_batch.py [--rounds 3] [--data DIR]

Each round starts `train_KE_cls.py` with `make demo`'s flags in a fresh process (one OpenMP
thread) and stops it right after the first optimizer step, timed from before the process is
started. The demo data is generated once, before the first round, so it is not counted.

The floor, run alternately with ours: a fresh process that imports torch and torchvision, builds
torchvision's resnet18 and an SGD optimizer and takes one step on a random batch of the demo's
shape. Every PyTorch training script pays it (importing torchvision and building the first
optimizer both import torch._dynamo), so "ours - floor" is what this toolkit adds, and
"ours / floor" compares machines of different speeds.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from common import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FLAGS = ["--set", "SyntheticShapes", "--image_size", "32", "--split_rate", "0.75",
              "--num_generations", "6", "--epochs", "8", "--lr", "0.1", "--warmup_length", "1",
              "--test_interval", "8", "--num_threads", "0", "--cache_images",
              "--keep_checkpoints", "last", "--seed", "0"]
# The child: a global optimizer-step hook ends the process after the first training batch.
CHILD = """
import os, sys, torch
from torch.optim.optimizer import register_optimizer_step_post_hook
def first_step(optimizer, args, kwargs):
    print("FIRST_BATCH", flush=True)
    os._exit(0)
register_optimizer_step_post_hook(first_step)
import train_KE_cls
sys.exit(train_KE_cls.main(sys.argv[1:]))
"""
FLOOR = """
import torch, torchvision
model = torchvision.models.resnet18(num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
images, target = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
torch.nn.functional.cross_entropy(model(images), target).backward()
optimizer.step()
print("FIRST_BATCH", flush=True)
"""


def one_round(data: str, log_dir: str, name: str) -> float:
    return timed_child([sys.executable, "-c", CHILD] + DEMO_FLAGS
                       + ["--data", data, "--log-dir", log_dir, "--name", name])


def timed_child(command) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if "FIRST_BATCH" not in done.stdout:
        sys.exit(f"the run did not reach a training batch (exit {done.returncode}):\n"
                 f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "ke_bench_first_batch"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as log_dir:
        one_round(args.data, log_dir, "warm-up")           # generates the data, warms the disk
        times, floors = [], []
        for r in range(args.rounds):
            times.append(one_round(args.data, log_dir, f"round-{r}"))
            floors.append(timed_child([sys.executable, "-c", FLOOR]))
    print(f"# demo flags, OMP_NUM_THREADS=1, {args.rounds} rounds: "
          + ", ".join(f"{t:.2f}" for t in times))
    print("# plain torchvision floor, same rounds: " + ", ".join(f"{t:.2f}" for t in floors))
    ours, floor = median(times), median(floors)
    print(f"command to first training batch: {ours:.2f} s (median); floor {floor:.2f} s; "
          f"ours - floor {ours - floor:+.2f} s, ours / floor {ours / floor:.2f}x")


if __name__ == "__main__":
    main()
