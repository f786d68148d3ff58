"""Data selection (sparse_nte.selection): the schedule, the draws and their inclusion
probabilities, every selector on hand-built score tables, the static scores against
hand-computed values (EL2N closed form, GraNd against an explicit per-example loop, forgetting
counts against an independent count), unbiased rescaling, statistics and checkpoints."""
import copy
import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.scenarios import Scenario, Task
from sparse_nte.layers import KWinners, SparseWeights, SparseWeights2d
from sparse_nte.seams import OTHER_ROW, Batch, BuildEnv, TaskContext
from sparse_nte.selection import (CHOICES, SELECTORS, SelectionSpec, build_selection, sampling,
                                  spec as spec_mod)
from sparse_nte.selection.data_diet import el2n_scores, grand_scores
from sparse_nte.selection.forgetting import ForgettingCounter
from sparse_nte.selection.grand import per_example_grad_norms
from sparse_nte.selection.scoring import scoring_generator

FAST = settings(max_examples=40, deadline=None)

DEFAULTS = dict(data_pruning="none", data_prune_rate=0.5, data_prune_every=1, data_prune_start=0,
                data_prune_end=0, data_prune_epsilon=0.2, data_prune_ucb_c=1.0, data_prune_ema=0.8,
                data_prune_rescale=False, data_prune_score_epochs=2, data_prune_score_repeats=1,
                data_prune_score_lr=0.05)


def config(**kw):
    return SimpleNamespace(**{**DEFAULTS, **kw})


def make_spec(**kw):
    return SelectionSpec.from_config(config(**kw))


# ---------------------------------------------------------------------------------------------
# A tiny scenario, model and training loop
# ---------------------------------------------------------------------------------------------
def make_scenario(n=40, num_tasks=2, classes=3, shape=(1, 2, 2), seed=0, setting="domain"):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for i in range(num_tasks):
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        tx = torch.randint(0, 256, (10, *shape), generator=g, dtype=torch.uint8)
        ty = torch.randint(0, classes, (10,), generator=g)
        tasks.append(Task(i, tuple(range(classes)), x, y, torch.full((n,), i), tx, ty))
    heads = num_tasks if setting == "task" else 1
    return Scenario("toy", "toy", setting, tuple(tasks), shape, heads, classes,
                    (0.0,) * shape[0], (1.0,) * shape[0], None, False)


