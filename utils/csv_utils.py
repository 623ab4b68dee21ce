"""The results CSV (`<exp_dir>/<name>.csv`): one row per dense and per slim test evaluation.

Rows are appended atomically: the whole new file is written to a temporary beside the old one
(utils.safe_files: never through a symbolic link), synced to disk and renamed over it, so a run
killed mid-write leaves the previous complete file in place.
"""
import csv
import datetime
import io
import os
import shutil

from errors import UserError
from utils import RECALL_KS
from utils.safe_files import open_no_follow, read_regular, refuse_link, replaced_when_written

RESULT_COLUMNS = ["Date Finished", "Name", "Split Rate", "Bias Split Rate",
                  "Current Val Top 1", "Current Val Top 5", "Best Val Top 1", "Best Val Top 5",
                  "Current Tst Top 1", "Current Tst Top 5", "Best Tst Top 1", "Best Tst Top 5",
                  "Best Trn Top 1", "Best Trn Top 5", "Generation", "Forget"]
# --task retrieval: the reference's retrieval writer's metrics, after the columns above
RETRIEVAL_COLUMNS = ["NMI"] + [f"R@{k}" for k in RECALL_KS]
# ... where the Top 1 / Top 5 columns hold Recall@1 / Recall@4 on the test classes (there is no
# validation split, every evaluation searches the test classes; training's is the top-1 / top-5
# of the nearest proxy): named so (reading a file gives the classification names too, so that
# the reports read both kinds)
RETRIEVAL_NAMES = {
    "Current Val Top 1": "Last Eval Test-Class Recall@1",
    "Current Val Top 5": "Last Eval Test-Class Recall@4",
    "Best Val Top 1": "Best Eval Test-Class Recall@1", "Best Val Top 5": "Best Eval Test-Class Recall@4",
    "Current Tst Top 1": "Current Tst Test-Class Recall@1",
    "Current Tst Top 5": "Current Tst Test-Class Recall@4",
    "Best Tst Top 1": "Best Tst Test-Class Recall@1", "Best Tst Top 5": "Best Tst Test-Class Recall@4",
    "Best Trn Top 1": "Best Trn Proxy Top 1", "Best Trn Top 5": "Best Trn Proxy Top 5"}
RETRIEVAL_RESULT_COLUMNS = [RETRIEVAL_NAMES.get(c, c) for c in RESULT_COLUMNS] + RETRIEVAL_COLUMNS
METRIC_COLUMNS = ([c for c in RESULT_COLUMNS if "Top" in c] + RETRIEVAL_COLUMNS
                  + list(RETRIEVAL_NAMES.values()))


def retrieval_row(row: dict) -> dict:
    """A results row with the retrieval names of its Top 1 / Top 5 columns."""
    return {RETRIEVAL_NAMES.get(key, key): value for key, value in row.items()}
RATE_COLUMNS = ["Split Rate", "Bias Split Rate"]
REQUIRED_COLUMNS = ["Name", "Split Rate", "Bias Split Rate", "Generation"]
DATE_FORMAT = "%m-%d-%y_%H:%M:%S"
SLIM = "slim"
EMA = "ema"
# "Split Rate" of the rows that test another network than the dense one: the slim network, DNR's
# kept weights alone ("kept"), and --ema's moving average of the dense weights ("ema")
ROW_KINDS = (SLIM, "kept", EMA)


def row_kind(row: dict) -> str:
    """"dense", "slim", "kept" or "ema": which network a results row tested."""
    rate = row["Split Rate"]
    return rate if isinstance(rate, str) and rate in ROW_KINDS else "dense"


def _number(column: str, value) -> float:
    try:
        number = float(value)  # also takes numpy scalars and one-element tensors
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} needs a number, got {value!r}") from None
    return number


def _format_rate(column: str, value) -> str:
    if isinstance(value, str) and value in ROW_KINDS:
        return value
    return f"{_number(column, value):g}"  # as the reference writes it: 0.5, 0.125, 1


def _format_generation(value) -> str:
    number = _number("Generation", value)
    if not number.is_integer():
        raise ValueError(f"column 'Generation' needs an integer, got {value!r}")
    return str(int(number))


