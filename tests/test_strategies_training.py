"""Strategies in a training loop (the learner's events, written out here): constraints of sparse
Dale k-WTA networks kept in every scenario setting, importances never silently zero, checkpoints
that resume to the uninterrupted run, and less forgetting than fine-tuning on a toy problem."""
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import build_scenario
from benchmarks.scenarios import Scenario, Task
from benchmarks.synthetic import write_synthetic_dataset
from models import MLP, NetSpec
from sparse_nte.dale import constrain_optimizer
from sparse_nte.seams import Batch, BuildEnv, Objective, TaskContext
from sparse_nte.stats import mask_violations, sign_violations, to_plain
from sparse_nte.strategies import KEY_DEFAULTS, ZeroImportanceWarning, build_strategies
from sparse_nte.strategies.ewc import EWC, EWCSpec

BATCH = 16


def net(scenario, **overrides):
    cfg = dict(cnn=False, hidden_units=32, hidden_layers=1, dropout=0.0, sparsify=False,
               percent_on_fc=0.3, percent_on_conv=0.5, k_inference_factor=1.5, boost_strength=1.0,
               boost_strength_factor=0.9, duty_cycle_period=100, weight_sparsity_fc=1.0,
               weight_sparsity_conv=1.0, seed=0, dale=False, exc_fraction=0.8, dale_input=False,
               dale_kwta="include", sparse_exec="auto", sparse_init="torch")
    cfg.update(overrides)
    return MLP(NetSpec(**cfg), scenario.input_shape, num_heads=scenario.num_heads,
               head_size=scenario.head_size,
               head_of_task=tuple(scenario.head_of(k) for k in range(scenario.num_tasks)))


def config(strategy, **overrides):
    values = dict(KEY_DEFAULTS, strategy=strategy, ewc_lambda=10.0, si_c=0.1, replay_buffer=40,
                  replay_batch=8)
    values.update(overrides)
    return SimpleNamespace(**values)


def context(scenario, model, task, epochs=1, batch_size=BATCH):
    return TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario, model=model,
                       device="cpu", seed=7, steps=0, epochs=epochs, batch_size=batch_size)


def train_task(model, opt, strategies, scenario, task, epochs=1, batch_size=BATCH):
    """What the learner does for one task: start, prepare/step/after_step per batch, end."""
    ctx = context(scenario, model, task, epochs, batch_size)
    for s in strategies:
        s.on_task_start(ctx)
    objective = Objective(model, strategies)
    gen = torch.Generator().manual_seed(1000 + task)
    for _ in range(epochs):
        for x, y, t, rows in scenario.batches(task, "train", batch_size=batch_size, shuffle=True,
                                              generator=gen, with_index=True):
            batch = Batch(x, y, t, rows)
            for s in strategies:
                batch = s.prepare(batch)
            opt.zero_grad(set_to_none=True)
            losses = objective.example_losses(objective.forward(batch), batch)
            loss = losses.mean()
            penalty = objective.penalty()
            if penalty is not None:
                loss = loss + penalty
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
            for s in strategies:
                s.after_step(batch, losses.detach())
    for s in strategies:
        s.on_task_end(ctx)


