"""The paper-style table of a sweep (`<log-dir>/<SWEEP>/`, described by its sweep.json).

Points are grouped by the grid's axes that vary, seeds excepted: the dataset (or, with one
dataset, the last varying axis when there are several) makes the columns, the other axes the
recipe of a row. Rows are recipe x generations 0, 2 and the last (counted from 0 as gen_<g>,
labelled `0 (1 of 4)`: utils.counting) x dense / slim; a cell is the test top-1 mean ± the
half-width of its 95% interval (Student t over the seeds of its group) and n. Axes of run
settings (argtypes.RUN, as the points' settings.json record them) split no row.

Below it, the selection on validation: each method (the values of its METHOD axes) takes the
configuration (the values of its other axes) with the best mean validation top-1 over its seeds
at the last generation, and only that configuration's test top-1 is shown, with which
configuration won and of how many. A point whose validation ran on the test split (settings.json's
validation_split "test"; for runs that did not record it, when every dense row's best
validation top-1 and top-5 equal its best test top-1 and top-5) is marked "selected on test".
With a baseline (`python -m utils.report SWEEP --baseline "forget none"`) the differences from
it are paired by seed. Written as `<sweep>/report.md`, `report.csv` and
`report_<dataset>.png` (top-1 versus generation, one line per recipe). Points that did not
finish are left out of what they did not reach and listed under the table's notes, with their
state (a failed point with its error line).
"""
import json
import os
import re
import stat

import pandas as pd
from scipy import stats

from argtypes import METHOD, ROLES_KEY, RUN
from errors import UserError, one_line
from utils import counting
from utils.comparison import paired
from utils.csv_utils import read_results, row_kind
from utils.intervals import Interval, cell, interval
from utils.safe_files import not_regular_error, open_no_follow, read_regular

SWEEP_FILE = "sweep.json"
TOP1 = "Current Tst Top 1"
VAL1 = "Current Val Top 1"      # the last epoch's validation: the network the test row tested
SEED = "seed"
DATASET = "set"
# axes that set the conditions a comparison is made under rather than a configuration to tune:
# the selection on validation picks a configuration per method and per condition
CONDITIONS = (DATASET, "label_noise", "noise_type", "noise_seed")
STOPPED_CODES = {130, 143, -2, -15}      # SIGINT, SIGTERM: a resumable stop
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


def _recipe(values: dict[str, str], axes: list[str]) -> str:
    return ", ".join(f"{a} {values[a]}" for a in axes) or "all"


def checked_description(saved, path: str) -> dict:
    """A sweep.json's content, which must hold points with names (ValueError otherwise)."""
    points = saved.get("points") if isinstance(saved, dict) else None
    if not isinstance(points, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"]
            and "/" not in p["name"] and p["name"] not in (".", "..")
            and isinstance(p.get("values", {}), dict) for p in points):
        raise ValueError("it does not describe a sweep's points")
    return saved


def _results(sweep_dir: str, name: str):
    """(settings, results rows) of a point; None when it has no results yet."""
    settings_path = os.path.join(sweep_dir, name, "settings.json")
    csv_path = os.path.join(sweep_dir, name, f"{name}.csv")
    if not (os.path.lexists(settings_path) and os.path.lexists(csv_path)):
        return None
    for path in (settings_path, csv_path):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise not_regular_error(path)
    try:
        rows = read_results(csv_path)
    except UserError:
        return None
    return (_read_json(settings_path), rows) if rows else None


def _last_exit(sweep_dir: str, name: str):
    try:
        with open(os.path.join(sweep_dir, "logs", f"{name}.exit")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _error_line(sweep_dir: str, name: str) -> str:
    try:
        with open(os.path.join(sweep_dir, "logs", f"{name}.log"), encoding="utf-8",
                  errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no output captured"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output captured"])[-1]


def states_from_files(sweep_dir: str, names: list[str]) -> dict[str, str]:
    """{point: its state in words} of the points not done, read from their files alone (the
    sweep's own --status, which also asks SLURM, passes its states instead): done when its
    results reach the last generation; else failed (with the error line of its captured
    output), stopped (by a signal, resumable) or not finished."""
    states = {}
    for name in names:
        found = _results(sweep_dir, name)
        if found is not None:
            settings, rows = found
            if any(int(r["Generation"]) >= int(settings["num_generations"]) - 1 for r in rows):
                continue
        code = _last_exit(sweep_dir, name)
        if code in STOPPED_CODES:
            states[name] = "stopped"
        elif code not in (None, 0):
            states[name] = f"failed ({_error_line(sweep_dir, name)})"
        else:
            states[name] = "not finished"
    return states


def notes(sweep_dir: str, not_done: dict[str, str]) -> list[str]:
    """One line per point not done: its state, and whether its finished generations are in
    the table."""
    return [f"- {name}: {state}" + ("; its finished generations are counted"
                                    if _results(sweep_dir, name) is not None
                                    else "; not in the table")
            for name, state in not_done.items()]