def format_row(row: dict, columns: list[str] = RESULT_COLUMNS) -> list[str]:
    """`row` as the CSV cells of `columns` (see `append_result`)."""
    unknown = [key for key in row if key not in columns]
    if unknown:
        raise ValueError(f"unknown results column(s) {unknown}; the columns are {columns}")
    missing = [key for key in REQUIRED_COLUMNS if row.get(key) is None]
    if missing:
        raise ValueError(f"results row lacks {missing}")
    cells = []
    for column in columns:
        value = row.get(column)
        if column == "Date Finished":
            if value is None:
                value = datetime.datetime.now()
            cells.append(value.strftime(DATE_FORMAT) if isinstance(value, datetime.datetime)
                         else str(value))
        elif column == "Name":
            cells.append(str(value))
        elif column == "Forget":
            cells.append("" if value is None else str(value))
        elif column in RATE_COLUMNS:
            cells.append(_format_rate(column, value))
        elif column == "Generation":
            cells.append(_format_generation(value))
        else:
            cells.append(f"{0.0 if value is None else _number(column, value):.2f}")
    return cells


def _read_text(path: str) -> str:
    """A results CSV's text: a regular file of bounded size (a FIFO would block forever)."""
    return read_regular(path).decode("utf-8")


def append_result(csv_path: str, row: dict, columns: list[str] = RESULT_COLUMNS) -> None:
    """Append one results row to `csv_path` (see `append_results`)."""
    append_results(csv_path, [row], columns)


def append_results(csv_path: str, rows: list[dict], columns: list[str] = RESULT_COLUMNS) -> None:
    """Append results rows to `csv_path` in one replacement, writing the header first when the
    file is new.

    Each row maps column names of RESULT_COLUMNS to values. Metrics are written with two decimals
    ("56.23"), missing ones as 0.00; "Split Rate" and "Bias Split Rate" are numbers or a
    ROW_KINDS marker;
    "Name", both rates and "Generation" (an integer) are required; "Date Finished" defaults to
    now. An unknown column raises ValueError. An existing file with other columns raises
    UserError instead of being changed. `columns`: RETRIEVAL_RESULT_COLUMNS for --task retrieval.
    """
    cells = [format_row(row, columns) for row in rows]
    csv_path = refuse_link(os.fspath(csv_path))
    old = b""
    if os.path.exists(csv_path):
        old = read_regular(csv_path)          # read once: the header checked is the one kept
        header = next(csv.reader(io.StringIO(old.decode("utf-8", errors="replace"))), None)
        if header is not None and header != columns:
            raise UserError(f"{csv_path} has other columns than a results file "
                            f"({header}); move it away or choose another --name")
        if old and not old.endswith(b"\n"):
            old += b"\n"
    new = io.StringIO()
    writer = csv.writer(new, lineterminator="\n")
    if not old:
        writer.writerow(columns)
    writer.writerows(cells)
    with replaced_when_written(csv_path) as tmp:
        if os.path.exists(csv_path):
            shutil.copymode(csv_path, tmp)
        with open_no_follow(tmp, "wb") as f:
            f.write(old + new.getvalue().encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    _sync_folder(os.path.dirname(os.path.abspath(csv_path)))


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse(column: str, text: str):
    if column in METRIC_COLUMNS:
        return float(text)
    if column in RATE_COLUMNS:
        return text if text in ROW_KINDS else float(text)
    if column == "Generation":
        return int(text)
    return text


def read_results(csv_path: str) -> list[dict]:
    """The rows of a results CSV as dicts: metrics and numeric rates as floats, "slim" kept as
    a string, Generation as an int, Name and Date Finished as strings. A missing file gives []."""
    if not os.path.lexists(csv_path):
        return []
    rows = []
    try:
        text = _read_text(csv_path)
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not a results file: it is not UTF-8 text") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        if columns is not None and columns not in (RESULT_COLUMNS, RETRIEVAL_RESULT_COLUMNS):
            raise UserError(f"{csv_path} is not a results file: its columns are "
                            f"{reader.fieldnames}")
        for line, record in enumerate(reader, start=2):
            try:
                row = {c: _parse(c, record[c]) for c in columns}
                if columns == RETRIEVAL_RESULT_COLUMNS:      # the reports' names too
                    row.update({c: row[r] for c, r in RETRIEVAL_NAMES.items()})
                rows.append(row)
            except (TypeError, ValueError):
                raise UserError(f"{csv_path}, line {line}: malformed results row {record}") \
                    from None
    return rows
