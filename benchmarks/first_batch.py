"""Seconds from the command to the end of the first training batch, on the demo's flags.

    python benchmarks/first_batch.py [--rounds 3] [--data DIR]

Each round starts `train_KE_cls.py` with `make demo`'s flags in a fresh process (one OpenMP
thread) and stops it right after the first optimizer step, timed from before the process is
started. The demo data is generated once, before the first round, so it is not counted.
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


def one_round(data: str, log_dir: str, name: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", CHILD] + DEMO_FLAGS + ["--data", data, "--log-dir", log_dir,
                                                           "--name", name]
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
        times = [one_round(args.data, log_dir, f"round-{r}") for r in range(args.rounds)]
    print(f"# demo flags, OMP_NUM_THREADS=1, {args.rounds} rounds: "
          + ", ".join(f"{t:.2f}" for t in times))
    print(f"command to first training batch: {median(times):.2f} s (median)")


if __name__ == "__main__":
    main()
