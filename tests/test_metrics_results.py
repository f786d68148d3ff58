"""Metrics against hand-computed values, atomic result files, plain-data pickles."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_nte.metrics import continual_metrics
from sparse_nte.report import plot_result, summary_table
from sparse_nte.results import atomic_write, check_plain, load_result, result_path, save_result

R = np.array([
    [0.90, 0.12, 0.08],
    [0.70, 0.95, 0.11],
    [0.60, 0.80, 0.97],
])
B = np.array([0.10, 0.10, 0.09])


def test_metrics_by_hand():
    m = continual_metrics(R, random_init_acc=B)
    assert m["avg_acc"] == pytest.approx((0.60 + 0.80 + 0.97) / 3)
    assert m["bwt"] == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)
    # forgetting: best earlier accuracy minus final, tasks 0 and 1
    assert m["forgetting"] == pytest.approx(((0.90 - 0.60) + (0.95 - 0.80)) / 2)
    # forward transfer: accuracy on task j just before learning it, minus random init
    assert m["fwt"] == pytest.approx(((0.12 - 0.10) + (0.11 - 0.09)) / 2)
    np.testing.assert_allclose(m["plasticity"], [0.90, 0.95, 0.97])
    np.testing.assert_allclose(m["avg_acc_curve"], [0.90, (0.70 + 0.95) / 2, (0.60 + 0.80 + 0.97) / 3])


def test_forgetting_uses_the_best_earlier_row_not_the_diagonal():
    r = np.array([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.7, 0.9]])
    m = continual_metrics(r)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.4) + (0.8 - 0.7)) / 2)
    assert m["bwt"] == pytest.approx(((0.4 - 0.5) + (0.7 - 0.8)) / 2)


def test_partial_run_uses_trained_rows_only():
    r = R.copy()
    r[2] = np.nan  # task 2 not trained yet
    m = continual_metrics(r, trained=2, random_init_acc=B)
    assert m["avg_acc"] == pytest.approx((0.70 + 0.95) / 2)
    assert m["bwt"] == pytest.approx(0.70 - 0.90)
    assert m["fwt"] == pytest.approx(0.12 - 0.10)
    assert len(m["plasticity"]) == 2


def test_single_task_metrics_are_nan_where_undefined():
    m = continual_metrics(np.array([[0.8]]))
    assert m["avg_acc"] == pytest.approx(0.8)
    assert all(math.isnan(m[k]) for k in ("bwt", "forgetting", "fwt"))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3)), "square"),
    (np.full((2, 2), np.nan), "NaN"),
])
def test_metrics_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        continual_metrics(bad)


def test_atomic_write_failure_leaves_previous_file(tmp_path):
    target = tmp_path / "exp" / "seed0.pkl"
    save_result(target, {"a": 1})

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert load_result(target) == {"a": 1}
    assert os.listdir(target.parent) == ["seed0.pkl"]  # no temporary left behind


def test_results_must_be_plain_data(tmp_path):
    import torch

    with pytest.raises(TypeError, match=r"result\['x'\]"):
        save_result(tmp_path / "r.pkl", {"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="object arrays"):
        check_plain({"x": np.array([{}], dtype=object)})
    assert not (tmp_path / "r.pkl").exists()


def test_result_pickle_loads_without_torch_or_this_package(tmp_path):
    path = result_path(tmp_path, "exp", 3)
    save_result(path, {"acc_matrix": R, "metrics": continual_metrics(R), "config": {"lr": 0.1}})
    code = ("import sys, pickle; sys.modules['torch'] = None; sys.modules['sparse_nte'] = None; "
            f"d = pickle.load(open({str(path)!r}, 'rb')); print(d['acc_matrix'].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3, 3)"


def test_summary_table_and_plot(tmp_path):
    for seed, shift in ((0, 0.0), (1, 0.02)):
        r = R + shift
        save_result(result_path(tmp_path, "expA", seed),
                    {"acc_matrix": r, "metrics": continual_metrics(r), "elapsed_s": 60.0})
    table = summary_table(tmp_path, ["expA", "missing"])
    avg = [continual_metrics(R + s)["avg_acc"] * 100 for s in (0.0, 0.02)]
    assert f"{np.mean(avg):.2f} ± {np.std(avg, ddof=1):.2f}" in table
    assert "| missing" in table and "| 0 " in table
    png = plot_result(load_result(result_path(tmp_path, "expA", 0)), tmp_path / "p.png", "expA")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
