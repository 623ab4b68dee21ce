"""Results at a glance: `python -m utils.report RUN [RUN ...] [--out PREFIX]`.

Each RUN is an experiment folder (`<log-dir>/<name>/`, whose results are `<name>.csv`) or a
results CSV itself. For every generation the dense and slim test top-1 of all runs that reached
it are summarised as mean, standard deviation (over runs; 0 for a single run), minimum and
maximum, written as `PREFIX.md` (a markdown table, also printed), `PREFIX.csv` and `PREFIX.png`
(top-1 versus generation, dense and slim lines with the mean +- std band shaded). PREFIX
defaults to `<RUN>/summary` for one run and to `summary` in the runs' common parent folder for
several. A sweep folder (`<log-dir>/<SWEEP>/`, with its sweep.json) gets the sweep's
paper-style table instead (utils.sweep_report).
"""
import argparse
import json
import os
import sys
from typing import List, Sequence, Tuple

import pandas as pd

from utils.csv_utils import read_results, row_kind
from errors import UserError
from utils.safe_files import open_no_follow, read_regular
from utils.sweep_report import is_sweep, write_sweep_report

TOP1 = "Current Tst Top 1"
KINDS = ("dense", "slim")
STATS = ("mean", "std", "min", "max")


def results_csv(run: str) -> str:
    """The results CSV of `run`: the path itself when it is a file, else `<run>/<name>.csv`."""
    if os.path.isfile(run):
        return run
    if not os.path.isdir(run):
        raise UserError(f"{run}: no such experiment folder or results CSV")
    path = os.path.join(run, os.path.basename(os.path.normpath(run)) + ".csv")
    if not os.path.isfile(path):
        raise UserError(f"{run} holds no results file {os.path.basename(path)} "
                        "(has the run finished a generation?)")
    return path


