"""Where each setting comes from when a run is resumed or a checkpoint is evaluated: one table.

A flag not listed describes the experiment: a resumed run takes it from settings.json, checks it
against the checkpoints' config, and --evaluate/--export_slim take it from the checkpoint.
"""
from typing import NamedTuple


class FlagKind(NamedTuple):
    resume_reads_command_line: bool     # --resume takes it from its own command line
    describes_training: bool            # compared with the checkpoints' config on --resume
    evaluate_reads_command_line: bool   # --evaluate/--export_slim: the command line over the checkpoint


FLAG_KINDS = {
    # the machine
    "gpu": FlagKind(True, False, True),
    "num_threads": FlagKind(True, False, True),
    "data": FlagKind(True, False, True),
    "print_freq": FlagKind(True, False, False),
    "max_image_pixels": FlagKind(True, False, True),
    "cache_budget": FlagKind(True, False, True),
    "batched_crops": FlagKind(True, False, True),
    "eval_batch_size": FlagKind(True, False, True),
    "save_every_minutes": FlagKind(True, False, False),
    # this invocation
    "resume": FlagKind(True, False, False),
    "given_flags": FlagKind(False, False, True),
    "log_dir": FlagKind(False, False, False),
    "evaluate": FlagKind(False, False, False),
    "export_slim": FlagKind(False, False, False),
    "process_batch_size": FlagKind(False, False, False),
    "config_file": FlagKind(False, False, False),
    "config_sha256": FlagKind(False, False, False),
    # what the data gave (resolve): a resumed run finds it again
    "validation_split": FlagKind(False, False, False),
    "setting_roles": FlagKind(False, False, False),   # settings.json: the role of each flag
    # the data an evaluation reads, which may differ from the training run's
    "set": FlagKind(False, True, True),
    "batch_size": FlagKind(False, True, True),
    "image_size": FlagKind(False, True, True),
}


def flags_where(**kind) -> tuple:
    """The listed flags whose FlagKind has every given field, e.g. flags_where(describes_training=False)."""
    return tuple(flag for flag, k in FLAG_KINDS.items()
                 if all(getattr(k, field) == value for field, value in kind.items()))


RESUME_FROM_COMMAND_LINE = flags_where(resume_reads_command_line=True)
NOT_TRAINING = flags_where(describes_training=False)
EVALUATE_FROM_COMMAND_LINE = flags_where(evaluate_reads_command_line=True)