def validation_split(settings: dict, rows: list[dict]) -> str:
    """What the point's validation was: "val", "held_out" or "test" as its settings.json says;
    for a run that did not record it, "test" when the best validation top-1 and top-5 equal the
    best test top-1 and top-5 on every dense row (the validation ran on the test split), else
    "val"."""
    recorded = settings.get("validation_split")
    if isinstance(recorded, str):
        return recorded
    dense = [r for r in rows if row_kind(r) == "dense"]
    same = all(r.get("Best Val Top 1") == r.get("Best Tst Top 1")
               and r.get("Best Val Top 5") == r.get("Best Tst Top 5") for r in dense)
    return "test" if dense and same else "val"


def axis_roles(points_settings: list[dict]) -> dict[str, str]:
    """{setting: role} from the roles the points recorded in their settings.json."""
    roles = {}
    for settings in points_settings:
        record = settings.get(ROLES_KEY)
        if isinstance(record, dict):
            for role, names in record.items():
                for name in names if isinstance(names, list) else ():
                    roles.setdefault(name, role)
    return roles


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def load_sweep(sweep_dir: str) -> tuple[pd.DataFrame, str]:
    """One row per (point, generation, kind) with its recipe, column and dataset, and the
    name of the column axis (points without results are left out). Axes of run settings
    (argtypes.RUN: threads, paths, devices...) and the seed split no row; the frame's attrs
    hold the method axes and the configuration axes (the others) of the selection on
    validation."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    sweep = _read_json(path)
    try:
        checked_description(sweep, path)
        axes = [a["flag"] for a in sweep["grid"] if len(a["values"]) > 1 and a["flag"] != SEED]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"cannot read {path} (it does not describe a sweep); restore it") from None
    found = {p["name"]: _results(sweep_dir, p["name"]) for p in sweep["points"]}
    roles = axis_roles([f[0] for f in found.values() if f is not None])
    varying = [a for a in axes if roles.get(_dest(a)) != RUN]
    if DATASET in varying:
        column_axis = DATASET
    elif len(varying) >= 2:
        column_axis = varying[-1]
    else:
        column_axis = DATASET
    row_axes = [a for a in varying if a != column_axis]
    line_axes = [a for a in varying if a != DATASET]
    condition_axes = [a for a in varying if _dest(a) in CONDITIONS and a != DATASET]
    method_axes = [a for a in varying if _dest(a) not in CONDITIONS and roles.get(
        _dest(a), METHOD if _dest(a) == "forget" else None) == METHOD]
    config_axes = [a for a in varying if _dest(a) not in CONDITIONS and a not in method_axes]
    records = []
    for point in sweep["points"]:
        name = point["name"]
        if found[name] is None:
            continue
        settings, rows = found[name]
        validation = validation_split(settings, rows)
        try:
            generations = int(settings["num_generations"])
            dataset = str(settings["set"])
            column = dataset if column_axis == DATASET else point["values"][column_axis]
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{os.path.join(sweep_dir, name, 'settings.json')} lacks a valid "
                            f"{one_line(error)}; restore the file the point's run wrote") from None
        for row in rows:
            records.append({"point": name, "recipe": _recipe(point["values"], row_axes),
                            "line": _recipe(point["values"], line_axes), "column": column,
                            "dataset": dataset, "generation": int(row["Generation"]),
                            "last": generations - 1,
                            "kind": row_kind(row),
                            "top1": float(row[TOP1]), "val": _number(row.get(VAL1)),
                            "seed": str(point["values"].get(SEED, settings.get(SEED, name))),
                            "method": _recipe(point["values"], method_axes),
                            "config": _recipe(point["values"], config_axes),
                            "condition": ", ".join([dataset] + [
                                f"{a} {point['values'][a]}" for a in condition_axes]),
                            "validation": validation})
    if not records:
        raise UserError(f"{sweep_dir}: no point has results yet")
    frame = pd.DataFrame(records).drop_duplicates(["point", "generation", "kind"], keep="last")
    frame.attrs.update(method_axes=method_axes, config_axes=config_axes)
    return frame, column_axis


def _number(value):
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of generations 0 and 2 and of each point's last generation."""
    wanted = (frame["generation"].isin([0, 2])) | (frame["generation"] == frame["last"])
    part = frame[wanted].copy()
    part["generations"] = part["last"] + 1
    return part


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """recipe, generation (from 0), generations, kind, column, runs, mean, std (over seeds, 0
    for one run), half (of the 95% interval, Student t over seeds; NaN for one run)."""
    grouped = _labelled(frame).groupby(["recipe", "generation", "generations", "kind", "column"],
                                       sort=False)["top1"]
    table = grouped.agg(runs="count", mean="mean", std="std").reset_index()
    table["std"] = table["std"].fillna(0.0)
    table["half"] = [float("nan") if n < 2 else float(stats.t.ppf(0.975, n - 1)) * sd / n ** 0.5
                     for n, sd in zip(table["runs"], table["std"], strict=True)]
    return table.sort_values(["recipe", "generation", "kind"], kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, column_axis: str) -> str:
    columns = list(dict.fromkeys(table["column"]))
    lines = ["| recipe | generation | kind | " + " | ".join(f"{column_axis} {c}" if column_axis
                                                            != DATASET else c for c in columns)
             + " |", "|---|---|---|" + "---:|" * len(columns)]
    for (recipe, g, total, kind), rows in table.groupby(["recipe", "generation", "generations",
                                                         "kind"], sort=False):
        cells = {r["column"]: cell(Interval(r["mean"], None if pd.isna(r["half"]) else r["half"],
                                            int(r["runs"]))) for _, r in rows.iterrows()}
        lines.append(f"| {recipe} | {counting.generation(g, total)} | {kind} | "
                     + " | ".join(cells.get(c, "-") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def selection(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and condition (the dataset, and the label noise where it varies): the
    configuration with the best mean validation top-1 over its seeds at the last generation
    (dense rows of the points that reached it), how many were tried, and the test top-1 of that
    configuration alone by seed."""
    last = frame[(frame["kind"] == "dense") & (frame["generation"] == frame["last"])]
    chosen = []
    for (method, column), rows in last.groupby(["method", "condition"], sort=False):
        scores = rows.groupby("config", sort=False)["val"].mean()
        if scores.isna().all():
            continue
        config = scores.idxmax()
        picked = rows[rows["config"] == config]
        chosen.append({"method": method, "column": column, "config": config,
                       "tried": len(scores), "val": scores[config],
                       "test": dict(zip(picked["seed"], picked["top1"], strict=True)),
                       "validation": sorted(set(picked["validation"]))})
    return pd.DataFrame(chosen)


def _selected_cell(row) -> str:
    text = (f"{cell(interval(list(row['test'].values())))}; {row['config']} "
            f"(best of {row['tried']})")
    if "test" in row["validation"]:
        text += "; selected on test"
    return text


def selection_markdown(frame: pd.DataFrame, baseline: str = None) -> str:
    """The table of each method's configuration chosen on validation (a column per dataset),
    its test top-1 at the last generation, and with `baseline` the differences from it paired
    by seed."""
    chosen = selection(frame)
    if chosen.empty:
        return ""
    columns = list(dict.fromkeys(chosen["column"]))
    methods = list(dict.fromkeys(chosen["method"]))
    heads = columns
    picked = {(r["method"], r["column"]): r for _, r in chosen.iterrows()}
    lines = ["", "Selected on validation: each method's configuration with the best mean "
                 "validation top-1 over its seeds at the last generation; the cell is that "
                 "configuration's dense test top-1 there, mean ± 95% interval (Student t over "
                 "seeds) and n.", "",
             "| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(columns)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            _selected_cell(picked[(m, c)]) if (m, c) in picked else "-" for c in columns) + " |")
    if baseline is not None:
        if baseline not in methods:
            raise UserError(f"--baseline {baseline}: no such method in the sweep; use one of: "
                            + ", ".join(methods))
        lines += ["", f"Difference from {baseline} (each at its selected configuration), "
                      "paired by seed, mean ± 95% interval, n pairs:", "",
                  "| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(columns)]
        for m in methods:
            if m == baseline:
                continue
            lines.append(f"| {m} | " + " | ".join(
                cell(paired(picked[(m, c)]["test"], picked[(baseline, c)]["test"]), signed=True,
                     unit="pairs") if (m, c) in picked and (baseline, c) in picked else "-"
                for c in columns) + " |")
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
    ax.set_xlabel("generation (from 0, as gen_<g>)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_xticks(sorted(set(int(g) for g in means["generation"])))
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with open_no_follow(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_sweep_report(sweep_dir: str, not_done: dict[str, str] = None,
                       baseline: str = None) -> tuple[str, str]:
    """Write the sweep's report files; return the markdown and the files' prefix. `not_done`:
    {point: state} of the points not done, for the notes (default: read from the files);
    `baseline`: a method (its axes' values as in the table, e.g. "forget none") to take the
    paired differences from."""
    frame, column_axis = load_sweep(sweep_dir)
    table = sweep_table(frame)
    markdown = to_markdown(table, column_axis) + selection_markdown(frame, baseline)
    names = [p["name"] for p in _read_json(os.path.join(sweep_dir, SWEEP_FILE))["points"]]
    missing = notes(sweep_dir, states_from_files(sweep_dir, names) if not_done is None
                    else not_done)
    if missing:
        markdown += (f"\nNotes: {len(names) - len(missing)} of {len(names)} points done; "
                     "the others:\n" + "\n".join(missing) + "\n")
    prefix = os.path.join(sweep_dir, "report")
    with open_no_follow(prefix + ".md", "w") as f:       # never through a planted link
        f.write(markdown)
    with open_no_follow(prefix + ".csv", "w") as f:
        table.to_csv(f, index=False, float_format="%.2f")
    for dataset in dict.fromkeys(frame["dataset"]):
        plot_dataset(frame, dataset, f"{prefix}_{_file_part(dataset)}.png")
    return markdown, prefix
