"""Whole training runs of two commits (or two settings), interleaved: wall and CPU time ratios.

    python benchmarks/bench_run.py --commits f77a170 HEAD [--pairs 2] [--dataset digits] [-- flags]
    python benchmarks/bench_run.py --settings "--amp none" "--amp bf16" [--pairs 2] [-- flags...]

Each commit is exported with `git archive` into a temporary folder (removed at the end; the
repository's worktrees are left alone); the flags after `--` go to `train_KE_cls.py` of both,
with a fresh experiment folder per run. The order alternates pair by pair (A B, B A, ...), so
a change of machine load hits both. CPU time is the children's user + system time
(resource.getrusage). The data: the generated Flowers-like JPEGs (benchmarks/flowers_like.py,
the default) or real handwritten digits at 32 px (`--dataset digits`, benchmarks/digits_like.py),
both in the Flowers-102 lists layout. The default run is a scaled-down case for two shared
cores: Split_ResNet18 on the Flowers-like set at 32 px, 2 generations of 3 epochs, one thread,
decoded cache.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import digits_like
import flowers_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FLAGS = ["--set", "Flower102Pytorch", "-a", "Split_ResNet18", "--image_size", "32",
                 "--num_generations", "2", "--epochs", "3", "--num_threads", "0",
                 "--cache_images", "--seed", "0", "--keep_checkpoints", "last"]

DATASETS = {"flowers_like": flowers_like, "digits": digits_like}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(folder: str, flags, log_dir: str, name: str):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    command = [sys.executable, "train_KE_cls.py", *flags, "--log-dir", log_dir, "--name", name]
    wall, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    last = [line for line in done.stdout.splitlines() if "|" in line][-1:]
    return wall, cpu, (last[0].strip() if last else "")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else None
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--commits", nargs=2, metavar=("A", "B"))
    group.add_argument("--settings", nargs=2, metavar=("A", "B"),
                       help="two flag strings added to the common flags")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--dataset", choices=DATASETS, default="flowers_like")
    p.add_argument("--data", default=None, help="where the dataset is (written once)")
    args = p.parse_args(argv)
    data = DATASETS[args.dataset]
    flags = (extra if extra is not None else DEFAULT_FLAGS) + [
        "--data", data.ensure_dataset(args.data or data.DEFAULT_ROOT)]
    scratch = tempfile.mkdtemp(prefix="ke_bench_run_")
    try:
        if args.commits:
            contenders = []
            for k, commit in enumerate(args.commits):
                folder = os.path.join(scratch, f"tree{k}")
                os.makedirs(folder)
                archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True,
                                         capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
                contenders.append((commit, folder, flags))
        else:
            contenders = [(s, ROOT, flags + s.split()) for s in args.settings]
        results = {label: [] for label, _, _ in contenders}
        for pair in range(args.pairs):
            order = contenders if pair % 2 == 0 else contenders[::-1]
            for label, folder, run_flags in order:
                name = f"run{pair}-{contenders.index((label, folder, run_flags))}"
                wall, cpu, last = one_run(folder, run_flags, os.path.join(scratch, "logs"), name)
                results[label].append((wall, cpu))
                print(f"pair {pair + 1} {label}: wall {wall:.1f} s, CPU {cpu:.1f} s | {last}",
                      flush=True)
        (a, _, _), (b, _, _) = contenders
        print("# flags: " + " ".join(flags))
        for pair in range(args.pairs):
            (wa, ca), (wb, cb) = results[a][pair], results[b][pair]
            print(f"pair {pair + 1}: {a} / {b} wall {wa / wb:.2f}x, CPU {ca / cb:.2f}x")
        wa, ca = (sum(v) for v in zip(*results[a], strict=True))
        wb, cb = (sum(v) for v in zip(*results[b], strict=True))
        print(f"all pairs: {a} / {b} wall {wa / wb:.2f}x ({wa:.0f} s / {wb:.0f} s), "
              f"CPU {ca / cb:.2f}x ({ca:.0f} s / {cb:.0f} s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
