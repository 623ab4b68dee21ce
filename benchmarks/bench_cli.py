"""How long `train_KE_cls.py --help` and a flag error take, against `import torch` alone.

    python benchmarks/bench_cli.py [--rounds 5]

The parser imports nothing heavy, so both should answer in well under 0.5 s on a warm disk.
"""
import argparse
import os
import subprocess
import sys
import time

from common import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "--help": [sys.executable, "train_KE_cls.py", "--help"],
    "flag error": [sys.executable, "train_KE_cls.py", "--epochs", "0"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def seconds(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):                  # interleaved, so load changes hit all alike
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    base = median(times["import torch"])
    for name in COMMANDS:
        t = median(times[name])
        print(f"{name:>12}: {t:.3f} s (median of {args.rounds}; {t / base:.2f}x import torch)")


if __name__ == "__main__":
    main()
