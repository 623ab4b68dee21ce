"""Where each point of a sweep stands, read from its experiment folder, the output the sweep
captured and, for points submitted to SLURM, their job's state in `squeue`: done, running,
interrupted, failed, pending, requeued or timed out.

`<sweep>/logs/<point>.log` holds a point's last run's output and `<point>.exit` its exit status,
written by whichever executor ran it (and removed when the point is started or submitted
again: an exit status there always belongs to the point's latest run); `<point>.place` where it
runs (a GPU and a slot on it) while it runs; `<sweep>/jobs.json` the SLURM job id of each point
submitted (several points share one when they share a GPU), so that a re-run does not submit a
queued point again.
"""
import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys

from configs.base_config import settings_config
from errors import UserError, one_line
from trainers.experiment import Experiment
from utils.safe_files import open_no_follow, read_regular, read_tail, real_folder, replaced_when_written

DONE, RUNNING, INTERRUPTED, FAILED, PENDING = "done", "running", "interrupted", "failed", "pending"
REQUEUED, TIMED_OUT = "requeued", "timed out"
# a run stopped by these saved a resumable checkpoint, or was stopped before it began (killed by
# the signal before it could handle it: a point pre-empted before its folder exists)
STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}
JOBS_FILE = "jobs.json"
SWEEP_FILE = "sweep.json"
REPORT_LOCK = ".report.lock"
# squeue's states of a job that is queued or holds its resources: its point is left alone
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def output_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "logs", f"{name}.log")


def exit_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "logs", f"{name}.exit")


def logs_folder(sweep_dir: str) -> str:
    """`<sweep>/logs/`, created where missing and checked as it is created: a symbolic link
    there (or at the sweep folder) is refused, never followed."""
    return real_folder(os.path.dirname(sweep_dir), os.path.join(sweep_dir, "logs"))


def open_output(sweep_dir: str, name: str):
    """The point's log, opened for appending without following a link."""
    logs_folder(sweep_dir)
    return open_no_follow(output_path(sweep_dir, name), "ab")


def place_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "logs", f"{name}.place")


def _remove(path: str):
    if os.path.lexists(path):
        os.remove(path)                 # a link is removed, never followed


def clear_exit(sweep_dir: str, name: str):
    """Forget the point's last exit status: it is about to run (or be queued) again."""
    _remove(exit_path(sweep_dir, name))


def record_place(sweep_dir: str, name: str, place: str):
    """Where the point is about to run (such as `GPU 1, slot 0`), for --status."""
    logs_folder(sweep_dir)
    with replaced_when_written(place_path(sweep_dir, name)) as tmp, open_no_follow(tmp) as f:
        f.write(f"{place}\n")


def last_place(sweep_dir: str, name: str) -> str:
    try:
        return read_regular(place_path(sweep_dir, name), limit=256,
                            no_follow=True).decode("utf-8", errors="replace").strip()
    except (OSError, UserError):
        return ""


def record_exit(sweep_dir: str, name: str, code: int):
    logs_folder(sweep_dir)
    with replaced_when_written(exit_path(sweep_dir, name)) as tmp, open_no_follow(tmp) as f:
        f.write(f"{code}\n")
    _remove(place_path(sweep_dir, name))


def last_exit(sweep_dir: str, name: str) -> int | None:
    try:
        return int(read_regular(exit_path(sweep_dir, name), limit=64, no_follow=True).strip())
    except (OSError, ValueError, UserError):
        return None


def jobs_path(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, JOBS_FILE)


def read_jobs(sweep_dir: str) -> dict[str, str]:
    """{point: SLURM job id} of the points submitted ({} when none was)."""
    try:
        with open(jobs_path(sweep_dir)) as f:
            jobs = json.load(f)
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in jobs.items()} if isinstance(jobs, dict) else {}


def record_jobs(sweep_dir: str, jobs: dict[str, str]):
    """Add {point: job id} to jobs.json (a later submission of a point replaces its id)."""
    from utils.checkpoint import atomic_write_json
    atomic_write_json(jobs_path(sweep_dir), dict(read_jobs(sweep_dir), **jobs))


