"""The sweep on a real SLURM (`make test-slurm`; ci/slurm_up.sh starts a one-node one): a 2-point
CPU sweep submitted as the README shows, a re-run while it is queued, --status through pending,
running and done, the report written by the last job, and a pre-emption by
`scancel --signal=USR2` that resumes exactly.

One scenario (module fixture) drives the cluster and records what it saw; the tests check it.
The node is filled by a blocker job first, so that the sweep's jobs stay pending until the
scenario releases them. Every job it submitted is cancelled at the end, whatever happened.
A packed job (two points in one job, as --runs_per_gpu 2 makes) is run and pre-empted too.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL

pytestmark = pytest.mark.slurm

TRAINING = ["--num_generations", "1", "--epochs", "3", *SMALL, "--image_size", "32",
            "--batch_size", "8", "--num_threads", "0", "--lr", "0.05", "--warmup_length", "1",
            "--test_interval", "1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
LIMIT_S = 240          # the whole scenario


def slurm_is_up() -> str:
    """"" when sinfo answers with an idle or busy node, else why not."""
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo: {error}"
    if out.returncode != 0 or not any(s.startswith(("idle", "mixed", "alloc"))
                                      for s in out.stdout.split()):
        return f"no usable node ({out.stdout.strip() or out.stderr.strip()})"
    return ""


def squeue(*flags) -> str:
    return subprocess.run(["squeue", "--noheader", *flags], capture_output=True, text=True,
                          timeout=30).stdout


def in_process(*argv) -> subprocess.CompletedProcess:
    """`python -m trainers.sweep ARGV` in this process (torch already imported: seconds less)."""
    from trainers import sweep
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sweep.main(list(argv))
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def status(folder) -> str:
    result = in_process("--status", str(folder))
    assert result.returncode == 0, result.stderr
    return result.stdout


def sweep_command(base, name, grid):
    """The README's CPU example, tiny."""
    return [sys.executable, "-m", "trainers.sweep", "--name", name, "--log-dir", str(base / "ckpt"),
            "--grid", grid, "--executor", "slurm", "--cpus_per_run", "1", "--time", "10", "--",
            "--data", str(base / "datasets"), *TRAINING]


def run(command):
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def until(what, check, deadline, seen):
    """Poll `check()` (which returns the status text) until `what(text)`; every distinct text
    is added to `seen`."""
    while time.monotonic() < deadline:
        text = check()
        if not seen or seen[-1] != text:
            seen.append(text)
        if what(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting; last seen:\n{seen[-1] if seen else ''}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    why = slurm_is_up()
    if why:
        if os.environ.get("KE_SLURM_REQUIRED"):
            pytest.fail(f"SLURM is not up: {why}")
        pytest.skip(f"SLURM is not up: {why} (start one with ci/slurm_up.sh)")
    base = tmp_path_factory.mktemp("slurm")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=2, per_class=(16, 2, 2),
                       size=(32, 32))
    grid, pre = base / "ckpt" / "grid", base / "ckpt" / "preempted"
    seen = {"grid": [], "preempted": []}
    jobs = []
    deadline = time.monotonic() + LIMIT_S
    try:
        blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", "--job-name=blocker",
                                  "--output=/dev/null", "--wrap", "sleep 300"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        jobs.append(blocker)
        until(lambda s: s.strip() == "RUNNING", lambda: squeue("-j", blocker, "-o", "%T"),
              deadline, [])
        first = run(sweep_command(base, "grid", "seed=0-1"))
        assert first.returncode == 0, first.stdout + first.stderr
        jobs += json.loads((grid / "jobs.json").read_text()).values()
        names = squeue("-o", "%j|%i", "--array")
        until(lambda s: "pending" in s, lambda: status(grid), deadline, seen["grid"])
        again = in_process(*sweep_command(base, "grid", "seed=0-1")[3:])
        ids_after = json.loads((grid / "jobs.json").read_text())
        queued_after = squeue("-o", "%i", "--array", "--name=grid").split()
        other = in_process(*sweep_command(base, "preempted", "seed=0")[3:])
        assert other.returncode == 0, other.stdout + other.stderr
        job = json.loads((pre / "jobs.json").read_text())["seed-0"]
        jobs.append(job)
        subprocess.run(["scancel", blocker], check=True, timeout=30)
        # the node (ci/slurm_up.sh: 4 CPUs) runs the three points at once
        state = pre / "seed-0" / "gen_0" / "checkpoints" / "resume.state"
        until(lambda s: "running" in s, lambda: status(grid), deadline, seen["grid"])
        until(lambda s: s, state.exists, deadline, [])
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        until(lambda s: "requeued" in s, lambda: status(pre), deadline, seen["preempted"])
        until(lambda s: s.endswith("2 done (of 2)\n"), lambda: status(grid), deadline,
              seen["grid"])
        until(lambda s: s, lambda: (grid / "report.md").exists(), deadline, [])
        until(lambda s: s.endswith("1 done (of 1)\n"), lambda: status(pre), deadline,
              seen["preempted"])
        until(lambda s: s, lambda: (pre / "report.md").exists(), deadline, [])
        return dict(base=base, first=first, again=again, names=names, ids_after=ids_after,
                    queued_after=queued_after, seen=seen, job=job, blocker=blocker)
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], timeout=30)


