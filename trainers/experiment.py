"""The experiment folder: starting a new run safely, or reopening one to resume it."""
import argparse
import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
import shlex
import sys

from configs.base_config import settings_config
from models.graph_split import slim_blockers, slim_exists
from trainers.forgetting import forgetting_method
from utils.checkpoint import (DISK_ERRORS, atomic_write_json, load_checkpoint,
                              remove_stale_temporaries)
from utils.csv_utils import SLIM, read_results
from errors import UserError

log = logging.getLogger("ke")

RESUME_LATEST = "latest"
# Flags that describe the machine, not the experiment: a resumed run takes those written on
# its command line; everything else comes from the experiment's settings.json.
RUNTIME_FLAGS = ("gpu", "num_threads", "data", "print_freq", "resume")


def no_slim_reason(cfg) -> str:
    """Why `has_slim(cfg)` is false, for the log."""
    if cfg.num_generations == 1:
        return "a single generation"
    if cfg.split_mode != "kels":
        return "--split_mode wels has no slim network (its masks are not whole filters)"
    if forgetting_method(cfg).slim_reason:
        return forgetting_method(cfg).slim_reason
    if not slim_exists(cfg.arch):
        return f"{cfg.arch} has no exact slim network ({slim_blockers(cfg.arch)[0]})"
    return ("the slim network is extracted from SplitConv, SplitLinear and SplitBatchNorm layers; "
            f"this run uses {cfg.conv_type}, {cfg.linear_type} and {cfg.bn_type}")


def has_slim(cfg) -> bool:
    """Whether each generation also gets a slim row: KELS with split convs, linears and
    BatchNorms (only they know their fit channels), several generations, a --forget method that
    keeps a fit hypothesis (ke), and an architecture with an exact slim network."""
    split_layers = (cfg.conv_type, cfg.linear_type, cfg.bn_type) == ("SplitConv", "SplitLinear",
                                                                      "SplitBatchNorm")
    return (cfg.num_generations > 1 and cfg.split_mode == "kels" and split_layers
            and forgetting_method(cfg).slim_reason is None and slim_exists(cfg.arch))


class Progress:
    """Which generations of an experiment have their dense and slim results, read from the
    rows of its results CSV: what a resumed run skips."""

    def __init__(self, rows):
        self.dense = {int(r["Generation"]) for r in rows if r["Split Rate"] != SLIM}
        self.slim = {int(r["Generation"]) for r in rows if r["Split Rate"] == SLIM}

    def needs_slim(self, cfg, g: int) -> bool:
        return has_slim(cfg) and g not in self.slim

    def generation_done(self, cfg, g: int) -> bool:
        return g in self.dense and not self.needs_slim(cfg, g)

    def finished(self, cfg) -> bool:
        return all(self.generation_done(cfg, g) for g in range(cfg.num_generations))


class Experiment:
    """Paths of one experiment folder, `<log_dir>/<name>/`."""

    def __init__(self, folder: str, name: str):
        self.dir = os.path.abspath(folder)
        self.name = name
        self.csv = os.path.join(self.dir, f"{name}.csv")
        self.settings = os.path.join(self.dir, "settings.json")

    def generation_dir(self, g: int) -> str:
        return os.path.join(self.dir, f"gen_{g}")

    def checkpoint_dir(self, g: int) -> str:
        return os.path.join(self.generation_dir(g), "checkpoints")

    def last_checkpoint(self, g: int, epochs: int) -> str:
        return os.path.join(self.checkpoint_dir(g), f"epoch_{epochs - 1}.state")

    def resume_state(self, g: int) -> str:
        return os.path.join(self.checkpoint_dir(g), "resume.state")

    def started(self) -> bool:
        """Whether a run got as far as training: a folder that holds only the settings and log
        of a run that failed during set-up (bad data, say) may be started again."""
        return os.path.exists(self.csv) or os.path.isdir(self.generation_dir(0))

    def progress(self) -> "Progress":
        return Progress(read_results(self.csv))

    def finished(self, cfg) -> bool:
        return self.progress().finished(cfg)

    def resume_command(self, cfg) -> str:
        return shlex.join([sys.executable, "train_KE_cls.py", "--log-dir", os.path.dirname(self.dir),
                           "--name", self.name, "--data", cfg.data, "--resume"])


def _log_to_file(exp: Experiment, cfg, earlier=()):
    """Log to --log_file from now on; `earlier` records (logged before the folder existed, such
    as the data checks' warnings) are written there first."""
    handler = logging.FileHandler(os.path.join(exp.dir, cfg.log_file))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for record in earlier:
        handler.handle(record)
    logging.getLogger().addHandler(handler)
    return handler


class EarlyRecords(logging.handlers.BufferingHandler):
    """Keeps what is logged before the experiment folder exists, for its log file."""

    def __init__(self):
        super().__init__(capacity=10_000)
        logging.getLogger().addHandler(self)

    def shouldFlush(self, record):
        return False                      # kept until taken; capacity only bounds the memory

    def take(self) -> list:
        logging.getLogger().removeHandler(self)
        records, self.buffer = self.buffer[-self.capacity:], []
        return records


def _saved_config(exp: Experiment, cfg) -> argparse.Namespace:
    try:
        with open(exp.settings) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {exp.settings} ({error}); this folder cannot be resumed") from None
    try:
        restored = settings_config(saved, exp.settings, given=cfg, keep=RUNTIME_FLAGS)
    except ValueError as error:
        raise UserError(str(error)) from None
    ignored = [f for f in cfg.given_flags if f not in RUNTIME_FLAGS + ("resume", "name", "log_dir")]
    if ignored:
        log.warning(f"resuming with the saved settings of {exp.dir}; ignoring "
                    f"{', '.join('--' + f for f in ignored)}")
    return restored


