"""`python -m trainers.sweep --runs_per_gpu K`: the placement of points on GPU slots and their
share of the cores, the local pool running K points a GPU (fake children, no GPU needed), what
--status shows, the refusals, and the SLURM jobs of K points each (what would be submitted; the
packed job run with fake children). tests/test_gpu.py runs two real points on one GPU."""
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_sweep import fake_sinfo, fake_squeue
from trainers import sweep, sweep_run, sweep_state
from trainers.sweep_placement import LocalPlan, Slot, local_plan

# A stand-in for train_KE_cls.py: argv[1] is its experiment folder. It holds the experiment's
# lock (as a training run does), prints its GPU, intra-op threads and other flags, and waits
# until `<sweep>/release` exists; "--fail" ends it with status 3, SIGTERM with 143 (saved).
FAKE_RUN = """
import fcntl, os, signal, sys, time
exp = sys.argv[1]
os.makedirs(exp, exist_ok=True)
lock = open(os.path.join(exp, ".lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
print(os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ["OMP_NUM_THREADS"], sys.argv[2:],
      flush=True)
open(exp + ".started", "w").close()
release = os.path.join(os.path.dirname(exp), "release")
deadline = time.monotonic() + 60
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(3 if "--fail" in sys.argv else 0)
"""


@pytest.fixture
def fake_runs(monkeypatch):
    monkeypatch.setattr(sweep_run, "command",
                        lambda argv, gpus=1: [sys.executable, "-c", FAKE_RUN, *argv])


def wait_until_started(folder, names):
    deadline = time.monotonic() + 60
    while not all((folder / f"{n}.started").exists() for n in names):
        assert time.monotonic() < deadline, "the fake runs did not start"
        time.sleep(0.02)


def log_lines(folder, name):
    return (folder / "logs" / f"{name}.log").read_text().splitlines()


def test_k_slots_on_each_gpu_spread_the_points_first_and_share_the_cores():
    slots = [Slot("0", 0), Slot("1", 0), Slot("0", 1), Slot("1", 1)]
    assert local_plan(16, ["0", "1"], 2, None, None, 1) == LocalPlan(4, 4, slots)
    assert local_plan(16, ["0", "1"], 2, 3, None, 1) == LocalPlan(3, 5, slots[:3])
    assert local_plan(16, ["0", "1"], None, None, None, 1) == LocalPlan(2, 8, slots[:2])
    assert local_plan(2, ["5"], 3, None, None, 1) == \
        LocalPlan(3, 1, [Slot("5", 0), Slot("5", 1), Slot("5", 2)])
    assert local_plan(16, ["0"], 4, None, 2, 1).cpus == 2            # --cpus_per_run wins
    assert str(Slot("1", 0)) == "GPU 1, slot 0"
    # on the CPU, as before: --parallel, else the cores over the threads of a run
    assert local_plan(8, [], None, None, None, 2) == LocalPlan(4, 2, None)
    assert local_plan(8, [], 1, 3, None, 1) == LocalPlan(3, 1, None)
    # a run's share: half its cores load data unless the training flags say, the rest compute
    assert sweep_run.split_cpus(["--lr", "0.1"], 5) == (["--lr", "0.1", "--num_threads", "2"], 3)


def test_local_pool_runs_k_points_a_gpu_and_status_shows_where(tmp_path, fake_runs, capsys):
    names = [f"p{i}" for i in range(5)]
    (tmp_path / "sweep.json").write_text(json.dumps({"points": [{"name": n} for n in names]}))
    seen = []

    def progress(line):
        seen.append(line)
        if line == "0 done, 4 running, 0 failed, 1 pending" and not (tmp_path / "release").exists():
            wait_until_started(tmp_path, names[:4])
            assert sweep.main(["--status", str(tmp_path)]) == 0
            seen.append(capsys.readouterr().out)
            (tmp_path / "release").touch()

    plan = local_plan(6, ["0", "1"], 2, None, None, 1)
    pool = sweep_run.LocalPool(str(tmp_path), plan.parallel, plan.cpus, plan.slots,
                               progress=progress)
    codes = pool.run([([str(tmp_path / n)], n) for n in names])
    assert codes == {n: 0 for n in names}
    assert seen[1] == ("p0  running (GPU 0, slot 0)\np1  running (GPU 1, slot 0)\n"
                       "p2  running (GPU 0, slot 1)\np3  running (GPU 1, slot 1)\np4  pending\n"
                       "4 running, 1 pending (of 5)\n")
    # 6 cores over 4 runs: 1 each, no loader worker, one intra-op thread
    assert [log_lines(tmp_path, n) for n in names[:4]] == [
        [f"{gpu} 1 ['--num_threads', '0']"] for gpu in ("0", "1", "0", "1")]
    assert log_lines(tmp_path, "p4")[0] in ("0 1 ['--num_threads', '0']",
                                            "1 1 ['--num_threads', '0']")
    assert sorted(os.listdir(tmp_path / "logs")) == sorted(
        [f"{n}.exit" for n in names] + [f"{n}.log" for n in names])      # no .place left
    assert seen[-1] == "5 done, 0 running, 0 failed, 0 pending"


