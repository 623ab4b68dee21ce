"""The experiment folder under attack: planted symbolic links are
refused and their targets untouched, a write that fails mid-run ends in one line, every
temporary has one name and one cleanup, and the experiment's own files are checked against its
identity and the model before use."""
import errno
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from errors import UserError
from tests.helpers import COMMON, Workspace, assert_one_line_error, run_main
from trainers.experiment import Experiment
from utils.csv_utils import append_result
from utils.safe_files import open_no_follow, real_folder, remove_stale_temporaries

OUTSIDE = b"a file outside the experiment\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("folder_safety")).finish_a_run()


def planted(tmp_path):
    """A file outside any experiment, for a link to point at."""
    target = tmp_path / "outside.txt"
    target.write_bytes(OUTSIDE)
    return target


def train(ws, log_dir, name, *argv):
    return run_main("--data", ws.datasets, "--log-dir", log_dir, "--name", name, *COMMON, *argv)


# ---- planted symbolic links -----------------------------------------------------------

def test_open_no_follow_refuses_a_link_and_leaves_its_target(tmp_path):
    target, link = planted(tmp_path), tmp_path / "train_log.txt"
    link.symlink_to(target)
    for mode in ("w", "a", "wb"):
        with pytest.raises(UserError, match=f"{link} is a symbolic link"):
            open_no_follow(str(link), mode)
    assert target.read_bytes() == OUTSIDE


def test_a_linked_level_below_the_experiment_is_refused(tmp_path):
    exp, elsewhere = Experiment(tmp_path / "e", "e"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "gen_0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match=re.escape(f"{exp.generation_dir(0)} is a symbolic link")):
        exp.writable(os.path.join(exp.checkpoint_dir(0), "epoch_0.state"))
    assert os.listdir(elsewhere) == []
    created = real_folder(str(tmp_path), str(tmp_path / "a" / "b"))
    assert os.path.isdir(created) and not os.path.islink(tmp_path / "a")


def test_pruning_never_deletes_through_a_linked_folder(tmp_path):
    from trainers.knowledge_evolution import prune_checkpoints
    exp, elsewhere = Experiment(tmp_path / "e", "e"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.state").write_bytes(OUTSIDE)
    os.makedirs(exp.generation_dir(0))
    (tmp_path / "e" / "gen_0" / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="is a symbolic link"):
        prune_checkpoints(exp, 1, keep="last")
    assert (elsewhere / "precious.state").read_bytes() == OUTSIDE


def test_an_experiment_folder_that_is_a_link_is_refused(ws, tmp_path):
    log_dir, elsewhere = tmp_path / "ckpt", tmp_path / "elsewhere"
    log_dir.mkdir()
    elsewhere.mkdir()
    (log_dir / "run").symlink_to(elsewhere, target_is_directory=True)
    result = train(ws, log_dir, "run")
    assert_one_line_error(result, [f"{log_dir / 'run'} is a symbolic link", "outside --log-dir"])
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("where", [".lock", "train_log.txt", "settings.json"])
def test_a_link_planted_where_a_new_run_writes_is_refused(ws, tmp_path, where):
    target, exp = planted(tmp_path), tmp_path / "ckpt" / "run"
    exp.mkdir(parents=True)
    (exp / where).symlink_to(target)
    result = train(ws, tmp_path / "ckpt", "run")
    assert_one_line_error(result, [f"{exp / where} is a symbolic link"])
    assert target.read_bytes() == OUTSIDE


def test_links_planted_for_the_tensorboard_summary_and_results_are_refused(ws, tmp_path):
    """Planted where the run writes after set-up: the TensorBoard folder, then (once that is
    removed) the summary plot; the finished run's results CSV replaced by a link, then."""
    target, exp = planted(tmp_path), tmp_path / "ckpt" / "run"
    exp.mkdir(parents=True)
    (exp / "logs").symlink_to(tmp_path, target_is_directory=True)
    assert_one_line_error(train(ws, tmp_path / "ckpt", "run"), [f"{exp / 'logs'} is a symbolic link"])
    (exp / "logs").unlink()
    (exp / "summary.png").symlink_to(target)
    assert_one_line_error(train(ws, tmp_path / "ckpt", "run"),
                          [f"{exp / 'summary.png'} is a symbolic link"])
    assert target.read_bytes() == OUTSIDE
    (exp / "run.csv").rename(tmp_path / "run.csv")
    (exp / "run.csv").symlink_to(tmp_path / "run.csv")
    assert_one_line_error(train(ws, tmp_path / "ckpt", "run", "--resume"),
                          [f"{exp / 'run.csv'} is a symbolic link"])
    assert target.read_bytes() == OUTSIDE


# ---- one name and one cleanup for every temporary -------------------------------------

def test_the_results_csv_writes_through_the_common_temporary(tmp_path, monkeypatch):
    seen, real_fsync = [], os.fsync

    def look(fd):
        seen.extend(n for n in os.listdir(tmp_path) if n != "exp.csv")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", look)
    append_result(tmp_path / "exp.csv", {"Name": "exp", "Split Rate": 0.5, "Bias Split Rate": 0.5,
                                         "Generation": 0})
    assert len(seen) == 1 and re.fullmatch(r"\.tmp-.+\.part", seen[0]), seen
    assert os.listdir(tmp_path) == ["exp.csv"]


def test_cleanup_removes_temporaries_and_never_deletes_through_a_link(tmp_path):
    target, elsewhere = planted(tmp_path), tmp_path / "elsewhere"
    exp = tmp_path / "exp"
    (exp / "gen_0").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / ".tmp-x.part").write_bytes(OUTSIDE)
    stale = [exp / ".tmp-a.part", exp / "gen_0" / ".tmp-b.part",
             exp / f".exp.csv.{'ab' * 16}.tmp"]                 # the results CSV's old name
    for path in stale:
        path.write_bytes(b"half")
    (exp / ".tmp-link.part").symlink_to(target)
    (exp / "linked").symlink_to(elsewhere, target_is_directory=True)
    (exp / "keep.csv").write_bytes(b"kept")
    assert remove_stale_temporaries(str(exp)) == 3
    assert not any(p.exists() for p in stale)
    assert (exp / ".tmp-link.part").is_symlink() and target.read_bytes() == OUTSIDE
    assert (elsewhere / ".tmp-x.part").read_bytes() == OUTSIDE
    assert (exp / "keep.csv").read_bytes() == b"kept"


# ---- mid-run write faults end in one line ---------------------------------------------

def fails(error_number):
    def write(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))
    return write


