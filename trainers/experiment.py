"""The experiment folder: starting a new run safely, or reopening one to resume it."""
import argparse
import copy
import fcntl
import json
import logging
import logging.handlers
import os
import shlex
import uuid

from configs.base_config import build_parser, settings_config, settings_record
from configs.flag_kinds import NOT_TRAINING, RESUME_FROM_COMMAND_LINE
from errors import UserError
from methods import METHODS
from models.graph_split import slim_blockers, slim_exists
from trainers.run_writes import EventWriter, RunLog, disk_errors  # noqa: F401 (disk_errors: API)
from utils.checkpoint import atomic_write_json, load_checkpoint
from utils.csv_utils import SLIM, read_results, row_kind
from utils.distributed import launcher
from utils.safe_files import link_error, read_regular, real_folder, refuse_link, remove_stale_temporaries

log = logging.getLogger("ke")

RESUME_LATEST = "latest"
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "train_KE_cls.py")
# the experiment's identity: a random id made with it, in settings.json and every checkpoint
IDENTITY = "experiment_id"


def no_slim_reason(cfg) -> str:
    """Why `has_slim(cfg)` is false, for the log."""
    if cfg.num_generations == 1:
        return "a single generation"
    if cfg.split_mode != "kels":
        return "--split_mode wels has no slim network (its masks are not whole filters)"
    if METHODS[cfg.forget].slim_reason:
        return METHODS[cfg.forget].slim_reason
    if not slim_exists(cfg.arch):
        return f"{cfg.arch} has no exact slim network ({slim_blockers(cfg.arch)[0]})"
    return ("the slim network is extracted from SplitConv, SplitLinear and SplitBatchNorm layers; "
            f"this run uses {cfg.conv_type}, {cfg.linear_type} and {cfg.bn_type}")


def has_slim(cfg) -> bool:
    """Whether each generation also gets a slim row: KELS with split convs, linears and
    BatchNorms (only they know their fit channels), several generations, a --forget method that
    keeps a fit hypothesis (its `slim_reason` is None), and an architecture with an exact slim network."""
    split_layers = (cfg.conv_type, cfg.linear_type, cfg.bn_type) == ("SplitConv", "SplitLinear",
                                                                      "SplitBatchNorm")
    return (cfg.num_generations > 1 and cfg.split_mode == "kels" and split_layers
            and METHODS[cfg.forget].slim_reason is None and slim_exists(cfg.arch))


class Progress:
    """Which generations of an experiment have their dense and slim results, read from the
    rows of its results CSV: what a resumed run skips."""

    def __init__(self, rows):
        self.dense = {int(r["Generation"]) for r in rows if row_kind(r) == "dense"}
        self.slim = {int(r["Generation"]) for r in rows if row_kind(r) == SLIM}

    def needs_slim(self, cfg, g: int) -> bool:
        return has_slim(cfg) and g not in self.slim

    def generation_done(self, cfg, g: int) -> bool:
        return g in self.dense and not self.needs_slim(cfg, g)

    def finished(self, cfg) -> bool:
        return all(self.generation_done(cfg, g) for g in range(cfg.num_generations))


class Experiment:
    """Paths of one experiment folder, `<log_dir>/<name>/`, and the checks that keep every write
    of a run inside it: no level below `<log_dir>` may be a symbolic link."""

    def __init__(self, folder: str, name: str):
        folder = os.path.abspath(folder)
        # the log folder itself may be a link (a user's scratch space); nothing under it may
        self.dir = os.path.join(os.path.realpath(os.path.dirname(folder)), os.path.basename(folder))
        self.name = name
        self.csv = os.path.join(self.dir, f"{name}.csv")
        self.settings = os.path.join(self.dir, "settings.json")

    def check_real(self):
        """UserError when the experiment folder is a symbolic link (it would lead the run's
        writes outside --log-dir) or a file."""
        if os.path.islink(self.dir):
            raise UserError(f"experiment folder {self.dir} is a symbolic link (to "
                            f"{os.path.realpath(self.dir)}), which would put the run's files "
                            f"outside --log-dir; remove the link or choose another --name")
        if os.path.exists(self.dir) and not os.path.isdir(self.dir):
            raise UserError(f"experiment folder {self.dir} is a file, not a folder; move it away "
                            f"or choose another --name")

    def folder(self, path: str) -> str:
        """`path`, a folder of this experiment, created where missing; UserError naming the
        first level of it that is a symbolic link."""
        self.check_real()
        return real_folder(os.path.dirname(self.dir), path)

    def writable(self, path: str) -> str:
        """`path`, a file of this experiment about to be written: its folders are real (created
        where missing) and it is not a symbolic link."""
        self.folder(os.path.dirname(path))
        return refuse_link(path)

    def event_writer(self, folder: str, resume_command: str, **kwargs) -> EventWriter:
        """A TensorBoard writer for `folder` (checked first: SummaryWriter follows links)."""
        with disk_errors(folder, resume_command):
            self.folder(folder)
        return EventWriter(folder, resume_command, **kwargs)

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
        return Progress(read_results(refuse_link(self.csv)))

    def finished(self, cfg) -> bool:
        return self.progress().finished(cfg)

    def resume_command(self, cfg) -> str:
        """The command that resumes this experiment, pasted in any folder (absolute paths; under
        torchrun, the same number of processes)."""
        return shlex.join([*launcher(), TRAIN_SCRIPT, "--log-dir", os.path.dirname(self.dir),
                           "--name", self.name, "--data", os.path.abspath(cfg.data), "--resume"])


