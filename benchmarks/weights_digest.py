"""sha256 of the final weights of short 2-generation runs: a refactoring that must not change
behaviour prints the same lines before and after (run it on both commits, on one machine: the
CPU's kernels make the digests machine-specific, which is why this is no test).

    .venv/bin/python benchmarks/weights_digest.py [--only NAME] [--generations G] [--extra=--cache_budget=0]

The runs read SyntheticShapes, which the image cache takes by default since --cache_budget;
`--extra=--cache_budget=0` keeps them on the per-sample path of the digests recorded before.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--set", "SyntheticShapes", "--image_size", "32", "--batch_size", "16",
          "--num_threads", "0", "--lr", "0.05", "--warmup_length", "1", "--test_interval", "2",
          "--num_generations", "2", "--epochs", "2", "--seed", "0"]
RUNS = {
    "ke_resnet18": ["--split_rate", "0.5"],
    "ke_mobilenet_dropout": ["--arch", "Split_mobilenet_v3_small", "--split_rate", "0.5"],
    "ke_wels_zero": ["--arch", "Split_mobilenet_v3_small", "--split_mode", "wels",
                     "--evolve_mode", "zero"],
    "cs_kd": ["--arch", "Split_mobilenet_v3_small", "--cs_kd", "--lr", "0.01"],
    "llf": ["--arch", "Split_mobilenet_v3_small", "--reset_layer_name", "classifier"],
}


def digest(state_dict) -> str:
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--generations", type=int, default=2,
                        help="generations of every run (a digest is printed for each)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "ke_digest_data"))
    parser.add_argument("--extra", action="append", default=[],
                        help="a flag added to every run (repeatable; --extra=--flag=value)")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, flags in RUNS.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as logs:
            subprocess.run([sys.executable, "train_KE_cls.py", *COMMON, *flags, *args.extra,
                            "--num_generations", str(args.generations),
                            "--data", args.data,
                            "--log-dir", logs, "--name", name], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lines = []
            for g in range(args.generations):
                path = os.path.join(logs, name, f"gen_{g}", "checkpoints", "epoch_1.state")
                lines.append(digest(torch.load(path, weights_only=True)["state_dict"]))
            csv = Path(os.path.join(logs, name, f"{name}.csv")).read_text().splitlines()
            tops = [row.split(",") for row in csv[1:]]
        print(f"{name}: " + " ".join(f"gen{g} {d}" for g, d in enumerate(lines))
              + f" rows {len(tops)}", flush=True)


if __name__ == "__main__":
    main()