class Toy(nn.Module):
    def __init__(self, d=4, classes=3, dtype=torch.float64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(d, classes).to(dtype)
        with torch.no_grad():
            self.lin.weight.uniform_(-0.5, 0.5, generator=g)
            self.lin.bias.uniform_(-0.5, 0.5, generator=g)

    def forward(self, x, t=None):
        return self.lin(x.flatten(1).to(self.lin.weight.dtype))


def make_ctx(scenario, model, task=0, epochs=4, seed=7, batch_size=8):
    return TaskContext(task=task, num_tasks=len(scenario.tasks), scenario=scenario, model=model,
                       device="cpu", seed=seed, steps=0, epochs=epochs, batch_size=batch_size)


def make_selection(method, scenario=None, **kw):
    scenario = scenario or make_scenario()
    env = BuildEnv(model=Toy(), scenario=scenario, steps_per_task=[1] * len(scenario.tasks))
    return build_selection(config(data_pruning=method, **kw), env)


def batch_of(rows, losses=None, extra=0):
    rows = torch.as_tensor(rows, dtype=torch.int64)
    index = torch.cat([rows, torch.full((extra,), OTHER_ROW, dtype=torch.int64)])
    b = len(index)
    return Batch(torch.zeros(b, 1, 2, 2), torch.zeros(b, dtype=torch.int64),
                 torch.zeros(b, dtype=torch.int64), index)


def observe_all(sel, losses, extra=0, order=None):
    """Observe every row once with the given losses (rows in ``order``)."""
    n = len(losses)
    order = torch.arange(n) if order is None else torch.as_tensor(order)
    b = batch_of(order, extra=extra)
    vals = torch.cat([torch.as_tensor(losses, dtype=torch.float64)[order],
                      torch.full((extra,), 99.0, dtype=torch.float64)])
    sel.observe(b, vals)


def train_epochs(sel, ctx, model, opt, epochs, log):
    """The learner's loop: rows -> batches with their row numbers -> weighted losses -> step ->
    observe (what the runner and Objective do)."""
    for e in epochs:
        rows = sel.rows(ctx, e) if sel is not None else None
        log.append(("rows", e, None if rows is None else rows.tolist()))
        gen = torch.Generator().manual_seed(1000 * ctx.task + e)
        for x, y, t, idx in ctx.scenario.batches(ctx.task, "train", batch_size=ctx.batch_size,
                                                 shuffle=True, generator=gen, rows=rows,
                                                 with_index=True):
            batch = Batch(x, y, t, idx)
            losses = F.cross_entropy(model(x, t), y, reduction="none")
            w = sel.loss_weights(batch) if sel is not None else None
            if w is not None:
                losses = losses * w
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            opt.step()
            if sel is not None:
                sel.observe(batch, losses.detach())


# ---------------------------------------------------------------------------------------------
# Spec and schedule
# ---------------------------------------------------------------------------------------------
def test_registry_choices_match_the_spec():
    assert CHOICES == spec_mod.METHODS
    assert set(SELECTORS) == {"uniform", "epsilon_greedy", "ucb", "el2n", "grand", "forgetting"}
    assert make_selection("none") is None
    for name in SELECTORS:
        sel = make_selection(name)
        assert sel.name == name


def test_spec_reads_attributes_and_names_missing_keys():
    s = make_spec(data_pruning="ucb", data_prune_ucb_c=2.5)
    assert s.data_pruning == "ucb" and s.data_prune_ucb_c == 2.5
    with pytest.raises(ValueError, match="data_prune_ema, data_prune_rescale"):
        cfg = config()
        del cfg.data_prune_ema, cfg.data_prune_rescale
        SelectionSpec.from_config(cfg)


@pytest.mark.parametrize("key, value", [
    ("data_pruning", "random"), ("data_prune_rate", 1.0), ("data_prune_rate", -0.1),
    ("data_prune_every", 0), ("data_prune_start", -1), ("data_prune_epsilon", 1.5),
    ("data_prune_ema", 0.0), ("data_prune_ucb_c", -1.0), ("data_prune_rescale", 1),
    ("data_prune_score_repeats", 0), ("data_prune_score_lr", 0.0), ("data_prune_every", 1.0),
])
def test_config_rejects_invalid_values_naming_the_key(key, value):
    """Types and ranges live in the config schema (one place); its error names the key."""
    from sparse_nte.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=key):
        config_from_dict({"data_pruning": "uniform", key: value})


def test_config_reports_the_relations_with_their_location(tmp_path):
    from sparse_nte.config import ConfigError, load_config

    cfg = tmp_path / "e.cfg"
    cfg.write_text("[e]\ndata_pruning = ucb\ndata_prune_rescale = true\n")
    with pytest.raises(ConfigError, match=r"\[e\] data_prune_rescale: .*keeps the top k"):
        load_config(cfg, "e")


def test_spec_rejects_conflicting_keys():
    with pytest.raises(ValueError, match="data_prune_end"):
        make_spec(data_pruning="uniform", data_prune_start=3, data_prune_end=3)
    for method in ("ucb", "el2n", "grand", "forgetting"):
        with pytest.raises(ValueError, match="data_prune_rescale"):
            make_spec(data_pruning=method, data_prune_rescale=True)
    with pytest.raises(ValueError, match=">= 2"):
        make_spec(data_pruning="forgetting", data_prune_score_epochs=1)
    with pytest.raises(ValueError, match="data_prune_score_repeats"):
        make_spec(data_pruning="el2n", data_prune_score_epochs=0, data_prune_score_repeats=3)
    make_spec(data_pruning="uniform", data_prune_rescale=True)  # fine


@given(st.integers(0, 10_000), st.integers(0, 99))
@FAST
def test_keep_count_is_floor_of_the_decimal_rate(n, percent):
    p = percent / 100
    assert spec_mod.keep_count(n, p) == math.floor((1 - Fraction(percent, 100)) * n)


def test_keep_count_hand_values():
    assert spec_mod.keep_count(10, 0.9) == 1      # (1 - 0.9) * 10 is 0.99999... in doubles
    assert spec_mod.keep_count(10, 0.7) == 3
    assert spec_mod.keep_count(60000, 0.3) == 42000
    assert spec_mod.random_count(10, 0.3) == 3


