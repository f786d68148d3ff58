"""Study reports: trial records, tidy exports and the HTML page against the result files, and the
per-seed figure's axis, chance level, cell precision and subtitle."""
import csv
import io
import json
import math
import pickle
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from report_cases import PLAN, expected_summary, make_result, write_case
from sparse_nte.reporting import collect_folders, write_report
from sparse_nte.reporting.describe import chance_level, classes_per_task, describe, subtitle
from sparse_nte.reporting.exports import (ACCURACY_COLUMNS, SUMMARY_COLUMNS, accuracy_csv, summary_csv,
                                          summary_json, summary_markdown)
from sparse_nte.reporting.figures import fitted_limits, seed_figure, svg_markup
from sparse_nte.results import result_path
from sparse_nte.study import collect

METRICS = ("avg_acc", "forgetting", "bwt", "fwt", "learning_acc")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cfg, results, study = write_case(tmp_path_factory.mktemp("case"))
    return cfg, results, study, collect(results, study)


def _stored(results, study, e, seed):
    return pickle.loads(result_path(results, study.folders[e], seed).read_bytes())


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- records ---------------------------------------------------------------------------------------

def test_every_trial_has_the_status_of_what_is_on_disk(case):
    _, _, _, res = case
    got = {(t.experiment, t.seed): t.status for t in res.all_trials()}
    assert got == PLAN
    notes = {(t.experiment, t.seed): t.note for t in res.all_trials()}
    assert "diverged at task 1, epoch 0, step 7: the training loss is nan" == notes[("beta", 1)]
    assert notes[("beta", 2)].startswith("benchmarks.errors.DatasetNotFoundError: no mnist files")
    assert "lr: 0.5 there, 0.02 here" in notes[("gamma", 3)] and "not pooled" in notes[("gamma", 3)]
    assert "seed2.pkl" in notes[("gamma", 2)]


def test_results_folders_without_a_study_split_configurations(case):
    _, results, study, _ = case
    res = collect_folders(results, [study.folders["gamma"], "nothing_here"])
    labels = [e.experiment for e in res.experiments]
    assert labels == [f"{study.folders['gamma']} (configuration 1 of 2)",
                      f"{study.folders['gamma']} (configuration 2 of 2)", "nothing_here"]
    assert [len(e.done()) for e in res.experiments] == [2, 1, 0]
    assert any("nothing_here: no results" in p for p in res.problems)
    assert any("unreadable" in p or "not a readable result" in p for p in res.problems)


# -- exports ---------------------------------------------------------------------------------------

def test_summary_csv_rows_equal_the_result_files_and_hand_computed_statistics(case):
    _, results, study, res = case
    rows = list(csv.DictReader(io.StringIO(summary_csv(res))))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    trials = [r for r in rows if r["level"] == "trial"]
    assert len(trials) == len(PLAN)
    for r in trials:
        e, seed = r["experiment"], int(r["seed"])
        assert r["status"] == PLAN[(e, seed)] and r["folder"] == study.folders[e]
        if r["status"] in ("done", "diverged"):
            stored = _stored(results, study, e, seed)
            for m in METRICS:
                want = stored["metrics"][m]
                assert (r[m] == "") if math.isnan(want) else float(r[m]) == want
            assert float(r["elapsed_s"]) == stored["elapsed_s"]
        else:
            assert all(r[m] == "" for m in METRICS)
    want = expected_summary(results, study)
    exps = {r["experiment"]: r for r in rows if r["level"] == "experiment"}
    assert list(exps) == list(study.experiments)
    for e, r in exps.items():
        assert int(r["n"]) == sum(1 for (n, _), s in PLAN.items() if n == e and s == "done")
        assert int(r["diverged"]) == sum(1 for (n, _), s in PLAN.items() if n == e and s == "diverged")
        assert int(r["n"]) + int(r["diverged"]) + int(r["other"]) == 4
        for m in METRICS:
            mean, sd, n = want[e][m]
            assert float(r[m]) == pytest.approx(mean, rel=1e-12, abs=1e-15)
            got_sd = r[f"{m}_sd"]
            assert (got_sd == "") if math.isnan(sd) else float(got_sd) == pytest.approx(sd, rel=1e-9)


