"""The first hour: flags (help, did-you-mean, the reference's own syntax),
--config_file, and what a first run prints."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.base_config import REFERENCE_ONLY_FLAGS, Config, HelpWithDefaults, build_parser
from configs.config_file import flag_keys
from tests.helpers import ROOT, assert_one_line_error, run_cli

PY = sys.executable


def parse(argv):
    return Config().parse([str(a) for a in argv])


def refused(argv, capsys):
    """The one line (and exit status 2) Config().parse gives `argv`."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------- help on every flag

def visible_actions():
    return [a for a in build_parser()._actions
            if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]


@pytest.mark.parametrize("action", visible_actions(), ids=lambda a: a.option_strings[-1])
def test_every_flag_has_help_with_its_default(action):
    assert action.help and len(action.help) > 15, action.option_strings
    shown = HelpWithDefaults("prog")._get_help_string(action)
    assert "default" in shown, action.option_strings


def test_the_seven_flags_without_help_now_have_it():
    text = subprocess.run([PY, os.path.join(ROOT, "train_KE_cls.py"), "--help"],
                          capture_output=True, text=True).stdout
    for flag, words in [("--conv_type", "SplitConv"), ("--bn_type", "BatchNorm"),
                        ("--linear_type", "classifier"), ("--mode", "fan-in"),
                        ("--nonlinearity", "gain"), ("--optimizer", "optimiser"),
                        ("--momentum", "0.9")]:
        block = text.split(f"  {flag} ", 1)[1].split("\n  -", 1)[0]
        assert words in block and "default" in block, (flag, block)


# ------------------------------------------------------------------------ did-you-mean

@pytest.mark.parametrize("argv,needles", [
    (["--arch", "Split_ResNet19"], ["invalid choice: 'Split_ResNet19'", "did you mean Split_ResNet18"]),
    (["--arch", "resnet18"], ["did you mean Split_ResNet18"]),
    (["--set", "Flowers"], ["did you mean Flowers102"]),
    (["--forget", "kee"], ["did you mean ke?"]),
    (["--task", "retreival"], ["did you mean retrieval?"]),
    (["--optimizer", "adamm"], ["did you mean adam"]),
    (["--lrr", "0.1"], ["unrecognized arguments: --lrr 0.1", "--lrr: did you mean --lr?"]),
    (["--epoch", "3"], ["unrecognized arguments", "did you mean --epochs?"]),
    (["--num_generation", "3"], ["did you mean --num_generations?"]),
])
def test_did_you_mean(argv, needles):
    assert_one_line_error(run_cli(*argv), needles)


def test_no_suggestion_for_nonsense(capsys):
    line = refused(["--arch", "qqqqqqqqq"], capsys)
    assert "did you mean" not in line and "invalid choice" in line


# ------------------------------------------------------- the reference's parser, replayed