def test_schedule_hand_cases():
    s = make_spec(data_pruning="uniform", data_prune_start=1, data_prune_end=0)
    assert spec_mod.pruned_epochs(s, 4) == [1, 2, 3]
    s = make_spec(data_pruning="uniform", data_prune_start=0, data_prune_end=3, data_prune_every=2)
    assert spec_mod.pruned_epochs(s, 5) == [0, 1, 2]
    assert [e for e in range(5) if spec_mod.selects(s, e, 5)] == [0, 2]
    assert spec_mod.planned_rows(s, 10, 5) == [5, 5, 5, 10, 10]
    s = make_spec(data_pruning="uniform", data_prune_start=2, data_prune_end=10)
    assert spec_mod.pruned_epochs(s, 4) == [2, 3]   # end beyond the task: to its last epoch
    assert spec_mod.schedule_warning(make_spec(data_pruning="uniform", data_prune_start=5), [2, 3])
    assert not spec_mod.schedule_warning(s, [4])


@given(st.integers(0, 6), st.integers(0, 9), st.integers(1, 4), st.integers(1, 10))
@FAST
def test_schedule_convention(start, end, every, epochs):
    if end and end <= start:
        return
    s = make_spec(data_pruning="uniform", data_prune_start=start, data_prune_end=end,
                  data_prune_every=every)
    end_eff = epochs if end == 0 else min(end, epochs)
    pruned = spec_mod.pruned_epochs(s, epochs)
    assert pruned == list(range(start, end_eff))
    sel = [e for e in range(epochs) if spec_mod.selects(s, e, epochs)]
    assert sel == pruned[::every]
    if pruned:
        assert sel[0] == pruned[0]


# ---------------------------------------------------------------------------------------------
# Draws and inclusion probabilities
# ---------------------------------------------------------------------------------------------
def test_top_k_hand_table():
    scores = torch.tensor([0.5, 3.0, 1.0, 3.0, 2.0, 0.1])
    rows, pi = sampling.top_k(scores, 3, torch.Generator().manual_seed(0))
    assert rows.tolist() == [1, 3, 4]
    assert pi.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_top_k_breaks_ties_at_random_not_by_position():
    scores = torch.tensor([5.0, 2.0, 2.0, 2.0, 2.0, 0.0])
    counts = torch.zeros(6)
    g = torch.Generator().manual_seed(1)
    for _ in range(3000):
        rows, pi = sampling.top_k(scores, 3, g)
        assert len(rows) == 3 and 0 in rows.tolist() and 5 not in rows.tolist()
        counts[rows] += 1
    assert torch.allclose(pi, torch.tensor([1, 0.5, 0.5, 0.5, 0.5, 0], dtype=torch.float64))
    freq = counts[1:5] / 3000          # each tied row kept half of the time (sd ~ 0.009)
    assert (freq - 0.5).abs().max() < 0.04


@given(st.lists(st.integers(0, 4), min_size=1, max_size=30), st.data())
@FAST
def test_top_k_properties(values, data):
    scores = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    k = data.draw(st.integers(0, n))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    rows, pi = sampling.top_k(scores, k, gen)
    listed = rows.tolist()
    assert len(listed) == k and len(set(listed)) == k and listed == sorted(listed)
    kept = torch.zeros(n, dtype=torch.bool)
    kept[rows] = True
    if 0 < k < n:
        assert scores[kept].min() >= scores[~kept].max()
    assert math.isclose(float(pi.sum()), k, abs_tol=1e-9)
    assert bool((pi[kept] > 0).all())
    # the formula: 1 above the k-th largest, (k - a) / m on it, 0 below
    if 0 < k < n:
        tau = torch.sort(scores, descending=True).values[k - 1]
        a, m = int((scores > tau).sum()), int((scores == tau).sum())
        expect = torch.where(scores > tau, 1.0, torch.where(scores == tau, (k - a) / m, 0.0))
        assert torch.allclose(pi, expect.double())


def test_uniform_draw():
    g = torch.Generator().manual_seed(0)
    rows, pi = sampling.uniform(10, 4, g)
    assert len(rows) == 4 and len(set(rows.tolist())) == 4
    assert torch.equal(pi, torch.full((10,), 0.4, dtype=torch.float64))


def test_epsilon_greedy_draw_hand_table():
    scores = torch.arange(10, dtype=torch.float64)   # top 3 by score: rows 7, 8, 9
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(2000):
        rows, pi = sampling.epsilon_greedy(scores, 5, 2, g)
        assert len(rows) == 5 and {7, 8, 9} <= set(rows.tolist())
        counts[rows] += 1
    expect = torch.tensor([2 / 7] * 7 + [1.0] * 3, dtype=torch.float64)
    assert torch.allclose(pi, expect)
    assert (counts[:7] / 2000 - 2 / 7).abs().max() < 0.05


