"""The trust promises on the sweep's surface, tried as a hostile user would: links planted where
the sweep and its reports write, FIFOs and huge or doctored files where they read, grids that
would never end, two sweeps at once, and the debug executor's Ctrl-C and output. Everything runs
without training (the executor is replaced or the points are written by hand); a case that
would hang without its fix runs in a subprocess with a short timeout."""
import fcntl
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from trainers import sweep
from utils.csv_utils import append_result

ENV = dict(os.environ, OMP_NUM_THREADS="1")
HANG = 60          # seconds: the subprocess of a case that would block forever without its fix


def one_line(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def sweep_cli(*args, timeout=HANG):
    """`python -m trainers.sweep ARGS` in a subprocess that must end within `timeout`."""
    try:
        return subprocess.run([sys.executable, "-m", "trainers.sweep", *map(str, args)],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"trainers.sweep {' '.join(map(str, args))} still running after {timeout} s")


def assert_cli_one_line(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def finished_point(sweep_dir, name, values, dataset="Flower102Pytorch", top1=50.0,
                   generations=1, **settings):
    """A point folder as a finished one-generation run leaves it (settings and results)."""
    folder = sweep_dir / name
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(
        {"num_generations": generations, "set": dataset, "epochs": 1, **settings}))
    for g in range(generations):
        append_result(str(folder / f"{name}.csv"), {"Name": name, "Split Rate": 1.0,
                                                    "Bias Split Rate": 1.0, "Generation": g,
                                                    "Current Tst Top 1": top1})
    return {"name": name, "values": values, "argv": []}


def hand_made_sweep(base, datasets=("Flower102Pytorch",)):
    """A sweep folder with two finished points, one per value of `seed`."""
    sweep_dir = base / "s"
    points = [finished_point(sweep_dir, f"seed-{s}", {"seed": str(s)}, dataset=d)
              for s, d in zip((0, 1), list(datasets) * 2, strict=False)]
    (sweep_dir / "sweep.json").write_text(json.dumps(
        {"grid": [{"flag": "seed", "values": ["0", "1"]}], "fixed": [], "points": points}))
    return sweep_dir


# ---- writes: never through a planted link ------------------------------------------------

def test_a_sweep_folder_that_is_a_link_is_refused_and_nothing_is_written_through_it(
        tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "s").symlink_to(outside)
    monkeypatch.setattr(sweep, "execute", lambda *a: 0)
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1"])
    one_line(capsys, code, "symbolic link")
    assert os.listdir(outside) == []


@pytest.mark.parametrize("planted", ["logs", "logs/p.log", "logs/p.exit"])
def test_the_points_output_and_exit_status_are_never_written_through_a_link(tmp_path, planted):
    from errors import UserError
    from trainers.sweep_state import open_output, record_exit
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    target.mkdir() if planted == "logs" else target.write_text("mine\n")
    sweep_dir = tmp_path / "s"
    (sweep_dir / "logs").mkdir(parents=True) if planted != "logs" else sweep_dir.mkdir()
    (sweep_dir / planted).symlink_to(target)
    with pytest.raises(UserError, match="symbolic link"):
        with open_output(str(sweep_dir), "p") as out:
            out.write(b"output\n")
        record_exit(str(sweep_dir), "p", 1)
    if planted == "logs":
        assert os.listdir(target) == []
    else:
        assert target.read_text() == "mine\n"
    if planted != "logs/p.log":
        return
    with pytest.raises(UserError, match="symbolic link"):
        os.remove(sweep_dir / planted)
        (sweep_dir / "logs" / "p.exit").symlink_to(target)
        record_exit(str(sweep_dir), "p", 1)
    assert target.read_text() == "mine\n"


def test_the_slurm_job_folder_is_never_a_link(tmp_path):
    from errors import UserError
    from trainers.sweep_run import submit_slurm
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "submitit").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        submit_slurm([(["--seed", "0"], ["--resume"], "seed-0")], str(tmp_path / "s"), {}, 1)
    assert os.listdir(outside) == []