RET = ["--set", "CUB200_RET"]
# every flag of the reference's configs/base_config.py, written as the reference takes it,
# with the flags it needs around it in this toolkit
REFERENCE_FLAGS = [
    (["--data", "/mnt/disk1/datasets"], [], "data", "/mnt/disk1/datasets"),
    (["--optimizer", "sgd"], [], "optimizer", "sgd"),
    (["--set", "Flower102Pytorch"], [], "set", "Flower102Pytorch"),
    (["-a", "Split_ResNet18"], [], "arch", "Split_ResNet18"),
    (["--arch", "Split_ResNet50"], [], "arch", "Split_ResNet50"),
    (["--config_file", "CONFIG"], [], "lr", 0.01),
    (["--log-dir", "/tmp/runs"], [], "log_dir", "/tmp/runs"),
    (["--evolve_mode", "rand"], [], "evolve_mode", "rand"),
    (["-t", "4"], [], "num_threads", 4),
    (["--num_threads", "2"], [], "num_threads", 2),
    (["--epochs", "90"], [], "epochs", 90),
    (["-b", "256"], [], "batch_size", 256),
    (["--batch_size", "64"], [], "batch_size", 64),
    (["--lr", "0.1"], [], "lr", 0.1),
    (["--learning-rate", "0.2"], [], "lr", 0.2),
    (["--warmup_length", "0"], [], "warmup_length", 0),
    (["--momentum", "0.9"], [], "momentum", 0.9),
    (["--wd", "1e-4"], [], "weight_decay", 1e-4),
    (["--weight_decay", "5e-4"], [], "weight_decay", 5e-4),
    (["-p", "10"], [], "print_freq", 10),
    (["--print-freq", "100"], [], "print_freq", 100),
    (["--bn_freeze", "1"], RET, "bn_freeze", True),
    (["--bn_freeze", "0"], RET, "bn_freeze", False),
    (["--samples_per_class", "2"], RET, "samples_per_class", 2),
    (["--margin", "0.1"], RET, "margin", 0.1),
    (["--alpha", "32"], RET, "alpha", 32.0),
    (["--ml_loss", "Proxy_Anchor"], RET, "ml_loss", "proxy_anchor"),
    (["--warm", "1"], RET, "warm", 1),
    (["--resume", "/tmp/runs/x/gen_0/checkpoints/epoch_9.state"], ["--name", "x"], "resume",
     "/tmp/runs/x/gen_0/checkpoints/epoch_9.state"),
    (["--pretrained", "weights.pth"], [], "pretrained", "weights.pth"),
    (["--seed", "0"], [], "seed", 0),
    (["--gpu", "0"], [], "gpu", 0),
    (["--test_interval", "10"], [], "test_interval", 10),
    (["--lr_policy", "constant_lr"], [], "lr_policy", "constant_lr"),
    (["--lr_policy", "cosine_lr"], [], "lr_policy", "cosine_lr"),
    (["--multistep-lr-adjust", "30"], [], "multistep_lr_adjust", 30),
    (["--multistep-lr-gamma", "1"], [], "multistep_lr_gamma", 1.0),
    (["--name", "SPLT_CLS_flower"], [], "name", "SPLT_CLS_flower"),
    (["--log_file", "train_log.txt"], [], "log_file", "train_log.txt"),
    (["--save_every", "-1"], [], "save_every", -1),
    (["--num_generations", "100"], [], "num_generations", 100),
    (["--lr-decay-step", "10"], RET, "lr_decay_step", 10),
    (["--lr-decay-gamma", "0.5"], RET, "lr_decay_gamma", 0.5),
    (["--split_rate", "0.5"], [], "split_rate", 0.5),
    (["--bias_split_rate", "0.5"], [], "bias_split_rate", 0.5),
    (["--split_mode", "kels"], [], "split_mode", "kels"),
    (["--split_mode", "wels"], [], "split_mode", "wels"),
    (["--conv_type", "SplitConv"], [], "conv_type", "SplitConv"),
    (["--linear_type", "SplitLinear"], [], "linear_type", "SplitLinear"),
    (["--mode", "fan_in"], [], "mode", "fan_in"),
    (["--nonlinearity", "relu"], [], "nonlinearity", "relu"),
    (["--bn_type", "SplitBatchNorm"], [], "bn_type", "SplitBatchNorm"),
    (["--init", "kaiming_normal"], [], "init", "kaiming_normal"),
    (["--no-bn-decay"], [], "no_bn_decay", True),
    (["--scale-fan"], [], "scale_fan", True),
    (["--cs_kd"], [], "cs_kd", True),
    (["--reset_hypothesis"], ["--split_mode", "wels"], "reset_hypothesis", True),
    (["--label_smoothing", "0.1"], [], "label_smoothing", 0.1),
]
# the reference's flags this toolkit refuses, each with what to use instead
REFERENCE_REFUSED = [["--start-epoch", "3"], ["--world_size", "2"], ["--slimming_factor", "1.0"],
                     ["--emb_dim", "128"], ["--l2-norm", "1"], ["--freeze_weights"],
                     ["--reset_mask"], ["--first_layer_dense"], ["--last_layer_dense"],
                     ["--early_stopping"], ["--first-layer-type", "SplitConv"],
                     ["--trainer", "default"]]


@pytest.mark.parametrize("argv,context,dest,value", REFERENCE_FLAGS,
                         ids=[" ".join(f[0]) for f in REFERENCE_FLAGS])
def test_reference_flag_in_its_own_syntax(argv, context, dest, value, tmp_path):
    argv = [str(tmp_path / "c.yaml") if a == "CONFIG" else a for a in argv]
    (tmp_path / "c.yaml").write_text("lr: 0.01\n")
    cfg = parse(context + argv)
    assert getattr(cfg, dest) == value