@pytest.mark.parametrize("method, rate, eps", [("uniform", 0.6, 0.0), ("epsilon_greedy", 0.5, 0.5),
                                               ("epsilon_greedy", 0.3, 0.2)])
def test_rescaling_weights_give_an_unbiased_epoch_loss(method, rate, eps):
    """E[sum over kept rows of w_i l_i] = sum_i l_i, through rows() and loss_weights()."""
    n = 12
    scenario = make_scenario(n=n)
    losses = torch.tensor([3.0, 1.0, 1.0, 1.0, 0.5, 2.0, 2.0, 0.2, 4.0, 1.0, 0.7, 0.1],
                          dtype=torch.float64)                     # ties at the boundary
    sel = make_selection(method, scenario, data_prune_rate=rate, data_prune_epsilon=eps,
                         data_prune_rescale=True)
    draws = 4000
    ctx = make_ctx(scenario, Toy(), epochs=draws)
    sel.on_task_start(ctx)
    if method == "epsilon_greedy":
        observe_all(sel, losses)
    totals = []
    for e in range(draws):
        rows = sel.rows(ctx, e)
        assert len(rows) == spec_mod.keep_count(n, rate)
        w = sel.loss_weights(batch_of(rows, extra=2)).double()
        assert torch.equal(w[-2:], torch.ones(2, dtype=torch.float64))   # replayed rows: 1
        totals.append(float((w[:-2] * losses[rows]).sum()))
    mean, sd = np.mean(totals), np.std(totals) / math.sqrt(draws)
    assert abs(mean - float(losses.sum())) < 4 * sd + 1e-9, (mean, float(losses.sum()), sd)
    assert sd > 0      # the estimate does vary: the test can fail


# ---------------------------------------------------------------------------------------------
# Selectors on hand-built score tables
# ---------------------------------------------------------------------------------------------
def test_uniform_schedule_keeps_the_set_between_selections():
    scenario = make_scenario(n=20)
    sel = make_selection("uniform", scenario, data_prune_rate=0.75, data_prune_start=1,
                         data_prune_end=6, data_prune_every=2)
    ctx = make_ctx(scenario, Toy(), epochs=7)
    sel.on_task_start(ctx)
    got = [sel.rows(ctx, e) for e in range(7)]
    assert got[0] is None and got[6] is None
    assert all(len(r) == 5 for r in got[1:6])
    assert torch.equal(got[1], got[2]) and torch.equal(got[3], got[4])
    assert not torch.equal(got[1], got[3]) or not torch.equal(got[3], got[5])
    assert sel.rows(ctx, 6) is None                 # asked twice: same answer, counted once
    st_ = sel.stats()
    assert st_["kept_fraction"] == [1.0, 0.25, 0.25, 0.25, 0.25, 0.25, 1.0]
    assert st_["selections"] == 3 and st_["pruned_epochs"] == 5 and st_["kept"] == 5


def test_epsilon_greedy_keeps_the_top_of_the_observed_losses():
    scenario = make_scenario(n=10)
    losses = torch.tensor([0.3, 2.0, 0.1, 5.0, 0.2, 1.5, 0.9, 0.05, 3.0, 0.4])
    sel = make_selection("epsilon_greedy", scenario, data_prune_rate=0.6, data_prune_epsilon=0.0,
                         data_prune_start=1)
    ctx = make_ctx(scenario, Toy(), epochs=3)
    sel.on_task_start(ctx)
    assert sel.rows(ctx, 0) is None
    observe_all(sel, losses, order=[4, 9, 0, 1, 2, 3, 5, 6, 7, 8])
    assert sel.rows(ctx, 1).tolist() == [1, 3, 5, 8]       # the 4 largest losses
    # with epsilon = 0.5 the greedy half is the top 2, the other 2 come from the rest
    sel = make_selection("epsilon_greedy", scenario, data_prune_rate=0.6, data_prune_epsilon=0.5)
    sel.on_task_start(ctx)
    observe_all(sel, losses)
    rows = sel.rows(ctx, 0).tolist()
    assert len(rows) == 4 and {3, 8} <= set(rows)


def test_ema_and_first_observation():
    scenario = make_scenario(n=4)
    sel = make_selection("epsilon_greedy", scenario, data_prune_ema=0.25)
    sel.on_task_start(make_ctx(scenario, Toy()))
    observe_all(sel, [1.0, 2.0, 3.0, 4.0])
    sel.observe(batch_of([1, 2]), torch.tensor([10.0, 0.0], dtype=torch.float64))
    assert torch.allclose(sel.scores(), torch.tensor([1.0, 0.75 * 2 + 0.25 * 10, 0.75 * 3, 4.0],
                                                     dtype=torch.float64))


