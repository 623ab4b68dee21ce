"""Writing inside an experiment folder without following symbolic links.

Anyone who can write to a shared log folder can plant a link where a run writes (`.lock`,
`train_log.txt`, `gen_0/`...). Every file a run writes is opened with O_NOFOLLOW, every folder
it writes into is checked with lstat, and whole files are replaced through a temporary created
with O_CREAT|O_EXCL|O_NOFOLLOW in the real folder (one naming scheme: `.tmp-*.part`), then
renamed. A link found where the run writes is a UserError naming it.
"""
import contextlib
import os
import re
import stat
import tempfile

from errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK   # what open() gives a new file; mkstemp's files start at 0600

TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".tmp-", ".part"
# the results CSV's temporaries before they took the common scheme: `.<name>.csv.<hex>.tmp`
_OLD_CSV_TEMPORARY = re.compile(r"^\..+\.csv\.[0-9a-f]{32}\.tmp$")


def link_error(path: str) -> UserError:
    return UserError(f"{path} is a symbolic link; a run never writes through links (someone may "
                     f"have planted it): remove it, or choose another --name")


def refuse_link(path: str) -> str:
    """`path`, unless it is a symbolic link."""
    if os.path.islink(path):
        raise link_error(path)
    return path


def real_folder(root: str, folder: str) -> str:
    """Create `folder` (inside the real folder `root`) one level at a time; UserError naming the
    first level that is a symbolic link or not a folder."""
    relative = os.path.relpath(folder, root)
    if relative.startswith(os.pardir) or os.path.isabs(relative):
        raise UserError(f"{folder} is outside the experiment folder {root}")
    current = root
    for part in ([] if relative == os.curdir else relative.split(os.sep)):
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise link_error(current)
        if not stat.S_ISDIR(info.st_mode):
            raise UserError(f"{current} is a file where the run keeps a folder; move it away")
    return folder


def open_no_follow(path: str, mode: str = "w", encoding: str = None):
    """open(path, mode) for writing ('w', 'wb', 'a', 'x', 'xb'), refusing a symbolic link."""
    flags = {"w": os.O_TRUNC | os.O_CREAT, "a": os.O_APPEND | os.O_CREAT,
             "x": os.O_CREAT | os.O_EXCL}[mode[0]]
    try:
        fd = os.open(path, flags | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError:
        if os.path.islink(path):
            raise link_error(path) from None
        raise
    return os.fdopen(fd, mode, encoding=None if "b" in mode else (encoding or "utf-8"))


@contextlib.contextmanager
def replaced_when_written(path, suffix: str = TEMPORARY_SUFFIX):
    """The name of a new, empty file beside `path` (mode FILE_MODE) for the block to write; when
    the block ends it is renamed over `path`. An error or a signal before then removes it and
    leaves `path` as it was (after kill -9 it stays, for remove_stale_temporaries). A `path`
    that is a symbolic link is refused rather than replaced."""
    path = refuse_link(os.fspath(path))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=suffix)  # O_EXCL|O_NOFOLLOW
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def is_temporary(name: str) -> bool:
    return ((name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX))
            or _OLD_CSV_TEMPORARY.match(name) is not None)


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files that a kill during a write left under `folder` (never
    following a link, and only regular files); returns how many. Call it only while holding the
    experiment's lock (no other writer is active)."""
    removed = 0
    for parent, _, files in os.walk(folder):          # does not descend into linked folders
        for name in files:
            path = os.path.join(parent, name)
            if is_temporary(name) and stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed += 1
    return removed


# What a text file of the toolkit (settings.json, sweep.json, a results CSV, a grid file, a
# point's exit status) may weigh: far above any real one, far below what would exhaust memory.
TEXT_LIMIT = 64 << 20


def not_regular_error(path: str) -> UserError:
    return UserError(f"{path} is not a regular file (a FIFO, a device or a folder would block "
                     f"or never end); replace it with the file itself")


def open_regular(path: str, no_follow: bool = False):
    """A binary file object reading `path`, which must be a regular file (checked on the open
    descriptor: a FIFO opens without blocking and is refused, as is a device or a folder).
    `no_follow`: refuse a symbolic link too. OSError (missing file...) is the caller's."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if no_follow else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if no_follow and os.path.islink(path):
            raise link_error(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_regular_error(path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str, limit: int = TEXT_LIMIT, no_follow: bool = False) -> bytes:
    """The bytes of the regular file `path`, read once through one descriptor, at most `limit`
    of them (UserError beyond, before reading more)."""
    with open_regular(path, no_follow) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise UserError(f"{path} is larger than {limit >> 20} MiB, far larger than any file the "
                        f"toolkit writes there; replace it with the right file")
    return data


def read_text(path: str, limit: int = TEXT_LIMIT, no_follow: bool = False) -> str:
    """The text of the regular file `path` (UTF-8, undecodable bytes replaced)."""
    return read_regular(path, limit, no_follow).decode("utf-8", errors="replace")


def read_tail(path: str, limit: int = 1 << 16) -> bytes:
    """The last `limit` bytes of the regular file `path` (a log may be long)."""
    with open_regular(path, no_follow=True) as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - limit))
        return f.read(limit)