@pytest.mark.parametrize("argv", REFERENCE_REFUSED, ids=[a[0] for a in REFERENCE_REFUSED])
def test_reference_flag_refused_says_what_instead(argv, capsys):
    line = refused(argv, capsys)
    assert argv[0] in line and REFERENCE_ONLY_FLAGS[argv[0]] in line


def test_every_reference_flag_is_replayed():
    """The lists above cover the reference's parser: its 63 option strings."""
    reference = {"--data", "--optimizer", "--set", "-a", "--arch", "--config_file", "--log-dir",
                 "--evolve_mode", "-t", "--num_threads", "--epochs", "--start-epoch", "-b",
                 "--batch_size", "--lr", "--learning-rate", "--warmup_length", "--momentum",
                 "--wd", "--weight_decay", "-p", "--print-freq", "--bn_freeze", "--emb_dim",
                 "--samples_per_class", "--margin", "--alpha", "--ml_loss", "--l2-norm", "--warm",
                 "--resume", "--pretrained", "--seed", "--world_size", "--gpu", "--test_interval",
                 "--lr_policy", "--multistep-lr-adjust", "--multistep-lr-gamma", "--name",
                 "--log_file", "--save_every", "--num_generations", "--lr-decay-step",
                 "--lr-decay-gamma", "--split_rate", "--bias_split_rate", "--slimming_factor",
                 "--split_mode", "--conv_type", "--linear_type", "--freeze_weights", "--mode",
                 "--nonlinearity", "--bn_type", "--init", "--no-bn-decay", "--scale-fan",
                 "--cs_kd", "--reset_mask", "--reset_hypothesis", "--first_layer_dense",
                 "--last_layer_dense", "--label_smoothing", "--early_stopping",
                 "--first-layer-type", "--trainer"}
    replayed = {f[0][0] for f in REFERENCE_FLAGS} | {a[0] for a in REFERENCE_REFUSED}
    assert reference - replayed == set()


@pytest.mark.parametrize("argv,expected", [
    (["--bn_freeze"], True), (["--no-bn_freeze"], False), (["--bn_freeze", "0"], False),
    (["--bn_freeze", "1", "--no-bn_freeze"], False), ([], True)])
def test_bn_freeze_switch_forms(argv, expected):
    assert parse(RET + argv).bn_freeze is expected


@pytest.mark.parametrize("argv,needle", [(["--bn_freeze", "2"], "expected 0 or 1"),
                                          (["--no-bn_freeze", "1"], "takes no value")])
def test_bn_freeze_bad_values(argv, needle, capsys):
    assert needle in refused(RET + argv, capsys)


# -------------------------------------------------------------------------- --config_file

def write(path, text):
    path.write_text(text)
    return str(path)


def test_config_file_values_and_command_line_precedence(tmp_path):
    f = write(tmp_path / "run.yaml", "lr: 0.01\narch: Split_mobilenet_v3_small\nepochs: 7\n"
                                     "cs_kd: true\nlabel_smoothing: 0\nwd: 0.001\n")
    cfg = parse(["--config_file", f, "--lr", "0.2", "--epochs", "3"])
    assert (cfg.lr, cfg.epochs) == (0.2, 3)                # the command line wins
    assert cfg.arch == "Split_mobilenet_v3_small" and cfg.cs_kd is True
    assert cfg.label_smoothing == 0.0 and cfg.weight_decay == 0.001
    assert {"lr", "arch", "epochs", "cs_kd", "label_smoothing"} <= set(cfg.given_flags)
    assert cfg.config_file == os.path.abspath(f)
    import hashlib
    assert cfg.config_sha256 == hashlib.sha256(Path(f).read_bytes()).hexdigest()


def test_config_file_gives_task_defaults_as_a_command_line_would(tmp_path):
    f = write(tmp_path / "ret.yaml", "set: CUB200_RET\nbn_freeze: 0\nlr: 0.5\n")
    cfg = parse(["--config_file", f])
    assert cfg.task == "retrieval" and cfg.bn_freeze is False
    assert cfg.lr == 0.5 and cfg.optimizer == "adamw"     # given: kept; not given: the recipe's


