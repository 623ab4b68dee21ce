"""Safety: no code runs from a file, nothing is written outside `<log-dir>/<name>/`, one run per
experiment at a time, one-line errors instead of tracebacks, no leftovers.

The table below extends tests/test_bad_input.py: every bad run goes through train_KE_cls.main
with the user's flags, in this process (tests/helpers.run_cli: the exit status and output a
process gives), and must end with exit status 2, exactly one stderr line naming the problem, no
traceback, the finished run and its dataset byte-for-byte untouched (sha256, size, mtime), no
folder for the bad run's --name, and -- for the doctored files -- no marker file: each doctored
file holds a pickle whose loading would create it.
"""
import contextlib
import errno
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import COMMON, DONE, ROOT, SMALL, Workspace, assert_one_line_error, run_cli, run_main

SEED_64 = str(2**64)


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears if a loader ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def doctored_checkpoint(path: Path, marker: Path, **extra) -> str:
    """A checkpoint-shaped file (state_dict of tensors, training keys) with a payload inside."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0, "batch": None, "generation": 0,
                "scheduler": {}, "rng": Payload(marker), **extra}, path)
    return str(path)


def _pickled(marker: Path, plain=False) -> bytes:
    """The payload as torch.save writes it, or (`plain`) as pickle.dumps does."""
    if plain:
        return pickle.dumps(Payload(marker))
    out = io.BytesIO()
    torch.save(Payload(marker), out)
    return out.getvalue()


def _edit_metadata(data: bytes, how: str) -> bytes:
    metadata = json.loads(data)
    edited = {"metadata_without_image_size": {k: v for k, v in metadata.items() if k != "image_size"},
              "metadata_a_list": [metadata], "metadata_an_int": 5,
              "metadata_dataset_a_list": dict(metadata, dataset=["Flower102Pytorch"]),
              "metadata_class_names_an_int": dict(metadata, class_names=2)}[how]
    return json.dumps(edited).encode()


def crafted_pt2(src: Path, dst: Path, how: str, marker: Path) -> str:
    """A copy of a real .pt2 changed as `how` says; where there is a payload, it sits where
    torch.export.load (or, for `duplicate_evil_last`, a reader taking the last copy) unpickles
    or evaluates it:
    weight: weight_0 marked as pickled, its file replaced; constant: a pickled tensor constant;
    opaque: a pickled opaque-object constant; sample_inputs: the example inputs replaced;
    expression: the graph's shape expression calls open(); second_model: a second model whose
    weights config points at a pickled member not ending in .pt; duplicate_evil_first/_last:
    a second sample-inputs member with the payload, before or after the genuine one;
    second_top_folder: a member in another top folder; parent_name: a `../` member;
    truncated: the first half of the file; metadata_*: extra/ke_metadata.json edited."""
    with zipfile.ZipFile(src) as zin:
        top = zin.namelist()[0].split("/", 1)[0]
        members = [(info.filename.split("/", 1)[1], zin.read(info)) for info in zin.infolist()]
    out = []
    for inner, data in members:
        if how == "weight" and inner == "data/weights/model_weights_config.json":
            config = json.loads(data)
            first = next(k for k, e in config["config"].items() if e["path_name"] == "weight_0")
            config["config"][first]["use_pickle"] = True
            data = json.dumps(config).encode()
        elif how == "weight" and inner == "data/weights/weight_0":
            data = _pickled(marker)
        elif how in ("constant", "opaque") and inner == "data/constants/model_constants_config.json":
            name = "tensor_0" if how == "constant" else "opaque_obj_0"
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": name, "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            data = json.dumps(config).encode()
            out.append((f"data/constants/{name}", _pickled(marker, plain=how == "opaque")))
        elif inner == "data/sample_inputs/model.pt":
            if how == "sample_inputs":
                data = _pickled(marker)
            elif how == "duplicate_evil_first":
                out.append((inner, _pickled(marker)))
            elif how == "duplicate_evil_last":
                out.append((inner, data))
                data = _pickled(marker)
            elif how == "second_model":
                out.append(("data/sample_inputs/evil.pt", data))
        elif how == "expression" and inner == "models/model.json":
            data = data.replace(b"Symbol('s", f"open('{marker}', 'w') + Symbol('s".encode(), 1)
            assert str(marker).encode() in data
        elif how == "second_model" and inner == "models/model.json":
            blob = {"path_name": "evil_blob", "is_param": False, "use_pickle": True, "tensor_meta": None}
            out += [("models/evil.json", data),
                    ("data/weights/evil_weights_config.json", json.dumps({"config": {"w": blob}}).encode()),
                    ("data/weights/evil_blob", _pickled(marker)),
                    ("data/constants/evil_constants_config.json", b'{"config": {}}')]
        elif how.startswith("metadata_") and inner == "extra/ke_metadata.json":
            data = _edit_metadata(data, how)
        out.append((inner, data))
    names = [(f"{top}/{inner}", data) for inner, data in out]
    if how == "second_top_folder":
        names.append(("other/archive_format", b"pt2"))
    if how == "parent_name":
        names.append((f"{top}/../data/sample_inputs/evil.pt", _pickled(marker)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # zipfile warns of duplicate names
        with zipfile.ZipFile(dst, "w") as zout:
            for name, data in names:
                zout.writestr(name, data)
    if how == "truncated":
        whole = dst.read_bytes()
        dst.write_bytes(whole[:len(whole) // 2])
    return str(dst)


PAYLOAD_PT2 = ("weight", "constant", "opaque", "sample_inputs", "expression", "second_model",
               "duplicate_evil_first", "duplicate_evil_last", "parent_name")


class Safety(Workspace):
    def copy_experiment(self, name: str, drop_results=True) -> Path:
        """A copy of the finished experiment under another folder name, its results removed so
        that generation 0 looks unfinished (as when a run is killed before its test)."""
        folder = self.ckpt / name
        shutil.copytree(self.done, folder)
        if drop_results:
            (folder / f"{DONE}.csv").unlink()
        return folder

    def edited_experiment(self, name: str, **changes) -> Path:
        """A copy of the finished experiment whose settings.json was edited by hand."""
        folder = self.copy_experiment(name)
        settings = json.loads((folder / "settings.json").read_text())
        (folder / "settings.json").write_text(json.dumps(dict(settings, **changes)))
        return folder


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = Safety(tmp_path_factory.mktemp("safety")).finish_a_run()
    ws.last = ws.done / "gen_0" / "checkpoints" / "epoch_0.state"
    from configs.base_config import Config
    from trainers.tools import export_checkpoint
    ws.slim = ws.base / "slim.pt2"
    export_checkpoint(Config().parse(["--export_slim", str(ws.last), str(ws.slim)]))
    ws.before = ws.snapshot()
    return ws


def marker_of(tmp: Path) -> Path:
    return tmp / "payload_ran"


# ---- the cases: each returns (argv, needles); `train` cases get the workspace's run flags ------

def train(*argv):
    return ("train", list(argv))


def alone(*argv):
    return ("alone", list(argv))


# 1. no code from files

def resume_path_doctored(ws, tmp):
    path = doctored_checkpoint(tmp / "epoch_3.state", marker_of(tmp))
    return train("--resume", path), ["refusing to load " + path, "could run code"]


def resume_latest_with_doctored_resume_state(ws, tmp):
    folder = ws.copy_experiment("doctored_resume")
    path = doctored_checkpoint(folder / "gen_0" / "checkpoints" / "resume.state", marker_of(tmp))
    return alone("--log-dir", str(ws.ckpt), "--name", "doctored_resume", "--resume"), [
        "refusing to load " + path]


def evaluate_doctored(ws, tmp):
    path = doctored_checkpoint(tmp / "model_best.pth", marker_of(tmp))
    return alone("--evaluate", path), ["refusing to load " + path]


def export_slim_doctored(ws, tmp):
    path = doctored_checkpoint(tmp / "epoch_0.state", marker_of(tmp))
    return alone("--export_slim", path, str(tmp / "out.pt2")), ["refusing to load " + path]


def pretrained_doctored(ws, tmp):
    path = doctored_checkpoint(tmp / "imagenet.pth", marker_of(tmp), arch=SMALL[1])
    return train("--pretrained", path), ["refusing to load " + path]


def _crafted_case(how, needles):
    def case(ws, tmp):
        path = crafted_pt2(ws.slim, tmp / "slim.pt2", how, marker_of(tmp))
        return alone("--evaluate", path), [path, *needles]
    case.__name__ = f"evaluate_pt2_{how}"
    return case


PT2_CASES = [_crafted_case(how, needles) for how, needles in (
    ("weight", ["refusing to load", "data/weights/weight_0", "could run code"]),
    ("constant", ["refusing to load", "data/constants/tensor_0", "could run code"]),
    ("opaque", ["refusing to load", "unknown member (data/constants/opaque_obj_0)"]),
    ("sample_inputs", ["refusing to load", "data/sample_inputs/model.pt", "could run code"]),
    ("expression", ["refusing to load", "shape expression", "evaluate as Python"]),
    ("second_model", ["refusing to load", "a second model (models/evil.json)"]),
    ("duplicate_evil_first", ["refusing to load", "two members named", "sample_inputs/model.pt"]),
    ("duplicate_evil_last", ["refusing to load", "two members named", "sample_inputs/model.pt"]),
    ("second_top_folder", ["refusing to load", "2 top-level folders"]),
    ("parent_name", ["refusing to load", "points outside the archive's folder", "../"]),
    ("truncated", ["is not a torch.export (.pt2) file or is truncated"]),
    ("metadata_without_image_size", ["ke_metadata.json has image_size = null, not an integer"]),
    ("metadata_a_list", ["has no slim-model metadata"]),
    ("metadata_an_int", ["has no slim-model metadata"]),
    ("metadata_dataset_a_list", ["ke_metadata.json has dataset = [", "not an object"]),
    ("metadata_class_names_an_int", ["ke_metadata.json has class_names = 2, not a list"]))]


# 2. nothing written outside <log-dir>/<name>/

def log_file_in_another_folder(ws, tmp):
    return train("--log_file", "../other/other.csv"), [
        "--log_file must be a single name", "'../other/other.csv'"]


def log_file_settings_json(ws, tmp):
    return train("--log_file", "settings.json"), ["--log_file: settings.json is a file of the experiment"]


def log_file_lock(ws, tmp):
    return train("--log_file", ".lock"), ["--log_file: .lock is a file of the experiment"]


def log_file_results_csv(ws, tmp):
    return train("--log_file", "bad_log_file_results_csv.csv"), [
        "--log_file: bad_log_file_results_csv.csv is a file of the experiment"]


def name_parent_then_x(ws, tmp):
    return train("--name", "../x"), ["--name must be a single name", "'../x'"]


def name_parent(ws, tmp):
    return train("--name", ".."), ["--name must be a single name", "'..'"]


def name_with_a_slash(ws, tmp):
    return train("--name", "a/b"), ["--name must be a single name", "'a/b'"]


def resume_name_parent(ws, tmp):
    return train("--name", "../" + DONE, "--resume"), ["--name must be a single name"]


# 4. one line, before the first epoch

def batch_size_one(ws, tmp):
    return train("-b", "1"), ["-b/--batch_size", "at least 2"]


def reset_layer_name_that_names_no_layer(ws, tmp):
    return train("--reset_layer_name", "layer9"), [
        "--reset_layer_name layer9", "no conv or linear layer", "features, avgpool, classifier"]


def settings_json_with_an_invalid_value(ws, tmp):
    folder = ws.edited_experiment("edited_value", split_rate=7)
    return alone("--log-dir", str(ws.ckpt), "--name", "edited_value", "--resume"), [
        str(folder / "settings.json"), "split_rate = 7 is not valid", "(0, 1]"]


def settings_json_with_a_refused_combination(ws, tmp):
    folder = ws.edited_experiment("edited_batch", batch_size=1)
    return alone("--log-dir", str(ws.ckpt), "--name", "edited_batch", "--resume"), [
        str(folder / "settings.json"), "-b/--batch_size", "at least 2"]


def settings_json_naming_a_folder_outside(ws, tmp):
    folder = ws.edited_experiment("edited_name", log_file="../../escape.txt")
    return alone("--log-dir", str(ws.ckpt), "--name", "edited_name", "--resume"), [
        str(folder / "settings.json"), 'log_file = "../../escape.txt" is not valid']


def settings_json_with_other_epochs(ws, tmp):
    ws.edited_experiment("edited_epochs", epochs=3)
    return alone("--log-dir", str(ws.ckpt), "--name", "edited_epochs", "--resume"), [
        "says epochs = 3", "was trained with epochs = 1", "restore it"]


def evaluate_on_data_with_other_class_count(ws, tmp):
    make_lists_dataset(tmp / "datasets", "Flower102Pytorch", num_classes=3, per_class=(2, 1, 1),
                       size=(32, 32))
    return alone("--evaluate", str(ws.last), "--data", str(tmp / "datasets")), [
        str(ws.last), "trained on 2 classes and this data has 3", "--set and --data"]


def evaluate_on_data_with_other_class_names(ws, tmp):
    make_lists_dataset(tmp / "datasets", "Flower102Pytorch", num_classes=2, per_class=(2, 1, 1),
                       size=(32, 32), labels=[0, 5])
    return alone("--evaluate", str(ws.last), "--data", str(tmp / "datasets")), [
        str(ws.last), "first difference at index 1"]


def evaluate_pt2_at_another_image_size(ws, tmp):
    return alone("--evaluate", str(ws.slim), "--image_size", "64"), [
        "--image_size 64", "takes 32px inputs"]


def evaluate_random_pt2(ws, tmp):
    path = tmp / "random.pt2"
    path.write_bytes(os.urandom(4096))
    return alone("--evaluate", str(path)), [str(path), "is not a torch.export (.pt2) file"]


def log_dir_under_a_file(ws, tmp):
    (tmp / "somefile").write_text("not a folder\n")
    return train("--log-dir", str(tmp / "somefile" / "sub")), [
        "--log-dir", str(tmp / "somefile"), "is a file, not a folder"]


def export_target_under_a_file(ws, tmp):
    (tmp / "somefile").write_text("not a folder\n")
    return alone("--export_slim", str(ws.last), str(tmp / "somefile" / "slim.pt2")), [
        "--export_slim output folder", "is a file, not a folder"]


def seed_beyond_64_bits(ws, tmp):
    return train("--seed", SEED_64), ["--seed", "an integer in [0, 4294967295]", SEED_64]


CASES = [resume_path_doctored, resume_latest_with_doctored_resume_state, evaluate_doctored,
         export_slim_doctored, pretrained_doctored, *PT2_CASES,
         log_file_in_another_folder, log_file_settings_json, log_file_lock, log_file_results_csv,
         name_parent_then_x, name_parent, name_with_a_slash, resume_name_parent,
         batch_size_one, reset_layer_name_that_names_no_layer,
         settings_json_with_an_invalid_value, settings_json_with_a_refused_combination,
         settings_json_naming_a_folder_outside, settings_json_with_other_epochs,
         evaluate_on_data_with_other_class_count, evaluate_on_data_with_other_class_names,
         evaluate_pt2_at_another_image_size, evaluate_random_pt2, log_dir_under_a_file,
         export_target_under_a_file, seed_beyond_64_bits]


def listing(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def outcomes(ws, tmp_path_factory):
    """{case: (result, needles, snapshot after, marker, files of the workspace after)}."""
    prepared = []
    for case in CASES:
        tmp = tmp_path_factory.mktemp(case.__name__)
        (kind, argv), needles = case(ws, tmp)
        prepared.append((case.__name__, kind, argv, needles, tmp))
    ws.files_before = listing(ws.base)

    found = {}
    for name, kind, argv, needles, tmp in prepared:            # in this process, one at a time
        result = (ws.run(f"bad_{name}", *argv) if kind == "train"
                  else run_main("--num_threads", "0", *argv))
        found[name] = (result, needles, ws.snapshot(), marker_of(tmp))
    ws.files_after = listing(ws.base)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_safety(ws, outcomes, case):
    result, needles, after, marker = outcomes[case.__name__]
    assert_one_line_error(result, needles)
    assert after == ws.before, "a bad run changed the earlier run or its dataset"
    assert not marker.exists(), "loading the file ran its code"
    assert not (ws.ckpt / f"bad_{case.__name__}").exists(), "a bad run left a folder"


def test_bad_runs_wrote_nothing_new_outside_the_experiments_they_name(ws, outcomes):
    """The workspace (log-dir, dataset, exported file) gained only what the resumed copies
    write inside their own folders: their lock, log and TensorBoard folder."""
    new = ws.files_after - ws.files_before
    allowed_folders = ("ckpt/doctored_resume/", "ckpt/edited_epochs/")
    assert all(path.startswith(allowed_folders) for path in new), sorted(new)
    for escaped in ("x", "other", "escape.txt", "a"):
        assert not (ws.ckpt / escaped).exists() and not (ws.base / escaped).exists()


def test_the_doctored_files_do_run_code_without_the_checks(ws, tmp_path):
    """The table's doctored files are real attacks: the unchecked loaders run them. torch.export.load
    and other zip readers differ in which of two same-named members they read, so each copy is
    loaded here; a `../` member is what an unpacking tool would write outside its folder."""
    marker = marker_of(tmp_path)
    path = doctored_checkpoint(tmp_path / "a.state", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    for how in PAYLOAD_PT2:
        marker.unlink()
        path = crafted_pt2(ws.slim, tmp_path / f"{how}.pt2", how, marker)
        if how.startswith("duplicate") or how == "parent_name":
            with zipfile.ZipFile(path) as archive:   # each copy, as one reader or another takes it
                for info in archive.infolist():
                    if info.filename.split("/", 1)[1].startswith(("data/sample_inputs/", "../")):
                        torch.load(io.BytesIO(archive.read(info)), weights_only=False)
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.export.load(path)
            except Exception:                         # most fail after the payload has run
                pass
        assert marker.exists(), how


def test_load_exported_refuses_without_running_anything(ws, tmp_path):
    from errors import UserError
    from utils.export import load_exported
    marker = marker_of(tmp_path)
    for how, member in (("weight", "data/weights/weight_0"),
                        ("sample_inputs", "data/sample_inputs/model.pt")):
        path = crafted_pt2(ws.slim, tmp_path / f"{how}.pt2", how, marker)
        with pytest.raises(UserError) as info:
            load_exported(path)
        assert str(info.value).startswith(f"refusing to load {path}: {member} holds Python objects")
        assert not marker.exists()
    model = load_exported(str(ws.slim))                      # the genuine file still loads
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_load_exported_reads_any_file_name(ws, tmp_path):
    """The checked copy is loaded from memory, so a .pt2 renamed to anything loads the same."""
    from utils.export import load_exported
    renamed = tmp_path / "slim.model"
    shutil.copyfile(ws.slim, renamed)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(load_exported(str(renamed))(x), load_exported(str(ws.slim))(x))


# ---- disk full: one line naming the file, nothing lost, the resume command ------------------

@pytest.fixture
def in_process(caplog):
    """For train_KE_cls.main in this process: INFO logging on (pytest's handlers keep
    basicConfig from setting it), and the log-file handlers a run adds removed afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    caplog.set_level(logging.INFO)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()