def test_a_cpu_sweep_is_one_job_array_named_after_the_sweep_asking_no_gpu(scenario):
    first, base = scenario["first"], scenario["base"]
    array = first.stdout.split("as job array ")[1].split(";")[0]
    assert first.stdout.startswith(f"submitted 2 point(s) as job array {array}; follow them")
    assert json.loads((base / "ckpt" / "grid" / "jobs.json").read_text()) == \
        {"seed-0": f"{array}_0", "seed-1": f"{array}_1"}
    batch = (base / "ckpt" / "grid" / "submitit" / array / f"{array}_submission.sh").read_text()
    assert "gpu" not in batch
    assert "#SBATCH --job-name=grid" in batch and "#SBATCH --cpus-per-task=1" in batch
    assert f"grid|{array}_0" in scenario["names"] and f"grid|{array}_1" in scenario["names"]


def test_a_rerun_while_queued_submits_nothing(scenario):
    again, array = scenario["again"], scenario["ids_after"]["seed-0"].split("_")[0]
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"seed-0: pending (job {array}_0), left as it is",
                                         f"seed-1: pending (job {array}_1), left as it is",
                                         "nothing to submit"]
    assert scenario["ids_after"] == {"seed-0": f"{array}_0", "seed-1": f"{array}_1"}
    assert sorted(scenario["queued_after"]) == [f"{array}_0", f"{array}_1"]


def test_status_goes_through_pending_running_and_done(scenario):
    seen, array = scenario["seen"]["grid"], scenario["ids_after"]["seed-0"].split("_")[0]
    assert seen[0] == (f"seed-0  pending (job {array}_0)\nseed-1  pending (job {array}_1)\n"
                       "2 pending (of 2)\n")
    assert any(f"seed-0  running (job {array}_0)" in s for s in seen), seen
    assert seen[-1] == "seed-0  done\nseed-1  done\n2 done (of 2)\n"


def test_the_job_that_ends_last_writes_the_report(scenario):
    folder = scenario["base"] / "ckpt" / "grid"
    report = (folder / "report.md").read_text()
    assert report.startswith("| recipe | generation | kind | Flower102Pytorch |")
    assert "Notes" not in report
    writers = [p for p in (folder / "submitit").rglob("*_log.out")
               if f"wrote {folder}/report.md" in p.read_text()]
    assert len(writers) == 1, writers