def squeue_states(job_ids) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of those of `job_ids` that squeue knows (finished jobs stay
    for SLURM's MinJobAge); {} when squeue is missing or fails."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    try:
        out = subprocess.run(["squeue", "--me", "--array", "--noheader", "--states=all",
                              "--format=%i|%T|%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3 and fields[0] in wanted:
            states[fields[0]] = (fields[1], fields[2])
    return states


def slurm_jobs(sweep_dir: str) -> dict[str, tuple[str, str | None]]:
    """{point: (job id, squeue's state or None)} of the points submitted to SLURM."""
    jobs = read_jobs(sweep_dir)
    states = squeue_states(jobs.values())
    return {name: (job, states.get(job, (None, ""))[0]) for name, job in jobs.items()}


def job_log(sweep_dir: str, job_id: str) -> str:
    """The job's stderr as submitit asked SLURM to write it (`submitit/<job>/<job>_0_log.err`)."""
    return os.path.join(sweep_dir, "submitit", job_id, f"{job_id}_0_log.err")


def ended_at_time_limit(sweep_dir: str, job_id: str) -> bool:
    """Whether SLURM cancelled the job at its time limit (what slurmstepd writes to its
    stderr: `*** JOB 12 ON node CANCELLED AT ... DUE TO TIME LIMIT ***`)."""
    try:
        with open(job_log(sweep_dir, job_id), encoding="utf-8", errors="replace") as f:
            return "DUE TO TIME LIMIT" in f.read()
    except OSError:
        return False


def lock_held(exp: Experiment) -> bool:
    """Whether a process holds the experiment's lock (`<exp>/.lock`), probed without waiting
    and without creating the file."""
    try:
        fd = os.open(os.path.join(exp.dir, ".lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
    return False


def error_line(sweep_dir: str, name: str) -> str:
    """The failed run's `error:` line (or its last line) from the captured output."""
    try:
        text = read_tail(output_path(sweep_dir, name)).decode("utf-8", errors="replace")
    except (OSError, UserError):
        return "no output captured"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output captured"])[-1]


def read_json(path: str, no_follow: bool = True):
    """The JSON value of the regular file `path` (bounded size); ValueError when it is not
    JSON, nested too deeply included; UserError for a FIFO, a device or a huge file."""
    data = read_regular(path, no_follow=no_follow)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def saved_config(exp: Experiment):
    return settings_config(read_json(exp.settings), exp.settings)


class PointState:
    """A point's state and, for `interrupted`, where it stopped; for `failed`, why."""

    def __init__(self, state: str, detail: str = "", active: bool = False):
        self.state, self.detail = state, detail
        self.active = active        # its SLURM job is queued or running: not to submit again

    def __str__(self):
        return f"{self.state} ({self.detail})" if self.detail else self.state


def _stopped_at(exp: Experiment, cfg) -> str:
    from errors import UserError
    from utils.checkpoint import load_checkpoint
    progress = exp.progress()
    g = next((g for g in range(cfg.num_generations) if not progress.generation_done(cfg, g)), 0)
    from utils import counting
    epoch, batch = 0, 0
    if os.path.exists(exp.resume_state(g)):
        try:
            state = load_checkpoint(exp.resume_state(g))
            epoch = state["epoch"] + (1 if state["batch"] is None else 0)
            batch = state["batch"] or 0
        except (UserError, KeyError, TypeError):
            return f"{counting.generation(g, cfg.num_generations)}, its resume.state unreadable"
    return "stopped at " + counting.resume_point(g, cfg.num_generations, epoch, batch, cfg.epochs)


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def point_state(sweep_dir: str, name: str, job: tuple[str, str | None] = None) -> PointState:
    """`job`: (SLURM job id, its squeue state or None) when the point was submitted."""
    job_id, slurm = job or (None, None)
    on_job = f"job {job_id}" if job_id else ""
    exp = Experiment(os.path.join(sweep_dir, name), name)
    if lock_held(exp):
        return PointState(RUNNING, _joined(on_job, last_place(sweep_dir, name)),
                          active=slurm in SLURM_ACTIVE)
    cfg, where = None, ""
    if exp.started():
        try:
            cfg = saved_config(exp)
        except (OSError, ValueError, UserError) as error:
            return PointState(FAILED, f"cannot read {exp.settings}: {error}")
        try:
            if exp.finished(cfg):
                return PointState(DONE)
            where = _stopped_at(exp, cfg)
        except (OSError, ValueError, UserError) as error:
            return PointState(FAILED, f"cannot read its results: {error}")
    code = last_exit(sweep_dir, name)
    failed = code not in (None, 0) and code not in STOPPED
    # a point that failed in a job that runs on (the other points sharing its GPU) is not
    # running: the job does not start it again
    if slurm in SLURM_ACTIVE and not failed:
        if slurm in ("RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"):
            return PointState(RUNNING, on_job, active=True)
        if slurm.startswith("REQUEUE") or code in STOPPED:     # pending again after pre-emption
            return PointState(REQUEUED, _joined(on_job, where), active=True)
        return PointState(PENDING, _joined(on_job, where, slurm.lower() * (slurm != "PENDING")),
                          active=True)
    if failed:
        return PointState(FAILED, error_line(sweep_dir, name))
    if job_id and (slurm == "TIMEOUT" or ended_at_time_limit(sweep_dir, job_id)):
        return PointState(TIMED_OUT, _joined(on_job, "ended at its time limit without a "
                                             "checkpoint", where))
    if cfg is not None:
        return PointState(INTERRUPTED, where)
    return PointState(PENDING)


def point_states(sweep_dir: str, names, ended=()) -> dict:
    """{point: PointState}, SLURM's view of the points submitted asked once; the points
    `ended` (by the job asking, still RUNNING for SLURM) are judged by their files alone."""
    jobs = slurm_jobs(sweep_dir)
    return {name: point_state(sweep_dir, name, None if name in ended else jobs.get(name))
            for name in names}


def read_sweep(sweep_dir: str) -> dict:
    from utils.sweep_report import checked_description
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if not os.path.lexists(path):
        raise UserError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE}); give "
                        "--status DIR/SWEEP")
    try:
        return checked_description(read_json(path), path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({one_line(error)}); restore it") from None


def write_report(sweep_dir: str, ended=()):
    """Write the sweep's report, the points not done listed in its notes with their state."""
    from utils.sweep_report import write_sweep_report
    states = point_states(sweep_dir, [p["name"] for p in read_sweep(sweep_dir)["points"]], ended)
    markdown, prefix = write_sweep_report(
        sweep_dir, {name: str(state) for name, state in states.items() if state.state != DONE})
    print(markdown, end="")
    print(f"wrote {prefix}.md, {prefix}.csv and {prefix}_<dataset>.png", flush=True)


def report_if_done(sweep_dir: str, ended=()):
    """Write the report when no point is left to run and at least one is done (the failed
    ones listed in its notes)."""
    states = point_states(sweep_dir, [p["name"] for p in read_sweep(sweep_dir)["points"]], ended)
    kinds = {s.state for s in states.values()}
    if DONE in kinds and kinds <= {DONE, FAILED}:
        write_report(sweep_dir, ended)
        return True
    return False


def report_when_over(sweep_dir: str, *names: str):
    """Called by each SLURM job when its points `names` end: the job that finds no point left to
    run writes the report. Under a lock in the sweep folder, so that two jobs ending together write
    it once: the second finds a report newer than every point's end."""
    import fcntl
    try:
        with open(os.path.join(sweep_dir, REPORT_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            points = [p["name"] for p in read_sweep(sweep_dir)["points"]]
            ends = [os.path.getmtime(exit_path(sweep_dir, n)) for n in points
                    if os.path.exists(exit_path(sweep_dir, n))]
            report = os.path.join(sweep_dir, "report.md")
            if os.path.exists(report) and ends and os.path.getmtime(report) >= max(ends):
                return
            report_if_done(sweep_dir, ended=names)
    except (UserError, OSError) as error:       # the point's own result stands
        print(f"the sweep's report was not written: {error}", file=sys.stderr, flush=True)


def lock_sweep(sweep_dir: str) -> int:
    """Take `<sweep>/.sweep.lock` for as long as this process runs the sweep (the kernel frees
    it however the process ends); a second sweep on the same folder stops in one line instead
    of starting the same points again (which would fail on their experiments' locks)."""
    path = os.path.join(sweep_dir, ".sweep.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        if os.path.islink(path):
            from utils.safe_files import link_error
            raise link_error(path) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"sweep {sweep_dir} is being run by process {holder}; wait for it to "
                        f"end (follow it with --status {sweep_dir}), then run the command "
                        "again") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Tee:
    """A text stream writing to `stream` and to the binary file `out`."""

    def __init__(self, stream, out):
        self.stream, self.out = stream, out

    def write(self, text):
        self.out.write(text.encode("utf-8", errors="replace"))
        return self.stream.write(text)

    def flush(self):
        self.out.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def kept_output(sweep_dir: str, name: str):
    """While a point runs in this process (the debug executor): what it logs and prints goes
    to the terminal as before and is appended to its log, as the pool keeps a process's."""
    import logging
    import sys
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)   # the terminal's, as main's
    with open_output(sweep_dir, name) as out, open(os.devnull, "w") as devnull:
        handler = logging.StreamHandler(_Tee(devnull, out))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root = logging.getLogger()
        root.addHandler(handler)
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, out), _Tee(stderr, out)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            root.removeHandler(handler)
