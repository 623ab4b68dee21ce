"""`python -m trainers.sweep`: a grid of tiny runs through the local pool (real processes), a
sweep killed and run again, submitit's requeue on its pre-emption signal, the sbatch file of the
SLURM executor, --status, and bad input."""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL, snapshot
from trainers import sweep, sweep_state

GRID = ["--grid", "label_smoothing=0,0.1", "--grid", "seed=0-1"]
POINTS = ["label_smoothing-0_seed-0", "label_smoothing-0_seed-1", "label_smoothing-0.1_seed-0",
          "label_smoothing-0.1_seed-1"]
TRAINING = ["--num_generations", "1", "--epochs", "2", *SMALL, "--image_size", "32",
            "--batch_size", "8", "--num_threads", "0", "--lr", "0.05", "--warmup_length", "1",
            "--test_interval", "1", "--save_every_minutes", "0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def sweep_command(base, name, *flags):
    return [sys.executable, "-m", "trainers.sweep", "--name", name, "--log-dir",
            str(base / "ckpt"), *flags, "--", "--data", str(base / "datasets"), *TRAINING]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny dataset (4 training batches per epoch) and a 2x2 sweep run to its end."""
    base = tmp_path_factory.mktemp("sweep")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=2, per_class=(16, 2, 2),
                       size=(32, 32))
    result = subprocess.run(sweep_command(base, "grid", *GRID, "--parallel", "2"), cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, result


def final_weights(exp):
    state = torch.load(exp / "gen_0" / "checkpoints" / "epoch_1.state", weights_only=True)
    return state["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_grid_runs_every_point_and_reports_their_results(finished):
    base, result = finished
    folder = base / "ckpt" / "grid"
    assert sorted(p.name for p in folder.iterdir() if (p / "settings.json").exists()) == \
        sorted(POINTS)
    assert result.stdout.splitlines()[0] == "grid: 0 done, 2 running, 0 failed, 2 pending"
    assert "grid: 4 done, 0 running, 0 failed, 0 pending" in result.stdout
    described = json.loads((folder / "sweep.json").read_text())
    assert described["grid"] == [{"flag": "label_smoothing", "values": ["0", "0.1"]},
                                 {"flag": "seed", "values": ["0", "1"]}]
    assert described["fixed"] == ["--data", str(base / "datasets"), *TRAINING]
    assert described["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert re.fullmatch(r"[0-9a-f]{40}", described["versions"]["git_commit"])
    settings = json.loads((folder / POINTS[3] / "settings.json").read_text())
    assert (settings["label_smoothing"], settings["seed"]) == (0.1, 1)

    table = pd.read_csv(folder / "report.csv")
    for smoothing in ("0", "0.1"):
        tops = [pd.read_csv(folder / p / f"{p}.csv")["Current Tst Top 1"].iloc[-1]
                for p in POINTS if p.startswith(f"label_smoothing-{smoothing}_")]
        row = table[table["recipe"] == f"label_smoothing {smoothing}"]
        assert row[["generation", "generations", "kind", "column", "runs"]].values.tolist() == \
            [[0, 1, "dense", "Flower102Pytorch", 2]]
        assert row["mean"].iloc[0] == pytest.approx(sum(tops) / 2, abs=0.005)
        assert row["std"].iloc[0] == pytest.approx(pd.Series(tops).std(), abs=0.005)
    assert (folder / "report_Flower102Pytorch.png").stat().st_size > 0
    assert (folder / "report.md").read_text() in result.stdout


def test_report_command_recognises_a_sweep_folder(finished, capsys):
    from utils.report import main
    folder = finished[0] / "ckpt" / "grid"
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith((folder / "report.md").read_text())
    assert f"wrote {folder}/report.md" in out


def wait_for_file(proc, path):
    """Until `path` exists, failing if `proc` ends first."""
    while not path.exists():
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"ended before {path} appeared: {proc.communicate()}")


def test_running_a_finished_sweep_again_changes_no_point(finished):
    base, _ = finished
    folders = [base / "ckpt" / "grid" / p for p in POINTS]
    before = snapshot(*folders)
    again = subprocess.run(sweep_command(base, "grid", *GRID), cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line for line in again.stdout.splitlines() if "left as it is" in line] == \
        [f"{p}: done, left as it is" for p in POINTS]
    assert snapshot(*folders) == before


def test_debug_executor_runs_a_point_in_this_process_as_the_pool_does(finished, tmp_path,
                                                                      single_thread):
    """(One intra-op thread here, as the pool's processes have: OMP_NUM_THREADS=1.)"""
    base, _ = finished
    code = sweep.main(["--name", "debug", "--log-dir", str(tmp_path), "--executor", "debug",
                       "--grid", "label_smoothing=0", "--grid", "seed=0", "--",
                       "--data", str(base / "datasets"), *TRAINING])
    assert code == 0
    point = POINTS[0]
    assert_same_weights(final_weights(tmp_path / "debug" / point),
                        final_weights(base / "ckpt" / "grid" / point))
    assert (tmp_path / "debug" / "logs" / f"{point}.exit").read_text().strip() == "0"


@pytest.mark.slow      # 2 more training processes (50 s on a loaded 2-core machine)
def test_killed_sweep_runs_again_resuming_what_was_interrupted(finished, capsys):
    base, _ = finished
    command = sweep_command(base, "killed", "--grid", "seed=1") + ["--label_smoothing", "0"]
    folder = base / "ckpt" / "killed"
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(proc, folder / "seed-1" / "gen_0" / "checkpoints" / "resume.state")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGINT: the running points saved")
    assert (folder / "logs" / "seed-1.exit").read_text() == "130\n"
    sweep.main(["--status", str(folder)])
    status = capsys.readouterr().out.splitlines()
    assert status[1] == "1 interrupted (of 1)"
    # the same stop, named identically by the stop message, --status and the resume message
    stop = re.search(r"stopped by SIGINT at (generation 0 \(1 of 1\), epoch \d \(\d of 2\), "
                     r"after batch \d+);", err)
    assert stop, err
    assert status[0] == f"seed-1  interrupted (stopped at {stop[1]})"

    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (folder / "logs" / "seed-1.log").read_text()
    assert "stopped by SIGINT" in log and f"resuming at {stop[1]}" in log
    assert_same_weights(final_weights(folder / "seed-1"),
                        final_weights(base / "ckpt" / "grid" / "label_smoothing-0_seed-1"))


def fake_point(tmp_path, monkeypatch):
    """A PointJob whose child is a small script that saves on SIGTERM, instead of training."""
    from trainers import sweep_run
    script = ("import signal, sys, pathlib\n"
              "def save(s, f):\n"
              "    pathlib.Path(sys.argv[1]).write_text('saved')\n"
              "    sys.exit(143)\n"
              "signal.signal(signal.SIGTERM, save)\n"
              "print('ready', flush=True)\n"
              "signal.pause()\n")
    monkeypatch.setattr(sweep_run, "command",
                        lambda argv, gpus=1: [sys.executable, "-c", script, argv[0]])
    return sweep_run.PointJob()


def test_point_job_checkpoint_stops_the_child_resumably_and_requeues_with_resume(tmp_path,
                                                                                monkeypatch):
    from submitit.helpers import DelayedSubmission

    from trainers.sweep_run import start
    job = fake_point(tmp_path, monkeypatch)
    marker, folder = tmp_path / "saved", str(tmp_path)
    job.child = start([str(marker)], folder, "p")
    log = tmp_path / "logs" / "p.log"
    while "ready" not in (log.read_text() if log.exists() else ""):
        with pytest.raises(subprocess.TimeoutExpired):
            job.child.wait(timeout=0.05)
    ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)",
                            Path(f"/proc/{job.child.pid}/status").read_text())[1], 16)
    assert ignored & (1 << (signal.SIGUSR2 - 1)), "SLURM's USR2 must not kill the training run"

    delayed = job.checkpoint([str(marker)], ["--resume-flags"], folder, "p", 1, 2)
    assert marker.read_text() == "saved" and job.child.returncode == 143
    assert (tmp_path / "logs" / "p.exit").read_text() == "143\n"
    assert isinstance(delayed, DelayedSubmission)
    # the requeued job resumes when the point's experiment exists, else starts it as given
    assert delayed.args == ([str(marker)], ["--resume-flags"], folder, "p", 1, 2)
    assert delayed.function.child is None


