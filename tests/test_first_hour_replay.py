"""The README's first hour, replayed from a fresh clone (slow: `make test-slow`).

Install (the environment of this checkout stands in for `make`'s .venv), the demo, a run on
one's own data in the ImageFolder layout, its report, the export of its slim network and
predictions with the export, each with the README's command line and the outputs it promises.
"""
import os
import subprocess

import pytest
from PIL import Image

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def sh(command, cwd, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env, shell=isinstance(command, str))
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result


def own_tree(root, classes=("cat", "dog", "fish"), per=(6, 2, 2)):
    """My own images, a folder per class and per split, each class its own colour."""
    colours = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 200)}
    for split, n in zip(("train", "val", "test"), per, strict=True):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 36), tuple(v + 5 * i for v in colours[c])).save(
                    folder / f"{i:03d}.png")
    return root


def test_the_first_hour_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    sh(["git", "clone", "--quiet", ROOT, str(clone)], tmp_path)
    os.symlink(os.path.realpath(os.path.join(ROOT, ".venv")), clone / ".venv")
    py = str(clone / ".venv" / "bin" / "python")

    # the demo (make demo, shortened with its own variables; -o: the environment is there)
    demo = sh(["make", "-o", ".venv/.installed", "demo", "DEMO_GENERATIONS=2", "DEMO_EPOCHS=1",
               "DEMO_NAME=demo", f"DEMO_DIR={tmp_path / 'ckpt'}"], clone)
    assert "generation 0 (1 of 2), epoch 0 (1 of 1)" in demo.stdout
    assert "generation 1 (2 of 2), epoch 0 (1 of 1)" in demo.stdout
    for name in ("summary.md", "summary.csv", "summary.png", "demo.csv", "settings.json"):
        assert (tmp_path / "ckpt" / "demo" / name).is_file(), name

    # my own data, from a config file with one flag overridden on the command line
    data = own_tree(tmp_path / "my_tree")
    (tmp_path / "mine.yaml").write_text(
        "set: ImageFolder\nimage_size: 32\narch: Split_mobilenet_v3_small\nnum_generations: 2\n"
        "epochs: 2\nbatch_size: 6\nnum_threads: 0\nlr: 0.05\nwarmup_length: 1\nseed: 0\n")
    mine = sh([py, "train_KE_cls.py", "--config_file", str(tmp_path / "mine.yaml"), "--data",
               str(data), "--log-dir", str(tmp_path / "ckpt"), "--name", "mine", "--epochs", "1"],
              clone)
    assert "generation 1 (2 of 2), epoch 0 (1 of 1)" in mine.stdout       # --epochs 1 won
    # compare: the report of both runs
    report = sh([py, "-m", "utils.report", str(tmp_path / "ckpt" / "demo"),
                 str(tmp_path / "ckpt" / "mine")], clone)
    assert "| generation | runs | dense top-1 (mean ± std)" in report.stdout
    # export and predict
    ckpt = tmp_path / "ckpt" / "mine" / "gen_1" / "checkpoints" / "epoch_0.state"
    sh([py, "train_KE_cls.py", "--export_slim", str(ckpt), str(tmp_path / "slim.pt2")], clone)
    predicted = sh([py, "-m", "trainers.predict", str(tmp_path / "slim.pt2"),
                    str(data / "test"), "--topk", "2", "--csv", str(tmp_path / "out.csv")], clone)
    rows = predicted.stdout.splitlines()
    assert len(rows) == 6
    assert all(cell.split()[0] in ("cat", "dog", "fish") for row in rows
               for cell in row.split("\t")[1:])
    assert (tmp_path / "out.csv").read_text().startswith("image,class_1,score_1,class_2,score_2")
