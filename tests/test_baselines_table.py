"""tools/baselines_table.py: the share of the fine-tuning -> joint gap, the mean ± sd and the
rewriting of a table block of the results page, on hand-made numbers."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "baselines_table.py"
spec = importlib.util.spec_from_file_location("baselines_table", TOOL)
bt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)


def test_gap_closed_is_the_share_of_the_none_to_joint_distance():
    assert bt.gap_closed(0.80, 0.70, 0.90) == pytest.approx(0.5)
    assert bt.gap_closed(0.70, 0.70, 0.90) == 0 and bt.gap_closed(0.90, 0.70, 0.90) == 1
    assert bt.gap_closed(0.60, 0.70, 0.90) == pytest.approx(-0.5)     # worse than fine-tuning
    # the anchors' own: EWC on permuted MNIST, domain-IL, (94.31 - 78.51) / (97.59 - 78.51)
    a = bt.ANCHOR_ACC
    assert bt.gap_closed(a["ewc"], a["none"], a["joint"]) == pytest.approx(15.80 / 19.08)


def test_mean_sd_uses_the_sample_sd_and_says_when_there_is_too_little():
    assert bt.mean_sd([0.5, 0.7], 100) == f"60.00 ± {np.sqrt(200):.2f}"
    assert bt.mean_sd([0.5], 100) == "50.00 (1 seed)"
    assert bt.mean_sd([]) == "not run"


def test_a_block_is_replaced_and_nothing_else():
    page = "intro\n<!-- table:a -->\nold\nrows\n<!-- /table -->\nmiddle\n<!-- table:b -->\nkeep\n<!-- /table -->\n"
    out = bt.replace_block(page, "a", "| new |")
    assert out == "intro\n<!-- table:a -->\n| new |\n<!-- /table -->\nmiddle\n<!-- table:b -->\nkeep\n<!-- /table -->\n"
    with pytest.raises(SystemExit, match="table:c"):
        bt.replace_block(page, "c", "x")


def test_an_empty_block_is_filled_without_touching_the_next_one():
    page = "<!-- table:a -->\n<!-- /table -->\ntext\n<!-- table:b -->\n<!-- /table -->\n"
    once = bt.replace_block(page, "a", "| A |")
    assert once == "<!-- table:a -->\n| A |\n<!-- /table -->\ntext\n<!-- table:b -->\n<!-- /table -->\n"
    twice = bt.replace_block(bt.replace_block(once, "b", "| B |"), "a", "| A2 |")
    assert twice == "<!-- table:a -->\n| A2 |\n<!-- /table -->\ntext\n<!-- table:b -->\n| B |\n<!-- /table -->\n"


def run(acc: float) -> dict:
    return {"avg_acc": acc, "forgetting": 0.1, "learning_acc": 0.8, "elapsed_s": 10.0}


def test_the_vdv_table_pairs_seeds_with_none_and_joint():
    res = {"pmnist_vdv_none": {0: run(0.6), 1: run(0.7)},
           "pmnist_vdv_ewc": {0: run(0.7), 1: run(0.8), 2: run(0.99)},   # seed 2: no none/joint
           "pmnist_vdv_joint": {0: run(0.8), 1: run(0.9)}}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in bt.vdv_table(res).splitlines()[2:]}
    assert rows["EWC"][1] == "3"                            # seeds finished
    assert rows["EWC"][5] == "0.50 ± 0.00"                  # gap: seeds 0 and 1 only
    assert rows["EWC"][6] == "94.31" and rows["none (fine-tuning)"][5] == "—"


def test_the_bio_table_compares_each_row_with_its_own_network_and_rule():
    res = {"pmnist_vdv_none": {0: run(0.60)}, "pmnist_vdv_ewc": {0: run(0.65)},
           "pmnist_vdv_nte": {0: run(0.70)}, "pmnist_vdv_nte_ewc": {0: run(0.71)},
           "pmnist_vdv_bio_none": {0: run(0.50)}, "pmnist_vdv_bio_si": {0: run(0.58)},
           "pmnist_vdv_bio_nte": {}, "pmnist_vdv_bio_nte_ewc": {}}
    rows = [line.split(" | ") for line in bt.bio_table(res).splitlines()[2:]]
    delta = {(r[0].lstrip("| "), r[1], r[2]): r[7] for r in rows}
    assert delta[("dense", "Adam", "EWC")] == "5.00 (1 seed)"
    assert delta[("dense", "NTE", "EWC")] == "1.00 (1 seed)"          # against dense NTE, not Adam
    assert delta[("k-WTA 10%, 10% conn., Dale", "Adam", "SI")] == "8.00 (1 seed)"
    assert delta[("k-WTA 10%, 10% conn., Dale", "NTE", "EWC")] == "not run"
