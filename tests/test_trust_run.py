"""The trust promises on one run's files, tried as a hostile user would: pruning among files the
toolkit never wrote, a resume.state of another generation or swapped after its check, NaN
weights given to --evaluate and --export_slim, --export_slim of a method without a slim network,
and a --log_file named like the toolkit's temporaries. One finished two-generation tiny run
serves them all (each test spoils a copy)."""
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import COMMON, ROOT, assert_one_line_error, run_cli
from trainers.experiment import Experiment


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust_run")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=2, per_class=(4, 2, 2),
                       size=(32, 32))
    result = run_cli("--data", base / "datasets", "--log-dir", base / "ckpt", "--name", "done",
                     *COMMON, "--num_generations", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return base


def copy_of(done, tmp_path):
    shutil.copytree(done / "ckpt" / "done", tmp_path / "ckpt" / "done")
    return Experiment(tmp_path / "ckpt" / "done", "done")


def resume(done, tmp_path, *argv):
    return run_cli("--data", done / "datasets", "--log-dir", tmp_path / "ckpt", "--name", "done",
                   "--resume", *argv)


def drop_generation_rows(exp, g):
    """The results CSV without generation `g`'s rows: as if the run stopped before them."""
    import csv
    with open(exp.csv, newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("Generation")
    with open(exp.csv, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [rows[0]] + [r for r in rows[1:] if r[column] != str(g)])


# ---- pruning ------------------------------------------------------------------------------

def test_pruning_removes_only_the_files_the_run_wrote_and_says_what_it_left(tmp_path, caplog):
    from trainers.knowledge_evolution import prune_checkpoints
    exp = Experiment(tmp_path / "e", "e")
    own = ["epoch_0.state", "epoch_12.state", "resume.state", "initial.state", "model_best.pth",
           ".tmp-abc.part"]
    for g in (0, 1):
        os.makedirs(exp.checkpoint_dir(g))
        for name in own:
            open(os.path.join(exp.checkpoint_dir(g), name), "wb").close()
    folder = exp.checkpoint_dir(0)
    for name in ("notes.txt", "epoch_0.state.bak", "my_epoch_1.state"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("the user's\n")
    os.makedirs(os.path.join(folder, "sub"))
    open(os.path.join(folder, "sub", "epoch_0.state"), "w").close()
    with caplog.at_level(logging.INFO):
        prune_checkpoints(exp, 2, keep="last")
    assert sorted(os.listdir(folder)) == ["epoch_0.state.bak", "my_epoch_1.state", "notes.txt",
                                          "sub"]
    assert os.listdir(os.path.join(folder, "sub")) == ["epoch_0.state"]
    assert not os.path.exists(exp.checkpoint_dir(1))
    kept = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert len(kept) == 1 and "notes.txt" in kept[0] and folder in kept[0]


# ---- resume.state: its generation, read once -------------------------------------------

def test_a_resume_state_of_another_generation_is_refused(done, tmp_path):
    exp = copy_of(done, tmp_path)
    drop_generation_rows(exp, 1)
    shutil.copy(os.path.join(exp.checkpoint_dir(0), "epoch_0.state"), exp.resume_state(1))
    before = Path(exp.csv).read_text()
    result = resume(done, tmp_path)
    assert_one_line_error(result, [exp.resume_state(1), "generation 0, not of generation 1"])
    assert Path(exp.csv).read_text() == before


def test_a_resume_state_swapped_after_its_check_is_not_used(done, tmp_path, monkeypatch):
    import trainers.experiment as experiment
    exp = copy_of(done, tmp_path)
    drop_generation_rows(exp, 1)
    shutil.copy(os.path.join(exp.checkpoint_dir(1), "epoch_0.state"), exp.resume_state(1))
    checked = experiment.check_trained_with

    def check_then_swap(cfg, exp_, path, ckpt):
        checked(cfg, exp_, path, ckpt)
        with open(path, "wb") as f:               # what a swap after the check leaves there
            f.write(b"not the checkpoint that was checked")
    monkeypatch.setattr(experiment, "check_trained_with", check_then_swap)
    result = resume(done, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generation 1 (2 of 2): dense test" in result.stdout


# ---- FIFOs where a run reads ------------------------------------------------------------

def train_process(*args, timeout=120):
    """train_KE_cls.py in a process that must end within `timeout` (a FIFO would block it)."""
    try:
        return subprocess.run([sys.executable, os.path.join(ROOT, "train_KE_cls.py"),
                               *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"train_KE_cls.py {' '.join(map(str, args))} still running after {timeout} s")


def test_a_fifo_as_settings_json_on_resume_is_one_line(done, tmp_path):
    exp = copy_of(done, tmp_path)
    os.remove(exp.settings)
    os.mkfifo(exp.settings)
    result = train_process("--data", done / "datasets", "--log-dir", tmp_path / "ckpt", "--name",
                           "done", "--resume")
    assert_one_line_error(result, [exp.settings, "not a regular file"])


@pytest.mark.parametrize("flag", ["--evaluate", "--pretrained"])
def test_a_fifo_given_as_a_checkpoint_is_named_as_one(done, tmp_path, flag):
    os.mkfifo(tmp_path / "weights.state")
    argv = [flag, tmp_path / "weights.state"]
    if flag == "--pretrained":
        argv += ["--log-dir", tmp_path, "--name", "x", *COMMON]
    result = run_cli(*argv, "--data", done / "datasets")
    assert_one_line_error(result, [str(tmp_path / "weights.state"), "not a regular file"])


# ---- --evaluate and --export_slim ------------------------------------------------------

def spoiled(done, tmp_path, change):
    ckpt = torch.load(done / "ckpt" / "done" / "gen_1" / "checkpoints" / "epoch_0.state",
                      weights_only=True)
    change(ckpt)
    path = tmp_path / "spoiled.state"
    torch.save(ckpt, path)
    return path


def nan_weight(ckpt):
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and "weight" in k)
    ckpt["state_dict"][name][...] = float("nan")
    ckpt["nan_name"] = name


@pytest.mark.parametrize("command", ["--evaluate", "--export_slim"])
def test_nan_weights_are_refused_naming_the_tensor(done, tmp_path, command):
    path = spoiled(done, tmp_path, nan_weight)
    name = torch.load(path, weights_only=True)["nan_name"]
    argv = [command, path] + ([tmp_path / "slim.pt2"] if command == "--export_slim" else [])
    result = run_cli(*argv, "--data", done / "datasets")
    assert_one_line_error(result, [name, "NaN or infinite"])
    assert not (tmp_path / "slim.pt2").exists()


def test_export_slim_of_a_method_without_a_slim_network_is_refused(done, tmp_path):
    def shrink_perturb(ckpt):
        ckpt["config"]["forget"] = "shrink_perturb"
    path = spoiled(done, tmp_path, shrink_perturb)
    result = run_cli("--export_slim", path, tmp_path / "slim.pt2", "--data", done / "datasets")
    assert_one_line_error(result, ["no slim network", "shrink_perturb", "--forget ke"])
    assert not (tmp_path / "slim.pt2").exists()


# ---- --log_file ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".tmp-x.part", ".tmp-log", ".done.csv." + "0" * 32 + ".tmp"])
def test_a_log_file_named_like_the_toolkits_temporaries_is_refused(done, tmp_path, name):
    result = run_cli("--data", done / "datasets", "--log-dir", tmp_path, "--name", "x", *COMMON,
                     "--log_file", name)
    assert_one_line_error(result, ["--log_file", name])
    assert not (tmp_path / "x").exists()


def test_a_huge_embedding_size_is_one_line(done, tmp_path):
    result = run_cli("--data", done / "datasets", "--log-dir", tmp_path, "--name", "x", *COMMON,
                     "--task", "retrieval", "--embedding_size", str(10 ** 12))
    assert_one_line_error(result, ["--embedding_size", "512"])


# ---- .pt2: hangs, bombs, declared sizes, nesting -----------------------------------------

@pytest.fixture(scope="module")
def slim(done):
    path = done / "slim.pt2"
    result = run_cli("--export_slim", done / "ckpt" / "done" / "gen_1" / "checkpoints" /
                     "epoch_0.state", path, "--data", done / "datasets")
    assert result.returncode == 0, result.stderr[-3000:]
    return path


def crafted(src, dst, changes=(), deflated=(), declared=None):
    """A copy of the .pt2 `src` with members (names inside its top folder) changed by the
    functions in `changes`, those in `deflated` compressed, and the central directory's
    uncompressed sizes replaced as `declared` says (what a crafted file may claim)."""
    import struct
    import zipfile
    changes = dict(changes)
    with zipfile.ZipFile(src) as archive:
        items = [(i.filename, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(dst, "w") as out:
        for name, data in items:
            inner = name.split("/", 1)[1]
            data = changes[inner](data) if inner in changes else data
            out.writestr(name, data, zipfile.ZIP_DEFLATED if inner in deflated
                         else zipfile.ZIP_STORED)
    raw = bytearray(Path(dst).read_bytes())
    for inner, size in (declared or {}).items():
        at = 0
        while True:
            at = raw.index(b"PK\x01\x02", at)
            length = struct.unpack_from("<H", raw, at + 28)[0]
            if raw[at + 46:at + 46 + length].decode().split("/", 1)[1] == inner:
                struct.pack_into("<I", raw, at + 24, size)
                break
            at += 4
    Path(dst).write_bytes(bytes(raw))
    return str(dst)


def json_change(change):
    import json

    def apply(data):
        value = json.loads(data)
        change(value)
        return json.dumps(value).encode()
    return apply


def expression(text):
    import re

    def apply(data):
        return re.sub(rb'"expr_str": "[^"]*"', b'"expr_str": "' + text.encode() + b'"', data,
                      count=1)
    return apply


def first_weight(meta):
    return next(iter(meta["config"].values()))


def set_sizes(meta):
    first_weight(meta)["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}] * 4


def set_image_size(meta):
    meta["image_size"] = meta["eval_resize"] = 100_000


def set_task(meta):
    meta["task"] = "segmentation"


NESTED = ("[" * 100_000 + "]" * 100_000).encode()
PT2_CASES = {
    "power_tower": ({"models/model.json": expression("2**2**2**2**2**2**2**2**2")},
                    "shape expression"),
    "huge_symbol_index": ({"models/model.json": expression("Symbol('u99999999999999', "
                                                            "integer=True)")},
                          "shape expression"),
    "image_size_above_the_pixel_cap": ({"extra/ke_metadata.json": json_change(set_image_size)},
                                       "pixel limit"),
    "terabyte_shape": ({"data/weights/model_weights_config.json": json_change(set_sizes)},
                       "declares a shape"),
    "nested_model_json": ({"models/model.json": lambda d: NESTED}, "nested too deeply"),
    "nested_weights_config": ({"data/weights/model_weights_config.json": lambda d: NESTED},
                              "not a payload configuration"),
    "nested_metadata": ({"extra/ke_metadata.json": lambda d: NESTED}, "no slim-model metadata"),
    "unknown_task": ({"extra/ke_metadata.json": json_change(set_task)}, "names the task"),
    "nan_weights": ({"data/weights/weight_0": lambda d: bytes.fromhex("0000c07f") * (len(d) // 4)},
                    "NaN or infinite"),
}


def test_pt2_files_that_would_hang_or_fail_on_loading_are_one_line(slim, tmp_path, done):
    """Each crafted file through --evaluate in one subprocess with a short timeout (a power
    tower or a huge image size would run without end)."""
    paths = {case: crafted(slim, tmp_path / f"{case}.pt2", changes)
             for case, (changes, _) in PT2_CASES.items()}
    script = ("import sys\nfrom train_KE_cls import main\n"
              "for path in sys.argv[2:]:\n"
              "    print('CASE', path, 'EXIT', main(['--evaluate', path, '--data', sys.argv[1]]),"
              " flush=True)\n")
    try:
        result = subprocess.run([sys.executable, "-c", script, str(done / "datasets"),
                                 *paths.values()], cwd=ROOT, capture_output=True, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=180)
    except subprocess.TimeoutExpired as stopped:
        pytest.fail(f"still loading after 180 s; it got through: {stopped.stdout}")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(paths), result.stdout + result.stderr
    for (case, (_, needle)), error in zip(PT2_CASES.items(), errors, strict=True):
        assert paths[case] in error and needle in error, (case, error)
        assert "--task segmentation" not in error
    assert result.stdout.count("EXIT 2") == len(paths), result.stdout


def test_a_deflate_bomb_is_refused_after_one_chunk_not_after_inflating_it(slim, tmp_path):
    import tracemalloc

    from errors import UserError
    from utils.pt2_archive import checked_archive
    bomb = crafted(slim, tmp_path / "bomb.pt2", {"data/weights/weight_0": lambda d: bytes(200 << 20)},
                   deflated={"data/weights/weight_0"}, declared={"data/weights/weight_0": 4096})
    assert os.path.getsize(bomb) < os.path.getsize(slim) + (1 << 20)     # 200 MiB inside
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="is not a torch.export"):
            checked_archive(bomb, "extra/ke_metadata.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated to refuse it"


def test_a_member_declaring_gigabytes_is_refused_by_its_declared_size(slim, tmp_path):
    from errors import UserError
    from utils.pt2_archive import checked_archive
    for member in ("data/weights/weight_0", "models/model.json"):
        path = crafted(slim, tmp_path / "big.pt2", declared={member: 3 << 30})
        with pytest.raises(UserError, match="declares"):
            checked_archive(path, "extra/ke_metadata.json")


# ---- the experiment folder turning read-only mid-run --------------------------------------

class ReadOnly:
    """Makes every write under `folder` fail as on a file system remounted read-only (EROFS)
    once `on` is set: opening for writing, creating, renaming, linking and removing."""

    def __init__(self, monkeypatch, folder):
        import builtins
        import errno
        self.folder, self.on = str(folder), False

        def refuse(path):
            if self.on and os.path.abspath(os.fspath(path)).startswith(self.folder):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

        def guard(module, name, writes=lambda *a, **k: True):
            real = getattr(module, name)

            def guarded(path, *args, **kwargs):
                if isinstance(path, (str, bytes, os.PathLike)) and writes(*args, **kwargs):
                    refuse(path)
                return real(path, *args, **kwargs)
            monkeypatch.setattr(module, name, guarded)
        guard(os, "open", lambda flags, *a, **k: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        guard(builtins, "open", lambda mode="r", *a, **k: any(c in mode for c in "wax+"))
        for name in ("mkdir", "remove", "unlink", "rmdir", "replace", "rename", "link", "chmod"):
            guard(os, name)


@pytest.mark.parametrize("when", ["second_checkpoint", "end_of_generation_0"])
def test_a_folder_turned_read_only_mid_run_stops_in_one_line_and_resumes(done, tmp_path,
                                                                         monkeypatch, when):
    from trainers.generation import GenerationTrainer
    from trainers.knowledge_evolution import KnowledgeEvolution
    read_only = ReadOnly(monkeypatch, tmp_path / "ckpt")
    if when == "second_checkpoint":
        save, calls = GenerationTrainer.save, []

        def save_then_read_only(self, *args, **kwargs):
            calls.append(args[1])
            if len(calls) == 3:                      # initial.state, epoch 0, then epoch 1
                read_only.on = True
            return save(self, *args, **kwargs)
        monkeypatch.setattr(GenerationTrainer, "save", save_then_read_only)
    else:
        end, ended = KnowledgeEvolution.end_generation, []

        def read_only_then_end(self, g):
            read_only.on = read_only.on or not ended
            ended.append(g)
            return end(self, g)
        monkeypatch.setattr(KnowledgeEvolution, "end_generation", read_only_then_end)
    argv = ["--data", done / "datasets", "--log-dir", tmp_path / "ckpt", "--name", "ro", *COMMON,
            "--num_generations", "2", "--epochs", "2", "--save_every_minutes", "0"]
    result = run_cli(*argv)
    assert_one_line_error(result, ["Read-only file system", "the last good one: ", "--resume"])
    last = result.stderr.split("the last good one: ")[1].split(")")[0]
    assert os.path.isfile(last) and "/ro/gen_0/checkpoints/" in last
    read_only.on = False
    result = run_cli("--data", done / "datasets", "--log-dir", tmp_path / "ckpt", "--name", "ro",
                     "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Experiment(tmp_path / "ckpt" / "ro", "ro").progress().dense == {0, 1}
