"""Results at a glance: `python -m utils.report RUN [RUN ...] [--out PREFIX]`.

Each RUN is an experiment folder (`<log-dir>/<name>/`, whose results are `<name>.csv`) or a
results CSV itself. For every generation the dense and slim test top-1 of all runs that reached
it are summarised as mean, standard deviation (over runs; 0 for a single run), minimum and
maximum, written as `PREFIX.md` (a markdown table, also printed), `PREFIX.csv` and `PREFIX.png`
(top-1 versus generation, dense and slim lines with the mean +- std band shaded). PREFIX
defaults to `<RUN>/summary` for one run and to `summary` in the runs' common parent folder for
several. A sweep folder (`<log-dir>/<SWEEP>/`, with its sweep.json) gets the sweep's
paper-style table instead (utils.sweep_report).

Runs of several methods (grouped by the roles of their settings: utils.comparison) also get
`PREFIX-methods.md` and `PREFIX-methods.png`: per generation and method the dense test top-1
mean, its 95% interval (Student t over seeds) and n; with `--baseline METHOD` each method's
difference from METHOD paired by seed (only seeds both finished, their number shown); the
compute of each method (utils.compute_record); and notes naming every run that did not finish
and every seed left without a partner.
"""
import argparse
import json
import os
import sys
from collections.abc import Sequence

import pandas as pd

from errors import UserError
from utils.comparison import group_labels, paired, seed_of
from utils.compute_record import training_totals
from utils.csv_utils import read_results, row_kind
from utils.intervals import Interval, cell, interval
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


def write_report(runs: Sequence[str], prefix: str = None) -> tuple[pd.DataFrame, str]:
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
    """{run's results CSV: its method group's label} (utils.comparison.group_labels)."""
    return group_labels({results_csv(run): run_settings(run) for run in runs})[0]


class Comparison:
    """Dense test top-1 of runs grouped into methods: per method and generation the values by
    seed, and what the notes must say (runs that did not finish, seeds without a partner)."""

    def __init__(self, runs: Sequence[str]):
        self.settings = {results_csv(run): run_settings(run) for run in runs}
        labels, self.notes = group_labels(self.settings)
        results = load_runs(runs)
        results = results[results["kind"] == "dense"].copy()
        results["method"] = results["run"].map(labels)
        results["seed"] = [seed_of(self.settings[r], r) for r in results["run"]]
        self.results = results
        self.labels = labels
        self.methods = list(dict.fromkeys(labels[r] for r in self.settings))
        self.generations = sorted(int(g) for g in results["generation"].unique())
        self._note_unfinished()

    def _note_unfinished(self):
        for run, values in self.settings.items():
            wanted = values.get("num_generations")
            done = self.results[self.results["run"] == run]["generation"]
            last = int(done.max()) if len(done) else -1
            if isinstance(wanted, int) and last < wanted - 1:
                self.notes.append(f"{self.labels[run]}, seed {seed_of(values, run)}: finished "
                                  f"{last + 1} of {wanted} generations; not counted beyond")
        for method in self.methods:
            runs = self.results[self.results["method"] == method].drop_duplicates("run")
            twice = sorted(set(runs["seed"][runs["seed"].duplicated()]))
            if twice:
                self.notes.append(f"{method}: seed {', '.join(twice)} has several runs; the "
                                  "mean counts each, the pairing by seed the last")

    def by_seed(self, method: str, generation: int) -> dict[str, float]:
        rows = self.results[(self.results["method"] == method)
                            & (self.results["generation"] == generation)]
        return dict(zip(rows["seed"], rows["top1"], strict=True))

    def cell(self, method: str, generation: int) -> Interval | None:
        rows = self.results[(self.results["method"] == method)
                            & (self.results["generation"] == generation)]
        return interval(rows["top1"].tolist()) if len(rows) else None

    def difference(self, method: str, baseline: str, generation: int) -> Interval | None:
        return paired(self.by_seed(method, generation), self.by_seed(baseline, generation))

    def unpaired(self, method: str, baseline: str, generation: int) -> list[str]:
        """Seeds of `method` or of `baseline` at `generation` that the other lacks."""
        mine, theirs = self.by_seed(method, generation), self.by_seed(baseline, generation)
        return sorted(set(mine) ^ set(theirs))

    def table(self) -> pd.DataFrame:
        """method, generation, mean, half (95% interval), n."""
        rows = [{"method": m, "generation": g, "mean": found.mean,
                 "half": float("nan") if found.half is None else found.half, "n": found.n}
                for m in self.methods for g in self.generations
                for found in [self.cell(m, g)] if found is not None]
        return pd.DataFrame(rows)

    def compute(self, method: str) -> dict:
        """Mean over the method's finished runs of the training images and seconds summed over
        generations, the forward FLOPs of one image, and how many runs recorded them."""
        totals = []
        for run, values in self.settings.items():
            if self.labels[run] != method or not isinstance(values.get("num_generations"), int):
                continue
            found = training_totals(os.path.dirname(run), values["num_generations"])
            if found["train_images"] is not None:
                totals.append(found)
        if not totals:
            return {"runs": 0}
        flops = [t["forward_flops_per_image"] for t in totals
                 if t["forward_flops_per_image"] is not None]
        return {"runs": len(totals),
                "train_images": sum(t["train_images"] for t in totals) / len(totals),
                "train_seconds": sum(t["train_seconds"] for t in totals) / len(totals),
                "forward_flops": sum(flops) / len(flops) if flops else None}