def test_a_row_observed_twice_before_the_scores_are_read_follows_the_order():
    scenario = make_scenario(n=4)
    sel = make_selection("epsilon_greedy", scenario, data_prune_ema=0.25)
    sel.on_task_start(make_ctx(scenario, Toy()))
    sel.observe(batch_of([0, 1]), torch.tensor([1.0, 2.0]))
    sel.observe(batch_of([2, 0], extra=1), torch.tensor([3.0, 10.0, 50.0]))
    sel.observe(batch_of([0]), torch.tensor([2.0]))
    s = sel.scores()
    first = 0.75 * 1.0 + 0.25 * 10.0
    assert s[:3].tolist() == [0.75 * first + 0.25 * 2.0, 2.0, 3.0] and math.isinf(s[3])


def test_unobserved_rows_rank_first():
    scenario = make_scenario(n=6)
    sel = make_selection("ucb", scenario, data_prune_rate=0.5)
    ctx = make_ctx(scenario, Toy())
    sel.on_task_start(ctx)
    sel.observe(batch_of([0, 1, 2, 3]), torch.tensor([9.0, 8.0, 7.0, 6.0], dtype=torch.float64))
    assert sel.rows(ctx, 0).tolist() == [0, 4, 5]
    assert sel.stats()["never_observed"] == 2


def test_ucb_scores_mean_plus_c_variance_by_hand():
    scenario = make_scenario(n=3)
    a, c = 0.5, 4.0
    sel = make_selection("ucb", scenario, data_prune_rate=0.4, data_prune_ema=a,
                         data_prune_ucb_c=c)
    ctx = make_ctx(scenario, Toy())
    sel.on_task_start(ctx)
    seq = {0: [1.0, 1.0, 1.0], 1: [0.0, 2.0, 0.0], 2: [1.2, 1.2, 1.2]}
    for step in range(3):
        sel.observe(batch_of([0, 1, 2]), torch.tensor([seq[i][step] for i in range(3)],
                                                      dtype=torch.float64))
    # by hand, row 1: mu 0 -> 1 -> 0.5; v 0 -> 0.5 (2 - 0)^2 = 2 -> 0.5*2 + 0.5 (0 - 1)^2 = 1.5
    scores = sel.state_dict()["scores"]
    assert torch.allclose(scores["mean"], torch.tensor([1.0, 0.5, 1.2], dtype=torch.float64))
    assert torch.allclose(scores["var"], torch.tensor([0.0, 1.5, 0.0], dtype=torch.float64))
    assert sel.rows(ctx, 0).tolist() == [1]          # 0.5 + 4 * 1.5 = 6.5 beats 1.2
    sel0 = make_selection("ucb", scenario, data_prune_rate=0.4, data_prune_ema=a,
                          data_prune_ucb_c=0.0)
    sel0.load_state_dict(sel.state_dict())           # same scores, c = 0: the mean alone
    sel0._pruning, sel0._last_epoch = False, -1
    assert sel0.rows(ctx, 0).tolist() == [2]


def test_scores_change_only_for_observed_rows():
    scenario = make_scenario(n=8)
    for method in ("epsilon_greedy", "ucb"):
        sel = make_selection(method, scenario)
        sel.on_task_start(make_ctx(scenario, Toy()))
        observe_all(sel, torch.arange(8.0))
        before = sel.state_dict()["scores"]
        # rows 2 and 5 of this task plus two replayed rows from elsewhere
        sel.observe(batch_of([5, 2], extra=2), torch.tensor([7.0, 7.0, 50.0, 50.0]))
        after = sel.state_dict()["scores"]
        changed = torch.zeros(8, dtype=torch.bool)
        for key in before:
            changed |= before[key] != after[key]
        assert changed.nonzero().flatten().tolist() == [2, 5]


def test_observe_divides_out_the_rescaling_weight():
    scenario = make_scenario(n=10)
    sel = make_selection("epsilon_greedy", scenario, data_prune_rate=0.5, data_prune_epsilon=0.4,
                         data_prune_rescale=True, data_prune_ema=1.0)
    ctx = make_ctx(scenario, Toy())
    sel.on_task_start(ctx)
    rows = sel.rows(ctx, 0)
    batch = batch_of(rows)
    w = sel.loss_weights(batch).double()
    assert bool((w >= 1).all()) and bool((w > 1).any())
    raw = torch.linspace(1.0, 2.0, len(rows), dtype=torch.float64)
    sel.observe(batch, raw * w)
    assert torch.allclose(sel.state_dict()["scores"]["mean"][rows], raw, rtol=1e-6)


