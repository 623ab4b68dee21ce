"""Where each point of a sweep stands, read from its experiment folder and the output the
sweep captured: done, running, interrupted, failed or pending.

`<sweep>/logs/<point>.log` holds a point's last run's output and `<point>.exit` its exit status,
written by whichever executor ran it.
"""
import contextlib
import errno
import fcntl
import json
import os
import signal
from typing import Optional

from configs.base_config import settings_config
from errors import UserError
from trainers.experiment import Experiment
from utils.safe_files import (open_no_follow, read_regular, read_tail, real_folder,
                              replaced_when_written)

DONE, RUNNING, INTERRUPTED, FAILED, PENDING = "done", "running", "interrupted", "failed", "pending"
# a run stopped by these saved a resumable checkpoint
STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM}


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


def record_exit(sweep_dir: str, name: str, code: int):
    logs_folder(sweep_dir)
    with replaced_when_written(exit_path(sweep_dir, name)) as tmp, open_no_follow(tmp) as f:
        f.write(f"{code}\n")


def last_exit(sweep_dir: str, name: str) -> Optional[int]:
    try:
        return int(read_regular(exit_path(sweep_dir, name), limit=64, no_follow=True).strip())
    except (OSError, ValueError, UserError):
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

    def __init__(self, state: str, detail: str = ""):
        self.state, self.detail = state, detail

    def __str__(self):
        return f"{self.state} ({self.detail})" if self.detail else self.state


def _stopped_at(exp: Experiment, cfg) -> str:
    from utils.checkpoint import load_checkpoint
    from errors import UserError
    progress = exp.progress()
    g = next((g for g in range(cfg.num_generations) if not progress.generation_done(cfg, g)), 0)
    epoch = 0
    if os.path.exists(exp.resume_state(g)):
        try:
            state = load_checkpoint(exp.resume_state(g))
            epoch = state["epoch"] + (1 if state["batch"] is None else 0)
        except (UserError, KeyError, TypeError):
            return f"generation {g}, its resume.state unreadable"
    return f"generation {g}, epoch {epoch}"


def point_state(sweep_dir: str, name: str) -> PointState:
    exp = Experiment(os.path.join(sweep_dir, name), name)
    if lock_held(exp):
        return PointState(RUNNING)
    cfg = None
    if exp.started():
        try:
            cfg = saved_config(exp)
        except (OSError, ValueError, UserError) as error:
            return PointState(FAILED, f"cannot read {exp.settings}: {error}")
        if exp.finished(cfg):
            return PointState(DONE)
    code = last_exit(sweep_dir, name)
    if code not in (None, 0) and code not in STOPPED:
        return PointState(FAILED, error_line(sweep_dir, name))
    if cfg is not None:
        return PointState(INTERRUPTED, _stopped_at(exp, cfg))
    return PointState(PENDING)


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
    with open_output(sweep_dir, name) as out:
        handler = logging.StreamHandler(_Tee(open(os.devnull, "w"), out))
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
            handler.stream.stream.close()
