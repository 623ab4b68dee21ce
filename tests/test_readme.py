"""Every command of the README runs: each ```bash block is replayed here, shortened (tiny data,
one epoch, two generations, a small model), unless NOT_REPLAYED names why it cannot be. Every
flag the README names is a flag of the command it belongs to."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.datagen import make_lists_dataset, make_original
from tests.helpers import ROOT

README = os.path.join(ROOT, "README.md")

# first command of a block (its comment and spacing aside) -> why the replay leaves it out
NOT_REPLAYED = {
    "make demo": "replayed, shortened with DEMO_GENERATIONS and DEMO_EPOCHS, by "
                 "tests/test_first_hour_replay.py (make test-slow)",
    "make test": "the suite that holds this test (make test-slow, make test-slurm and make "
                 "test-floors are the other suites)",
    "KE_DATASETS_DIR=/path/to/datasets .venv/bin/python train_KE_cls.py --num_generations 10 "
    "--gpu 0": "needs a GPU; the same flags on the CPU are the Flower102Pytorch runs replayed "
               "in the methods block",
    ".venv/bin/python -m trainers.sweep --name ls --grid label_smoothing=0,0.1 --grid seed=0-1 "
    "--executor slurm --partition debug --time 20 --cpus_per_run 2 -- --set SyntheticShapes "
    "--image_size 32 --arch Split_mobilenet_v3_small --split_rate 0.75 --num_generations 2 "
    "--epochs 3 --lr 0.1 --warmup_length 1 --test_interval 3 --cache_images":
        "needs a SLURM cluster; make test-slurm submits it, tiny, to the one-node SLURM of "
        "ci/slurm_up.sh (tests/test_slurm.py)",
    ".venv/bin/torchrun --standalone --nproc_per_node=4 train_KE_cls.py --batch_size 128":
        "needs 4 GPUs (and 2 machines for the second line); tests/test_distributed.py runs "
        "the script under torchrun with two CPU processes",
    ".venv/bin/tensorboard --logdir checkpoints/shapes": "starts a server that runs until stopped",
    "make compare": "replayed, shortened with COMPARE_GENERATIONS, COMPARE_EPOCHS and "
                    "COMPARE_SEEDS, by test_make_compare_writes_the_comparison (make test-slow)",
}

# what a replay shortens: a flag's value, and the flag added where the command lacks it
SHORT = {"--epochs": "1", "--num_generations": "2", "--arch": "Split_mobilenet_v3_small",
         "--image_size": "32", "--batch_size": "10", "--num_threads": "0", "--test_interval": "1"}
ALIASES = {"-a": "--arch", "-b": "--batch_size", "-t": "--num_threads"}
# training that does not take these flags: its settings come from the run it continues
NOT_TRAINING = ("--resume", "--evaluate", "--export_slim")
# flags of commands that are not this project's
FOREIGN_FLAGS = {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend",
                 "--rdzv_endpoint", "--logdir"}
MISTYPED = {"--lrr"}                # the README's example of a mistake


def bash_blocks(text):
    """The README's ```bash blocks, continuation lines joined: [[command line, ...], ...]."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [[line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
            for block in blocks]


def key(block):
    """A block's name: its first command, without comment, spacing normalised."""
    return " ".join(block[0].split("#", 1)[0].split())


def _shorten_flags(args: str) -> str:
    """The training flags in `args` with SHORT's values, and SHORT's flags that are missing."""
    for alias, flag in ALIASES.items():
        args = re.sub(rf"(?<!\S){alias}(?=\s)", flag, args)
    missing = []
    for flag, value in SHORT.items():
        pattern = rf"(?<!\S){re.escape(flag)}[ =]\S+"
        if re.search(pattern, args):
            args = re.sub(pattern, f"{flag} {value}", args)
        else:
            missing.append(f"{flag} {value}")
    return " ".join(missing) + " " + args if missing else args


def shorten(line: str) -> str:
    """One README command line as the replay runs it."""
    line = re.sub(r"gen_\d+/checkpoints/epoch_\d+\.state", "gen_1/checkpoints/epoch_0.state", line)
    line = re.sub(r"--grid seed=\d+-\d+", "--grid seed=0-1", line)
    if "trainers.sweep" in line and " -- " in line:
        head, train = line.split(" -- ", 1)
        return f"{head} -- {_shorten_flags(train)}"
    if "train_KE_cls.py" in line and not any(f in line for f in NOT_TRAINING):
        head, train = line.split("train_KE_cls.py", 1)
        return f"{head}train_KE_cls.py {_shorten_flags(train.strip())}"
    return line