def test_each_task_restarts_selection():
    scenario = make_scenario(n=10, num_tasks=2)
    sel = make_selection("ucb", scenario)
    sel.on_task_start(make_ctx(scenario, Toy(), task=0))
    observe_all(sel, torch.arange(10.0))
    sel.rows(make_ctx(scenario, Toy(), task=0), 0)
    sel.on_task_start(make_ctx(scenario, Toy(), task=1))
    assert not bool(sel.seen.any()) and sel.stats()["kept_fraction"] == []


def test_stats_histogram_and_sometimes():
    scenario = make_scenario(n=30)
    sel = make_selection("uniform", scenario, data_prune_rate=0.5, data_prune_start=1)
    ctx = make_ctx(scenario, Toy(), epochs=5)
    sel.on_task_start(ctx)
    kept = torch.zeros(30, dtype=torch.int64)
    for e in range(5):
        rows = sel.rows(ctx, e)
        if rows is not None:
            kept[rows] += 1
    s = sel.stats()
    assert s["pruned_epochs"] == 4 and s["kept_fraction"] == [1.0] + [0.5] * 4
    assert s["kept_histogram"] == torch.bincount(kept, minlength=5).tolist()
    assert s["sometimes"] == int(((kept > 0) & (kept < 4)).sum())
    assert s["data_fraction"] == pytest.approx((1 + 4 * 0.5) / 5)
    assert s["select_s"] >= 0 and isinstance(s["score_s"], float)
    assert all(isinstance(v, (int, float, str, list)) for v in s.values())


def test_too_high_a_rate_for_a_small_task_is_an_error():
    scenario = make_scenario(n=5)
    sel = make_selection("uniform", scenario, data_prune_rate=0.9)
    with pytest.raises(ValueError, match="keeps floor"):
        sel.on_task_start(make_ctx(scenario, Toy()))
    sel = make_selection("epsilon_greedy", scenario, data_prune_rate=0.5, data_prune_epsilon=0.3,
                         data_prune_rescale=True)
    with pytest.raises(ValueError, match="data_prune_epsilon"):
        sel.on_task_start(make_ctx(scenario, Toy()))     # floor(0.3 * 2) = 0 random rows


# ---------------------------------------------------------------------------------------------
# Static scores
# ---------------------------------------------------------------------------------------------
def test_el2n_by_hand_and_kept_set():
    scenario = make_scenario(n=12)
    model = Toy()
    ctx = make_ctx(scenario, model)
    task = scenario.tasks[0]
    x = task.train_x.double().flatten(1) / 255.0
    w, b = model.lin.weight.detach(), model.lin.bias.detach()
    p = torch.softmax(x @ w.T + b, dim=1)
    hand = (p - F.one_hot(task.train_y, 3).double()).norm(dim=1)
    assert torch.allclose(el2n_scores(model, ctx), hand, atol=1e-12)
    sel = make_selection("el2n", scenario, data_prune_rate=0.75, data_prune_score_epochs=0)
    sel.on_task_start(ctx)
    assert sel.rows(ctx, 0).tolist() == sorted(torch.argsort(hand, descending=True)[:3].tolist())


def test_grand_closed_form_for_softmax_regression():
    # grad_W = (p - y) x^T, grad_b = p - y  =>  GraNd = ||p - y|| sqrt(||x||^2 + 1)
    torch.manual_seed(3)
    model = Toy(d=5, classes=4)
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    p = torch.softmax(model(x), dim=1).detach()
    expect = (p - F.one_hot(y, 4)).norm(dim=1) * (x.pow(2).sum(1) + 1).sqrt()
    assert torch.allclose(per_example_grad_norms(model, x, y), expect, atol=1e-12)