def test_the_sweep_command_pins_its_points_to_the_gpu_slots(tmp_path, monkeypatch, capsys):
    script = ("import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], "
              "os.environ['OMP_NUM_THREADS'], sys.argv[-3:])")
    monkeypatch.setattr(sweep_run, "command",
                        lambda argv, gpus=1: [sys.executable, "-c", script, *argv])
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert sweep.main(["--name", "g", "--log-dir", str(tmp_path), "--grid", "seed=0-1",
                       "--runs_per_gpu", "2", "--", "--epochs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"2 point(s) at once on GPU(s) 7, 4 core(s) each; --status "
                       f"{tmp_path / 'g'} shows which runs where",
                       "g: 0 done, 2 running, 0 failed, 0 pending"]
    assert [log_lines(tmp_path / "g", f"seed-{s}") for s in (0, 1)] == [
        [f"7 2 ['seed-{s}', '--num_threads', '2']"] for s in (0, 1)]


def test_a_failed_point_beside_a_running_one_in_the_same_job_is_failed(tmp_path, monkeypatch,
                                                                       capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"points": [{"name": "a"}, {"name": "b"}]}))
    (tmp_path / "jobs.json").write_text(json.dumps({"a": "5_0", "b": "5_0"}))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.exit").write_text("1\n")
    (tmp_path / "logs" / "a.log").write_text("error: out of memory\n")
    (tmp_path / "logs" / "b.place").write_text("GPU 3, slot 1\n")
    (tmp_path / "b").mkdir()
    fake_squeue(tmp_path, monkeypatch, ["5_0|RUNNING|None"])
    with open(tmp_path / "b" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert sweep.main(["--status", str(tmp_path)]) == 0
        states = sweep_state.point_states(str(tmp_path), ["a", "b"])
    assert capsys.readouterr().out.splitlines() == [
        "a  failed (error: out of memory)", "b  running (job 5_0; GPU 3, slot 1)",
        "1 failed, 1 running (of 2)"]
    assert (states["a"].active, states["b"].active) == (False, True)


@pytest.mark.parametrize("flags, message", [
    (["--runs_per_gpu", "2"], "--runs_per_gpu 2: no CUDA device is visible; on the CPU "
                              "--parallel N sets how many points run at once"),
    (["--runs_per_gpu", "0"], "argument --runs_per_gpu: expected an integer >= 1, got '0'"),
    (["--runs_per_gpu", "1", "--executor", "debug"],
     "--runs_per_gpu: the debug executor runs one point at a time in this process; use it with "
     "--executor local or slurm"),
])
def test_runs_per_gpu_that_cannot_be_is_one_line(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
                       *flags])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    assert not (tmp_path / "ckpt").exists()


def test_more_points_at_once_than_the_gpu_slots_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
                       "--parallel", "5", "--runs_per_gpu", "2"])
    assert (code, capsys.readouterr().err) == (
        2, "error: --parallel 5: more points at once than the 2 GPU(s) x 2 run(s) each; give "
           "--runs_per_gpu 3 to share each GPU, or a smaller --parallel\n")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("flags, message", [
    (["--partition", "cpu"], "--runs_per_gpu 2: partition cpu has nodes of at most 64 CPUs and 0 "
                             "GPUs; choose a --partition with GPUs, or drop --runs_per_gpu to run "
                             "a point a job on the CPU"),
    (["--partition", "gpu", "--gpus_per_run", "2"],
     "--runs_per_gpu 2 puts several points on one GPU; with --gpus_per_run 2 drop one of the two"),
    (["--partition", "gpu", "--cpus_per_run", "17"],
     "--cpus_per_run 17 for each of --runs_per_gpu 2: partition gpu has nodes of at most 32 CPUs "
     "and 4 GPUs; ask for fewer"),
])
def test_slurm_packing_the_cluster_cannot_take_is_one_line(tmp_path, capsys, monkeypatch, flags,
                                                           message):
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    fake_sinfo(tmp_path, monkeypatch, ["cpu*|64|(null)", "gpu|32|gpu:a100:4(S:0-1)"])
    code = sweep.main(["--name", "s", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
                       "--executor", "slurm", "--time", "60", "--runs_per_gpu", "2", *flags])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    assert not (tmp_path / "ckpt").exists()


