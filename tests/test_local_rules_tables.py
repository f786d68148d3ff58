"""bench/local_rules_tables.py: the one-task table shows every run found (10k and 60k images)
after epochs 1, 5 and 25 as mean ± sd over seeds, "not run" for epochs a run has not reached,
and the window sweep lists every N."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import local_rules_tables as lrt  # noqa: E402


def _write(folder: Path, stem: str, accs: list[list[float]]) -> None:
    data = {"setup": {}, "epochs": [{"acc": a, "seconds": 1.0, "load": [0, 0, 0]} for a in accs]}
    (folder / f"{stem}.json").write_text(json.dumps(data))


def test_rows_for_the_runs_found_with_mean_sd_and_not_run(tmp_path):
    _write(tmp_path, "ib_n8", [[0.70, 0.72]] * 5)
    _write(tmp_path, "bp_full", [[0.80, 0.84, 0.82]] * 25)
    table = lrt.accuracy_table(tmp_path)
    rows = [r for r in table.splitlines() if r.startswith("| ") and "epoch" not in r]
    assert len(rows) == 2
    ib = next(r for r in rows if r.startswith("| IB-Hebbian"))
    assert "first 10k images" in ib and "71.00 ± 1.41 (2)" in ib and "not run" in ib
    bp = next(r for r in rows if r.startswith("| backprop"))
    assert "all 60k images" in bp and bp.count("82.00 ± 2.00 (3)") == 3
    assert "≈97.5" in bp                          # the published figure beside epoch 25


def test_window_sweep_lists_every_window_in_order(tmp_path):
    for n, acc in ((16, 0.73), (2, 0.70), (4, 0.71)):
        _write(tmp_path, f"ib_n{n}", [[acc, acc]])
    lines = lrt.window_table(tmp_path).splitlines()[2:]
    assert [line.split("|")[1].strip() for line in lines] == ["2", "4", "16"]
    assert "73.00 ± 0.00 (2)" in lines[-1]


def test_several_epoch_sweep_shows_test_and_training_accuracy_of_the_last_epoch(tmp_path):
    data = {"setup": {}, "epochs": [{"acc": [0.5, 0.5], "seconds": 1.0, "train_acc": [0.6, 0.6]},
                                    {"acc": [0.7, 0.8], "seconds": 1.0, "train_acc": [0.9, 0.9]}]}
    (tmp_path / "sweep_n4.json").write_text(json.dumps(data))
    row = lrt.sweep_table(tmp_path).splitlines()[-1]
    assert row == "| 4 | 2 | 75.00 ± 7.07 (2) | 90.00 ± 0.00 (2) |"