def test_disk_full_while_saving_a_checkpoint_then_resume(ws, tmp_path, monkeypatch, capsys,
                                                        in_process):
    import train_KE_cls
    from utils import checkpoint

    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) > 1:                               # initial.state fits, the next does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    log_dir = tmp_path / "ckpt"
    argv = ["--data", str(ws.datasets), "--log-dir", str(log_dir), "--name", "full", *COMMON]
    code = train_KE_cls.main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    exp = log_dir / "full"
    best = exp / "gen_0" / "checkpoints" / "model_best.pth"
    assert lines[0].startswith(f"error: cannot write {best} (No space left on device)"), lines[0]
    assert "the checkpoints already on disk are intact" in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    assert command.endswith(f"--log-dir {log_dir} --name full --data {ws.datasets} --resume")
    # nothing half-written: the failed file's temporary is gone, the earlier one is whole
    checkpoints = exp / "gen_0" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["initial.state"]
    assert torch.load(checkpoints / "initial.state", weights_only=True)["generation"] == 0
    # a kill during a write leaves temporaries: the resume removes them
    for stale in (exp / ".tmp-abc123.part", checkpoints / ".tmp-def456.part"):
        stale.write_bytes(b"half a checkpoint")
    assert train_KE_cls.main(["--log-dir", str(log_dir), "--name", "full",
                              "--data", str(ws.datasets), "--resume"]) == 0
    assert not list(exp.rglob("*.part"))
    assert "removed 2 unfinished checkpoint file(s)" in (exp / "train_log.txt").read_text()
    assert pd.read_csv(exp / "full.csv")["Generation"].tolist() == [0]
    assert ws.snapshot() == ws.before