def load_runs(runs: Sequence[str]) -> pd.DataFrame:
    """One row per (run, generation, kind) with the test top-1 of that evaluation."""
    records = []
    for run in runs:
        path = results_csv(run)
        rows = read_results(path)
        if not rows:
            raise UserError(f"{path} has no results rows")
        for row in rows:
            kind = row_kind(row)
            records.append({"run": path, "generation": row["Generation"], "kind": kind,
                            "top1": row[TOP1], "retrieval": "R@1" in row})
    # a resumed run may repeat a row of a generation; its last evaluation counts
    frame = pd.DataFrame(records).drop_duplicates(["run", "generation", "kind"], keep="last")
    # what the score is: --task retrieval's Top 1 is Recall@1 on the test classes
    frame.attrs["metric"] = "test-class Recall@1" if frame["retrieval"].all() else \
        "top-1 / Recall@1" if frame["retrieval"].any() else "top-1"
    return frame


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per generation: the number of runs and dense/slim top-1 mean, std, min and max."""
    grouped = results.groupby(["generation", "kind"])["top1"]
    stats = grouped.agg(list(STATS)).fillna({"std": 0.0}).unstack("kind")
    stats.columns = [f"{kind}_{stat}" for stat, kind in stats.columns]
    runs = results[results["kind"] == "dense"].groupby("generation")["run"].nunique()
    table = pd.concat([runs.rename("runs"), stats], axis=1)
    columns = ["runs"] + [f"{kind}_{stat}" for kind in KINDS for stat in STATS]
    table = table.reindex(columns=columns)
    table["runs"] = table["runs"].fillna(0).astype(int)
    table = table.reset_index()
    table.attrs["metric"] = results.attrs.get("metric", "top-1")
    return table


def _cell(row, kind: str) -> str:
    if pd.isna(row[f"{kind}_mean"]):
        return "-"
    return f"{row[f'{kind}_mean']:.2f} ± {row[f'{kind}_std']:.2f}"


def _range(row, kind: str) -> str:
    if pd.isna(row[f"{kind}_min"]):
        return "-"
    return f"{row[f'{kind}_min']:.2f} – {row[f'{kind}_max']:.2f}"


def to_markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table: mean ± std and min – max of dense and slim top-1."""
    metric = table.attrs.get("metric", "top-1")
    lines = [f"| generation | runs | dense {metric} (mean ± std) | dense min – max "
             f"| slim {metric} (mean ± std) | slim min – max |",
             "|---:|---:|---:|---:|---:|---:|"]
    for _, row in table.iterrows():
        lines.append(f"| {int(row['generation'])} | {int(row['runs'])} | {_cell(row, 'dense')} "
                     f"| {_range(row, 'dense')} | {_cell(row, 'slim')} | {_range(row, 'slim')} |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: str, title: str) -> None:
    """Write the PNG of dense and slim test top-1 versus generation, mean +- std shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange"), strict=True):
        part = table.dropna(subset=[f"{kind}_mean"])
        if part.empty:
            continue
        mean, std = part[f"{kind}_mean"], part[f"{kind}_std"]
        ax.plot(part["generation"], mean, marker="o", color=colour, label=kind)
        ax.fill_between(part["generation"], mean - std, mean + std, color=colour, alpha=0.2)
    ax.set_xlabel("generation (from 0, as gen_<g>)")
    metric = table.attrs.get("metric", "top-1")
    ax.set_ylabel(f"test {metric} (%)" if metric == "top-1" else f"{metric} (%)")
    ax.set_xticks(table["generation"].tolist())
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with open_no_follow(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def default_prefix(runs: Sequence[str]) -> str:
    folders = [os.path.abspath(r if os.path.isdir(r) else os.path.dirname(r)) for r in runs]
    if len(set(folders)) == 1:
        return os.path.join(folders[0], "summary")
    return os.path.join(os.path.commonpath(folders), "summary")


def write_report(runs: Sequence[str], prefix: str = None) -> Tuple[pd.DataFrame, str]:
    """Summarise `runs` into PREFIX.md, PREFIX.csv and PREFIX.png; return the table and PREFIX."""
    table = summarise(load_runs(runs))
    prefix = prefix or default_prefix(runs)
    folder = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(folder):
        raise UserError(f"--out {prefix}: the folder {folder} does not exist")
    with open_no_follow(prefix + ".md", "w") as f:      # never through a planted link
        f.write(to_markdown(table))
    with open_no_follow(prefix + ".csv", "w") as f:
        table.to_csv(f, index=False, float_format="%.2f")
    count = len(runs)
    plot(table, prefix + ".png", f"Knowledge Evolution, {count} run{'s' * (count > 1)}")
    return table, prefix


def recall_report(runs: Sequence[str]) -> str:
    """--task retrieval runs: R@1 by generation (dense and slim mean ± std over the runs) as a
    markdown table; "" when the results have no R@1 column (classification)."""
    records = []
    for run in runs:
        for row in read_results(results_csv(run)):
            if "R@1" not in row:
                return ""
            records.append({"run": run, "generation": row["Generation"], "R@1": row["R@1"],
                            "kind": row_kind(row)})
    frame = pd.DataFrame(records).drop_duplicates(["run", "generation", "kind"], keep="last")
    stats = frame.groupby(["generation", "kind"])["R@1"].agg(["mean", "std"]).fillna(0.0)
    lines = ["| generation | dense R@1 (mean ± std) | slim R@1 (mean ± std) |",
             "|---:|---:|---:|"]
    for g in sorted(frame["generation"].unique()):
        cells = [f"{stats.loc[(g, kind), 'mean']:.2f} ± {stats.loc[(g, kind), 'std']:.2f}"
                 if (g, kind) in stats.index else "-" for kind in KINDS]
        lines.append(f"| {g} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


# settings that differ between runs of one comparison without making them different methods
NOT_A_METHOD = ("seed", "name", "given_flags", "log_dir", "data", "num_threads", "gpu",
                "print_freq", "resume", "log_file")


def run_settings(run: str) -> dict:
    """The settings.json of `run`'s experiment folder ({} when there is none)."""
    folder = os.path.dirname(results_csv(run))
    path = os.path.join(folder, "settings.json")
    if not os.path.lexists(path):
        return {}
    try:
        settings = json.loads(read_regular(path, no_follow=True))
    except (OSError, ValueError, RecursionError):
        raise UserError(f"cannot read {path}: not the JSON settings of a run; restore it "
                        "or leave the run out") from None
    return settings if isinstance(settings, dict) else {}


def method_labels(runs: Sequence[str]) -> dict:
    """{run's results CSV: its method}: --forget (ke for runs without settings) and every other
    setting whose value differs between the runs and is set in this one, e.g.
    "forget=none lr_policy=long_cosine_lr"."""
    settings = {results_csv(run): run_settings(run) for run in runs}
    keys = sorted({k for values in settings.values() for k in values} - set(NOT_A_METHOD))
    differing = [k for k in keys if k != "forget"
                 and len({json.dumps(v.get(k), sort_keys=True) for v in settings.values()}) > 1]
    return {path: " ".join([f"forget={values.get('forget', 'ke')}"]
                           + [f"{k}={values[k]}" for k in differing
                              if values.get(k) not in (None, False)])   # unused or off: unsaid
            for path, values in settings.items()}


def compare_methods(runs: Sequence[str]) -> pd.DataFrame:
    """Dense test top-1 by method and generation: mean, std (over runs, 0 for one) and count."""
    results = load_runs(runs)
    results = results[results["kind"] == "dense"].copy()
    results["method"] = results["run"].map(method_labels(runs))
    table = results.groupby(["method", "generation"])["top1"].agg(["mean", "std", "count"])
    return table.fillna({"std": 0.0}).reset_index()


def methods_markdown(table: pd.DataFrame) -> str:
    """One row per generation, one column per method: dense top-1 mean ± std (runs)."""
    methods = list(dict.fromkeys(table["method"]))
    lines = ["| generation | " + " | ".join(methods) + " |",
             "|---:|" + "---:|" * len(methods)]
    for g in sorted(table["generation"].unique()):
        cells = []
        for method in methods:
            row = table[(table["method"] == method) & (table["generation"] == g)]
            cells.append("-" if row.empty else
                         f"{row['mean'].iloc[0]:.2f} ± {row['std'].iloc[0]:.2f} ({row['count'].iloc[0]})")
        lines.append(f"| {int(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_methods(table: pd.DataFrame, path: str) -> None:
    """The PNG of dense test top-1 versus generation, one line per method (mean ± std shaded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(table["method"]):
        part = table[table["method"] == method]
        ax.plot(part["generation"], part["mean"], marker="o", label=method)
        ax.fill_between(part["generation"], part["mean"] - part["std"],
                        part["mean"] + part["std"], alpha=0.15)
    ax.set_xlabel("generation (from 0, as gen_<g>)")
    ax.set_ylabel("dense test top-1 (%)")
    ax.set_xticks(sorted(table["generation"].unique().tolist()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with open_no_follow(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_method_comparison(runs: Sequence[str], prefix: str):
    """With runs of more than one method: PREFIX-methods.md and PREFIX-methods.png; returns the
    markdown table (None for a single method)."""
    table = compare_methods(runs)
    if table["method"].nunique() < 2:
        return None
    markdown = methods_markdown(table)
    with open_no_follow(prefix + "-methods.md", "w") as f:     # never through a planted link
        f.write(markdown)
    plot_methods(table, prefix + "-methods.png")
    return markdown


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def main(argv: List[str] = None) -> int:
    parser = _Parser(prog="python -m utils.report", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="experiment folders or results CSVs")
    parser.add_argument("--out", metavar="PREFIX",
                        help="write PREFIX.md, PREFIX.csv and PREFIX.png")
    try:
        args = parser.parse_args(argv)
        if len(args.runs) == 1 and is_sweep(args.runs[0]):
            if args.out:
                raise UserError("--out: a sweep's report goes into its folder; drop --out")
            markdown, prefix = write_sweep_report(args.runs[0])
            print(markdown, end="")
            print(f"wrote {prefix}.md, {prefix}.csv and {prefix}_<dataset>.png")
            return 0
        table, prefix = write_report(args.runs, args.out)
        by_method = write_method_comparison(args.runs, prefix)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(to_markdown(table), end="")
    print(recall_report(args.runs), end="")
    print(f"wrote {prefix}.md, {prefix}.csv and {prefix}.png")
    if by_method:
        print("\ndense test top-1 by method, mean ± std (runs):\n" + by_method, end="")
        print(f"wrote {prefix}-methods.md and {prefix}-methods.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