def test_a_refused_tensorboard_write_during_training_is_one_line(ws, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter
    monkeypatch.setattr(SummaryWriter, "add_scalar", fails(errno.EROFS))
    result = train(ws, tmp_path, "ro")
    assert_one_line_error(result, ["cannot write", "logs (Read-only file system)",
                                   "checkpoints already on disk are intact", "--resume"])


def test_a_full_disk_while_writing_the_log_is_one_line(ws, tmp_path, monkeypatch):
    from trainers import run_writes
    real_emit, calls = run_writes.RunLog.emit, []

    def emit(self, record):
        calls.append(record)
        if len(calls) > 3:                                # set-up logged, then the disk is full
            self.stream.write = fails(errno.ENOSPC)
        return real_emit(self, record)

    monkeypatch.setattr(run_writes.RunLog, "emit", emit)
    result = train(ws, tmp_path, "full_log")
    assert_one_line_error(result, [f"cannot write {tmp_path / 'full_log' / 'train_log.txt'} "
                                   "(No space left on device)", "resume with: "])


def test_a_refused_summary_plot_is_one_line(ws, tmp_path, monkeypatch):
    from utils import report
    monkeypatch.setattr(report, "plot", fails(errno.EROFS))
    result = train(ws, tmp_path, "ro_png")
    assert_one_line_error(result, ["cannot write", "summary.{md,csv,png} (Read-only file system)",
                                   "--resume"])


def test_a_full_disk_while_saving_at_a_stop_signal_is_one_line(ws, tmp_path, monkeypatch):
    """The state saved when a stop signal arrives (written in the background) is waited for: a
    failed write is reported, never "a resumable checkpoint is saved"."""
    import signal

    from trainers import generation, signals
    real_save = generation.atomic_save

    def save(obj, path):
        if obj.get("batch") is not None:                # the stop's mid-epoch state
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path)

    def stop_now(self):                                 # SIGTERM during the first batch
        self.signal_number = signal.SIGTERM
        return True
    monkeypatch.setattr(generation, "atomic_save", save)
    monkeypatch.setattr(signals.StopRequest, "__call__", stop_now)
    result = train(ws, tmp_path, "stopped_full")
    state = tmp_path / "stopped_full" / "gen_0" / "checkpoints" / "resume.state"
    assert_one_line_error(result, [f"cannot write {state} (No space left on device)", "--resume"])
    assert "resumable checkpoint is saved" not in result.stderr


def test_a_full_disk_while_writing_settings_is_one_line(ws, tmp_path, monkeypatch):
    from trainers import experiment
    monkeypatch.setattr(experiment, "atomic_write_json", fails(errno.ENOSPC))
    result = train(ws, tmp_path, "full_settings")
    assert_one_line_error(result, [f"cannot write {tmp_path / 'full_settings' / 'settings.json'}",
                                   "run the same command again"])


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 9 MB tmpfs: the settings, the log and initial.state fit, epoch_0.state does not."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # a failed run's writer may hold a file


def test_a_really_full_disk_during_a_checkpoint_write_is_one_line(ws, small_tmpfs):
    result = train(ws, small_tmpfs, "full")
    checkpoints = small_tmpfs / "full" / "gen_0" / "checkpoints"
    assert_one_line_error(result, [f"cannot write {checkpoints / 'model_best.pth'} (No space left",
                                   "resume with: "])
    assert sorted(os.listdir(checkpoints)) == ["initial.state"]       # no temporary left


# ---- the experiment's identity, settings and checkpoints ------------------------------