@pytest.mark.parametrize("planted", ["report.md", "report.csv", "report_Flower102Pytorch.png"])
def test_the_sweep_report_is_never_written_through_a_link(tmp_path, planted):
    from errors import UserError
    from utils.sweep_report import write_sweep_report
    sweep_dir = hand_made_sweep(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    (sweep_dir / planted).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        write_sweep_report(str(sweep_dir))
    assert victim.read_text() == "mine\n"


def test_a_dataset_name_with_dot_dot_writes_its_plot_inside_the_sweep(tmp_path):
    from utils.sweep_report import write_sweep_report
    sweep_dir = hand_made_sweep(tmp_path / "deep", datasets=("../../escaped",))
    write_sweep_report(str(sweep_dir))
    assert [p.parent for p in tmp_path.rglob("*.png")] == [sweep_dir]
    assert "/" not in next(sweep_dir.glob("report_*escaped.png")).name


@pytest.mark.parametrize("planted", ["summary-methods.md", "summary-methods.png"])
def test_the_methods_comparison_is_never_written_through_a_link(tmp_path, planted):
    from errors import UserError
    from utils.report import write_method_comparison
    runs = [finished_point(tmp_path, f"run{i}", {}, forget=f)["name"]
            for i, f in enumerate(("ke", "none"))]
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    (tmp_path / planted).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        write_method_comparison([str(tmp_path / r) for r in runs], str(tmp_path / "summary"))
    assert victim.read_text() == "mine\n"


# ---- reads: FIFOs, damaged and huge files --------------------------------------------------

def test_status_with_fifos_for_its_files_ends_and_names_them(tmp_path):
    sweep_dir = hand_made_sweep(tmp_path)
    os.remove(sweep_dir / "seed-0" / "settings.json")
    os.mkfifo(sweep_dir / "seed-0" / "settings.json")
    os.remove(sweep_dir / "seed-1" / "seed-1.csv")
    os.mkfifo(sweep_dir / "seed-1" / "seed-1.csv")
    (sweep_dir / "logs").mkdir()
    for name in ("seed-0", "seed-1"):
        os.mkfifo(sweep_dir / "logs" / f"{name}.exit")
        os.mkfifo(sweep_dir / "logs" / f"{name}.log")
    result = sweep_cli("--status", sweep_dir)
    assert "seed-0  failed (cannot read" in result.stdout and "not a regular file" in result.stdout
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "utils.report", str(sweep_dir)], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=HANG)
    assert_cli_one_line(result, "not a regular file")


def test_a_fifo_as_sweep_json_or_grid_file_is_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    os.mkfifo(tmp_path / "s" / "sweep.json")
    assert_cli_one_line(sweep_cli("--status", tmp_path / "s"), "not a regular file")
    assert_cli_one_line(sweep_cli("--name", "s", "--log-dir", tmp_path, "--grid", "seed=0-1"),
                        "not a regular file")
    os.mkfifo(tmp_path / "grid.yaml")
    assert_cli_one_line(sweep_cli("--name", "t", "--log-dir", tmp_path, "--grid_file",
                                  tmp_path / "grid.yaml"), "not a regular file")


@pytest.mark.parametrize("content", ["[1, 2]", '{"points": 5}', '{"points": [{"values": {}}]}',
                                     "[" * 100000 + "]" * 100000, "{"])
def test_a_damaged_sweep_json_is_one_line_for_status_rerun_and_report(tmp_path, capsys,
                                                                      monkeypatch, content):
    from utils import report
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(content)
    one_line(capsys, sweep.main(["--status", str(tmp_path / "s")]), "sweep.json")
    monkeypatch.setattr(sweep, "execute", lambda *a: 0)
    one_line(capsys, sweep.main(["--name", "s", "--log-dir", str(tmp_path), "--grid", "seed=0-1"]),
             "sweep.json")
    one_line(capsys, report.main([str(tmp_path / "s")]), "sweep.json")


def test_a_point_without_num_generations_in_its_settings_is_one_line_for_the_report(
        tmp_path, capsys):
    from utils import report
    sweep_dir = hand_made_sweep(tmp_path)
    (sweep_dir / "seed-1" / "settings.json").write_text(json.dumps({"set": "Flower102Pytorch"}))
    one_line(capsys, report.main([str(sweep_dir)]), "num_generations", "settings.json")


# ---- grids that never end, duplicate keys, switches as text -------------------------------

def test_a_range_of_a_billion_values_is_refused_before_it_is_expanded(tmp_path):
    assert_cli_one_line(sweep_cli("--name", "s", "--log-dir", tmp_path, "--grid",
                                  "seed=0-1000000000"), "give a smaller range")
    assert_cli_one_line(sweep_cli("--name", "s", "--log-dir", tmp_path, "--grid", "seed=0-999",
                                  "--grid", "epochs=1-999"), "points")
    assert not (tmp_path / "s").exists()


# nine levels of ten aliases each, all in the first value of the axis: 10**9 values once
# expanded (printing it in an error message would never end), in less than 500 bytes
ALIAS_BOMB = "grid:\n  seed:\n    - [&a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)) + "]\n"
MERGE_BOMB = "a: &a {x: 1, y: 2}\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} {{<<: [{', '.join(['*' + chr(97 + i)] * 9)}]}}\n"
    for i in range(8)) + "grid:\n  seed: [0]\n"


@pytest.mark.parametrize("content", [ALIAS_BOMB, MERGE_BOMB])
def test_a_yaml_alias_bomb_is_refused_by_its_expanded_size(tmp_path, content):
    (tmp_path / "g.yaml").write_text(content)
    assert len(content) < 1000
    assert_cli_one_line(sweep_cli("--name", "s", "--log-dir", tmp_path, "--grid_file",
                                  tmp_path / "g.yaml", timeout=HANG), "aliases")