def test_disk_full_while_writing_the_results(ws, tmp_path, monkeypatch, capsys, in_process):
    import train_KE_cls
    from trainers import knowledge_evolution

    def full_disk(path, rows, columns=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(knowledge_evolution, "append_results", full_disk)
    log_dir = tmp_path / "ckpt"
    code = train_KE_cls.main(["--data", str(ws.datasets), "--log-dir", str(log_dir),
                              "--name", "full_csv", *COMMON])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    csv = log_dir / "full_csv" / "full_csv.csv"
    assert err.startswith(f"error: cannot write {csv} (No space left on device)"), err
    assert err.rstrip().endswith("--resume")
    assert (log_dir / "full_csv" / "gen_0" / "checkpoints" / "epoch_0.state").is_file()


# ---- one run per experiment: the lock ---------------------------------------------------------

HOLDER = r"""
import sys
from pathlib import Path
import train_KE_cls
from trainers import knowledge_evolution

def hold(self):
    Path(sys.argv[1]).write_text("holding\n")    # the lock is taken; training would start now
    import threading
    threading.Event().wait()

knowledge_evolution.GenerationTrainer.train = hold
sys.exit(train_KE_cls.main(sys.argv[2:]))
"""


def test_second_run_on_a_held_experiment_stops_and_kill_9_frees_it(ws, tmp_path):
    log_dir, ready = tmp_path / "ckpt", tmp_path / "ready"
    flags = ["--data", str(ws.datasets), "--log-dir", str(log_dir), "--name", "held"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ready), *flags, *COMMON],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(1500):                           # at most ~5 minutes on a busy machine
            if ready.exists() or holder.poll() is not None:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.wait(timeout=0.2)
        assert ready.exists(), holder.stderr.read().decode()[-3000:] if holder.poll() else "timeout"
        lock = log_dir / "held" / ".lock"
        assert lock.read_text().strip() == str(holder.pid)

        second = run_cli(*flags, "--resume")
        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stdout + second.stderr, second.stderr
        assert f"is in use by process {holder.pid}" in lines[0]
        assert str(log_dir / "held") in lines[0]
        assert holder.poll() is None                    # the holder is untouched
    finally:
        holder.kill()                                   # SIGKILL: no clean-up code runs
        holder.wait(timeout=60)
    assert holder.returncode == -9

    third = run_cli(*flags, "--resume")
    assert third.returncode == 0, third.stderr[-3000:]
    assert pd.read_csv(log_dir / "held" / "held.csv")["Generation"].tolist() == [0]
    assert lock.read_text().strip() != str(holder.pid)   # the third run held it
    assert ws.snapshot() == ws.before