def test_a_resume_takes_the_machine_flags_from_its_command_line_and_the_rest_from_settings(ws):
    """configs/flag_kinds.py: --num_threads describes the machine (the command line wins, and it
    is not compared with the checkpoints); --lr describes the experiment (settings.json wins)."""
    from configs.base_config import Config
    from trainers.experiment import open_experiment
    saved = json.loads((ws.done / "settings.json").read_text())
    cfg, _, _ = open_experiment(Config().parse([
        "--log-dir", str(ws.ckpt), "--name", ws.done.name, "--resume", "--data", str(ws.datasets),
        "--num_threads", str(saved["num_threads"] + 1), "--lr", str(saved["lr"] * 3)]))
    assert cfg.num_threads == saved["num_threads"] + 1 and cfg.lr == saved["lr"]


def test_settings_and_checkpoints_carry_one_identity(ws):
    settings = json.loads((ws.done / "settings.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{32}", settings["experiment_id"])
    for name in ("initial.state", "epoch_0.state"):
        ckpt = torch.load(ws.done / "gen_0" / "checkpoints" / name, weights_only=True)
        assert ckpt["config"]["experiment_id"] == settings["experiment_id"]


@pytest.fixture
def in_generation_0(ws, tmp_path):
    """A copy of the finished run whose results were not written yet: --resume continues
    generation 0 (from its checkpoints)."""
    exp = tmp_path / "ckpt" / "done"
    shutil.copytree(ws.done, exp)
    (exp / "done.csv").unlink()
    return exp


def resume(ws, exp):
    return run_main("--data", ws.datasets, "--log-dir", exp.parent, "--name", exp.name, "--resume")


@pytest.mark.parametrize("key, value, needle", [
    ("epochs", 3, "says epochs = 3 but"),
    ("seed", 7, "says seed = 7 but"),
    ("lr", 0.5, "says lr = 0.5 but"),
    ("split_rate", 0.25, "says split_rate = 0.25 but"),
    ("batch_size", 10**30, f"batch_size = {10**30} is not valid (expected an integer in [1, 65536]"),
    ("epochs", None, "says epochs = 200 but"),                   # deleted: the default
    ("epochs", "1", 'epochs = "1" is a string'),
    ("arch", "Split_ResNet18", 'says arch = "Split_ResNet18" but'),
])
def test_an_edit_during_generation_0_is_refused(ws, in_generation_0, key, value, needle):
    settings = json.loads((in_generation_0 / "settings.json").read_text())
    if value is None:
        del settings[key]
    else:
        settings[key] = value
    (in_generation_0 / "settings.json").write_text(json.dumps(settings))
    assert_one_line_error(resume(ws, in_generation_0), [needle, "settings.json"])


@pytest.mark.parametrize("spoil, needle", [
    (lambda state: state["config"].update(experiment_id="0" * 32), "belongs to another experiment"),
    (lambda state: state.pop("config"), "carries no training configuration"),
], ids=["another_experiment", "no_config"])
def test_a_resume_state_of_another_or_no_experiment_is_refused(ws, in_generation_0, spoil, needle):
    checkpoints = in_generation_0 / "gen_0" / "checkpoints"
    state = torch.load(checkpoints / "epoch_0.state", weights_only=True)
    spoil(state)
    torch.save(state, checkpoints / "resume.state")
    assert_one_line_error(resume(ws, in_generation_0), [f"{checkpoints / 'resume.state'} {needle}"])


def test_a_resume_state_that_does_not_fit_the_model_is_refused(ws, in_generation_0):
    checkpoints = in_generation_0 / "gen_0" / "checkpoints"
    state = torch.load(checkpoints / "epoch_0.state", weights_only=True)
    state["batch"] = 0                                    # mid-epoch: the trainer loads it
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = state["state_dict"][first].double()
    torch.save(state, checkpoints / "resume.state")
    assert_one_line_error(resume(ws, in_generation_0),
                          ["resume.state does not fit the model", f"its tensor {first} is "
                           "torch.float64"])


def crafted(ws, tmp_path, change) -> str:
    ckpt = torch.load(ws.done / "gen_0" / "checkpoints" / "epoch_0.state", weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.state"
    torch.save(ckpt, path)
    return str(path)


def reshape_first(ckpt):
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = torch.zeros(3)


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["config"].update(arch="NoSuchNet"), "arch = \"NoSuchNet\" is not valid"),
    (lambda c: c.update(config={"arch": "Split_mobilenet_v3_small"}), "num_cls = None"),
    (lambda c: c["config"].update(epochs="6"), 'epochs = "6" is a string'),
    (reshape_first, "has shape [3], the model's"),
], ids=["unknown-arch", "minimal-config", "string-epochs", "reshaped"])
@pytest.mark.parametrize("command", ["--evaluate", "--export_slim"])
def test_a_crafted_checkpoint_is_one_line_under_evaluate_and_export(ws, tmp_path, change, needle,
                                                                     command):
    path = crafted(ws, tmp_path, change)
    argv = [command, path] + ([str(tmp_path / "out.pt2")] if command == "--export_slim" else [])
    result = run_main(*argv, "--data", ws.datasets)
    assert_one_line_error(result, [path, needle])
    assert not (tmp_path / "out.pt2").exists()
