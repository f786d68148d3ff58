"""The flagship tables are written from the result files: evidence computed by hand on small cases,
the fully-constrained test of a configuration, and the markers rewritten with the study's numbers."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from report_cases import write_case
from sparse_nte.reporting.evidence import trial_evidence
from sparse_nte.study import collect

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("flagship_results", ROOT / "tools" / "flagship_results.py")
flagship = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flagship)


def _result(usage):
    usage = np.asarray(usage, dtype=float)
    t = usage.shape[0]
    overlap = np.array([[a @ b / math.sqrt((a @ a) * (b @ b)) for b in usage] for a in usage])
    layer = {"unit_active_fraction": usage, "overlap": overlap, "active_fraction": usage.mean(1)}
    return {"stats": {"per_task": [{"task": t - 1, "activity": {"blocks.0": layer}}]}}


def test_evidence_of_a_hand_computed_case():
    # task 0 uses units 0 and 1, task 1 uses units 1 and 2; unit 3 is never active
    ev = trial_evidence(_result([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]))
    assert ev["overlap"] == pytest.approx(0.5)       # (0.25) / sqrt(0.5 * 0.5)
    assert ev["silent"] == pytest.approx(0.25)
    assert ev["units_per_task"] == pytest.approx(0.5)
    disjoint = trial_evidence(_result([[1.0, 0.0], [0.0, 1.0]]))
    assert disjoint["overlap"] == 0.0 and disjoint["silent"] == 0.0


def test_evidence_is_nan_without_activity_statistics():
    for result in ({}, {"stats": {"per_task": []}}, {"stats": {"per_task": [{"task": 0}]}}):
        assert all(math.isnan(v) for v in trial_evidence(result).values())


@pytest.mark.parametrize("changes, want", [
    ({}, True),
    ({"dale": False}, False),
    ({"sparsify": False}, False),
    ({"weight_sparsity_fc": 0.2}, False),
    ({"optimizer": "sgd"}, False),
    ({"optimizer": "sgd", "plasticity": "grow", "grow_end_density": 0.1}, True),
    ({"optimizer": "sgd", "plasticity": "grow", "grow_end_density": 0.5}, False),
])
def test_fully_constrained_means_every_constraint(changes, want):
    base = {"sparsify": True, "weight_sparsity_fc": 0.1, "dale": True, "optimizer": "nte",
            "plasticity": "none", "grow_end_density": 0.5}
    assert flagship.fully_constrained({**base, **changes}) is want


def test_markers_are_rewritten_with_the_study_numbers(tmp_path):
    cfg, results, study = write_case(tmp_path)
    alpha = next(e for e in collect(results, study).experiments if e.experiment == "alpha")
    accs = [t.metrics["avg_acc"] * 100 for t in alpha.done()]
    page = tmp_path / "page.md"
    page.write_text("# t\n<!-- flagship:summary:begin -->\nold\n<!-- flagship:summary:end -->\n"
                    "<!-- flagship:seeds:begin -->\n<!-- flagship:seeds:end -->\n")
    assert flagship.main(["--results-dir", str(results), "--config", str(cfg), "--study", study.name,
                          str(page)]) == 0
    text = page.read_text()
    assert "old" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `alpha`"))
    assert f"{np.mean(accs):.1f} ± {np.std(accs, ddof=1):.1f}" in row and f"{len(accs)} / 4" in row
    assert "not met" in text or "no fully constrained" in text
    seeds = [line for line in text.splitlines() if line.startswith("| `beta`")][-1]
    assert "diverged" in seeds and "failed" in seeds
    assert flagship.main(["--results-dir", str(results), "--config", str(cfg), "--study", study.name,
                          str(tmp_path / "missing.md")]) == 1