def check_writable(folder: str, what: str):
    """UserError unless `folder` exists as a writable folder or can be created."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what} {folder}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder}: {probe} is not writable; choose a folder you can write to")


def open_experiment(cfg):
    """(cfg, experiment, resume_state) for this invocation, creating nothing on disk.

    A new run refuses a folder that already holds one. `--resume` (no path) reopens the folder
    named by --log-dir/--name; `--resume PATH` continues from that checkpoint. Either way the
    experiment's saved settings are used (validated like flags), except for RUNTIME_FLAGS.
    """
    resume_state = None
    if not cfg.resume:
        exp = Experiment(os.path.join(cfg.log_dir, cfg.name), cfg.name)
        if exp.started():
            raise UserError(f"experiment folder {exp.dir} already holds a run; continue it with "
                            f"--resume, or choose another --name")
        check_writable(cfg.log_dir, "--log-dir")
        return cfg, exp, None

    if cfg.resume == RESUME_LATEST:
        exp = Experiment(os.path.join(cfg.log_dir, cfg.name), cfg.name)
        if not exp.started():
            raise UserError(f"nothing to resume: {exp.dir} holds no run; check --log-dir and --name")
    else:
        resume_state = load_checkpoint(cfg.resume)
        if "rng" not in resume_state or "scheduler" not in resume_state:
            raise UserError(f"{cfg.resume} is not a resumable training checkpoint (it lacks the "
                            "training state); use --resume with an epoch_*.state or resume.state file")
        folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cfg.resume))))
        exp = Experiment(folder, os.path.basename(folder))
        if not exp.started():
            raise UserError(f"{cfg.resume} is not inside an experiment folder "
                            "(<log-dir>/<name>/gen_<g>/checkpoints/)")
    cfg = _saved_config(exp, cfg)
    if resume_state is not None:
        g = resume_state["generation"]
        if g in exp.progress().dense:
            raise UserError(f"generation {g} of {exp.dir} is already finished; use --resume "
                            "without a path to continue the experiment")
    return cfg, exp, resume_state


# settings that may differ between a run and its resumption (the machine, not the experiment)
NOT_TRAINING = RUNTIME_FLAGS + ("given_flags", "log_dir", "evaluate", "export_slim",
                                "process_batch_size")


def check_resumable(cfg, given, exp: Experiment):
    """UserError when the experiment's settings no longer describe its checkpoints (a hand-edited
    settings.json) or its data changed class count."""
    if given.num_cls is not None and given.num_cls != cfg.num_cls:
        raise UserError(f"the data under --data {cfg.data} now has {cfg.num_cls} classes, but "
                        f"{exp.name} was trained on {given.num_cls}; resume with the same data")
    for g in range(cfg.num_generations):
        folder = exp.checkpoint_dir(g)
        names = sorted(n for n in os.listdir(folder) if n.endswith(".state")) \
            if os.path.isdir(folder) else []
        if names:
            path = os.path.join(folder, names[0])
            trained = load_checkpoint(path).get("config") or {}
            for key, value in vars(cfg).items():
                if key in trained and key not in NOT_TRAINING and trained[key] != value:
                    raise UserError(f"{exp.settings} says {key} = {json.dumps(value)} but {path} "
                                    f"was trained with {key} = {json.dumps(trained[key])}; "
                                    "settings.json must keep the values the run started with: "
                                    "restore it")
            return


@contextlib.contextmanager
def disk_errors(path: str, resume_command: str):
    """Turn a full disk or a write refused by the file system into one clear UserError."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        raise UserError(f"cannot write {path} ({error.strerror}); the checkpoints already on "
                        f"disk are intact. Free space or fix the permissions, then resume with: "
                        f"{resume_command}") from None


class ExperimentLock:
    """An exclusive OS lock on `<experiment>/.lock` for the whole run.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a stale
    lock never blocks a later run. The file holds the holder's PID for the error message.
    """

    def __init__(self, exp: Experiment):
        self.path = os.path.join(exp.dir, ".lock")
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"experiment {os.path.dirname(self.path)} is in use by process "
                            f"{holder}; wait for it to finish or stop it, or choose another "
                            f"--name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Session:
    """What a running experiment holds: its lock and its log file. `close` gives both back
    (after `log_error`, when the run stops on an error)."""

    def __init__(self, lock: ExperimentLock, log_handler: logging.Handler):
        self.lock, self.log_handler = lock, log_handler

    def log_error(self, message: str):
        self.log_handler.handle(logging.LogRecord("ke", logging.ERROR, __file__, 0, message,
                                                  None, None))

    def close(self):
        logging.getLogger().removeHandler(self.log_handler)
        self.log_handler.close()
        self.lock.release()


def settle_experiment(cfg, exp: Experiment, new: bool, earlier=()) -> Session:
    """Create (new run) or reopen the experiment folder once the configuration is resolved:
    take its lock, remove temporaries a killed run left, write settings.json (new run) and
    start logging to --log_file there."""
    os.makedirs(exp.dir, exist_ok=True)
    lock = ExperimentLock(exp).acquire()
    if new and exp.started():                   # another run got here first and finished set-up
        lock.release()
        raise UserError(f"experiment folder {exp.dir} already holds a run; continue it with "
                        f"--resume, or choose another --name")
    removed = remove_stale_temporaries(exp.dir)
    if new:
        atomic_write_json(exp.settings, vars(cfg))
    session = Session(lock, _log_to_file(exp, cfg, earlier))
    log.info(f"{'started' if new else 'resuming'} {exp.dir}")
    if removed:
        log.info(f"removed {removed} unfinished checkpoint file(s) left by an earlier stop")
    return session
