"""Time from the command to its one-line error, for the mistakes of a first hour: a wrong --data,
a dataset folder without its lists, a missing --pretrained file, a mistyped flag, a bad key of
--config_file; against `import torch` alone. Target: under 1.5 s each on a quiet 2-core machine.

    python benchmarks/bench_fail_fast.py [--rounds 5]

Every case must stop with exit status 2 before torch is imported (data/precheck.py); the script
says so per case (`torch imported: no`), from `python -X importtime`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.5


def cases(tmp: str) -> dict:
    layout = os.path.join(tmp, "datasets")
    os.makedirs(os.path.join(layout, "flower102", "jpg"), exist_ok=True)   # no lists/trn.csv
    config = os.path.join(tmp, "run.yaml")
    with open(config, "w") as f:
        f.write("lrr: 0.1\n")
    train = [sys.executable, "train_KE_cls.py"]
    return {
        "wrong --data": train + ["--data", os.path.join(tmp, "nowhere")],
        "no lists/trn.csv": train + ["--data", layout],
        "missing --pretrained": train + ["--data", layout, "--pretrained", "nope.pth"],
        "mistyped flag": train + ["--epoch", "3"],
        "bad config key": train + ["--config_file", config],
        "import torch": [sys.executable, "-c", "import torch"],
    }


def run(command) -> tuple:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, done


def imports_torch(command) -> bool:
    done = subprocess.run(command[:1] + ["-X", "importtime"] + command[1:], cwd=ROOT,
                          capture_output=True, text=True)
    return any(line.rstrip().endswith(("| torch", "|   torch")) or line.split("|")[-1].strip()
               == "torch" for line in done.stderr.splitlines() if "import time:" in line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        commands = cases(tmp)
        times = {name: [] for name in commands}
        last = {}
        for _ in range(args.rounds):              # interleaved, so load changes hit all alike
            for name, command in commands.items():
                seconds, last[name] = run(command)
                times[name].append(seconds)
        base = statistics.median(times["import torch"])
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
              f"median of {args.rounds}")
        failed = False
        for name, command in commands.items():
            t = statistics.median(times[name])
            if name == "import torch":
                print(f"{name:>22}: {t:.3f} s")
                continue
            torch_too = imports_torch(command)
            ok = last[name].returncode == 2 and len(last[name].stderr.splitlines()) == 1 \
                and not torch_too
            failed |= not ok or t > TARGET
            print(f"{name:>22}: {t:.3f} s ({t / base:.2f}x import torch), exit "
                  f"{last[name].returncode}, torch imported: {'yes' if torch_too else 'no'}"
                  f"{'' if t <= TARGET else f', over the {TARGET} s target'}: "
                  f"{last[name].stderr.strip()[:90]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