@pytest.mark.slow
def test_submitit_local_executor_requeues_on_its_signal_and_resumes_exactly(finished, tmp_path,
                                                                            monkeypatch):
    import submitit
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # the job's training process, as the pool's
    from trainers.sweep_grid import expand, parse_axis
    base, _ = finished
    folder = str(base / "ckpt" / "submitit")
    point = expand([parse_axis("seed=1")], ["--data", str(base / "datasets"), *TRAINING,
                                             "--label_smoothing", "0"], folder)[0]
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=30)
    from trainers.sweep_run import PointJob
    job = executor.submit(PointJob(), point.argv, point.resume_argv, folder, point.name, 1)
    exp = base / "ckpt" / "submitit" / point.name
    wait_for_file(job._process, exp / "gen_0" / "checkpoints" / "resume.state")
    trainer = int((exp / ".lock").read_text())
    job_process = int(Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(job_process, submitit.JobEnvironment._usr_sig())     # what SLURM sends, USR2
    assert job.result() == 0
    log = Path(os.path.join(folder, "logs", f"{point.name}.log")).read_text()
    assert "stopped by SIGTERM" in log and re.search(
        r"resuming at generation 0 \(1 of 1\), epoch \d \(\d of 3\), after batch \d+", log)
    assert_same_weights(final_weights(exp),
                        final_weights(base / "ckpt" / "grid" / "label_smoothing-0_seed-1"))


def fake_sinfo(tmp_path, monkeypatch, lines):
    """An `sinfo` on PATH that prints `lines` (what `sinfo --noheader --Node --format=%P|%c|%G`
    prints on a cluster)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sinfo").write_text("#!/bin/sh\ncat <<'EOF'\n" + "".join(line + "\n" for line in lines)
                                   + "EOF\n")
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_slurm_executor_submits_one_job_array_with_the_options(tmp_path, monkeypatch, capsys):
    from submitit.core import utils as submitit_utils
    from submitit.core.utils import DelayedSubmission
    submitted = []

    def sbatch(self):
        submitted.append((self.command, Path(self.command[1]).read_text()))
        return "Submitted batch job 4242\n"
    monkeypatch.setattr(submitit_utils.CommandFunction, "__call__", sbatch)
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    fake_sinfo(tmp_path, monkeypatch, ["cpu*|64|(null)", "gpu|32|gpu:a100:4(S:0-1)"])
    code = sweep.main(["--name", "cluster", "--log-dir", str(tmp_path), "--grid", "seed=0-2",
                       "--executor", "slurm", "--partition", "gpu", "--time", "2:00:00",
                       "--gpus_per_run", "2", "--cpus_per_run", "8", "--mem", "32G",
                       "--account", "lab", "--qos", "high", "--constraint", "a100",
                       "--slurm_extra", "mail-type=END", "--", "--data", str(tmp_path / "d"),
                       "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"submitted 3 point(s) as job array 4242; follow them with python -m trainers.sweep " \
           f"--status {tmp_path / 'cluster'}" in out
    assert len(submitted) == 1 and submitted[0][0][0] == "sbatch"
    sbatch_lines = set(submitted[0][1].splitlines())
    for line in ("--array=0-2%3", "--partition=gpu", "--time=120", "--gpus-per-node=2",
                 "--cpus-per-task=8", "--mem=32G", "--account=lab", "--qos=high",
                 "--constraint=a100", "--mail-type=END", "--signal=USR2@90", "--nodes=1",
                 "--ntasks-per-node=1", "--job-name=cluster"):
        assert f"#SBATCH {line}" in sbatch_lines, line
    assert f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" in sbatch_lines
    assert any("srun" in line and "-m submitit.core._submit" in line for line in sbatch_lines)

    pickles = sorted((tmp_path / "cluster" / "submitit").rglob("*_submitted.pkl"))
    assert len(pickles) == 3
    assert json.loads((tmp_path / "cluster" / "jobs.json").read_text()) == \
        {f"seed-{s}": f"4242_{s}" for s in range(3)}
    assert all(DelayedSubmission.load(p).args[4:] == (2, 8) for p in pickles)
    argvs = sorted(DelayedSubmission.load(p).args[0] for p in pickles)
    folder = str(tmp_path / "cluster")
    assert argvs == [["--data", str(tmp_path / "d"), "--epochs", "3", "--seed", str(s),
                      "--log-dir", folder, "--name", f"seed-{s}"] for s in range(3)]
    from trainers.sweep_run import TRAIN, command
    assert command(argvs[0], 2) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2", TRAIN, *argvs[0]]
    resume = DelayedSubmission.load(pickles[0]).args[1]
    assert resume[:5] == ["--log-dir", folder, "--name", resume[3], "--resume"]
    assert resume[5:] == ["--data", str(tmp_path / "d")]


def test_status_names_each_state(finished, tmp_path, capsys):
    import shutil
    source = finished[0] / "ckpt" / "grid"
    done, interrupted = POINTS[0], POINTS[1]
    names = [done, interrupted, "held", "broken", "waiting"]
    (tmp_path / "sweep.json").write_text(json.dumps({"points": [{"name": n} for n in names]}))
    shutil.copytree(source / done, tmp_path / done)
    shutil.copytree(source / interrupted, tmp_path / interrupted)
    os.remove(tmp_path / interrupted / f"{interrupted}.csv")
    torch.save({"epoch": 1, "batch": 2, "generation": 0, "state_dict": {}},
               tmp_path / interrupted / "gen_0" / "checkpoints" / "resume.state")
    (tmp_path / "held").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "broken.log").write_text("12:00 reading data\nerror: --data /x: no such "
                                                   "folder; pass --data\n")
    (tmp_path / "logs" / "broken.exit").write_text("2\n")
    with open(tmp_path / "held" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sweep.main(["--status", str(tmp_path)]) == 0
    width = len(POINTS[0])
    assert capsys.readouterr().out.splitlines() == [
        f"{done:<{width}}  done",
        f"{interrupted:<{width}}  interrupted (stopped at generation 0 (1 of 1), epoch 1 (2 of 2), "
        f"after batch 2)",
        f"{'held':<{width}}  running",
        f"{'broken':<{width}}  failed (error: --data /x: no such folder; pass --data)",
        f"{'waiting':<{width}}  pending",
        "1 done, 1 interrupted, 1 running, 1 failed, 1 pending (of 5)"]


def test_grid_file_holds_the_same_axes_and_fixed_flags(tmp_path):
    (tmp_path / "grid.yaml").write_text("grid:\n  cs_kd: [true, false]\n  seed: 0-1\n"
                                        "fixed:\n  epochs: 3\n  no-bn-decay: true\n")
    args = sweep.build_parser().parse_args(["--name", "s", "--log-dir", str(tmp_path),
                                            "--grid_file", str(tmp_path / "grid.yaml")])
    _, described, points = sweep.plan(args, ["--lr", "0.1"])
    assert [p.name for p in points] == ["cs_kd-on_seed-0", "cs_kd-on_seed-1", "cs_kd-off_seed-0",
                                        "cs_kd-off_seed-1"]
    assert points[0].argv == ["--epochs", "3", "--no-bn-decay", "--lr", "0.1", "--cs_kd",
                              "--seed", "0", "--log-dir", str(tmp_path / "s"), "--name",
                              "cs_kd-on_seed-0"]
    assert "--cs_kd" not in points[2].argv
    assert described["fixed"] == ["--epochs", "3", "--no-bn-decay", "--lr", "0.1"]
    assert not (tmp_path / "s").exists()


def test_long_names_are_cut_and_keep_a_hash():
    from trainers.sweep_grid import parse_axis, point_name
    axis = parse_axis("pretrained=" + ",".join("/data/weights/" + "x" * 90 + s for s in "ab"))
    names = [point_name([axis], [v]) for v in axis.values]
    assert all(len(n) == 80 and re.fullmatch(r"pretrained-_data_weights_x+-[0-9a-f]{8}", n)
               for n in names)
    assert names[0] != names[1]


@pytest.mark.parametrize("flags, training, needles", [
    (["--grid", "nosuch=1,2"], [], ["--grid nosuch", "not a flag of train_KE_cls.py"]),
    (["--grid", "split_rate=0.5,2"], [], ["point split_rate-2", "--split_rate", "(0, 1]"]),
    (["--grid", "seed=0-1"], ["--seed", "3"], ["--grid seed", "also among the fixed"]),
    (["--grid", "seed=0,0"], [], ["would both be named seed-0"]),
    (["--grid", "seed=0-1"], ["--nosuch"], ["training flags", "unrecognized arguments: --nosuch"]),
    (["--grid", "seed=0-1"], ["--name", "x"], ["--name is set by the sweep"]),
    (["--grid", "name=a,b"], [], ["the sweep sets --name"]),
    (["--grid", "cs_kd=yes,no"], [], ["cs_kd is a switch", "on,off"]),
    (["--grid", "seed=4-0"], [], ["a range goes upwards, such as 0-4"]),
    (["--grid", "seed"], [], ["write FLAG=V1,V2"]),
    (["--grid", "seed=0,1", "--grid", "seed=2"], [], ["seed is given as two axes"]),
    ([], [], ["no grid"]),
    (["--grid", "seed=0-1", "--time", "soon"], [], ["--time", "HH:MM:SS"]),
    (["--grid", "seed=0-1", "--parallel", "0"], [], ["--parallel", "integer >= 1"]),
    (["--grid", "seed=0-1", "--executor", "k8s"], [], ["--executor", "local"]),
    (["--grid", "seed=0-1", "--slurm_extra", "exclusive"], [], ["KEY=VALUE"]),
])
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, capsys, flags, training, needles):
    code = sweep.main(["--name", "bad", "--log-dir", str(tmp_path / "ckpt"), *flags, "--",
                       *training])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "ckpt").exists()


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: None)
    assert sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
                       "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --executor slurm: sbatch is not on this machine's PATH; submit from a "
                   "SLURM login node, or use --executor local\n")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("content, needle", [
    ("grid: [seed", "not valid YAML at line"),
    ("- seed\n", "expected a mapping with 'grid'"),
    ("grid:\n  seed: [[0]]\n", "expected a number, a string or a boolean"),
])
def test_bad_grid_file_is_one_line(tmp_path, capsys, content, needle):
    (tmp_path / "g.yaml").write_text(content)
    assert sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"),
                       "--grid_file", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "ckpt").exists()


def test_other_grid_under_a_sweep_name_and_status_of_a_plain_folder(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"grid": [], "fixed": [], "points": []}))
    assert sweep.main(["--name", "s", "--log-dir", str(tmp_path), "--grid", "seed=0-1"]) == 2
    assert "holds a sweep of another grid" in capsys.readouterr().err
    assert sweep.main(["--status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a sweep folder (no sweep.json)" in err
    assert os.listdir(tmp_path / "s") == ["sweep.json"]


# ---- SLURM: what is checked before submitting, and what --status reads from squeue ----------

SLURM_FLAGS = ["--executor", "slurm"]
CLUSTER = ["cpu*|64|(null)", "gpu|32|gpu:a100:4(S:0-1)", "gpu|16|gpu:v100:2"]


@pytest.mark.parametrize("flags, message", [
    (["--gpus_per_run", "1"], "--gpus_per_run 1: partition cpu has nodes of at most 64 CPUs and "
                              "0 GPUs; drop --gpus_per_run to run on the CPU"),
    (["--partition", "gpu", "--gpus_per_run", "8"], "--gpus_per_run 8: partition gpu has nodes "
                                                    "of at most 32 CPUs and 4 GPUs; ask for fewer"),
    (["--partition", "gpu", "--cpus_per_run", "33"], "--cpus_per_run 33: partition gpu has nodes "
                                                     "of at most 32 CPUs and 4 GPUs; ask for fewer"),
    (["--partition", "nosuch"], "--partition nosuch: no such partition on this cluster (there "
                                "are: cpu, gpu)"),
    ([], "--executor slurm needs --time, the time limit of one job (without it submitit asks "
         "for 5 minutes)"),
    (["--time", "2"], "--time 2 minute(s) is too short: SLURM signals a job 90 s before its time "
                      "limit for a checkpoint; give at least 3 minutes"),
    (["--job_name", "my sweep"], "--job_name 'my sweep': letters, digits and . _ + - only"),
])
def test_slurm_request_the_cluster_cannot_meet_is_one_line(tmp_path, capsys, monkeypatch, flags,
                                                           message):
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    fake_sinfo(tmp_path, monkeypatch, CLUSTER)
    if "--time" not in flags and flags:
        flags = [*flags, "--time", "1:00:00"]
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
                       *SLURM_FLAGS, *flags])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    assert not (tmp_path / "ckpt").exists()


def test_a_cpu_submission_asks_no_gpu_and_names_its_jobs_after_the_sweep(tmp_path, monkeypatch,
                                                                          capsys):
    from submitit.core import utils as submitit_utils
    scripts = []

    def sbatch(self):
        scripts.append(Path(self.command[1]).read_text())
        return "Submitted batch job 77\n"
    monkeypatch.setattr(submitit_utils.CommandFunction, "__call__", sbatch)
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    fake_sinfo(tmp_path, monkeypatch, CLUSTER)
    assert sweep.main(["--name", "cpu", "--log-dir", str(tmp_path), "--grid", "seed=0-1",
                       *SLURM_FLAGS, "--time", "3", "--", "--epochs", "1"]) == 0, \
        capsys.readouterr().err
    lines = scripts[0].splitlines()
    assert not [line for line in lines if "gpu" in line]
    assert "#SBATCH --job-name=cpu" in lines and "#SBATCH --time=3" in lines


def fake_squeue(tmp_path, monkeypatch, lines):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "squeue").write_text("#!/bin/sh\ncat <<'EOF'\n" + "".join(line + "\n" for line in lines)
                                    + "EOF\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_status_reads_the_jobs_state_from_squeue(tmp_path, monkeypatch, capsys):
    names = ["queued", "running", "requeued", "timeout", "killed_early", "time_limit", "gone"]
    (tmp_path / "sweep.json").write_text(json.dumps({"points": [{"name": n} for n in names]}))
    (tmp_path / "jobs.json").write_text(json.dumps(
        {"queued": "7_0", "running": "7_1", "requeued": "7_2", "timeout": "8",
         "killed_early": "9", "time_limit": "10", "gone": "11"}))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "requeued.exit").write_text("143\n")       # pre-empted, requeued
    (tmp_path / "logs" / "killed_early.exit").write_text("-15\n")   # before its folder existed
    (tmp_path / "logs" / "gone.exit").write_text("1\n")
    (tmp_path / "logs" / "gone.log").write_text("error: out of memory\n")
    (tmp_path / "submitit" / "10").mkdir(parents=True)
    (tmp_path / "submitit" / "10" / "10_0_log.err").write_text(
        "slurmstepd-vm: error: *** JOB 10 ON vm CANCELLED AT 2026-12-03T16:36:26 DUE TO TIME "
        "LIMIT ***\n")
    fake_squeue(tmp_path, monkeypatch, ["7_0|PENDING|Resources", "7_1|RUNNING|None",
                                        "7_2|PENDING|BeginTime", "8|TIMEOUT|TimeLimit",
                                        "99_0|RUNNING|None"])
    assert sweep.main(["--status", str(tmp_path)]) == 0
    width = len("killed_early")
    assert capsys.readouterr().out.splitlines() == [
        f"{'queued':<{width}}  pending (job 7_0)",
        f"{'running':<{width}}  running (job 7_1)",
        f"{'requeued':<{width}}  requeued (job 7_2)",
        f"{'timeout':<{width}}  timed out (job 8; ended at its time limit without a checkpoint)",
        f"{'killed_early':<{width}}  pending",
        f"{'time_limit':<{width}}  timed out (job 10; ended at its time limit without a "
        "checkpoint)",
        f"{'gone':<{width}}  failed (error: out of memory)",
        "2 pending, 1 running, 1 requeued, 2 timed out, 1 failed (of 7)"]
    active = {n for n, s in sweep_state.point_states(str(tmp_path), names).items() if s.active}
    assert active == {"queued", "running", "requeued"}


def test_cpus_of_a_job_give_its_loader_workers_and_intra_op_threads(monkeypatch):
    from trainers.sweep_run import job_cpus, split_cpus
    assert split_cpus(["--lr", "0.1"], 4) == (["--lr", "0.1", "--num_threads", "2"], 2)
    assert split_cpus(["--lr", "0.1"], 1) == (["--lr", "0.1", "--num_threads", "0"], 1)
    assert split_cpus(["-t", "3"], 4) == (["-t", "3"], 1)
    assert split_cpus(["--num_threads=0"], 6) == (["--num_threads=0"], 6)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    assert (job_cpus(None), job_cpus(2)) == (5, 2)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    assert job_cpus(None) == 1


def test_point_job_runs_its_child_with_the_jobs_threads_and_resumes_a_started_point(
        tmp_path, monkeypatch):
    from trainers import sweep_run
    script = "import os, sys; print(os.environ['OMP_NUM_THREADS'], sys.argv[1:])"
    monkeypatch.setattr(sweep_run, "command",
                        lambda argv, gpus=1: [sys.executable, "-c", script, *argv])
    folder = str(tmp_path)
    assert sweep_run.PointJob()(["--first"], ["--resume"], folder, "p", 1, 4) == 0
    (tmp_path / "p" / "gen_0").mkdir(parents=True)                  # started: resume it
    assert sweep_run.PointJob()(["--first"], ["--resume"], folder, "p", 1, 1) == 0
    assert (tmp_path / "logs" / "p.log").read_text().splitlines() == [
        "2 ['--first', '--num_threads', '2']", "1 ['--resume', '--num_threads', '0']"]
    delayed = sweep_run.PointJob().checkpoint(["--first"], ["--resume"], folder, "q", 1, 4)
    assert delayed.args == (["--first"], ["--resume"], folder, "q", 1, 4)


def test_report_lists_a_failed_point_in_its_notes(finished, tmp_path, capsys, monkeypatch):
    import shutil
    source = finished[0] / "ckpt" / "grid"
    described = json.loads((source / "sweep.json").read_text())
    done, failed = POINTS[0], POINTS[1]
    described["points"] = [p for p in described["points"] if p["name"] in (done, failed)]
    (tmp_path / "sweep.json").write_text(json.dumps(described))
    shutil.copytree(source / done, tmp_path / done)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / f"{failed}.exit").write_text("2\n")
    (tmp_path / "logs" / f"{failed}.log").write_text("error: --data /x: no such folder\n")
    from utils.report import main
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "report.md").read_text() in out
    assert out.splitlines()[2].startswith("| label_smoothing 0 | generation 0 (1 of 1) | dense | ")
    lines = out.splitlines()
    notes = lines.index("Notes: 1 of 2 points done; the others:")
    assert lines[notes - 1:] == [
        "", "Notes: 1 of 2 points done; the others:",
        f"- {failed}: failed (error: --data /x: no such folder); not in the table",
        f"wrote {tmp_path}/report.md, {tmp_path}/report.csv and "
        f"{tmp_path}/report_<dataset>.png"]
    table = pd.read_csv(tmp_path / "report.csv")
    assert table["runs"].tolist() == [1]
    os.remove(tmp_path / "report.md")
    assert sweep.main(["--status", str(tmp_path), "--report"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"{done}  done", f"{failed}  failed (error: --data /x: no such folder)",
        "1 done, 1 failed (of 2)"]
    assert (tmp_path / "report.md").exists()

    # on SLURM: while the other point's job runs it and no exit is recorded, the done point's
    # job ending leaves the report to it
    os.remove(tmp_path / "report.md")
    os.remove(tmp_path / "logs" / f"{failed}.exit")
    (tmp_path / "jobs.json").write_text(json.dumps({done: "5_0", failed: "5_1"}))
    fake_squeue(tmp_path, monkeypatch, ["5_1|RUNNING|None"])
    sweep_state.report_when_over(str(tmp_path), done)
    assert not (tmp_path / "report.md").exists()
    # its job, still RUNNING for SLURM, records the point's failure and reports
    (tmp_path / "logs" / f"{failed}.exit").write_text("2\n")
    sweep_state.report_when_over(str(tmp_path), failed)
    assert f"- {failed}: failed (error: --data /x: no such folder)" in \
        (tmp_path / "report.md").read_text()
    # a failure recorded is over even while its job runs on (beside other points sharing it)
    os.remove(tmp_path / "report.md")
    sweep_state.report_when_over(str(tmp_path), done)
    assert f"- {failed}: failed" in (tmp_path / "report.md").read_text()
