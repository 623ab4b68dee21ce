"""The experiment folder: starting a new run safely, or reopening one to resume it."""
import argparse
import json
import logging
import os
import random
import shlex
import sys

from configs.base_config import build_parser
from models.graph_split import slim_exists
from utils.checkpoint import load_checkpoint
from utils.csv_utils import read_results
from utils.errors import UserError

log = logging.getLogger("ke")

RESUME_LATEST = "latest"
# Flags that describe the machine, not the experiment: a resumed run takes those written on
# its command line; everything else comes from the experiment's settings.json.
RUNTIME_FLAGS = ("gpu", "num_threads", "data", "print_freq")


def has_slim(cfg) -> bool:
    """Whether each generation also gets a slim row: KELS, several generations, no LLF, and an
    architecture with an exact slim network."""
    return (cfg.num_generations > 1 and cfg.split_mode == "kels"
            and not getattr(cfg, "reset_layer_name", None) and slim_exists(cfg.arch))


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

    def finished(self, cfg) -> bool:
        rows = read_results(self.csv)
        dense = {int(r["Generation"]) for r in rows if r["Split Rate"] != "slim"}
        slim = {int(r["Generation"]) for r in rows if r["Split Rate"] == "slim"}
        wanted = set(range(cfg.num_generations))
        return dense >= wanted and (not has_slim(cfg) or slim >= wanted)

    def resume_command(self, cfg) -> str:
        return shlex.join([sys.executable, "train_KE_cls.py", "--log-dir", os.path.dirname(self.dir),
                           "--name", self.name, "--data", cfg.data, "--resume"])


def _log_to_file(exp: Experiment, cfg):
    handler = logging.FileHandler(os.path.join(exp.dir, cfg.log_file))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)


def _saved_config(exp: Experiment, cfg) -> argparse.Namespace:
    try:
        with open(exp.settings) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {exp.settings} ({error}); this folder cannot be resumed") from None
    defaults = vars(build_parser().parse_args([]))  # flags newer than the saved settings
    saved = {**defaults, **saved}
    ignored = [f for f in cfg.given_flags if f not in RUNTIME_FLAGS + ("resume", "name", "log_dir")]
    if ignored:
        log.warning(f"resuming with the saved settings of {exp.dir}; ignoring "
                    f"{', '.join('--' + f for f in ignored)}")
    for flag in RUNTIME_FLAGS:
        if flag in cfg.given_flags:
            saved[flag] = getattr(cfg, flag)
    saved["resume"] = cfg.resume
    return argparse.Namespace(**saved)


def open_experiment(cfg):
    """(cfg, experiment, resume_state) for this invocation.

    A new run refuses a folder that already holds one. `--resume` (no path) reopens the folder
    named by --log-dir/--name; `--resume PATH` continues from that checkpoint. Either way the
    experiment's saved settings are used, except for RUNTIME_FLAGS.
    """
    resume_state = None
    if not cfg.resume:
        exp = Experiment(os.path.join(cfg.log_dir, cfg.name), cfg.name)
        if exp.started():
            raise UserError(f"experiment folder {exp.dir} already holds a run; continue it with "
                            f"--resume, or choose another --name")
        if cfg.seed is None:
            cfg.seed = random.SystemRandom().randrange(2**31)
        os.makedirs(exp.dir, exist_ok=True)
        with open(exp.settings, "w") as f:
            json.dump(vars(cfg), f, indent=2, sort_keys=True)
        _log_to_file(exp, cfg)
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
        if any(int(r["Generation"]) == g and r["Split Rate"] != "slim" for r in read_results(exp.csv)):
            raise UserError(f"generation {g} of {exp.dir} is already finished; use --resume "
                            "without a path to continue the experiment")
    _log_to_file(exp, cfg)
    log.info(f"resuming {exp.dir}")
    return cfg, exp, resume_state