def test_summary_json_is_strict_json_with_null_for_undefined_values(case):
    _, results, study, res = case
    doc = json.loads(summary_json(res), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["study"] == "demo" and doc["question"] == "Which one forgets least?"
    diverged = [t for t in doc["trials"] if t["status"] == "diverged"]
    assert len(diverged) == 1 and diverged[0]["avg_acc"] is None
    want = expected_summary(results, study)
    for row in doc["experiments"]:
        assert row["avg_acc"] == pytest.approx(want[row["experiment"]]["avg_acc"][0], rel=1e-12)
    done = {(t["experiment"], t["seed"]): t for t in doc["trials"] if t["status"] == "done"}
    for (e, seed), t in done.items():
        assert t["forgetting"] == _stored(results, study, e, seed)["metrics"]["forgetting"]


def test_long_accuracy_csv_has_every_matrix_entry_of_every_trial_with_a_result(case):
    _, results, study, res = case
    rows = list(csv.DictReader(io.StringIO(accuracy_csv(res))))
    assert tuple(rows[0]) == ACCURACY_COLUMNS
    with_result = [k for k, s in PLAN.items() if s in ("done", "diverged")]
    assert len(rows) == 9 * len(with_result)
    for r in rows:
        stored = _stored(results, study, r["experiment"], int(r["seed"]))
        want = stored["acc_matrix"][int(r["after_task"]), int(r["task"])]
        assert (r["accuracy"] == "") if math.isnan(want) else float(r["accuracy"]) == want
        assert r["seen"] == str(int(r["task"]) <= int(r["after_task"]))
        assert r["status"] == stored["status"]
    # numpy reads it as numbers, NaN where the diverged trial never got
    data = np.genfromtxt(io.StringIO(accuracy_csv(res)), delimiter=",", names=True, dtype=None,
                         encoding="utf-8")
    assert np.isnan(data["accuracy"]).sum() == 6     # rows 1 and 2 of the diverged 3x3 matrix


def test_markdown_summary_shows_percent_with_two_decimals_and_names_every_status(case):
    _, results, study, res = case
    text = summary_markdown(res)
    mean, sd, _ = expected_summary(results, study)["alpha"]["avg_acc"]
    assert f"{100 * mean:.2f} ± {100 * sd:.2f}" in text
    for status in set(PLAN.values()):
        assert f"| {status}" in text


# -- the HTML page ---------------------------------------------------------------------------------

class _Page(HTMLParser):
    """Cells with data- attributes and their text, every tag's attributes, and section text."""

    def __init__(self):
        super().__init__()
        self.cells, self.tags, self._open, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("td", "tr"):
            self._open.append([tag, a, ""])

    def handle_endtag(self, tag):
        if tag in ("td", "tr") and self._open:
            t, a, text = self._open.pop()
            self.cells.append((t, a, text.strip()))
            if self._open:
                self._open[-1][2] += text

    def handle_data(self, data):
        self.text.append(data)
        if self._open:
            self._open[-1][2] += data


@pytest.fixture(scope="module")
def page(case, tmp_path_factory):
    _, results, study, res = case
    out = tmp_path_factory.mktemp("page") / "report.html"
    paths = write_report(res, out, command="python run_exps.py --study demo --report")
    p = _Page()
    p.feed(out.read_text())
    return p, out, paths


def test_report_numbers_equal_the_result_files(case, page):
    _, results, study, _ = case
    p, _, _ = page
    trial_cells = [(a, text) for t, a, text in p.cells if t == "td" and "data-seed" in a]
    assert len(trial_cells) == len(PLAN) * len(METRICS)
    for a, text in trial_cells:
        e, seed, m = a["data-exp"], int(a["data-seed"]), a["data-metric"]
        if PLAN[(e, seed)] in ("done", "diverged"):
            want = _stored(results, study, e, seed)["metrics"][m]
        else:
            want = float("nan")
        assert _same(float(a["data-value"]), want)
        assert text == ("n/a" if math.isnan(want) else f"{100 * want:.2f}")
    want = expected_summary(results, study)
    summary_cells = [a for t, a, _ in p.cells if t == "td" and "data-mean" in a]
    assert len(summary_cells) == 3 * len(METRICS)
    for (t, a, text) in [c for c in p.cells if c[0] == "td" and "data-mean" in c[1]]:
        mean, sd, n = want[a["data-exp"]][a["data-metric"]]
        assert int(a["data-n"]) == n
        assert float(a["data-mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert text == (f"{100 * mean:.2f} ± {100 * sd:.2f}" if n >= 2 else f"{100 * mean:.2f}")


def test_report_shows_statuses_matrices_layers_guards_and_differing_keys(case, page):
    _, results, study, res = case
    p, _, _ = page
    statuses = [a["data-status"] for t, a, _ in p.cells if t == "tr" and "data-status" in a]
    assert sorted(statuses) == sorted(PLAN.values())
    text = "".join(p.text)
    assert "diverged at task 1, epoch 0, step 7" in text and "DatasetNotFoundError" in text
    # mean accuracy matrix of alpha, one decimal per cell
    mats = [_stored(results, study, "alpha", s)["acc_matrix"] for s in range(4)]
    mean = np.mean(mats, axis=0)
    cells = [(float(a["data-value"]), txt) for t, a, txt in p.cells
             if t == "td" and "data-value" in a and "data-metric" not in a]
    for i in range(3):
        for j in range(3):
            assert (pytest.approx(mean[i, j], rel=1e-12), f"{100 * mean[i, j]:.1f}") in cells
    # Dale's E fraction, activity of E and I units, and guard counts of beta's done trial
    assert "0.812" in text
    act = _stored(results, study, "beta", 0)["stats"]["per_task"][-1]["activity"]["blocks.0"]
    e_i = f"{100 * act['active_fraction_exc'].mean():.2f} / {100 * act['active_fraction_inh'].mean():.2f}"
    assert e_i in [txt for t, _, txt in p.cells if t == "td"]
    assert "n/a / n/a" in [txt for t, _, txt in p.cells if t == "td"]      # alpha: no Dale's law
    guards = [int(a["data-guard"]) for t, a, _ in p.cells if "data-guard" in a]
    beta0 = _stored(results, study, "beta", 0)["stats"]["per_task"][-1]["nte_guard_count"]
    beta1 = _stored(results, study, "beta", 1)["stats"]["per_task"][-1]["nte_guard_count"]
    assert guards == [beta0, beta1]
    differing = {a["data-key"] for t, a, _ in p.cells if t == "tr" and a.get("class") == "differs"}
    assert differing == {"description", "sparsify", "percent_on_fc", "optimizer", "dale", "weight_decay"}
    assert VERSION_COMMIT in text and "python run_exps.py --study demo" in text


VERSION_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_report_is_self_contained(page):
    p, out, paths = page
    assert not any(tag == "script" for tag, _ in p.tags)
    for tag, a in p.tags:
        for key in ("src", "href"):
            if key in a and not a[key].startswith("#"):
                assert "://" not in a[key] and not a[key].startswith("//"), (tag, a)
                assert (out.parent / a[key]).exists(), a[key]     # links only to its own exports
    assert {path.name for path in paths} == {"report.html", "report_accuracy.csv", "report_summary.csv",
                                             "report_summary.json"}
    ids = [a["id"] for _, a in p.tags if "id" in a]
    assert len(ids) == len(set(ids))
    html = out.read_text()
    for ref in set(__import__("re").findall(r"url\(#([^)]+)\)", html)):
        assert ref in ids


# -- figures and descriptions ----------------------------------------------------------------------

@pytest.mark.parametrize("mode, num_batch, scenario, dataset, want", [
    ("permutations", 10, "domain", "fashion_mnist", [1 / 10] * 3),
    ("permutations", 10, "class", "mnist", [1 / 10, 1 / 20, 1 / 30]),
    ("split", 5, "task", "mnist", [1 / 2] * 3),
    ("split", 5, "class", "mnist", [1 / 2, 1 / 4, 1 / 6]),
    ("split", 10, "task", "cifar100", [1 / 10] * 3),
    ("split", 10, "class", "cifar100", [1 / 10, 1 / 20, 1 / 30]),
])
def test_chance_level_by_setting(mode, num_batch, scenario, dataset, want):
    cfg = {"mnist_mode": mode, "num_batch": num_batch, "scenario": scenario, "dataset": dataset,
           "num_classes": 100 if dataset == "cifar100" else 10}
    assert [chance_level(cfg, i) for i in range(3)] == pytest.approx(want)
    assert classes_per_task(cfg) == round(1 / want[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=30))
def test_fitted_limits_contain_the_data_and_zoom_in(values):
    lo, hi = fitted_limits(values)
    assert lo <= min(values) and hi >= max(values) and -1 <= lo < hi <= 101
    assert hi - lo <= max(values) - min(values) + 2 * max(1.0, 0.08 * (max(values) - min(values))) + 1e-9


def _seed_result(diag=0.85):
    cfg = {"name": "exp", "dataset": "fashion_mnist", "mnist_mode": "permutations", "num_batch": 3,
           "scenario": "domain", "num_classes": 10, "hidden_units": 4000, "hidden_layers": 1,
           "dropout": 0.5, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
           "weight_decay": 1e-4, "sparsify": True, "percent_on_fc": 0.001, "dale": True,
           "exc_fraction": 0.8, "weight_sparsity_fc": 0.1}
    acc = np.array([[0.978, 0.11, 0.10], [0.960, 0.798, 0.12], [0.955, 0.790, diag]])
    return {"config": cfg, "acc_matrix": acc, "tasks_trained": 3,
            "metrics": {"avg_acc": 0.8, "bwt": -0.02, "forgetting": 0.02}}


def test_seed_figure_axis_is_fitted_with_the_chance_level_one_decimal_and_a_subtitle():
    res = _seed_result()
    fig = seed_figure(res, "exp (seed 0)", {"num_batch": 3, "lr": 0.1})
    ax_matrix, ax_curves = fig.axes[0], fig.axes[1]     # (fig.axes[2] is the colour bar)
    lo, hi = ax_curves.get_ylim()
    assert lo > 50 and hi <= 101      # a fitted axis, not 0-100: a 2-point drop is visible
    texts = [t.get_text() for t in ax_matrix.texts]
    assert "79.8" in texts and "95.5" in texts and "80" not in texts
    chance = [t.get_text() for t in ax_curves.texts]
    assert any(t.startswith("chance 10.0%") and "below the axis" in t for t in chance)
    sub = " ".join(t.get_text() for t in fig.texts)
    for piece in ("permuted Fashion-MNIST", "3 tasks, domain-IL", "MLP 1x4000, dropout 0.5",
                  "SGD lr 0.1, Nesterov 0.9, wd 0.0001", "k-WTA 4/4000", "fc density 0.1",
                  "Dale 0.8 exc", "overrides: num_batch=3, lr=0.1"):
        assert piece in sub, piece
    # a chance level within the data's range is a dashed line at its value
    low = _seed_result()
    low["acc_matrix"] = low["acc_matrix"] * 0.12     # trained entries 9.5 .. 11.7 %
    fig = seed_figure(low)
    (line,) = [ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("chance")]
    assert line.get_label() == "chance (10.0%)" and list(line.get_ydata()) == [10.0, 10.0]


def test_describe_names_the_rule_and_constraints():
    d = describe({"optimizer": "nte", "nte_beta": 0.01, "nte_eta": 1.0, "nte_expand": "origin",
                  "plasticity": "grow", "grow_start_density": 0.02, "grow_end_density": 0.1,
                  "grow_old_lr": 0.0, "weight_sparsity_fc": 0.02})
    assert d["rule"].startswith("NTE (beta 0.01, eta 1, around the origin)")
    assert "grow 0.02->0.1 (old lr x0)" in d["constraints"]
    assert subtitle({}).count("\n") == 1 and "overrides: none" in subtitle({})


def _small_figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])          # clipped to the axes: a clip path with an id
    ax.set_title("t")
    return fig


def test_inline_svgs_of_two_figures_share_no_id():
    import re

    a = svg_markup(_small_figure(), "a")
    b = svg_markup(_small_figure(), "b")

    ids_a, ids_b = set(re.findall(r'id="([^"]+)"', a)), set(re.findall(r'id="([^"]+)"', b))
    assert ids_a and not ids_a & ids_b
    for svg, ids in ((a, ids_a), (b, ids_b)):
        assert set(re.findall(r"url\(#([^)]+)\)", svg)) <= ids
        assert "<text" in svg and not svg.startswith("<?xml")


def test_plot_result_keeps_its_signature_and_plot_experiment_reads_overrides_from_the_folder(tmp_path):
    from sparse_nte import report
    from sparse_nte.results import save_result

    res = make_result({"name": "x", "num_batch": 3, "dataset": "mnist"}, 0)
    save_result(tmp_path / "x+lr=0.2+num_batch=3" / "seed0.pkl", res)
    assert report.overrides_of_folder("x+lr=0.2+num_batch=3") == {"lr": "0.2", "num_batch": "3"}
    assert report.overrides_of_folder("x+0a1b2c3d4e") == {"variant": "0a1b2c3d4e"}
    assert report.overrides_of_folder("x") == {}
    (png,) = report.plot_experiment(tmp_path, "x+lr=0.2+num_batch=3")
    assert png.name == "seed0.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_a_diverged_trial_is_drawn_as_such():
    res = make_result({"name": "x", "num_batch": 3, "dataset": "mnist"}, 0, "diverged")
    fig = seed_figure(res, "x (seed 0)")
    assert "DIVERGED at task 1, epoch 0, step 7: the training loss is nan" in fig._suptitle.get_text()
    assert "ACC" not in fig._suptitle.get_text()   # no score for a diverged trial
    assert [t.get_text() for t in fig.axes[0].texts] == [f"{100 * v:.1f}" for v in res["acc_matrix"][0]]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(-1, 1), st.just(float("nan"))), max_size=12))
