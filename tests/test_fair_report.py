"""Fair comparisons in the reports: every flag has a role, runs group by their method and recipe
settings, cells carry a 95% interval, differences are paired by seed, the sweep selects on
validation, and the compute column sums what the runs recorded."""
import json
import math

import pytest

from argtypes import METHOD, RECIPE, ROLES, RUN, roles_of
from configs.base_config import Config, build_parser, settings_record
from utils import report
from utils.csv_utils import append_result

# two-sided 95% quantiles of Student's t, as printed in statistics tables
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182}


def test_every_flag_declares_its_role():
    roles = roles_of(build_parser())
    assert [dest for dest, role in roles.items() if role not in ROLES] == []
    assert roles["forget"] == roles["shrink"] == roles["distill_previous"] == METHOD
    assert roles["lr_policy"] == roles["epochs"] == roles["arch"] == roles["set"] == RECIPE
    assert roles["seed"] == roles["name"] == roles["num_threads"] == roles["gpu"] == RUN


def a_run(folder, name, settings, top1, val=None, compute=None):
    """An experiment folder whose settings.json is `settings` and whose dense test top-1 of
    generation g is top1[g] (validation val[g] when given)."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "settings.json").write_text(json.dumps(settings))
    for g, value in enumerate(top1):
        row = {"Name": name, "Split Rate": 0.5, "Bias Split Rate": 0.5, "Generation": g,
               "Current Tst Top 1": value}
        if val is not None:
            row.update({"Current Val Top 1": val[g], "Best Val Top 1": val[g]})
        append_result(run / f"{name}.csv", row)
    if compute is not None:
        (run / "compute.json").write_text(json.dumps(compute))
    return str(run)


def settings_of(*argv):
    return json.loads(json.dumps(settings_record(Config().parse(list(argv)))))


def test_runs_differing_in_every_run_setting_form_one_group(tmp_path):
    first = settings_of("--seed", "0")
    second = dict(first)
    run_settings = [dest for dest, role in roles_of(build_parser()).items() if role == RUN]
    for dest in run_settings:
        second[dest] = f"another {dest}"
    second.update(num_cls=7, process_batch_size=3)      # derived values: never a group's
    runs = [a_run(tmp_path, "a", first, [40.0]), a_run(tmp_path, "b", second, [42.0])]
    assert len(run_settings) > 20
    assert set(report.method_labels(runs).values()) == {"forget=ke"}


def test_runs_differing_in_one_method_flag_form_two_groups(tmp_path):
    runs = [a_run(tmp_path, "a", settings_of("--seed", "0"), [40.0]),
            a_run(tmp_path, "b", settings_of("--seed", "1"), [41.0]),
            a_run(tmp_path, "c", settings_of("--seed", "0", "--evolve_mode", "zero"), [43.0])]
    labels = report.method_labels(runs)
    assert [labels[report.results_csv(r)] for r in runs] == \
        ["forget=ke", "forget=ke", "forget=ke evolve_mode=zero"]


def test_the_long_baseline_is_its_own_method_next_to_none_and_ke(tmp_path):
    runs = [a_run(tmp_path, name, settings_of(*argv), [40.0]) for name, argv in (
        ("ke", ["--seed", "0"]), ("none", ["--seed", "0", "--forget", "none"]),
        ("long", ["--seed", "0", "--forget", "none", "--lr_policy", "long_cosine_lr"]))]
    labels = report.method_labels(runs)
    assert [labels[report.results_csv(r)] for r in runs] == \
        ["forget=ke", "forget=none", "forget=none lr_policy=long_cosine_lr"]


def test_interval_equals_the_t_table_computation():
    from utils.intervals import interval
    found = interval([50.0, 52.0, 57.0])
    sd = math.sqrt((3 ** 2 + 1 ** 2 + 4 ** 2) / 2)
    assert found.mean == 53.0 and found.n == 3
    assert found.half == pytest.approx(T_TABLE[2] * sd / math.sqrt(3), abs=1e-3)
    assert interval([7.0]).half is None


def test_paired_differences_missing_seeds_and_compute(tmp_path, capsys):
    compute = {"forward_flops_per_image": 100_000_000,
               "generations": {"0": {"train_images": 400, "train_seconds": 10.5},
                               "1": {"train_images": 400, "train_seconds": 12.0}}}
    method = {0: [45.0, 55.0], 1: [44.0, 53.0], 2: [50.0, 60.0]}
    baseline = {0: [45.0, 50.0], 1: [44.0, 52.0], 2: [50.0, 57.0], 3: [41.0, 40.0]}
    runs = []
    for seed, top1 in method.items():
        runs.append(a_run(tmp_path, f"ke{seed}", settings_of("--seed", str(seed),
                                                              "--num_generations", "2"),
                          top1, compute=compute))
    for seed, top1 in baseline.items():
        runs.append(a_run(tmp_path, f"none{seed}", settings_of(
            "--seed", str(seed), "--forget", "none", "--num_generations", "2"), top1))
    runs.append(a_run(tmp_path, "none4", settings_of(
        "--seed", "4", "--forget", "none", "--num_generations", "2"), [39.0]))   # stopped early
    assert report.main(runs + ["--out", str(tmp_path / "cmp"), "--baseline", "none"]) == 0
    markdown = (tmp_path / "cmp-methods.md").read_text()
    assert markdown in capsys.readouterr().out
    # generation 1: ke 55, 53, 60 (mean 56, sd sqrt(13)); none 50, 52, 57, 40: mean 49.75
    ke_half = T_TABLE[2] * math.sqrt(13) / math.sqrt(3)
    none_sd = math.sqrt(sum((v - 49.75) ** 2 for v in (50, 52, 57, 40)) / 3)
    none_half = T_TABLE[3] * none_sd / 2
    assert f"| 1 | 56.00 ± {ke_half:.2f} (n=3) | 49.75 ± {none_half:.2f} (n=4) |" in markdown
    # paired by seed 0-2 only: differences 5, 1, 3 (mean 3, sd 2); generation 0: all 0
    assert f"| 1 | +3.00 ± {T_TABLE[2] * 2 / math.sqrt(3):.2f} (pairs=3) |" in markdown
    assert "| 0 | +0.00 ± 0.00 (pairs=3) |" in markdown
    assert "seed 3 has no partner" in markdown
    assert "forget=none, seed 4: finished 1 of 2 generations" in markdown
    # compute: 800 images, 22.5 s, 0.1 GFLOPs forward, 3 x 1e8 x 800 = 0.24 TFLOPs
    assert "| forget=ke | 3 | 800 | 22.5 s | 0.1 | 0.24 |" in markdown
    assert "| forget=none | 0 | - | - | - | - |" in markdown
    assert (tmp_path / "cmp-methods.png").stat().st_size > 1000


def test_an_unknown_baseline_is_one_line(tmp_path, capsys):
    runs = [a_run(tmp_path, "a", settings_of("--seed", "0"), [40.0]),
            a_run(tmp_path, "b", settings_of("--seed", "0", "--forget", "none"), [41.0])]
    assert report.main(runs + ["--baseline", "reinit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline reinit: no such method" in err \
        and "forget=none" in err


def test_the_sweep_selects_on_validation_and_reads_test_of_that_configuration(tmp_path, capsys):
    """lr 0.1 validates better but tests worse than lr 0.2, for both methods."""
    points, grid = [], [{"flag": "forget", "values": ["ke", "none"]},
                        {"flag": "lr", "values": ["0.1", "0.2"]},
                        {"flag": "seed", "values": ["0", "1"]}]
    for forget in ("ke", "none"):
        for lr in ("0.1", "0.2"):
            for seed in (0, 1):
                name = f"forget-{forget}_lr-{lr}_seed-{seed}"
                test = (60.0 if lr == "0.2" else 50.0) + seed + (2.0 if forget == "ke" else 0.0)
                val = 70.0 if lr == "0.1" else 65.0
                settings = dict(settings_of("--seed", str(seed), "--forget", forget, "--lr", lr,
                                            "--num_generations", "2"),
                                validation_split="test" if forget == "none" else "val")
                a_run(tmp_path, name, settings, [10.0, test], val=[5.0, val])
                points.append({"name": name, "values": {"forget": forget, "lr": lr,
                                                        "seed": str(seed)}})
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": grid, "points": points}))
    assert report.main([str(tmp_path), "--baseline", "forget none"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    half = T_TABLE[1] * math.sqrt(0.5) / math.sqrt(2)          # seeds differ by 1
    assert (f"| forget ke | 52.50 ± {half:.2f} (n=2); lr 0.1 (best of 2) |") in markdown
    assert (f"| forget none | 50.50 ± {half:.2f} (n=2); lr 0.1 (best of 2); selected on test |"
            in markdown)
    assert "| forget ke | +2.00 ± 0.00 (pairs=2) |" in markdown
    assert markdown in capsys.readouterr().out


def test_validation_split_of_an_older_run_is_read_from_its_columns():
    from utils.sweep_report import validation_split
    same = {"Split Rate": 0.5, "Best Val Top 1": 50.0, "Best Tst Top 1": 50.0,
            "Best Val Top 5": 90.0, "Best Tst Top 5": 90.0}
    assert validation_split({}, [same, same]) == "test"
    assert validation_split({}, [same, dict(same, **{"Best Val Top 1": 51.0})]) == "val"
    assert validation_split({"validation_split": "held_out"}, [same]) == "held_out"


def test_label_noise_is_a_condition_of_the_sweep_not_a_setting_tuned_on_validation(tmp_path):
    """Without noise lr 0.1 validates better, at 40% noise lr 0.2: each noise rate keeps its
    own column and its own choice."""
    points, grid = [], [{"flag": "label_noise", "values": ["0", "0.4"]},
                        {"flag": "lr", "values": ["0.1", "0.2"]},
                        {"flag": "seed", "values": ["0", "1"]}]
    for noise in ("0", "0.4"):
        for lr in ("0.1", "0.2"):
            for seed in (0, 1):
                name = f"label_noise-{noise}_lr-{lr}_seed-{seed}"
                best = "0.1" if noise == "0" else "0.2"
                val = 70.0 if lr == best else 60.0
                settings = dict(settings_of("--seed", str(seed), "--label_noise", noise,
                                            "--lr", lr, "--num_generations", "1"),
                                validation_split="val")
                a_run(tmp_path, name, settings, [40.0 + seed], val=[val])
                points.append({"name": name, "values": {"label_noise": noise, "lr": lr,
                                                        "seed": str(seed)}})
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": grid, "points": points}))
    assert report.main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    half = T_TABLE[1] * math.sqrt(0.5) / math.sqrt(2)
    selected = markdown[markdown.index("Selected on validation"):]
    assert ("| method | Flower102Pytorch, label_noise 0 | Flower102Pytorch, label_noise 0.4 |"
            in selected)
    assert (f"| all | 40.50 ± {half:.2f} (n=2); lr 0.1 (best of 2) | "
            f"40.50 ± {half:.2f} (n=2); lr 0.2 (best of 2) |") in selected
