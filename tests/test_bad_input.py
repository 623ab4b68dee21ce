"""Every kind of bad input, run through train_KE_cls.main with the user's flags in this process
(tests/helpers.run_cli, which gives a process's exit status and output): exit status 2, exactly
one line on stderr that names the problem, no traceback, and nothing of an earlier run changed.

One tiny run finishes first (module fixture); the bytes and modification times of every file
of it, and of the dataset it used, are compared before and after each bad run. Bad runs use
their own --name, except the cases that are about the existing experiment.
"""
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from configs.base_config import Config
from models import factory
from tests.datagen import write_list
from tests.helpers import COMMON, DONE, SMALL, Workspace, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("bad_input")).finish_a_run()
    ws.before = ws.snapshot()
    assert any(p.endswith(f"{DONE}.csv") for p in ws.before)
    return ws


def append_rows(csv_path: Path, *lines: str) -> int:
    """Append raw lines to a list; return the line number of the first one."""
    first = len(csv_path.read_text().splitlines()) + 1
    with open(csv_path, "a") as f:
        f.write("".join(line + "\n" for line in lines))
    return first


# ---- the cases: each returns (extra argv, needles the one stderr line must contain) -------------

def missing_dataset_folder(ws, tmp):
    return ["--data", str(tmp / "nowhere")], [str(tmp / "nowhere"), "--set SyntheticShapes"]


def csv_without_label(ws, tmp):
    folder = ws.dataset_copy(tmp)
    trn = folder / "lists" / "trn.csv"
    trn.write_text(trn.read_text().replace("file_name,label", "file_name,class", 1))
    return ["--data", str(tmp / "datasets")], [str(trn), "no 'label' column"]


def image_does_not_exist(ws, tmp):
    folder = ws.dataset_copy(tmp)
    trn = folder / "lists" / "trn.csv"
    line = append_rows(trn, "class_0/no_such_image.jpg,0")
    return ["--data", str(tmp / "datasets")], [
        str(trn), "1 of 9 listed images do not exist",
        f"line {line}: class_0/no_such_image.jpg does not exist", "--skip_bad_images"]


def truncated_jpeg(ws, tmp):
    folder = ws.dataset_copy(tmp)
    image = folder / "jpg" / "class_1" / "trn_002.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])             # a download cut short
    return ["--data", str(tmp / "datasets")], [
        str(folder / "lists" / "trn.csv"), "line 8: class_1/trn_002.jpg is truncated",
        "--skip_bad_images"]


def not_an_image(ws, tmp):
    folder = ws.dataset_copy(tmp)
    (folder / "jpg" / "class_0" / "val_001.jpg").write_text("<html>404 Not Found</html>\n")
    return ["--data", str(tmp / "datasets")], [
        str(folder / "lists" / "val.csv"), "line 3: class_0/val_001.jpg is not an image file"]


def empty_trn_csv(ws, tmp):
    folder = ws.dataset_copy(tmp)
    write_list(folder / "lists" / "trn.csv", [])
    return ["--data", str(tmp / "datasets")], [str(folder / "lists" / "trn.csv"), "no rows"]


def val_label_absent_from_training(ws, tmp):
    folder = ws.dataset_copy(tmp)
    val = folder / "lists" / "val.csv"
    line = append_rows(val, "class_1/tst_000.jpg,7")
    return ["--data", str(tmp / "datasets")], [
        str(val), "1 row(s) have labels that do not appear in", "trn.csv", f"first at line {line}"]


def duplicate_row(ws, tmp):
    folder = ws.dataset_copy(tmp)
    trn = folder / "lists" / "trn.csv"
    line = append_rows(trn, "class_0/trn_001.jpg,0")
    return ["--data", str(tmp / "datasets")], [
        str(trn), "1 duplicate row(s)", f"line {line}: class_0/trn_001.jpg again (first at line 3)"]