def test_summaries_ignore_undefined_values_and_use_the_sample_sd(values):
    import statistics

    from sparse_nte.reporting.tables import summarise

    finite = [v for v in values if not math.isnan(v)]
    mean, sd, n = summarise(values)
    assert n == len(finite)
    assert math.isnan(mean) if not finite else mean == pytest.approx(statistics.fmean(finite), abs=1e-12)
    assert math.isnan(sd) if n < 2 else sd == pytest.approx(statistics.stdev(finite), abs=1e-9)


def test_learning_accuracy_of_an_older_result_is_computed_from_its_matrix():
    from sparse_nte.reporting.collect import TrialRecord
    acc = np.array([[0.9, 0.1, 0.1], [0.5, 0.8, 0.1], [0.4, 0.6, 0.7]])
    old = {"acc_matrix": acc, "metrics": {"avg_acc": float(acc[2].mean())}}
    rec = TrialRecord(experiment="e", folder="e", seed=0, status="done", result=old)
    assert rec.metrics["learning_acc"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    stored = dict(old, metrics={"avg_acc": 0.5, "learning_acc": 0.25})
    assert TrialRecord("e", "e", 0, "done", stored).metrics["learning_acc"] == 0.25
    diverged = {"acc_matrix": np.full((3, 3), np.nan), "metrics": {"avg_acc": float("nan")}}
    assert "learning_acc" not in TrialRecord("e", "e", 0, "diverged", diverged).metrics