@pytest.mark.parametrize("content, needles", [
    ("grid:\n  seed: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
    ("grid:\n  seed: [0, 1]\n  seed: [2]\n", ["'seed' is given twice", "line 3"]),
    ("grid:\n  seed: [0, 1]\nfixed:\n  cs_kd: \"true\"\n", ["cs_kd", "switch", "true or false"]),
    ("grid:\n  seed: [0, 1]\nfixed:\n  cs_kd: 1\n", ["cs_kd", "switch", "true or false"]),
    ("grid:\n  cs_kd: [\"true\", 1]\n", ["cs_kd is a switch"]),
])
def test_grid_files_that_would_be_read_silently_wrong_are_one_line(tmp_path, capsys, content,
                                                                   needles):
    (tmp_path / "g.yaml").write_text(content)
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"),
                       "--grid_file", str(tmp_path / "g.yaml")])
    one_line(capsys, code, *needles)
    assert not (tmp_path / "ckpt").exists()


def test_a_sweep_name_too_long_for_a_folder_is_one_line(tmp_path, capsys):
    code = sweep.main(["--name", "x" * 300, "--log-dir", str(tmp_path), "--grid", "seed=0-1"])
    one_line(capsys, code, "--name", "shorter")


# ---- two sweeps at once, the debug executor ----------------------------------------------

def test_a_second_sweep_on_the_same_folder_stops_in_one_line_and_runs_nothing(
        tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep, "execute", lambda *a: ran.append(a) or 0)
    args = ["--name", "s", "--log-dir", str(tmp_path), "--grid", "seed=0-1"]
    assert sweep.main(args) == 0 and len(ran) == 1
    fd = os.open(tmp_path / "s" / ".sweep.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # as a running sweep holds it
        one_line(capsys, sweep.main(args), "is being run by process", "--status")
        assert len(ran) == 1
    finally:
        os.close(fd)
    assert sweep.main(args) == 0 and len(ran) == 2


def debug_points(tmp_path, *names):
    return [(["--name", n], ["--resume"], n) for n in names]


def test_ctrl_c_in_the_debug_executor_stops_the_sweep(tmp_path, monkeypatch, capsys):
    import trainers.command
    ran = []
    monkeypatch.setattr(trainers.command, "main", lambda argv: ran.append(argv) or 130)
    monkeypatch.setattr(sweep, "todo", lambda d, p: (debug_points(tmp_path, "a", "b"), {}))
    args = type("Args", (), {"executor": "debug"})()
    assert sweep.execute(args, str(tmp_path), []) == 130
    assert ran == [["--name", "a"]]
    assert "run the same command again" in capsys.readouterr().err
    assert (tmp_path / "logs" / "a.exit").read_text() == "130\n"


def test_the_debug_executor_keeps_what_a_point_printed_for_status(tmp_path, monkeypatch, capsys,
                                                                   caplog):
    import logging
    caplog.set_level(logging.INFO)            # as the training command's basicConfig sets it
    import trainers.command
    from trainers.sweep_state import point_state

    def failing(argv):
        logging.getLogger("ke").info("set-up of %s", argv[1])
        print("error: --data /nowhere: no such folder; pass --data", file=sys.stderr)
        return 2
    monkeypatch.setattr(trainers.command, "main", failing)
    assert sweep.run_debug(debug_points(tmp_path, "a"), str(tmp_path)) == {"a": 2}
    assert str(point_state(str(tmp_path), "a")) == \
        "failed (error: --data /nowhere: no such folder; pass --data)"
    assert "set-up of a" in (tmp_path / "logs" / "a.log").read_text()
    assert "error: --data /nowhere" in capsys.readouterr().err        # still on the terminal


def test_a_point_whose_experiment_another_process_runs_is_not_reported_failed(tmp_path,
                                                                              monkeypatch, capsys):
    import trainers.command
    (tmp_path / "a").mkdir()
    (tmp_path / "sweep.json").write_text(json.dumps({"points": [{"name": "a", "values": {}}]}))
    fd = os.open(tmp_path / "a" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)           # as a run of that point holds it

    def refused(argv):
        print(f"error: experiment {tmp_path / 'a'} is in use by process 1", file=sys.stderr)
        return 2
    monkeypatch.setattr(trainers.command, "main", refused)
    monkeypatch.setattr(sweep, "todo", lambda d, p: (debug_points(tmp_path, "a"), {}))
    args = type("Args", (), {"executor": "debug"})()
    try:
        assert sweep.execute(args, str(tmp_path), []) == 0
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert "failed" not in err and "a: run by another process, left to it" in err
