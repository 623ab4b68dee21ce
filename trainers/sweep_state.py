"""Where each point of a sweep stands, read from its experiment folder and the output the
sweep captured: done, running, interrupted, failed or pending.

`<sweep>/logs/<point>.log` holds a point's last run's output and `<point>.exit` its exit status,
written by whichever executor ran it.
"""
import errno
import fcntl
import json
import os
import signal
from typing import Optional

from configs.base_config import settings_config
from trainers.experiment import Experiment

DONE, RUNNING, INTERRUPTED, FAILED, PENDING = "done", "running", "interrupted", "failed", "pending"
# a run stopped by these saved a resumable checkpoint
STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM}


def output_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "logs", f"{name}.log")


def exit_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "logs", f"{name}.exit")


def record_exit(sweep_dir: str, name: str, code: int):
    with open(exit_path(sweep_dir, name), "w") as f:
        f.write(f"{code}\n")


def last_exit(sweep_dir: str, name: str) -> Optional[int]:
    try:
        with open(exit_path(sweep_dir, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


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
        with open(output_path(sweep_dir, name), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no output captured"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output captured"])[-1]


def saved_config(exp: Experiment):
    with open(exp.settings) as f:
        return settings_config(json.load(f), exp.settings)


class PointState:
    """A point's state and, for `interrupted`, where it stopped; for `failed`, why."""

    def __init__(self, state: str, detail: str = ""):
        self.state, self.detail = state, detail

    def __str__(self):
        return f"{self.state} ({self.detail})" if self.detail else self.state


def _stopped_at(exp: Experiment, cfg) -> str:
    from utils.checkpoint import load_checkpoint
    from errors import UserError
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


def point_state(sweep_dir: str, name: str) -> PointState:
    exp = Experiment(os.path.join(sweep_dir, name), name)
    if lock_held(exp):
        return PointState(RUNNING)
    cfg = None
    if exp.started():
        try:
            cfg = saved_config(exp)
        except (OSError, ValueError) as error:
            return PointState(FAILED, f"cannot read {exp.settings}: {error}")
        if exp.finished(cfg):
            return PointState(DONE)
    code = last_exit(sweep_dir, name)
    if code not in (None, 0) and code not in STOPPED:
        return PointState(FAILED, error_line(sweep_dir, name))
    if cfg is not None:
        return PointState(INTERRUPTED, _stopped_at(exp, cfg))
    return PointState(PENDING)