def accuracy(model, scenario, task):
    model.eval()
    right = total = 0
    with torch.inference_mode():
        for x, y, t in scenario.batches(task, "test", batch_size=500):
            right += int((model(x, t).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return right / total


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("strategies")
    write_synthetic_dataset("mnist", root, num_train=240, num_test=60, seed=0)
    return root


def scenario_for(data_root, setting):
    mode = "permutations" if setting == "domain" else "split"
    return build_scenario("mnist", mode=mode, num_tasks=2, setting=setting, seed=0,
                          data_root=data_root, download=False, progress=False)


STRATEGY_SETS = ["ewc", "online_ewc", "si", "lwf", "replay", "replay, si", "replay, lwf, ewc"]


@pytest.mark.parametrize("setting", ["task", "domain", "class"])
@pytest.mark.parametrize("names", STRATEGY_SETS)
def test_training_keeps_masks_and_dale_signs_and_reports_plain_stats(data_root, setting, names):
    sc = scenario_for(data_root, setting)
    model = net(sc, sparsify=True, weight_sparsity_fc=0.5, dale=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    constrain_optimizer(opt, model)
    strategies = build_strategies(config(names, replay_selection="class_balanced"
                                         if setting == "class" else "reservoir"),
                                  BuildEnv(model=model, scenario=sc, steps_per_task=(1, 1)))
    for task in range(2):
        train_task(model, opt, strategies, sc, task)
        assert sign_violations(model) == 0 and mask_violations(model) == 0
        for s in strategies:
            stats = s.stats()
            assert to_plain(stats) == stats and stats["memory_bytes"] > 0
            assert stats.get("importance_all_zero", False) is False
    masked = {f"{name}.module.weight": m.zero_mask for name, m in model.named_modules()
              if hasattr(m, "zero_mask")}
    for s in strategies:
        importance = getattr(s, "A", None) or getattr(s, "F", None) or getattr(s, "Omega", None)
        if importance is not None:
            for name, mask in masked.items():
                assert bool((importance[name][mask] == 0).all()), name
                assert bool(importance[name][~mask].any()), name
    for s in strategies:
        s.close()


def test_an_all_zero_fisher_is_reported_not_silent(data_root):
    sc = scenario_for(data_root, "domain")
    model = net(sc)
    with torch.no_grad():           # no bias, zero weights: every weight gradient is zero
        for m in (model.blocks[0].layer, model.heads[0]):
            m.weight.zero_()
            m.bias = None
    ewc = EWC(EWCSpec(), BuildEnv(model=model, scenario=sc, steps_per_task=(1, 1)))
    ewc.on_task_start(context(sc, model, 0))
    with pytest.warns(ZeroImportanceWarning, match="Fisher is zero for every parameter after task 0"):
        ewc.on_task_end(context(sc, model, 0))
    assert ewc.stats()["importance_all_zero"] is True


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_same(a, b, where="state"):
    """Equal nested states: same keys and types, tensors equal element for element."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("names, selection", [("ewc", "reservoir"), ("online_ewc", "reservoir"),
                                              ("si", "reservoir"), ("lwf", "reservoir"),
                                              ("replay", "reservoir"), ("replay", "class_balanced")])
@pytest.mark.parametrize("setting", ["task", "class"])
def test_checkpoint_after_a_task_resumes_to_the_uninterrupted_run(data_root, names, selection, setting):
    sc = scenario_for(data_root, setting)
    cfg = config(names, replay_selection=selection, ewc_fisher="true", ewc_fisher_examples=50)

    def fresh():
        model = net(sc, sparsify=True, weight_sparsity_fc=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        constrain_optimizer(opt, model)
        return model, opt, build_strategies(cfg, BuildEnv(model=model, scenario=sc, steps_per_task=(1, 1)))

    model, opt, strategies = fresh()
    train_task(model, opt, strategies, sc, 0)
    checkpoint = saved({"model": model.state_dict(), "opt": opt.state_dict(),
                        "strategies": [s.state_dict() for s in strategies]})
    train_task(model, opt, strategies, sc, 1)

    model2, opt2, strategies2 = fresh()
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    for s, state in zip(strategies2, checkpoint["strategies"]):
        s.load_state_dict(state)
    train_task(model2, opt2, strategies2, sc, 1)
    for (name, p), p2 in zip(model.state_dict().items(), model2.state_dict().values()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, p2), name
    for s, s2 in zip(strategies, strategies2):
        assert s.stats() == s2.stats()
        assert_same(s.state_dict(), s2.state_dict())


# ---------------------------------------------------------------------------------------------
# forgetting
# ---------------------------------------------------------------------------------------------
def rotated_rules(seed=0, n_train=1000, n_test=500):
    """Two domain-incremental tasks on the same inputs (64 random pixels) with orthogonal linear
    rules y = [w_k . x > 0]. Without the task id no single function solves both, so fine-tuning
    on task 1 takes task 0 to chance, and a method that keeps part of task 0 must trade task 1
    for it: a toy where forgetting is certain and its reduction is measurable. (The synthetic
    stand-in datasets are class templates plus noise; every method, fine-tuning included, keeps
    them all at 100%, so they cannot show forgetting.)"""
    rng = np.random.default_rng(seed)
    w0, w1 = rng.normal(size=64), rng.normal(size=64)
    w1 -= w0 * (w0 @ w1) / (w0 @ w0)
    tasks = []
    for k, w in enumerate((w0, w1)):
        def make(n):
            x = rng.integers(0, 256, size=(n, 64))
            y = ((x / 255 - 0.5) @ w > 0).astype(np.int64)
            return torch.from_numpy(x.astype(np.uint8).reshape(n, 1, 8, 8)), torch.from_numpy(y)
        (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
        tasks.append(Task(k, (0, 1), xtr, ytr, torch.full((n_train,), k), xte, yte))
    return Scenario("rotated_rules", "mnist", "domain", tuple(tasks), (1, 8, 8), 1, 2, (0.5,),
                    (0.3,), None, False)


def first_task_after_second(sc, names, **overrides):
    model = net(sc)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    strategies = (build_strategies(config(names, **overrides), BuildEnv(model=model, scenario=sc,
                                                                         steps_per_task=(1, 1)))
                  if names != "none" else [])
    train_task(model, opt, strategies, sc, 0, epochs=10, batch_size=32)
    learned = accuracy(model, sc, 0)
    train_task(model, opt, strategies, sc, 1, epochs=10, batch_size=32)
    return learned, accuracy(model, sc, 0), accuracy(model, sc, 1)


def test_strategies_reduce_forgetting_against_fine_tuning():
    sc = rotated_rules()
    learned, kept, new = first_task_after_second(sc, "none")
    assert learned > 0.9 and kept < 0.6 and new > 0.9          # fine-tuning forgets task 0
    for names, overrides in [("ewc", dict(ewc_lambda=100.0)), ("online_ewc", dict(ewc_lambda=100.0)),
                             ("si", dict(si_c=5.0)), ("lwf", {}),
                             ("replay", dict(replay_buffer=500, replay_batch=64))]:
        learned_s, kept_s, new_s = first_task_after_second(sc, names, **overrides)
        assert learned_s > 0.9, names
        assert kept_s > kept + 0.1, (names, kept_s, kept)
        assert new_s > 0.55, (names, new_s)                      # and still learns task 1
