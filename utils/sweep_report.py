"""The paper-style table of a sweep (`<log-dir>/<SWEEP>/`, described by its sweep.json).

Points are grouped by the grid's axes that vary, seeds excepted: the dataset (or, with one
dataset, the last varying axis when there are several) makes the columns, the other axes the
recipe of a row. Rows are recipe x N1 / N3 / last generation x dense / slim; a cell is the test
top-1 mean ± std over the seeds of its group. Written as `<sweep>/report.md`, `report.csv` and
`report_<dataset>.png` (top-1 versus generation, one line per recipe).
"""
import json
import os
import re
from typing import Dict, List, Tuple

import pandas as pd

from utils.csv_utils import SLIM, read_results
from errors import UserError, one_line
from utils.safe_files import open_no_follow, read_regular

SWEEP_FILE = "sweep.json"
TOP1 = "Current Tst Top 1"
SEED = "seed"
DATASET = "set"
SAFE_NAME = re.compile(r"[^A-Za-z0-9.+=_-]")


def is_sweep(folder: str) -> bool:
    return os.path.lexists(os.path.join(folder, SWEEP_FILE))


def _read_json(path: str) -> dict:
    """A JSON object from a regular file of bounded size, never through a link."""
    try:
        data = read_regular(path, no_follow=True)
        value = json.loads(data)
    except (OSError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else one_line(error)
        raise UserError(f"cannot read {path} ({reason}); is the point finished?") from None
    if not isinstance(value, dict):
        raise UserError(f"cannot read {path} (not a JSON object); restore it")
    return value


def _file_part(text: str) -> str:
    """`text` as part of a file name in the sweep folder: no '/', no '..'."""
    return SAFE_NAME.sub("_", text).lstrip(".") or "_"


def _recipe(values: Dict[str, str], axes: List[str]) -> str:
    return ", ".join(f"{a} {values[a]}" for a in axes) or "all"


def load_sweep(sweep_dir: str) -> Tuple[pd.DataFrame, str]:
    """One row per (point, generation, kind) with its recipe, column and dataset, and the
    name of the column axis."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    sweep = _read_json(path)
    from trainers.sweep import checked_description
    try:
        checked_description(sweep, path)
        varying = [a["flag"] for a in sweep["grid"] if len(a["values"]) > 1 and a["flag"] != SEED]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"cannot read {path} (it does not describe a sweep); restore it") from None
    varying = [a["flag"] for a in sweep["grid"] if len(a["values"]) > 1 and a["flag"] != SEED]
    if DATASET in varying:
        column_axis = DATASET
    elif len(varying) >= 2:
        column_axis = varying[-1]
    else:
        column_axis = DATASET
    row_axes = [a for a in varying if a != column_axis]
    line_axes = [a for a in varying if a != DATASET]
    records = []
    for point in sweep["points"]:
        name = point["name"]
        settings_path = os.path.join(sweep_dir, name, "settings.json")
        settings = _read_json(settings_path)
        try:
            generations = int(settings["num_generations"])
            dataset = str(settings["set"])
            column = dataset if column_axis == DATASET else point["values"][column_axis]
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{settings_path} lacks a valid {one_line(error)}; restore the file "
                            "the point's run wrote") from None
        csv_path = os.path.join(sweep_dir, name, f"{name}.csv")
        for row in read_results(csv_path):
            records.append({"point": name, "recipe": _recipe(point["values"], row_axes),
                            "line": _recipe(point["values"], line_axes), "column": column,
                            "dataset": dataset, "generation": int(row["Generation"]),
                            "last": generations - 1,
                            "kind": "slim" if row["Split Rate"] == SLIM else "dense",
                            "top1": float(row[TOP1])})
    if not records:
        raise UserError(f"{sweep_dir}: no point has results yet")
    frame = pd.DataFrame(records).drop_duplicates(["point", "generation", "kind"], keep="last")
    return frame, column_axis


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of N1, N3 and each point's last generation, labelled N<g+1>."""
    wanted = (frame["generation"].isin([0, 2])) | (frame["generation"] == frame["last"])
    part = frame[wanted].copy()
    part["N"] = part["generation"] + 1
    return part


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """recipe, N, kind, column, runs, mean, std (std over seeds, 0 for one run)."""
    grouped = _labelled(frame).groupby(["recipe", "N", "kind", "column"], sort=False)["top1"]
    table = grouped.agg(runs="count", mean="mean", std="std").reset_index()
    table["std"] = table["std"].fillna(0.0)
    return table.sort_values(["recipe", "N", "kind"], kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, column_axis: str) -> str:
    columns = list(dict.fromkeys(table["column"]))
    lines = ["| recipe | generation | kind | " + " | ".join(f"{column_axis} {c}" if column_axis
                                                            != DATASET else c for c in columns)
             + " |", "|---|---|---|" + "---:|" * len(columns)]
    for (recipe, n, kind), rows in table.groupby(["recipe", "N", "kind"], sort=False):
        cells = {r["column"]: f"{r['mean']:.2f} ± {r['std']:.2f}" for _, r in rows.iterrows()}
        lines.append(f"| {recipe} | N{n} | {kind} | "
                     + " | ".join(cells.get(c, "-") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_dataset(frame: pd.DataFrame, dataset: str, path: str):
    """Test top-1 (mean over seeds) versus generation for one dataset, one line per recipe:
    dense solid, slim dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = frame[frame["dataset"] == dataset]
    means = part.groupby(["line", "kind", "generation"])["top1"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (line, rows) in enumerate(means.groupby("line", sort=False)):
        colour = f"C{index % 10}"
        for kind, style in (("dense", "-"), ("slim", "--")):
            series = rows[rows["kind"] == kind]
            if not series.empty:
                ax.plot(series["generation"], series["top1"], style, marker="o", color=colour,
                        label=f"{line} ({kind})")
    ax.set_xlabel("generation")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with open_no_follow(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_sweep_report(sweep_dir: str) -> Tuple[str, str]:
    """Write the sweep's report files; return the markdown and the files' prefix."""
    frame, column_axis = load_sweep(sweep_dir)
    table = sweep_table(frame)
    markdown = to_markdown(table, column_axis)
    prefix = os.path.join(sweep_dir, "report")
    with open_no_follow(prefix + ".md", "w") as f:       # never through a planted link
        f.write(markdown)
    with open_no_follow(prefix + ".csv", "w") as f:
        table.to_csv(f, index=False, float_format="%.2f")
    for dataset in dict.fromkeys(frame["dataset"]):
        plot_dataset(frame, dataset, f"{prefix}_{_file_part(dataset)}.png")
    return markdown, prefix
