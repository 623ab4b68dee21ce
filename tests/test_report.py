"""`python -m utils.report`: mean/std tables and the top-1-versus-generation plot of several runs."""
import os
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from utils import report
from utils.csv_utils import append_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(parent, name, dense, slim):
    """An experiment folder `<parent>/<name>/` whose results CSV has these test top-1 values."""
    folder = parent / name
    folder.mkdir()
    for generation, (d, s) in enumerate(zip(dense, slim, strict=True)):
        for rate, top1 in ((0.75, d), ("slim", s)):
            append_result(folder / f"{name}.csv",
                          {"Name": name, "Split Rate": rate, "Bias Split Rate": 0.75,
                           "Generation": generation, "Current Tst Top 1": top1})
    return str(folder)


def test_summary_per_generation(tmp_path):
    a = make_run(tmp_path, "run_s0", dense=[40.0, 50.0, 60.0], slim=[10.0, 30.0, 58.0])
    b = make_run(tmp_path, "run_s1", dense=[44.0, 54.0], slim=[20.0, 40.0])
    table = report.summarise(report.load_runs([a, b])).set_index("generation")
    assert table["runs"].tolist() == [2, 2, 1]
    assert table["dense_mean"].tolist() == [42.0, 52.0, 60.0]
    assert table["slim_mean"].tolist() == [15.0, 35.0, 58.0]
    # sample standard deviation over runs; a generation only one run reached has none
    assert table.loc[0, "dense_std"] == pytest.approx(2 ** 0.5 * 2)
    assert table.loc[1, "slim_std"] == pytest.approx(50 ** 0.5)
    assert table.loc[2, "dense_std"] == 0.0
    assert (table.loc[0, "slim_min"], table.loc[0, "slim_max"]) == (10.0, 20.0)