@pytest.mark.parametrize("text,needles", [
    ("lrr: 0.1\n", ["unknown key 'lrr'", "did you mean lr"]),
    ("num_generation: 3\n", ["unknown key 'num_generation'", "did you mean num_generations"]),
    ("lr: !!python/object/apply:os.system ['touch PWNED']\n", ["python/object/apply", "remove the tag"]),
    ("lr: -1\n", ["key --lr", "expected a number > 0, got -1"]),
    ("arch: resnet18\n", ["invalid choice", "did you mean Split_ResNet18"]),
    ("cs_kd: 3\n", ["cs_kd", "write true or false"]),
    ("- lr\n- 0.1\n", ["expected a mapping"]),
    ("lr: [0.1\n", ["not valid YAML at line"]),
    ("resume: true\n", ["not settable from a config file"]),
])
def test_config_file_refusals(tmp_path, text, needles):
    f = write(tmp_path / "bad.yaml", text)
    result = run_cli("--config_file", f, "--set", "SyntheticShapes", process=True, cwd=tmp_path)
    assert_one_line_error(result, [f"--config_file {f}"] + needles)
    assert not (tmp_path / "PWNED").exists()


def test_config_file_missing(tmp_path):
    result = run_cli("--config_file", str(tmp_path / "nope.yaml"))
    assert_one_line_error(result, ["nope.yaml: no such file"])


def test_config_file_and_grid_file_agree_on_their_keys(tmp_path):
    """Every key a config file takes, a sweep's grid file takes (fixed:), and a bad one is
    refused by both with the same suggestion."""
    from errors import UserError
    from trainers.sweep_grid import read_grid_file
    for key in ["lr", "learning-rate", "weight_decay", "wd", "arch", "a", "scale-fan",
                "scale_fan", "print_freq", "bn_freeze", "cs_kd"]:
        value = {"arch": "Split_ResNet18", "a": "Split_ResNet18", "scale-fan": "true",
                 "scale_fan": "true", "cs_kd": "true", "bn_freeze": "1"}.get(key, "2")
        grid = write(tmp_path / "g.yaml", f"fixed: {{{key}: {value}}}\n")
        _, fixed = read_grid_file(grid)
        conf = write(tmp_path / "c.yaml", f"{key}: {value}\n")
        extra = ["--set", "CUB200_RET"] if key == "bn_freeze" else []
        assert parse(extra + ["--config_file", conf]) is not None
        assert fixed, key
    with pytest.raises(UserError, match="did you mean lr"):
        read_grid_file(write(tmp_path / "g.yaml", "fixed: {lrr: 1}\n"))
    assert set(flag_keys(build_parser())) >= {"lr", "arch", "scale_fan", "scale-fan"}


# ---------------------------------------------------------------- retrieval labelled as such