def _log_to_file(exp: Experiment, cfg, earlier=()):
    """Log to --log_file from now on; `earlier` records (logged before the folder existed, such
    as the data checks' warnings) are written there first."""
    path = exp.writable(os.path.join(exp.dir, cfg.log_file))
    with disk_errors(path, None):
        handler = RunLog(path, exp.resume_command(cfg))
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


def check_types(saved: dict, source: str):
    """UserError for a saved setting (settings.json, a checkpoint's config) of another JSON type
    than its flag gives (the string
    "6" for `epochs`): such a value would pass the flag's rules and break the run later."""
    for action in build_parser()._actions:
        value = saved.get(action.dest)
        if action.type is None or action.nargs not in (None, "?") or value is None:
            continue
        try:
            converted = action.type(str(value))
        except Exception:                   # the flag's rules report it, in settings_config
            continue
        if isinstance(value, str) and not isinstance(converted, str):
            raise UserError(f"{source}: {action.dest} = {json.dumps(value)} is a string where "
                            f"the flag takes a number ({converted}); restore the value the run "
                            "started with")


def _saved_config(exp: Experiment, cfg) -> argparse.Namespace:
    try:
        saved = json.loads(read_regular(exp.settings, no_follow=True))   # never a FIFO or a link
    except (OSError, ValueError, RecursionError) as error:
        raise UserError(f"cannot read {exp.settings} ({error}); this folder cannot be resumed") from None
    if isinstance(saved, dict):
        check_types(saved, exp.settings)
    try:
        restored = settings_config(saved, exp.settings, given=cfg, keep=RESUME_FROM_COMMAND_LINE)
    except ValueError as error:
        raise UserError(str(error)) from None
    ignored = [f for f in cfg.given_flags if f not in RESUME_FROM_COMMAND_LINE + ("name", "log_dir")]
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

    A new run refuses a folder that already holds one, and gets a new identity. `--resume` (no
    path) reopens the folder named by --log-dir/--name; `--resume PATH` continues from that
    checkpoint. Either way the experiment's saved settings are used (validated like flags, and
    against the checkpoint the run continues from), except for the flags that
    configs/flag_kinds.py says a resumed run reads from its command line.
    """
    resume_state = None
    if not cfg.resume:
        exp = Experiment(os.path.join(cfg.log_dir, cfg.name), cfg.name)
        exp.check_real()
        if exp.started():
            raise UserError(f"experiment folder {exp.dir} already holds a run; continue it with "
                            f"--resume, or choose another --name")
        check_writable(cfg.log_dir, "--log-dir")
        cfg = copy.copy(cfg)
        setattr(cfg, IDENTITY, uuid.uuid4().hex)
        return cfg, exp, None

    if cfg.resume == RESUME_LATEST:
        exp = Experiment(os.path.join(cfg.log_dir, cfg.name), cfg.name)
        exp.check_real()
        if not exp.started():
            raise UserError(f"nothing to resume: {exp.dir} holds no run; check --log-dir and --name")
    else:
        resume_state = load_checkpoint(cfg.resume)
        if "rng" not in resume_state or "scheduler" not in resume_state:
            raise UserError(f"{cfg.resume} is not a resumable training checkpoint (it lacks the "
                            "training state); use --resume with an epoch_*.state or resume.state file")
        folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cfg.resume))))
        exp = Experiment(folder, os.path.basename(folder))
        exp.check_real()
        if not exp.started():
            raise UserError(f"{cfg.resume} is not inside an experiment folder "
                            "(<log-dir>/<name>/gen_<g>/checkpoints/)")
    cfg = _saved_config(exp, cfg)
    if resume_state is not None:
        g = resume_state["generation"]
        if g in exp.progress().dense:
            from utils.counting import generation
            raise UserError(f"{generation(g, cfg.num_generations)} of {exp.dir} is already "
                            f"finished; use --resume "
                            "without a path to continue the experiment")
        check_trained_with(cfg, exp, cfg.resume, resume_state)
    else:
        path = resumed_checkpoint(cfg, exp)
        if path is not None:
            ckpt = load_checkpoint(path)        # read once: the bytes checked are those used
            check_trained_with(cfg, exp, path, ckpt)
            g = first_unfinished(cfg, exp)
            if path == exp.resume_state(g):
                if ckpt.get("generation") != g:
                    raise UserError(f"{path} holds the training state of generation "
                                    f"{ckpt.get('generation')}, not of generation {g} whose "
                                    "folder it is in; remove it (generation "
                                    f"{g} then trains from its beginning) or restore its own")
                resume_state = ckpt
    return cfg, exp, resume_state


def first_unfinished(cfg, exp: Experiment):
    progress = exp.progress()
    return next((g for g in range(cfg.num_generations) if not progress.generation_done(cfg, g)),
                None)




def resumed_checkpoint(cfg, exp: Experiment):
    """The checkpoint a `--resume` continues from: the first unfinished generation's
    resume.state, else another of its checkpoints, else the previous generation's; None when
    there is none yet."""
    g = first_unfinished(cfg, exp)
    if g is None:
        return None
    candidates = [exp.resume_state(g)]
    for folder in [exp.checkpoint_dir(g)] + ([exp.checkpoint_dir(g - 1)] if g > 0 else []):
        if os.path.isdir(folder):
            candidates += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                           if n.endswith(".state")]
    return next((p for p in candidates if os.path.isfile(p)), None)


def check_trained_with(cfg, exp: Experiment, path: str, ckpt: dict):
    """UserError when `ckpt` (read from `path`) belongs to another experiment, or when the
    experiment's settings no longer describe it (a hand-edited settings.json): the first
    difference is named."""
    trained = ckpt.get("config")
    if not isinstance(trained, dict):
        raise UserError(f"{path} carries no training configuration, so it cannot be checked "
                        "against this experiment; resume only from its own checkpoints")
    ours, theirs = getattr(cfg, IDENTITY, None), trained.get(IDENTITY)
    if ours != theirs:
        raise UserError(f"{path} belongs to another experiment ({IDENTITY} {theirs}, while "
                        f"{exp.settings} says {ours}); resume only from this experiment's own "
                        "checkpoints")
    values = vars(cfg)
    for key, value in trained.items():
        if key in NOT_TRAINING or key == IDENTITY:
            continue
        if key not in values:
            raise UserError(f"{exp.settings} lacks {key}, but {path} was trained with {key} = "
                            f"{json.dumps(value)}; restore the file as the run started it")
        if values[key] != value or type(values[key]) is not type(value):
            raise UserError(f"{exp.settings} says {key} = {json.dumps(values[key])} but {path} "
                            f"was trained with {key} = {json.dumps(value)}; settings.json must "
                            "keep the values the run started with: restore it")


def check_resumable(cfg, settings, exp: Experiment):
    """UserError when the experiment's data changed class count (its settings were checked
    against its checkpoints when it was opened)."""
    if settings.num_cls is not None and settings.num_cls != cfg.num_cls:
        raise UserError(f"the data under --data {cfg.data} now has {cfg.num_cls} classes, but "
                        f"{exp.name} was trained on {settings.num_cls}; resume with the same data")


class ExperimentLock:
    """An exclusive OS lock on `<experiment>/.lock` for the whole run.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a stale
    lock never blocks a later run. The file holds the holder's PID for the error message.
    """

    def __init__(self, exp: Experiment):
        self.path = os.path.join(exp.dir, ".lock")
        self.fd = None

    def acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            if os.path.islink(self.path):
                raise link_error(self.path) from None
            raise
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
    command = None if new else exp.resume_command(cfg)
    with disk_errors(exp.dir, command):
        os.makedirs(os.path.dirname(exp.dir), exist_ok=True)
        exp.folder(exp.dir)
    lock = ExperimentLock(exp)
    with disk_errors(lock.path, command):
        lock.acquire()
    try:
        if new and exp.started():               # another run got here first and finished set-up
            raise UserError(f"experiment folder {exp.dir} already holds a run; continue it with "
                            f"--resume, or choose another --name")
        removed = remove_stale_temporaries(exp.dir)
        if new:
            with disk_errors(exp.settings, command):
                atomic_write_json(exp.settings, settings_record(cfg))
        session = Session(lock, _log_to_file(exp, cfg, earlier))
    except BaseException:
        lock.release()
        raise
    log.info(f"{'started' if new else 'resuming'} {exp.dir}")
    if removed:
        log.info(f"removed {removed} unfinished checkpoint file(s) left by an earlier stop")
    return session