def malformed_rows(ws, tmp):
    folder = ws.dataset_copy(tmp)
    trn = folder / "lists" / "trn.csv"
    line = append_rows(trn, "class_0/trn_000.jpg", "class_1/trn_000.jpg,", "a,b.jpg,1")
    return ["--data", str(tmp / "datasets")], [
        str(trn), "3 malformed row(s)", f"line {line}: 1 field, the header has 2",
        f"line {line + 1}: empty label", f"line {line + 2}: 3 fields"]


def unknown_arch(ws, tmp):
    return ["--arch", "Split_ResNet7"], ["--arch", "Split_ResNet7", "Split_ResNet18"]


def split_rate_zero(ws, tmp):
    return ["--split_rate", "0"], ["--split_rate", "(0, 1]"]


def split_rate_above_one(ws, tmp):
    return ["--split_rate", "1.5"], ["--split_rate", "(0, 1]", "1.5"]


def zero_epochs(ws, tmp):
    return ["--epochs", "0"], ["--epochs", ">= 1"]


def name_already_holds_a_run(ws, tmp):
    return ["--name", DONE], [str(ws.done), "already holds a run", "--resume"]


def resume_name_that_holds_nothing(ws, tmp):
    return ["--name", "never_started", "--resume"], [
        "nothing to resume", str(ws.ckpt / "never_started")]


def resume_file_that_is_not_a_checkpoint(ws, tmp):
    noise = tmp / "noise.state"
    noise.write_bytes(os.urandom(2048))
    return ["--resume", str(noise)], [str(noise), "not a readable PyTorch checkpoint"]


def pretrained_of_another_arch(ws, tmp):
    other = factory.get_model(Config().parse(["--arch", "Split_ResNet34"]))
    path = tmp / "resnet34.pth"
    torch.save({"arch": "Split_ResNet34", "state_dict": other.state_dict()}, path)
    return ["--pretrained", str(path)], [str(path), "Split_ResNet34", f"--arch {SMALL[1]}"]


def pretrained_of_another_split_rate(ws, tmp):
    last = ws.done / "gen_0" / "checkpoints" / "epoch_0.state"   # the finished run's, rate 0.5
    return ["--pretrained", str(last), "--split_rate", "0.25"], [
        str(last), "trained with --split_rate 0.5, not 0.25"]


def pretrained_bare_weights_of_another_split_rate(ws, tmp):
    cfg = Config().parse([*SMALL, "--split_rate", "0.25"])
    cfg.num_cls = 2                                         # the dataset's class count
    path = tmp / "rate_025.pth"
    torch.save({"arch": SMALL[1], "state_dict": factory.get_model(cfg).state_dict()}, path)
    return ["--pretrained", str(path)], [str(path), "split masks that differ", "--split_rate 0.5"]


# ---- flag extremes and names: refused before anything is read or created -------------------------

def _flag_case(name, argv, needles):
    def case(ws, tmp):
        return [a.replace("CKPT", str(ws.done / "gen_0" / "checkpoints" / "epoch_0.state"))
                for a in argv], needles
    case.__name__ = name
    return case


LONG_NAME = "n" * 214                         # + 42 for the CSV temporary: 256 > NAME_MAX
FLAG_CASES = [_flag_case(*spec) for spec in (
    ("batch_size_10_to_the_30", ["-b", str(10**30)], ["-b/--batch_size", "[1, 65536]"]),
    ("image_size_100000", ["--image_size", "100000"], ["--image_size", "[1, 4096]", "100000"]),
    ("num_threads_10000", ["--num_threads", "10000"], ["-t/--num_threads", "10000", "4 per core"]),
    ("reset_layer_name_empty", ["--reset_layer_name", ""], ["--reset_layer_name: '' names no layer"]),
    ("export_slim_to_empty", ["--export_slim", "CKPT", ""], ["--export_slim", "ending in .pt2, got ''"]),
    ("export_slim_to_a_folder_path", ["--export_slim", "CKPT", "out/"], ["ending in .pt2, got 'out/'"]),
    ("export_slim_not_pt2", ["--export_slim", "CKPT", "slim.bin"], ["ending in .pt2, got 'slim.bin'"]),
    ("name_too_long", ["--name", LONG_NAME], ["--name: 214 characters is too long", "at most 213"]),
    ("log_file_logs", ["--log_file", "logs"], ["--log_file: logs is a file of the experiment"]),
    ("log_file_gen_0", ["--log_file", "gen_0"], ["--log_file: gen_0 is a file of the experiment"]),
    ("log_file_compute", ["--log_file", "compute.json"], ["--log_file: compute.json is a file of"]),
    ("log_file_summary", ["--log_file", "summary.md"], ["--log_file: summary.md is a file of"]),
)]