def test_retrieval_numbers_are_labelled_recall_on_the_test_classes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.datagen import make_lists_dataset
    from tests.helpers import SMALL
    from utils.csv_utils import read_results
    from utils.report import load_runs
    make_lists_dataset(tmp_path / "d", "Flower102Pytorch", num_classes=4, per_class=(6, 2, 2),
                       size=(32, 32))
    result = run_cli("--data", tmp_path / "d", "--log-dir", tmp_path, "--name", "ret", "--task",
                     "retrieval", *SMALL, "--image_size", "32", "--batch_size", "8",
                     "--num_threads", "0", "--seed", "0", "--lr", "1e-3", "--num_generations",
                     "2", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    epoch_lines = [line for line in result.stdout.splitlines() if ", eta " in line]
    assert len(epoch_lines) == 2
    for line in epoch_lines:
        assert "| test classes Recall@1 " in line and " Recall@4 " in line, line
        assert "(best Recall@1 " in line and "train loss" in line and "proxy top1" in line
        assert " val " not in line and "top5" not in line
    tested = [line for line in result.stdout.splitlines() if ": dense search of the test classes: NMI "
              in line]
    assert len(tested) == 2 and all("Recall@1" in line and "top1" not in line for line in tested)
    header = (tmp_path / "ret" / "ret.csv").read_text().splitlines()[0].split(",")
    assert "Current Tst Test-Class Recall@1" in header and "Best Eval Test-Class Recall@4" in header
    assert not [c for c in header if "Val" in c or c.endswith(("Top 1", "Top 5"))
                and "Proxy" not in c]
    rows = read_results(str(tmp_path / "ret" / "ret.csv"))
    assert rows[0]["Current Tst Test-Class Recall@1"] == rows[0]["R@1"] == \
        rows[0]["Current Tst Top 1"]                         # the reports' name reads it too
    assert len(load_runs([str(tmp_path / "ret")])) == 4      # utils.report reads the file
    assert "| generation | runs | dense test-class Recall@1 (mean ± std) |" in \
        (tmp_path / "ret" / "summary.md").read_text()
    assert "dense test-class Recall@1 | slim test-class Recall@1" in result.stdout
    events = EventAccumulator(str(tmp_path / "ret" / "gen_0" / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test_classes/Recall@1", "test_classes/Recall@4", "train/proxy_top1"} <= tags
    assert not {t for t in tags if t.startswith("val/") or t == "train/top1"}
    summary = EventAccumulator(str(tmp_path / "ret" / "logs"))
    summary.Reload()
    assert set(summary.Tags()["scalars"]) == {"test_classes/dense_Recall@1",
                                              "test_classes/slim_Recall@1"}


# --------------------------------------------------------------------------- the warnings

def test_loss_warning_numbers():
    from trainers.run_checks import loss_warning
    text = loss_warning(10.39, 10, 0.256, 3, 8)
    assert "training loss 10.39 after generation 0 (1 of 3), epoch 0 (1 of 8)" in text
    assert "4.5 x chance (ln 10 = 2.30)" in text and "try --lr 0.0256 (now 0.256)" in text
    assert loss_warning(2.4, 10, 0.1, 3, 8) is None           # near chance: learning starts
    assert loss_warning(4.5, 10, 0.1, 3, 8) is None           # under 2 x chance
    assert loss_warning(float("nan"), 10, 0.1, 3, 8) is None  # the non-finite check says it


def small_run(tmp_path, *argv):
    from tests.helpers import SMALL, TINY
    return run_cli("--data", tmp_path / "d", "--log-dir", tmp_path, "--name", "w", *SMALL, *TINY,
                   "--num_generations", "2", "--epochs", "2", "--num_threads", "0", *argv)


def test_a_loss_far_above_chance_is_warned_once_with_the_fix(tmp_path, monkeypatch):
    from tests.datagen import make_lists_dataset
    from trainers import generation
    make_lists_dataset(tmp_path / "d", "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2),
                       size=(32, 32))
    real = generation.train_one_epoch

    def diverging(*args, **kwargs):               # a run whose loss stays at 9.5
        return dict(real(*args, **kwargs), loss=9.5)
    monkeypatch.setattr(generation, "train_one_epoch", diverging)
    result = small_run(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stdout.splitlines() if "x chance" in line]
    assert len(warnings) == 1, warnings                       # once, not every epoch
    assert ("training loss 9.50 after generation 0 (1 of 2), epoch 0 (1 of 2) is 8.6 x chance "
            "(ln 3 = 1.10)") in warnings[0] and "try --lr 0.005 (now 0.05)" in warnings[0]
    message = warnings[0].split(" ", 1)[1]                    # after the time
    assert message in (tmp_path / "w" / "train_log.txt").read_text()
    monkeypatch.setattr(generation, "train_one_epoch", real)
    calm = small_run(tmp_path, "--name", "calm")
    assert calm.returncode == 0 and "x chance" not in calm.stdout


def test_a_split_smaller_than_a_batch_and_single_image_classes_are_warned(tmp_path):
    from tests.datagen import make_lists_dataset
    make_lists_dataset(tmp_path / "d", "Flower102Pytorch", num_classes=3, per_class=(1, 2, 2),
                       size=(32, 32))
    result = small_run(tmp_path, "--num_generations", "1", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    before = result.stdout.split("epoch 0 (1 of 1)")[0]        # said before training
    assert ("the training split has 3 image(s), fewer than one batch of 8: every epoch is a "
            "single step") in before
    assert "3 class(es) have fewer than 2 training images: 0 (1), 1 (1), 2 (1)" in before


# ----------------------------------------------------------------------------- failing fast

@pytest.mark.parametrize("argv,needle", [
    (["--data", "NOWHERE"], "NOWHERE: no such folder"),
    (["--data", "LAYOUT"], "training list not found"),
    (["--data", "NOLAYOUT"], "dataset folder not found"),
    (["--data", "LAYOUT", "--pretrained", "nope.pth"], "--pretrained nope.pth: no such file"),
    (["--evaluate", "nope.state"], "--evaluate nope.state: no such file"),
    (["--resume", "nope.state", "--name", "x"], "--resume nope.state: no such file"),
    (["--epoch", "3"], "did you mean --epochs"),
])
def test_paths_and_flags_are_refused_before_torch_is_imported(tmp_path, argv, needle):
    """The time itself is measured by benchmarks/bench_fail_fast.py; here: one line, exit 2,
    and torch never imported."""
    (tmp_path / "layout" / "flower102" / "jpg").mkdir(parents=True)
    (tmp_path / "nolayout").mkdir()
    argv = [{"NOWHERE": str(tmp_path / "nowhere"), "LAYOUT": str(tmp_path / "layout"),
             "NOLAYOUT": str(tmp_path / "nolayout")}.get(a, a) for a in argv]
    needle = needle.replace("NOWHERE", str(tmp_path / "nowhere"))
    code = ("import sys\nfrom trainers.command import main\n"
            "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as stop:\n"
            "    status = stop.code\n"
            "sys.exit(status + 100 * any(m == 'torch' or m.startswith('torch.') "
            "for m in sys.modules))\n")
    result = subprocess.run([PY, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, (result.returncode, result.stderr)     # 102: torch imported
    assert len(result.stderr.splitlines()) == 1 and needle in result.stderr, result.stderr


# ---------------------------------------------------------------------------- the predict command

def predict(*argv):
    """`python -m trainers.predict ARGV`, run in this process (as run_cli does)."""
    import contextlib
    import io

    from trainers.predict import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """A finished tiny run on three named classes, its checkpoint and its slim export."""
    from tests.datagen import make_lists_dataset
    from tests.helpers import SMALL, TINY
    base = tmp_path_factory.mktemp("predict")
    make_lists_dataset(base / "d", "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2),
                       size=(40, 32), labels=["daisy", "rose", "tulip"])
    trained = run_cli("--data", base / "d", "--log-dir", base, "--name", "run", *SMALL, *TINY,
                      "--num_generations", "1", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    ckpt = base / "run" / "gen_0" / "checkpoints" / "epoch_0.state"
    exported = run_cli("--export_slim", ckpt, base / "slim.pt2")
    assert exported.returncode == 0, exported.stderr[-2000:]
    return base, ckpt, base / "slim.pt2", base / "d" / "flower102" / "jpg"


def test_predict_a_folder_with_class_names(flowers, tmp_path):
    import csv
    base, ckpt, pt2, images = flowers
    result = predict(pt2, images, "--topk", "2", "--csv", tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr
    files = sorted(str(p) for p in images.rglob("*.jpg"))
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == files          # one row per image, in order
    for line in lines:
        cells = line.split("\t")[1:]
        assert len(cells) == 2
        names = [c.split()[0] for c in cells]
        scores = [float(c.split()[1]) for c in cells]
        assert set(names) <= {"daisy", "rose", "tulip"} and len(set(names)) == 2
        assert scores[0] >= scores[1] > 0 and sum(scores) <= 1.0 + 1e-4
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "class_1", "score_1", "class_2", "score_2"]
    assert [r[0] for r in rows[1:]] == files and rows[1][1] == lines[0].split("\t")[1].split()[0]
    # the checkpoint's dense model answers the same way, with the same names
    dense = predict(ckpt, files[0], "--topk", "3")
    assert dense.returncode == 0, dense.stderr
    cells = dense.stdout.strip().split("\t")
    assert cells[0] == files[0] and sorted(c.split()[0] for c in cells[1:]) == \
        ["daisy", "rose", "tulip"]
    assert sum(float(c.split()[1]) for c in cells[1:]) == pytest.approx(1.0, abs=1e-3)


def test_predict_bad_input_is_one_line(flowers, tmp_path):
    from PIL import Image
    base, ckpt, pt2, images = flowers
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    (tmp_path / "empty").mkdir()
    for argv, needle in [
        ([tmp_path / "nope.pt2", images], "no such file"),
        ([pt2, tmp_path / "nowhere.jpg"], "nowhere.jpg: no such file or folder"),
        ([pt2, tmp_path / "empty"], "a folder without image files"),
        ([pt2, tmp_path / "notes.jpg"], "notes.jpg is not an image file"),
        ([pt2, tmp_path / "big.png", "--max_image_pixels", "1000"],
         "big.png has 90000 pixels, more than --max_image_pixels 1000"),
        ([pt2, images, "--topk", "0"], "expected an integer >= 1"),
        ([pt2, images, "--gallery", images], "is a classifier; drop --gallery"),
        ([pt2, images, "--csv", tmp_path], "is a folder"),
        ([tmp_path / "notes.jpg", images], "is not a readable PyTorch checkpoint"),
    ]:
        result = predict(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_predict_an_embedding_model_searches_a_gallery_or_refuses(tmp_path):
    from tests.datagen import make_lists_dataset
    from tests.helpers import SMALL
    make_lists_dataset(tmp_path / "d", "Flower102Pytorch", num_classes=4, per_class=(6, 2, 2),
                       size=(32, 32))
    trained = run_cli("--data", tmp_path / "d", "--log-dir", tmp_path, "--name", "ret", "--task",
                      "retrieval", *SMALL, "--image_size", "32", "--batch_size", "8",
                      "--num_threads", "0", "--seed", "0", "--lr", "1e-3", "--num_generations",
                      "1", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    ckpt = tmp_path / "ret" / "gen_0" / "checkpoints" / "epoch_0.state"
    images = tmp_path / "d" / "flower102" / "jpg"
    refused = predict(ckpt, images)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "an embedding model (--task retrieval)" in refused.stderr and "--gallery DIR" in \
        refused.stderr
    query = sorted(images.rglob("*.jpg"))[0]
    found = predict(ckpt, query, "--gallery", images, "--topk", "3")
    assert subprocess.run([PY, "-m", "trainers.predict", "--help"], cwd=ROOT,
                          capture_output=True).returncode == 0
    assert found.returncode == 0, found.stderr
    cells = found.stdout.strip().split("\t")
    assert cells[0] == str(query) and len(cells) == 4
    neighbours = [c.rsplit(" ", 1)[0] for c in cells[1:]]
    assert str(query) not in neighbours and all(n.startswith(str(images)) for n in neighbours)
    scores = [float(c.rsplit(" ", 1)[1]) for c in cells[1:]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)


# -------------------------------------------------------------------------- the counting rule

def test_one_counting_rule():
    from utils import counting
    assert counting.generation(0, 3) == "generation 0 (1 of 3)"
    assert counting.epoch(4, 8) == "epoch 4 (5 of 8)"
    assert counting.position(1, 3, 3, 8, 5) == \
        "generation 1 (2 of 3), epoch 3 (4 of 8), after batch 5"
    # a stop mid-epoch and its resume name the same position; a stop after a whole epoch
    # resumes at the start of the next one
    assert counting.resume_point(1, 3, 3, 5, 8) == counting.position(1, 3, 3, 8, 5)
    assert counting.resume_point(1, 3, 4, 0, 8) == "generation 1 (2 of 3), start of epoch 4 (5 of 8)"
    readme = Path(os.path.join(ROOT, "README.md")).read_text(encoding="utf-8")
    assert readme.count("**Counting.**") == 1 and "generation 0 (1 of 3)" in readme


def test_sweep_report_axis_and_rows_count_from_0(tmp_path):
    """The sweep table's rows and the plot's ticks are the generations as in the files."""
    import pandas as pd

    from utils.sweep_report import sweep_table, to_markdown
    frame = pd.DataFrame([{"point": "p", "recipe": "all", "line": "all", "column": "S",
                           "dataset": "S", "generation": g, "last": 3, "kind": "dense",
                           "top1": 10.0 * g} for g in range(4)])
    table = sweep_table(frame)
    assert table["generation"].tolist() == [0, 2, 3]
    markdown = to_markdown(table, "set")
    assert "| all | generation 0 (1 of 4) | dense | 0.00 (n=1) |" in markdown
    assert "| all | generation 3 (4 of 4) | dense | 30.00 (n=1) |" in markdown
    assert "N1" not in markdown and "N4" not in markdown
