"""The up-front checks of the images and paths a dataset lists: each listed image must be a
regular file (a FIFO, device, socket or folder is refused, never read), within the pixel limit
(read from the header, before decoding) and decodable; file_names must stay inside the image
folder. Problems are one-line DataErrors that name the list file and the rows."""
import logging
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from PIL import Image, UnidentifiedImageError

from data import DataError
from data.lists import ListFile, rows_problem
from data.transforms import to_rgb
from errors import SHOWN, one_line

log = logging.getLogger(__name__)

_PROBE_SIZE = (32, 32)  # JPEGs are checked decoded at the smallest DCT scale that is still this big
_PROBE_THREADS = 8


def set_pixel_limit(max_pixels: int):
    """PIL's own decompression-bomb limit, for every later decode (DataLoader workers forked
    from this process inherit it). PIL warns above the limit and refuses above twice it; the
    warning is made an error so that nothing between the two is decoded either."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _open_regular(path: str):
    """The file at `path` opened for reading, or the reason it is not an image file. Opened
    non-blocking and checked with fstat, so a FIFO, device or socket is refused, never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except IsADirectoryError:
        return "is a folder, not an image"
    except PermissionError:
        return "cannot be opened (permission denied)"
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        return "is a folder, not an image"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"is {kind}, not a regular file"