class Mixed(nn.Module):
    """Masked conv, masked Dale linear on the sparse path, k-WTA, a parameter outside any
    linear/conv layer (generic path), a weight used twice (generic path) and two heads."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = SparseWeights2d(nn.Conv2d(1, 3, 2), sparsity=0.4, generator=g)
        self.fc = SparseWeights(nn.Linear(12, 8), sparsity=0.5, generator=g, sparse_exec="on")
        sign = torch.tensor([1.0, -1.0] * 6)
        with torch.no_grad():
            self.fc.module.weight.abs_().mul_(sign)
        self.fc.set_presynaptic_sign(sign)
        self.kw = KWinners(8, percent_on=0.5, k_inference_factor=1.0, boost_strength=0.0)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.tied = nn.Linear(8, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])
        self.double()

    def forward(self, x, t):
        h = torch.relu(self.conv(x.to(torch.float64))).flatten(1)
        h = self.kw(self.fc(h)) * self.scale
        h = torch.tanh(self.tied(h)) + F.linear(h, self.tied.weight) * 0.1
        return self.heads[int(t[0])](h)


def test_grand_matches_an_explicit_per_example_loop():
    model = Mixed().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    for head in (0, 1):
        t = torch.full((10,), head)
        got = per_example_grad_norms(model, x, y, t)
        loop = []
        for b in range(10):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[b:b + 1], t[b:b + 1]), y[b:b + 1]).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            loop.append(math.sqrt(sum(float(gr.pow(2).sum()) for gr in grads)))
        assert torch.allclose(got, torch.tensor(loop, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # the masked entries are left out (the loop's gradients are masked by the layers' hooks)
    assert float(model.fc.zero_mask.sum()) > 0 and float(model.conv.zero_mask.sum()) > 0


def test_static_scores_use_each_rows_own_head_in_a_cumulative_scenario():
    g = torch.Generator().manual_seed(4)
    n = 14
    t = torch.tensor([0, 1] * (n // 2))
    x = torch.randint(0, 256, (n, 1, 3, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    test = (x[:2], y[:2])
    first = torch.zeros(n // 2, dtype=torch.int64)
    tasks = (Task(0, (0, 1, 2), x[t == 0], y[t == 0], first, *test),
             Task(1, (0, 1, 2), x, y, t, *test))
    scenario = Scenario("toy", "toy", "task", tasks, (1, 3, 3), 2, 3, (0.0,), (1.0,), None, True)
    model = Mixed().eval()
    ctx = make_ctx(scenario, model, task=1)
    el2n, grand = el2n_scores(model, ctx), grand_scores(model, ctx)
    xs = x.double() / 255.0
    for r in range(n):
        model.zero_grad(set_to_none=True)
        logits = model(xs[r:r + 1], t[r:r + 1])
        p = torch.softmax(logits.detach(), dim=1)[0]
        assert math.isclose(float(el2n[r]), float((p - F.one_hot(y[r], 3)).norm()), rel_tol=1e-6)
        F.cross_entropy(logits, y[r:r + 1]).backward()
        norm = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in model.parameters()
                             if q.grad is not None))
        assert math.isclose(float(grand[r]), norm, rel_tol=1e-5)


def test_forgetting_counter_hand_case():
    c = ForgettingCounter(5)
    presentations = [  # (rows, correct) per batch; epochs are just successive presentations
        ([0, 1, 2, 3], [1, 0, 0, 1]),
        ([4], [0]),
        ([3, 0, 1], [0, 0, 1]),
        ([2, 4], [0, 1]),
        ([0, 1, 3], [1, 1, 1]),
        ([0, 4], [0, 0]),
    ]
    for rows, correct in presentations:
        c.update(torch.tensor(rows), torch.tensor(correct, dtype=torch.bool))
    # row 0: 1 0 1 0 -> 2; row 1: 0 1 1 -> 0; row 2: never correct -> inf;
    # row 3: 1 0 1 -> 1; row 4: 0 1 0 -> 1
    assert c.scores().tolist() == [2.0, 0.0, math.inf, 1.0, 1.0]
    assert c.presented.tolist() == [4, 3, 2, 3, 3]


def test_forgetting_selection_counts_match_an_independent_count():
    scenario = make_scenario(n=24, classes=3, seed=2)
    model = Toy(seed=1)
    ctx = make_ctx(scenario, model, seed=11, batch_size=5)
    epochs, lr = 4, 2.0
    sel = make_selection("forgetting", scenario, data_prune_rate=0.5,
                         data_prune_score_epochs=epochs, data_prune_score_lr=lr)
    sel.on_task_start(ctx)
    # independent replay of the scoring run: same copy, same batch order, counts in numpy
    replica = copy.deepcopy(model)
    opt = torch.optim.SGD(replica.parameters(), lr=lr)
    gen = scoring_generator(11, 0, 0)
    history = [[] for _ in range(24)]
    for _ in range(epochs):
        for x, y, t, rows in scenario.batches(0, "train", batch_size=5, shuffle=True,
                                              generator=gen, with_index=True):
            logits = replica(x, t)
            for r, ok in zip(rows.tolist(), (logits.argmax(1) == y).tolist()):
                history[r].append(ok)
            opt.zero_grad()
            F.cross_entropy(logits, y).backward()
            opt.step()
    expect = []
    for h in history:
        events = sum(1 for a, b in zip(h, h[1:]) if a and not b)
        expect.append(float(events) if any(h) else math.inf)
    assert sel.score.tolist() == expect
    assert any(0 < v < math.inf for v in expect)      # some example was forgotten
    kept = sel.rows(ctx, 0)
    outside = [expect[i] for i in range(24) if i not in kept.tolist()]
    assert min(expect[i] for i in kept.tolist()) >= max(outside)
    s = sel.stats()
    assert s["never_learned"] == sum(math.isinf(v) for v in expect)
    assert s["unforgettable"] == sum(v == 0 for v in expect)


@pytest.mark.parametrize("method", ["el2n", "grand", "forgetting"])
def test_static_scoring_leaves_the_trial_untouched_and_is_timed(method):
    from models import build_model
    scenario = make_scenario(n=30, num_tasks=2, shape=(1, 4, 4), setting="task")
    cfg = dict(cnn=False, hidden_units=16, hidden_layers=1, dropout=0.3, sparsify=True,
               percent_on_fc=0.25, percent_on_conv=1.0, k_inference_factor=1.5,
               boost_strength=1.0, boost_strength_factor=0.9, duty_cycle_period=100,
               weight_sparsity_fc=0.5, weight_sparsity_conv=1.0, seed=0, dale=True,
               exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="auto",
               sparse_init="torch")
    model = build_model(cfg, scenario)
    model.train()
    ctx = make_ctx(scenario, model, task=1, epochs=2)
    sel = make_selection(method, scenario, data_prune_rate=0.5, data_prune_score_epochs=2,
                         data_prune_score_repeats=2)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    sel.on_task_start(ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if torch.is_tensor(before[k]))
    assert model.training
    assert len(sel.rows(ctx, 0)) == 15
    s = sel.stats()
    assert s["score_s"] > 0
    # deterministic: the same seed gives the same scores
    again = make_selection(method, scenario, data_prune_rate=0.5, data_prune_score_epochs=2,
                           data_prune_score_repeats=2)
    again.on_task_start(ctx)
    assert torch.equal(again.score, sel.score)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, extra", [
    ("uniform", dict(data_prune_rescale=True)),
    ("epsilon_greedy", dict(data_prune_rescale=True, data_prune_epsilon=0.5)),
    ("ucb", dict(data_prune_every=2)),
    ("forgetting", dict(data_prune_score_epochs=2)),
])
def test_resume_at_an_epoch_boundary_equals_the_uninterrupted_run(method, extra, tmp_path):
    scenario = make_scenario(n=40, num_tasks=2)
    kw = dict(data_prune_rate=0.5, data_prune_start=1, **extra)

    def fresh():
        model = Toy(seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        return model, opt, make_selection(method, scenario, **kw)

    def run(stop=None):
        model, opt, sel = fresh()
        log, stats = [], []
        for task in range(2):
            ctx = make_ctx(scenario, model, task=task, epochs=5)
            sel.on_task_start(ctx)
            if stop is not None and task == stop[0]:
                train_epochs(sel, ctx, model, opt, range(stop[1]), log)
                path = tmp_path / "ckpt.pt"
                torch.save({"sel": sel.state_dict(), "model": model.state_dict(),
                            "opt": opt.state_dict()}, path)
                model, opt, sel = fresh()          # a new process
                state = torch.load(path, weights_only=False)
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
                sel.load_state_dict(state["sel"])
                ctx = make_ctx(scenario, model, task=task, epochs=5)
                sel.on_task_start(ctx)             # the runner restarting the task: a resume
                train_epochs(sel, ctx, model, opt, range(stop[1], 5), log)
            else:
                train_epochs(sel, ctx, model, opt, range(5), log)
            stats.append({k: v for k, v in sel.stats().items() if not k.endswith("_s")})
        return log, stats, model.lin.weight.detach().clone()

    log_a, stats_a, w_a = run()
    log_b, stats_b, w_b = run(stop=(1, 3))
    assert log_a == log_b
    assert stats_a == stats_b
    assert torch.equal(w_a, w_b)
    assert any(r[2] is not None and len(r[2]) == 20 for r in log_a)


def test_state_dict_before_any_task_round_trips():
    sel = make_selection("ucb")
    other = make_selection("ucb")
    other.load_state_dict(sel.state_dict())
    assert other.stats() == {} and other.state_dict() == {"task": None}