def test_report_of_several_runs_writes_markdown_csv_and_plot(tmp_path, capsys):
    runs = [make_run(tmp_path, f"run_s{seed}", dense=[40.0 + seed, 50.0 + seed],
                     slim=[10.0 + seed, 49.0 + seed]) for seed in range(3)]
    assert report.main(runs) == 0
    prefix = tmp_path / "summary"           # the runs' common parent folder
    table = pd.read_csv(f"{prefix}.csv")
    assert table["generation"].tolist() == [0, 1]
    assert table["runs"].tolist() == [3, 3]
    assert table["dense_mean"].tolist() == [41.0, 51.0]
    assert table["dense_std"].tolist() == [1.0, 1.0]
    assert table["slim_max"].tolist() == [12.0, 51.0]
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| 1 | 3 | 51.00 ± 1.00 | 50.00 – 52.00 | 50.00 ± 1.00 | 49.00 – 51.00 |" in markdown
    assert markdown in capsys.readouterr().out
    with Image.open(f"{prefix}.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_single_run_writes_its_own_report(tmp_path):
    run = make_run(tmp_path, "one", dense=[30.0, 45.5], slim=[12.0, 44.0])
    out = tmp_path / "elsewhere"
    out.mkdir()
    assert report.main([os.path.join(run, "one.csv"), "--out", str(out / "r")]) == 0
    assert pd.read_csv(out / "r.csv")["dense_mean"].tolist() == [30.0, 45.5]
    assert report.main([run]) == 0
    table = pd.read_csv(os.path.join(run, "summary.csv"))
    assert table["dense_std"].tolist() == [0.0, 0.0] and table["runs"].tolist() == [1, 1]
    assert os.path.getsize(os.path.join(run, "summary.png")) > 0


def test_run_of_one_generation_has_no_slim_column_values(tmp_path):
    run = tmp_path / "g1"
    run.mkdir()
    append_result(run / "g1.csv", {"Name": "g1", "Split Rate": 0.5, "Bias Split Rate": 0.5,
                                   "Generation": 0, "Current Tst Top 1": 40.0})
    table, prefix = report.write_report([str(run)])
    assert prefix == str(run / "summary")
    assert table["dense_mean"].tolist() == [40.0] and table["slim_mean"].isna().all()
    assert "| 0 | 1 | 40.00 ± 0.00 | 40.00 – 40.00 | - | - |" in report.to_markdown(table)
    assert (run / "summary.png").stat().st_size > 0


def test_resumed_run_counts_each_generation_once(tmp_path):
    run = make_run(tmp_path, "again", dense=[30.0], slim=[12.0])
    append_result(os.path.join(run, "again.csv"),
                  {"Name": "again", "Split Rate": 0.75, "Bias Split Rate": 0.75,
                   "Generation": 0, "Current Tst Top 1": 33.0})
    table = report.summarise(report.load_runs([run]))
    assert table["dense_mean"].tolist() == [33.0] and table["runs"].tolist() == [1]


@pytest.mark.parametrize("setup, expected", [
    (lambda tmp: [str(tmp / "missing")], "no such experiment folder"),
    (lambda tmp: [str(tmp)], "holds no results file"),
    (lambda tmp: [], "required"),
    (lambda tmp: [make_run(tmp, "ok", [1.0], [1.0]), "--out", str(tmp / "no" / "x")],
     "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, setup, expected):
    assert report.main(setup(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err


def test_malformed_results_file_from_the_command_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "utils.report", str(folder)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is not a results file" in proc.stderr
    assert "Traceback" not in proc.stderr


def make_sweep(folder):
    """A sweep folder of 2 datasets x 2 recipes x 2 seeds, 3 generations each, with known
    dense top-1 (slim = dense - 10)."""
    import json
    points = []
    for dataset in ("CUB200", "MIT67"):
        for cs_kd in ("on", "off"):
            for seed in (0, 1):
                name = f"set-{dataset}_cs_kd-{cs_kd}_seed-{seed}"
                base = 50 + 10 * (dataset == "MIT67") + 5 * (cs_kd == "on") + 2 * seed
                make_run(folder, name, [base, base + 1, base + 2], [base - 10, base - 9, base - 8])
                (folder / name / "settings.json").write_text(json.dumps(
                    {"set": dataset, "num_generations": 3}))
                points.append({"name": name, "values": {"set": dataset, "cs_kd": cs_kd,
                                                        "seed": str(seed)}})
    grid = [{"flag": "set", "values": ["CUB200", "MIT67"]},
            {"flag": "cs_kd", "values": ["on", "off"]}, {"flag": "seed", "values": ["0", "1"]}]
    (folder / "sweep.json").write_text(json.dumps({"grid": grid, "points": points}))


def test_sweep_folder_gets_the_paper_table(tmp_path, capsys):
    make_sweep(tmp_path)
    assert report.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # two seeds 2 apart: sd sqrt(2), 95% half-interval t(0.975, 1) x sqrt(2) / sqrt(2) = 12.706
    assert lines[:6] == [
        "| recipe | generation | kind | CUB200 | MIT67 |",
        "|---|---|---|---:|---:|",
        "| cs_kd off | generation 0 (1 of 3) | dense | 51.00 ± 12.71 (n=2) | 61.00 ± 12.71 (n=2) |",
        "| cs_kd off | generation 0 (1 of 3) | slim | 41.00 ± 12.71 (n=2) | 51.00 ± 12.71 (n=2) |",
        "| cs_kd off | generation 2 (3 of 3) | dense | 53.00 ± 12.71 (n=2) | 63.00 ± 12.71 (n=2) |",
        "| cs_kd off | generation 2 (3 of 3) | slim | 43.00 ± 12.71 (n=2) | 53.00 ± 12.71 (n=2) |"]
    assert lines[6] == ("| cs_kd on | generation 0 (1 of 3) | dense | 56.00 ± 12.71 (n=2) "
                        "| 66.00 ± 12.71 (n=2) |")
    assert lines[10] == "" and lines[11].startswith("Selected on validation")
    assert lines[-1].startswith("wrote ")
    table = pd.read_csv(tmp_path / "report.csv")
    assert len(table) == 16 and set(table["runs"]) == {2}
    assert sorted(set(table["generation"])) == [0, 2] and set(table["generations"]) == {3}
    for dataset in ("CUB200", "MIT67"):
        with Image.open(tmp_path / f"report_{dataset}.png") as image:
            assert image.size[0] > 100