def _label(method: str) -> str:
    return method.replace("|", "/")


def methods_markdown(comparison: Comparison, baseline: str | None = None) -> str:
    """Per generation and method: dense test top-1 mean ± 95% half-interval (Student t over
    seeds) and n; with `baseline`, the differences from it paired by seed; the compute of each
    method; the notes."""
    methods = comparison.methods
    lines = ["dense test top-1 (%), mean ± 95% interval (Student t over seeds), n runs", "",
             "| generation | " + " | ".join(map(_label, methods)) + " |",
             "|---:|" + "---:|" * len(methods)]
    for g in comparison.generations:
        lines.append(f"| {g} | " + " | ".join(cell(comparison.cell(m, g)) for m in methods) + " |")
    notes = list(comparison.notes)
    if baseline is not None:
        others = [m for m in methods if m != baseline]
        lines += ["", f"difference from {baseline}, paired by seed (only seeds where both "
                      "finished), mean ± 95% interval, n pairs", "",
                  "| generation | " + " | ".join(map(_label, others)) + " |",
                  "|---:|" + "---:|" * len(others)]
        for g in comparison.generations:
            lines.append(f"| {g} | " + " | ".join(
                cell(comparison.difference(m, baseline, g), signed=True, unit="pairs")
                for m in others) + " |")
        last = comparison.generations[-1]
        for m in others:
            alone = comparison.unpaired(m, baseline, last)
            if alone:
                notes.append(f"{m} against {baseline}, generation {last}: seed "
                             f"{', '.join(alone)} has no partner, left out of the difference")
    lines += ["", "compute, mean over a method's finished runs, summed over generations "
                  "(training FLOPs: 3 x forward FLOPs x training images)", "",
              "| method | runs | training images | training wall time | forward GFLOPs / image "
              "| training TFLOPs |", "|---|---:|---:|---:|---:|---:|"]
    for m in methods:
        found = comparison.compute(m)
        if not found["runs"]:
            lines.append(f"| {_label(m)} | 0 | - | - | - | - |")
            continue
        flops = found["forward_flops"]
        lines.append(f"| {_label(m)} | {found['runs']} | {found['train_images']:,.0f} | "
                     f"{found['train_seconds']:.1f} s | "
                     + ("-" if flops is None else f"{flops / 1e9:.4g}") + " | "
                     + ("-" if flops is None else f"{3 * flops * found['train_images'] / 1e12:.4g}")
                     + " |")
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_methods(comparison: Comparison, path: str) -> None:
    """The PNG of dense test top-1 versus generation, one line per method with its 95%
    interval shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = comparison.table()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in comparison.methods:
        part = table[table["method"] == method]
        line, = ax.plot(part["generation"], part["mean"], marker="o", label=method)
        half = part["half"].fillna(0.0)
        ax.fill_between(part["generation"], part["mean"] - half, part["mean"] + half,
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("generation (from 0, as gen_<g>)")
    ax.set_ylabel("dense test top-1 (%), 95% interval shaded")
    ax.set_xticks(comparison.generations)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with open_no_follow(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def baseline_label(methods: Sequence[str], baseline: str) -> str:
    """The method that `baseline` names: a label, or a --forget value whose label is
    forget=<it> alone."""
    for name in (baseline, f"forget={baseline}"):
        if name in methods:
            return name
    raise UserError(f"--baseline {baseline}: no such method among the runs; use one of: "
                    + ", ".join(methods))


def write_method_comparison(runs: Sequence[str], prefix: str, baseline: str = None):
    """With runs of more than one method: PREFIX-methods.md and PREFIX-methods.png; returns the
    markdown (None for a single method)."""
    comparison = Comparison(runs)
    if len(comparison.methods) < 2:
        if baseline is not None:
            raise UserError(f"--baseline {baseline}: the runs are of a single method "
                            f"({comparison.methods[0]}); compare runs of several methods")
        return None
    if baseline is not None:
        baseline = baseline_label(comparison.methods, baseline)
    markdown = methods_markdown(comparison, baseline)
    with open_no_follow(prefix + "-methods.md", "w") as f:     # never through a planted link
        f.write(markdown)
    plot_methods(comparison, prefix + "-methods.png")
    return markdown


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def main(argv: list[str] = None) -> int:
    parser = _Parser(prog="python -m utils.report", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="experiment folders or results CSVs")
    parser.add_argument("--out", metavar="PREFIX",
                        help="write PREFIX.md, PREFIX.csv and PREFIX.png")
    parser.add_argument("--baseline", metavar="METHOD",
                        help="add each method's difference from METHOD (a --forget value or a "
                             "method's label), paired by seed")
    try:
        args = parser.parse_args(argv)
        if len(args.runs) == 1 and is_sweep(args.runs[0]):
            if args.out:
                raise UserError("--out: a sweep's report goes into its folder; drop --out")
            markdown, prefix = write_sweep_report(args.runs[0], baseline=args.baseline)
            print(markdown, end="")
            print(f"wrote {prefix}.md, {prefix}.csv and {prefix}_<dataset>.png")
            return 0
        table, prefix = write_report(args.runs, args.out)
        by_method = write_method_comparison(args.runs, prefix, args.baseline)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(to_markdown(table), end="")
    print(recall_report(args.runs), end="")
    print(f"wrote {prefix}.md, {prefix}.csv and {prefix}.png")
    if by_method:
        print("\n" + by_method, end="")
        print(f"wrote {prefix}-methods.md and {prefix}-methods.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