def test_preemption_by_usr2_requeues_and_resumes_exactly(scenario):
    base, job = scenario["base"], scenario["job"]
    seen = scenario["seen"]["preempted"]
    requeued = [s for s in seen if s.startswith(f"seed-0  requeued (job {job}; generation 0, epoch")]
    assert requeued, seen
    folder = base / "ckpt" / "preempted"
    out = "".join(p.read_text() for p in (folder / "submitit").rglob("*_log.out"))
    err = "".join(p.read_text() for p in (folder / "submitit").rglob("*_log.err"))
    log = (folder / "logs" / "seed-0.log").read_text()
    lines = [line for line in out.splitlines() if "saved and requeued" in line]
    assert len(lines) == 1 and " INFO " in lines[0] and "point seed-0: generation 0, epoch" \
        in lines[0], out
    assert "Traceback" not in out + err + log
    assert "stopped by SIGTERM" in log and "resuming generation 0 at epoch" in log
    final = [torch.load(f / "seed-0" / "gen_0" / "checkpoints" / "epoch_2.state",
                        weights_only=True)["state_dict"]
             for f in (folder, base / "ckpt" / "grid")]
    assert final[0].keys() == final[1].keys()
    assert [k for k in final[0] if not torch.equal(final[0][k], final[1][k])] == []
    assert (folder / "report.md").exists()


def test_a_packed_job_runs_its_points_at_once_and_requeues_both_on_preemption(tmp_path):
    """`--runs_per_gpu 2` packs 2 points into one job. This node has no GPU, on which the flag
    itself is refused; the test submits the same pack on the CPU through submit_slurm."""
    from trainers import sweep
    from trainers.sweep_run import submit_slurm
    from trainers.sweep_state import record_jobs
    why = slurm_is_up()
    if why:
        if os.environ.get("KE_SLURM_REQUIRED"):
            pytest.fail(f"SLURM is not up: {why}")
        pytest.skip(f"SLURM is not up: {why} (start one with ci/slurm_up.sh)")
    make_lists_dataset(tmp_path / "datasets", "Flower102Pytorch", num_classes=2,
                       per_class=(16, 2, 2), size=(32, 32))
    args = sweep.build_parser().parse_args(
        ["--name", "packed", "--log-dir", str(tmp_path / "ckpt"), "--grid", "seed=0-1",
         "--executor", "slurm", "--time", "10", "--cpus_per_run", "1"])
    folder, description, points = sweep.plan(
        args, ["--data", str(tmp_path / "datasets"), *TRAINING[:2], "--epochs", "8",
               *TRAINING[4:]])
    sweep.settle(folder, description)
    jobs = submit_slurm([(p.argv, p.resume_argv, p.name) for p in points], folder,
                        dict(sweep.slurm_parameters(args), cpus_per_task=2), 1, 1, 2)
    job = jobs[0].job_id
    record_jobs(folder, {p.name: j.job_id for p, j in zip(points, jobs, strict=True)})
    seen, deadline = [], time.monotonic() + 1.5 * LIMIT_S
    try:
        until(lambda s: s.count("running (job") == 2, lambda: status(folder), deadline, seen)
        logs = [os.path.join(folder, "logs", f"{p.name}.log") for p in points]
        until(lambda s: s, lambda: all(os.path.exists(log) and ", eta " in Path(log).read_text()
                                          for log in logs), deadline,
              [])                            # both past their first epoch
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        until(lambda s: s.endswith("2 done (of 2)\n"), lambda: status(folder), deadline, seen)
        until(lambda s: s, lambda: os.path.exists(os.path.join(folder, "report.md")), deadline,
              [])
    finally:
        subprocess.run(["scancel", job], timeout=30)
    assert [j.job_id for j in jobs] == [job, job]
    assert json.loads(Path(folder, "jobs.json").read_text()) == \
        {"seed-0": job, "seed-1": job}
    assert any(s.startswith(f"seed-0  running (job {job}; slot 0)\nseed-1  running (job {job}; "
                            "slot 1)\n") for s in seen), seen
    out = "".join(p.read_text() for p in (tmp_path / "ckpt" / "packed" / "submitit").rglob(
        "*_log.out"))
    assert sorted(re.search(r"point (\S+): ", line)[1] for line in out.splitlines()
                  if "saved and requeued" in line) == ["seed-0", "seed-1"], out
    for name in ("seed-0", "seed-1"):
        log = Path(folder, "logs", f"{name}.log").read_text()
        assert "stopped by SIGTERM" in log and "resuming generation 0 at epoch" in log, log
    assert out.count(f"wrote {folder}/report.md") == 1
