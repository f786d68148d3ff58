"""bench/speed_tables.py: every goal row carries the report's measured figure, whether its goal
is met, and for a goal not met the cost in the way with the measured shares filled in; a figure
missing from the report says so; --write replaces only the page's table block."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import speed_tables as st  # noqa: E402


def _fig(name, value, goal, met, unit="x", at_least=False):
    return {"name": name, "value": value, "unit": unit, "goal": goal, "met": met,
            "at_least": at_least, "detail": ""}


REPORT = {
    "suite": {"command": ["python", "bench/run_all.py"], "quick": False},
    "machine": {"cpu": "Test CPU", "cores": 2, "threads": 1, "torch": "2.x",
                "loadavg_1_5_15": [0.1, 0.1, 0.1]},
    "figures": [
        _fig("speed/eval_over_forward_bound.MLP_1Layer", 1.1, 1.2, True),
        _fig("training/train_over_6pn_bound.mlp1x4000_dense", 1.9, 1.1, False),
        _fig("speed/dense_step_share.products", 43.0, None, None, "%"),
        _fig("speed/dense_step_share.sgd_update", 38.0, None, None, "%"),
        _fig("speed/dense_step_share.fused_sgd_update", 11.0, None, None, "%"),
        _fig("speed/dense_step_share.dropout_fwd_bwd", 15.0, None, None, "%"),
        _fig("speed/mlp_step_speedup.density_0.05", 2.8, 5.0, False, at_least=True),
        _fig("speed/mlp_step_speedup_active_dropout.density_0.05", 3.9, None, None,
             at_least=True),
        _fig("speed/layer_speedup.784x4000.density_0.05", 2.5, 4.0, False, at_least=True),
    ],
}


def _row(table: str, label_start: str) -> str:
    return next(r for r in table.splitlines() if r.startswith(f"| {label_start}"))


def test_rows_show_value_goal_verdict_and_the_cost_with_its_measured_share():
    table = st.goals_table(REPORT)
    met = _row(table, "evaluation of all seen tasks")
    assert "<= 1.20x | 1.10x | met |  |" in met
    epoch = _row(table, "dense 1x4000 training epoch")
    assert "1.90x | **not met**" in epoch and "(38% of the dense step" in epoch
    assert "fused_optimizer`, 11%" in epoch and "dropout (15%)" in epoch
    step = next(r for r in table.splitlines() if ">= 5.00x" in r)    # the k-WTA step at 5%
    assert "| 2.80x | **not met**" in step and "the step is 3.9x faster" in step
    assert "not in this report" in _row(table, "NTE fast-path step")
    assert "Goals met: 1 of 4." in table
    assert "training step 2.8x faster at the default settings (3.9x with" in table
    assert "layer 2.5x faster" in table


def test_write_replaces_only_the_table_block(tmp_path):
    page = tmp_path / "speed.md"
    page.write_text(f"intro\n{st.BEGIN}\nold table\n{st.END}\noutro\n")
    st.write_page("NEW", page)
    assert page.read_text() == f"intro\n{st.BEGIN}\nNEW\n{st.END}\noutro\n"