def test_slurm_submits_k_points_a_job_on_one_gpu(tmp_path, monkeypatch, capsys):
    from submitit.core import utils as submitit_utils
    from submitit.core.utils import DelayedSubmission
    scripts = []

    def sbatch(self):
        scripts.append(Path(self.command[1]).read_text())
        return "Submitted batch job 4242\n"
    monkeypatch.setattr(submitit_utils.CommandFunction, "__call__", sbatch)
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    fake_sinfo(tmp_path, monkeypatch, ["cpu*|64|(null)", "gpu|32|gpu:a100:4(S:0-1)"])
    folder = tmp_path / "packed"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "seed-1.exit").write_text("1\n")          # an earlier run's failure
    code = sweep.main(["--name", "packed", "--log-dir", str(tmp_path), "--grid", "seed=0-2",
                       "--executor", "slurm", "--partition", "gpu", "--time", "60",
                       "--runs_per_gpu", "2", "--cpus_per_run", "4", "--", "--data",
                       str(tmp_path / "d"), "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out == (f"submitted 3 point(s) as job array 4242 (2 jobs of up to 2 points on one "
                   f"GPU); follow them with python -m trainers.sweep --status {folder}\n")
    lines = set(scripts[0].splitlines())
    for line in ("--array=0-1%2", "--gpus-per-node=1", "--cpus-per-task=8", "--partition=gpu"):
        assert f"#SBATCH {line}" in lines, line
    assert json.loads((folder / "jobs.json").read_text()) == \
        {"seed-0": "4242_0", "seed-1": "4242_0", "seed-2": "4242_1"}
    assert not (folder / "logs" / "seed-1.exit").exists()
    pickles = sorted((folder / "submitit").rglob("*_submitted.pkl"))
    assert len(pickles) == 2
    submitted = sorted((DelayedSubmission.load(p) for p in pickles),
                       key=lambda d: d.args[0][0][2])
    assert all(isinstance(d.function, sweep_run.PackJob) for d in submitted)
    assert [[name for _, _, name in d.args[0]] for d in submitted] == \
        [["seed-0", "seed-1"], ["seed-2"]]
    assert [d.args[1:] for d in submitted] == [(str(folder), 4)] * 2
    argv, resume, _ = submitted[1].args[0][0]
    assert argv == ["--data", str(tmp_path / "d"), "--epochs", "3", "--seed", "2", "--log-dir",
                    str(folder), "--name", "seed-2"]
    assert resume[:5] == ["--log-dir", str(folder), "--name", "seed-2", "--resume"]


def test_packed_job_runs_its_points_at_once_and_records_each(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")           # the job's, shared by its points
    folder, names = tmp_path, ["a", "b"]
    points = [([str(tmp_path / n), *(["--fail"] if n == "b" else [])], ["--resume"], n)
              for n in names]
    job = sweep_run.PackJob()
    # each child waits for the release, which comes once both have started: they run at once
    releaser = threading.Thread(target=lambda: (wait_until_started(tmp_path, names),
                                                (tmp_path / "release").touch()))
    releaser.start()
    try:
        with pytest.raises(RuntimeError, match=r"point\(s\) b \(status 3\) failed"):
            job(points, str(folder))
    finally:
        releaser.join()
    assert log_lines(tmp_path, "a") == ["3 1 ['--num_threads', '1']"]
    assert log_lines(tmp_path, "b") == ["3 1 ['--fail', '--num_threads', '1']"]
    assert [(tmp_path / "logs" / f"{n}.exit").read_text() for n in names] == ["0\n", "3\n"]
    assert not list((tmp_path / "logs").glob("*.place"))


def test_packed_job_preempted_saves_and_requeues_only_the_points_not_ended(tmp_path, fake_runs):
    points = [([str(tmp_path / n)], ["--resume"], n) for n in ("ended", "running", "not_started")]
    job = sweep_run.PackJob()
    (tmp_path / "release").touch()
    job.children["ended"] = sweep_run.start(points[0][0], str(tmp_path), "ended")
    assert job.children["ended"].wait() == 0
    os.remove(tmp_path / "release")
    job.children["running"] = sweep_run.start(points[1][0], str(tmp_path), "running")
    wait_until_started(tmp_path, ["running"])
    delayed = job.checkpoint(points, str(tmp_path), 4)
    assert job.children["running"].returncode == 143 == 128 + signal.SIGTERM
    assert [(tmp_path / "logs" / f"{n}.exit").read_text() for n in ("ended", "running")] == \
        ["0\n", "143\n"]
    assert isinstance(delayed.function, sweep_run.PackJob) and delayed.function.children == {}
    assert delayed.args == (points[1:], str(tmp_path), 4)