def test_shorten_rewrites_values_and_adds_what_is_missing():
    assert shorten(".venv/bin/python train_KE_cls.py --epochs 200 -a Split_ResNet50 --lr 0.1") == (
        ".venv/bin/python train_KE_cls.py --num_generations 2 --image_size 32 --batch_size 10 "
        "--num_threads 0 --test_interval 1 --epochs 1 --arch Split_mobilenet_v3_small --lr 0.1")
    assert shorten("for s in 0 1; do python train_KE_cls.py --image_size=224 --seed $s --name r$s"
                   "; done").endswith("--image_size 32 --seed $s --name r$s; done")
    assert shorten("python -m trainers.sweep --grid seed=0-4 -- --epochs 8") == (
        "python -m trainers.sweep --grid seed=0-1 -- --num_generations 2 --arch "
        "Split_mobilenet_v3_small --image_size 32 --batch_size 10 --num_threads 0 "
        "--test_interval 1 --epochs 1")
    assert shorten("python train_KE_cls.py --evaluate c/gen_5/checkpoints/epoch_7.state") == \
        "python train_KE_cls.py --evaluate c/gen_1/checkpoints/epoch_0.state"
    resume = "python train_KE_cls.py --name x --resume"
    assert shorten(resume) == resume


def test_every_excuse_names_a_block_of_the_readme():
    keys = [key(b) for b in bash_blocks(Path(README).read_text(encoding="utf-8"))]
    assert len(keys) == len(set(keys)), "two blocks start with the same command"
    assert sorted(set(NOT_REPLAYED) - set(keys)) == []
    assert all(len(reason) > 20 for reason in NOT_REPLAYED.values())


def _options(parser):
    return {o for action in parser._actions for o in action.option_strings}


def test_every_flag_in_the_readme_exists():
    from configs.base_config import build_parser as train_parser
    from export_lists import _parser as export_parser
    from trainers.predict import build_parser as predict_parser
    from trainers.sweep import build_parser as sweep_parser
    report = subprocess.run([sys.executable, "-m", "utils.report", "--help"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    known = (_options(train_parser()) | _options(sweep_parser()) | _options(predict_parser())
             | _options(export_parser()) | set(re.findall(r"--[\w-]+", report))
             | FOREIGN_FLAGS | MISTYPED)
    named = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", Path(README).read_text(encoding="utf-8")))
    assert sorted(named - known) == []


# ----------------------------------------------------------------------------- the replay

def _image_tree(root, classes=("cat", "dog", "fish", "owl"), per=(6, 2, 2)):
    """My own images, a folder per class under train/, val/ and test/."""
    for split, n in zip(("train", "val", "test"), per, strict=True):
        for c, cls in enumerate(classes):
            os.makedirs(root / split / cls)
            for i in range(n):
                Image.new("RGB", (40, 36), (60 * c, 200 - 40 * c, 10 * i)).save(
                    root / split / cls / f"{i:03d}.png")
    return root


def _workspace(tmp_path):
    """A folder that looks like the checkout (its files linked), the README's placeholder
    folders made of tiny generated data, and the environment the replay runs in."""
    work = tmp_path / "work"
    work.mkdir()
    for name in os.listdir(ROOT):
        if name not in ("checkpoints", "datasets") and not name.startswith("."):
            os.symlink(os.path.join(ROOT, name), work / name)
    os.symlink(os.path.realpath(os.path.join(ROOT, ".venv")), work / ".venv")
    datasets = tmp_path / "datasets"
    make_lists_dataset(datasets, "Flower102Pytorch")
    make_original(datasets, "CUB200")
    placeholders = {
        "/path/to/datasets": str(datasets),
        "/path/to/my_data": make_lists_dataset(tmp_path / "my_data", "CSVList"),
        "/path/to/my_tree": str(_image_tree(tmp_path / "my_tree")),
        "/path/to/images": str(tmp_path / "my_tree" / "test"),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1", KE_DATASETS_DIR=str(datasets),
               KE_CHECKPOINTS_DIR=str(work / "checkpoints"))
    return work, placeholders, env


@pytest.mark.slow
def test_the_readme_commands_run(tmp_path):
    """Each block in the README's order (later blocks use the runs of earlier ones)."""
    work, placeholders, env = _workspace(tmp_path)
    for block in bash_blocks(Path(README).read_text(encoding="utf-8")):
        if key(block) in NOT_REPLAYED:
            continue
        script = "\n".join(shorten(line) for line in block)
        for placeholder, path in placeholders.items():
            script = script.replace(placeholder, path)
        done = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (script, done.stdout[-2000:], done.stderr[-2000:])
    # what the blocks promise to leave: the report of the seeds, the export and its predictions
    assert (work / "checkpoints" / "summary.md").is_file()
    assert (work / "slim.pt2").is_file()
    rows = (work / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2                   # a header and the 8 test images of my_tree


@pytest.mark.slow
def test_make_compare_writes_the_comparison(tmp_path):
    """`make compare`, shortened: four methods of two seeds, their table with paired differences
    from none and the compute column, and the plot."""
    venv = sys.prefix
    result = subprocess.run(
        ["make", "-o", f"{venv}/.installed", "compare", f"VENV={venv}",
         f"COMPARE_DIR={tmp_path}", "COMPARE_GENERATIONS=2", "COMPARE_EPOCHS=1",
         "COMPARE_SEEDS=0-1"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "comparison-methods.md").read_text()
    for label in ("forget=ke", "forget=none", "forget=reinit",
                  "forget=none lr_policy=long_cosine_lr"):
        assert f"| {label} " in table or f" {label} |" in table, label
    assert "(n=2)" in table and "pairs=2" in table
    assert (tmp_path / "comparison-methods.png").stat().st_size > 0