def probe_image(path: str, keep: Callable | None = None) -> str | None:
    """None when the image at `path` decodes as training will read it, else a short reason.

    Only regular files are opened. The pixel count comes from the header (Image.open decodes
    nothing) and must be within PIL's limit (`set_pixel_limit`) before anything is decoded.
    JPEGs are decoded at a reduced DCT scale (`Image.draft`): much faster, and the decoder still
    reads every scan, so a file cut short raises as it would at full size. With `keep` the
    image is decoded at full size, as training reads it, and `keep(path, RGB image)` is called
    with it (the image cache keeps it instead of decoding the file again)."""
    opened = _open_regular(path)
    if isinstance(opened, str):
        return opened
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with opened, Image.open(opened) as img:
            if limit and img.width * img.height > limit:
                return f"has {img.width}x{img.height} pixels, more than --max_image_pixels {limit}"
            if keep is None:
                img.draft("RGB", _PROBE_SIZE)
            img.load()
            rgb = to_rgb(img)
            if keep is not None:
                keep(path, rgb)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as bomb:
        count = re.search(r"\((\d+) pixels\)", str(bomb))
        return (f"has {count.group(1) if count else 'more'} pixels, more than "
                f"--max_image_pixels {limit}")
    except UnidentifiedImageError:
        return "is not an image file"
    except Exception as e:       # PIL raises OSError, ValueError, SyntaxError, ... on bad data
        text = one_line(e)
        return "is truncated" if "truncated" in text.lower() else f"cannot be decoded ({text})"
    return None


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the header of the regular file at `path`; None when it has none
    (`probe_image` then says why)."""
    opened = _open_regular(path)
    if isinstance(opened, str):
        return None
    try:
        with opened, Image.open(opened) as img:
            return img.size
    except Exception:
        return None


def probe_images(image_dir: str, names: Sequence[str],
                 keeper: Callable | None = None) -> dict[str, str | None]:
    """{file_name: reason or None} for every distinct name, decoded in a thread pool (PIL
    releases the GIL while decoding). `keeper({path: (width, height) or None})`, given the
    header sizes, returns the `keep` of `probe_image` (or None: nothing is kept)."""
    names = list(dict.fromkeys(names))
    paths = [os.path.join(image_dir, n) for n in names]
    threads = max(1, min(_PROBE_THREADS, os.cpu_count() or 1, len(names)))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="check-images") as pool:
        keep = keeper(dict(zip(paths, pool.map(header_size, paths), strict=True))) if keeper else None
        reasons = dict(zip(names, pool.map(lambda p: probe_image(p, keep), paths), strict=True))
    log.info("checked %d images in %.1f s%s", len(names), time.perf_counter() - start,
             " (decoded at full size for the image cache)" if keep else "")
    return reasons


def _image_problem(lf: ListFile, bad, others, image_dir: str) -> DataError:
    missing = sum(reason == "does not exist" for _, _, reason in bad)
    if missing == len(bad):
        what = f"do not exist under {image_dir}"
        fix = ("file_name must be relative to the image folder: fix the paths or restore the "
               "images, or pass --skip_bad_images to drop those rows")
    else:
        what = (f"under {image_dir} cannot be read" if not missing else
                f"under {image_dir} are missing ({missing}) or unreadable ({len(bad) - missing})")
        fix = ("replace or restore those files (file_name is relative to the image folder), or "
               "remove their rows, or pass --skip_bad_images to drop those rows")
    if not lf.numbered:
        fix = "replace, restore or delete those files, or pass --skip_bad_images to leave them out"
    shown = _bad_rows(lf, bad)
    elsewhere = (" (also " + ", ".join(f"{len(b)} in {os.path.basename(o.path)}" for o, b in others)
                 + ")") if others else ""
    return DataError(f"{lf.path}: {len(bad)} of {len(lf)} listed images {what} ({shown})"
                     f"{elsewhere}; {fix}")


def _bad_rows(lf: ListFile, bad) -> str:
    """The first few (line, name, reason) of `bad`, and how many more."""
    shown = "; ".join(lf.row(line, f"{name} {reason}") for line, name, reason in bad[:SHOWN])
    return shown + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")


def check_images(image_dir: str, lists: Sequence[ListFile], skip: bool = False,
                 keeper: Callable | None = None) -> list[ListFile]:
    """Every listed image must exist and decode. Otherwise one DataError that counts them and
    names the first few by line, or, with `skip`, a warning per list and the lists without
    those rows (returned in the same order). `keeper` as in `probe_images`."""
    reasons = probe_images(image_dir, [name for lf in lists for name in lf.files], keeper)
    report = []
    for lf in lists:
        bad = [(line, name, reasons[name]) for name, line in zip(lf.files, lf.lines, strict=True)
               if reasons[name]]
        if bad:
            report.append((lf, bad))
    if not report:
        return list(lists)
    if not skip:
        lf, bad = report[0]
        raise _image_problem(lf, bad, report[1:], image_dir)
    dropped = {id(lf): bad for lf, bad in report}
    kept = []
    for lf in lists:
        bad = dropped.get(id(lf))
        if not bad:
            kept.append(lf)
            continue
        shown = _bad_rows(lf, bad)
        log.warning("--skip_bad_images: dropped %d of %d rows of %s whose images are missing or "
                    "unreadable (%s)", len(bad), len(lf), lf.path, shown)
        if len(bad) == len(lf):
            raise DataError(f"{lf.path}: none of its {len(lf)} listed images can be read under "
                            f"{image_dir} ({shown}); nothing is left after "
                            f"--skip_bad_images: fix the paths or restore the images")
        gone = {name for _, name, _ in bad}
        rows = [(f, lab, line) for f, lab, line in zip(lf.files, lf.labels, lf.lines, strict=True)
                if f not in gone]
        kept.append(replace(lf, files=[r[0] for r in rows], labels=[r[1] for r in rows],
                            lines=[r[2] for r in rows]))
    return kept


def outside_paths(lf: ListFile) -> list[tuple]:
    """(line, file_name) of the rows whose file_name is absolute or climbs out with `..`."""
    bad = []
    for name, line in zip(lf.files, lf.lines, strict=True):
        norm = os.path.normpath(name)
        if os.path.isabs(name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            bad.append((line, name))
    return bad


def check_paths(lists: Sequence[ListFile], image_dir: str):
    """DataError for the first list with file_names outside `image_dir`."""
    for lf in lists:
        bad = outside_paths(lf)
        if bad:
            raise rows_problem(
                lf.path, "file_name(s) outside the image folder", bad,
                f"file_name must be relative to {image_dir} and stay inside it (no absolute "
                f"path, no leading ..): move the images into it and fix those rows, or pass "
                f"--allow_outside_paths to read them where they are")
