"""A full disk or a refused write during a run, at any of its writes, ends in one line: it names
the file, says that the checkpoints already on disk are intact and prints the resume command.

Checkpoints, the results CSV and the summary go through `disk_errors`; the log file and the
TensorBoard events (whose writer thread keeps an error until the next call) are wrapped here.
"""
import contextlib
import glob
import logging
import os
import stat
import sys

from errors import UserError
from utils.checkpoint import DISK_ERRORS
from utils.safe_files import open_no_follow


def last_good_checkpoint(experiment_dir: str):
    """The newest checkpoint of the experiment (what a resume continues from), or None."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(experiment_dir), "gen_*", "checkpoints",
                                       "*.state")):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((info.st_mtime_ns, os.path.basename(path) == "resume.state", path))
    return max(found)[2] if found else None


def write_failed(path: str, error: OSError, resume_command, experiment_dir: str = None) -> UserError:
    """The one line; `resume_command` None: nothing is trained yet, the same command starts it.
    With `experiment_dir`, it names the last good checkpoint there."""
    then = (f"resume with: {resume_command}" if resume_command
            else "run the same command again")
    last = last_good_checkpoint(experiment_dir) if experiment_dir else None
    where = f" (the last good one: {last})" if last else ""
    return UserError(f"cannot write {path} ({error.strerror or error}); the checkpoints already on "
                     f"disk are intact{where}. Free space or fix the permissions, then {then}")


@contextlib.contextmanager
def disk_errors(path: str, resume_command: str, experiment_dir: str = None):
    """Turn a full disk or a write refused by the file system (a folder turned read-only
    included) into one clear UserError."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        raise write_failed(path, error, resume_command, experiment_dir) from None


class RunLog(logging.StreamHandler):
    """The experiment's log file, opened without following a link, appended to. A write that
    fails stops the run with `disk_errors`' line (logging's own handling would print a traceback
    and go on); after that the handler writes nothing more."""

    def __init__(self, path: str, resume_command: str):
        super().__init__(open_no_follow(path, "a"))
        self.path, self.resume_command, self.failed = path, resume_command, False

    def handle(self, record):
        return False if self.failed else super().handle(record)

    def handleError(self, record):
        error = sys.exc_info()[1]
        if not (isinstance(error, OSError) and error.errno in DISK_ERRORS):
            return super().handleError(record)
        self.failed = True
        raise write_failed(self.path, error, self.resume_command) from None


class EventWriter:
    """TensorBoard's SummaryWriter, made at its first scalar (TensorBoard is imported and the
    event file opened after the first epoch, not before the first batch), with its file-system
    errors turned into one line."""

    def __init__(self, folder: str, resume_command: str, **kwargs):
        self.folder, self.resume_command, self.kwargs = folder, resume_command, kwargs
        self.writer = None

    def _errors(self):
        return disk_errors(f"TensorBoard events under {self.folder}", self.resume_command)

    def add_scalar(self, *args, **kwargs):
        with self._errors():
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(self.folder, **self.kwargs)
            self.writer.add_scalar(*args, **kwargs)

    def close(self):
        if self.writer is not None:
            with self._errors():
                self.writer.close()