CASES = [*FLAG_CASES, missing_dataset_folder, csv_without_label, image_does_not_exist, truncated_jpeg,
         not_an_image, empty_trn_csv, val_label_absent_from_training, duplicate_row,
         malformed_rows, unknown_arch, split_rate_zero, split_rate_above_one, zero_epochs,
         name_already_holds_a_run, resume_name_that_holds_nothing,
         resume_file_that_is_not_a_checkpoint, pretrained_of_another_arch,
         pretrained_of_another_split_rate, pretrained_bare_weights_of_another_split_rate]


@pytest.fixture(scope="module")
def outcomes(ws, tmp_path_factory):
    """{case name: (completed run, needles, snapshot taken right after it)}. The bad runs go
    one after another in this process (`run_main`); the finished run is a real CLI run."""
    prepared = [(case.__name__, *case(ws, tmp_path_factory.mktemp(case.__name__)))
                for case in CASES]

    found = {}
    for name, argv, needles in prepared:
        result = ws.run(f"bad_{name}", *argv)
        found[name] = (result, needles, ws.snapshot())
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input(ws, outcomes, case):
    result, needles, after = outcomes[case.__name__]
    assert_one_line_error(result, needles)
    assert after == ws.before, "a bad run changed the earlier run or its dataset"
    assert not (ws.ckpt / f"bad_{case.__name__}").exists(), "a bad run left a folder"
    assert not (ws.ckpt / LONG_NAME).exists()


def test_a_name_that_exists_as_a_file_is_refused_before_the_data_is_read(ws, tmp_path):
    log_dir = tmp_path / "ckpt"
    log_dir.mkdir()
    (log_dir / "taken").write_text("mine\n")
    result = run_cli("--data", str(tmp_path / "no_such_data"), "--log-dir", str(log_dir),
                     "--name", "taken", *COMMON)
    assert_one_line_error(result, [f"experiment folder {log_dir / 'taken'} is a file"])
    assert (log_dir / "taken").read_text() == "mine\n"


def test_longest_name_still_fits():
    assert Config().parse(["--name", "n" * 213]).name == "n" * 213


def test_skip_bad_images_drops_them_with_a_warning(ws, tmp_path):
    folder = ws.dataset_copy(tmp_path)
    image = folder / "jpg" / "class_1" / "trn_001.jpg"
    image.write_bytes(image.read_bytes()[:300])
    append_rows(folder / "lists" / "trn.csv", "class_0/gone.jpg,0")
    result = run_cli("--data", str(tmp_path / "datasets"), "--log-dir", str(tmp_path / "ckpt"),
                     "--name", "skipped", "--skip_bad_images", *COMMON)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    warning = [line for line in result.stdout.splitlines() if "--skip_bad_images" in line]
    assert len(warning) == 1, result.stdout
    assert "dropped 2 of 9 rows" in warning[0] and "trn.csv" in warning[0]
    assert "class_1/trn_001.jpg is truncated" in warning[0]
    assert "class_0/gone.jpg does not exist" in warning[0]
    assert "--skip_bad_images" in (tmp_path / "ckpt" / "skipped" / "train_log.txt").read_text()
    rows = pd.read_csv(tmp_path / "ckpt" / "skipped" / "skipped.csv")
    assert rows["Generation"].tolist() == [0]
    assert ws.snapshot() == ws.before


# ---- the same checks in-process: counting, listing, skipping ------------------------------------

def spoil(folder: Path, name: str, how: str):
    image = folder / "jpg" / name
    if how == "truncate":
        image.write_bytes(image.read_bytes()[:200])
    elif how == "delete":
        image.unlink()
    else:
        image.write_text(how)


def load(root: Path, *flags):
    from data.loading import get_data
    return get_data(Config().parse(["--data", str(root), "--image_size", "32", "-t", "0", *flags]))


def load_error(root: Path, *flags) -> str:
    from data import DataError
    with pytest.raises(DataError) as info:
        load(root, *flags)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_every_bad_image_is_counted_and_the_first_few_listed(ws, tmp_path):
    folder = ws.dataset_copy(tmp_path)
    for i in range(4):
        spoil(folder, f"class_0/trn_00{i}.jpg", "delete")
    spoil(folder, "class_1/trn_000.jpg", "truncate")
    spoil(folder, "class_1/tst_001.jpg", "not an image")
    message = load_error(tmp_path / "datasets")
    assert message.startswith(str(folder / "lists" / "trn.csv"))
    assert "5 of 8 listed images" in message and "missing (4) or unreadable (1)" in message
    assert "line 2: class_0/trn_000.jpg does not exist" in message and "and 2 more" in message
    assert "(also 1 in tst.csv)" in message


def test_skip_bad_images_cannot_drop_a_whole_list_or_class(ws, tmp_path):
    folder = ws.dataset_copy(tmp_path)
    for i in range(2):
        spoil(folder, f"class_{i}/val_000.jpg", "delete")
        spoil(folder, f"class_{i}/val_001.jpg", "truncate")
    message = load_error(tmp_path / "datasets", "--skip_bad_images")
    assert str(folder / "lists" / "val.csv") in message and "none of its 4" in message

    shutil.rmtree(tmp_path / "datasets")
    folder = ws.dataset_copy(tmp_path)
    for i in range(4):
        spoil(folder, f"class_1/trn_00{i}.jpg", "truncate")
    message = load_error(tmp_path / "datasets", "--skip_bad_images")
    assert "dropped every training image of label(s) 1" in message


def test_skip_bad_images_keeps_the_rest_in_order(ws, tmp_path):
    folder = ws.dataset_copy(tmp_path)
    spoil(folder, "class_0/trn_001.jpg", "truncate")
    spoil(folder, "class_1/tst_000.jpg", "delete")
    splits = load(tmp_path / "datasets", "--skip_bad_images")
    assert splits.train.files == ["class_0/trn_000.jpg", "class_0/trn_002.jpg", "class_0/trn_003.jpg",
                                  "class_1/trn_000.jpg", "class_1/trn_001.jpg", "class_1/trn_002.jpg",
                                  "class_1/trn_003.jpg"]
    assert splits.train.targets == [0, 0, 0, 1, 1, 1, 1]
    assert splits.test.files == ["class_0/tst_000.jpg", "class_0/tst_001.jpg", "class_1/tst_001.jpg"]
    assert len(splits.val) == 4


def test_image_spoiled_after_the_check_fails_in_a_worker_as_one_line(ws, tmp_path):
    """The up-front check catches bad files; one that goes bad later still gives one line,
    not the DataLoader's re-raised worker traceback."""
    from torch.utils.data import DataLoader

    from data import DataError
    folder = ws.dataset_copy(tmp_path)
    splits = load(tmp_path / "datasets", "--cache_budget", "0")   # read per sample, not cached
    spoil(folder, "class_0/val_000.jpg", "truncate")
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(splits.val, batch_size=2, num_workers=1)))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"cannot read image {folder / 'jpg' / 'class_0' / 'val_000.jpg'}")
