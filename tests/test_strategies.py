"""Continual-learning strategies, unit by unit: the registry and its combinations, the specs,
EWC and online EWC penalties against hand computations, the per-example Fisher against a loop
over examples, SI's path integral against its closed form on a quadratic, LwF against the
distillation formula in every setting, and the replay buffers' sampling laws."""
import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

from models import CNN, MLP, NetSpec
from sparse_nte.seams import OTHER_ROW, Batch, BuildEnv, Objective, TaskContext
from sparse_nte.strategies import (KEY_DEFAULTS, STRATEGIES, STRATEGY_KEYS, build_strategies,
                                   check_combination, keys_used, parse_strategies)
from sparse_nte.strategies.buffers import ClassBalancedBuffer, ReservoirBuffer
from sparse_nte.strategies.ewc import EWC, EWCSpec
from sparse_nte.strategies.fisher import diagonal_fisher, empirical_labels, sampled_labels
from sparse_nte.strategies.lwf import LwF, LwFSpec
from sparse_nte.strategies.online_ewc import OnlineEWC, OnlineEWCSpec
from sparse_nte.strategies.replay import Replay, ReplaySpec
from sparse_nte.strategies.si import SI, SISpec

FAST = settings(max_examples=30, deadline=None)


def net_spec(**overrides) -> NetSpec:
    cfg = dict(cnn=False, hidden_units=16, hidden_layers=2, dropout=0.0, sparsify=False,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.5,
               boost_strength=1.0, boost_strength_factor=0.9, duty_cycle_period=1000,
               weight_sparsity_fc=1.0, weight_sparsity_conv=1.0, seed=0, dale=False,
               exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="auto",
               sparse_init="torch")
    cfg.update(overrides)
    return NetSpec(**cfg)


@dataclass(frozen=True)
class FakeScenario:
    """The scenario attributes the strategies read."""
    setting: str = "task"
    num_tasks: int = 3
    head_size: int = 4

    @property
    def num_heads(self) -> int:
        return self.num_tasks if self.setting == "task" else 1

    def head_of(self, task: int) -> int:
        return task if self.setting == "task" else 0

    def seen_outputs(self, task: int) -> torch.Tensor:
        if self.setting == "class":
            return torch.arange((task + 1) * (self.head_size // self.num_tasks))
        return torch.arange(self.head_size)


def make_net(sc: FakeScenario, cnn: bool = False, shape=(1, 12, 12), **overrides) -> nn.Module:
    cls = CNN if cnn else MLP
    return cls(net_spec(cnn=cnn, **overrides), shape, num_heads=sc.num_heads,
               head_size=sc.head_size, head_of_task=tuple(sc.head_of(k) for k in range(sc.num_tasks)))


def ctx_for(model, task, scenario=None, seed=0) -> TaskContext:
    return TaskContext(task=task, num_tasks=3, scenario=scenario, model=model, device="cpu",
                       seed=seed, steps=0, epochs=1, batch_size=8)


# ---------------------------------------------------------------------------------------------
# registry, combinations, specs
# ---------------------------------------------------------------------------------------------
def test_registry_names_and_none_is_not_a_strategy():
    assert set(STRATEGIES) == {"ewc", "online_ewc", "si", "lwf", "replay"}
    assert parse_strategies("none") == ()
    assert parse_strategies(" replay ,ewc") == ("replay", "ewc")


@pytest.mark.parametrize("names", [["replay", "ewc"], ["replay", "si"], ["replay", "lwf"],
                                   ["lwf", "ewc"], ["lwf", "si"], ["replay", "lwf", "online_ewc"],
                                   ["none"], ["si"]])
def test_meaningful_combinations_are_allowed(names):
    assert check_combination(names) is None


@pytest.mark.parametrize("names, words", [
    (["ewc", "online_ewc"], "same penalty"),
    (["si", "ewc"], "SI's path integral"),
    (["online_ewc", "replay", "si"], "SI's path integral"),
    (["ewc", "ewc"], "more than once"),
    (["none", "ewc"], "no strategy"),
    (["ewc", "mas"], "valid: none, ewc"),
    ([], "use 'none'"),
])
def test_refused_combinations_say_why_on_one_line(names, words):
    reason = check_combination(names)
    assert reason is not None and words in reason and "\n" not in reason
    if names:
        with pytest.raises(ValueError, match="strategy = "):
            parse_strategies(",".join(names))


def config_ns(**overrides):
    values = dict(KEY_DEFAULTS)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_builders_read_config_attributes_and_build_in_order():
    sc = FakeScenario(setting="domain")
    env = BuildEnv(model=make_net(sc), scenario=sc, steps_per_task=(1, 1, 1))
    built = build_strategies(config_ns(strategy="replay, lwf, ewc", ewc_lambda=5, replay_batch=3), env)
    assert [type(s) for s in built] == [Replay, LwF, EWC]
    assert built[2].spec.lam == 5.0 and isinstance(built[2].spec.lam, float)
    assert built[0].spec.batch == 3
    with pytest.raises(ValueError, match="no attribute.*si_xi"):
        STRATEGIES["si"](SimpleNamespace(si_c=1.0), env)


@pytest.mark.parametrize("make, words", [
    (lambda: EWCSpec(lam=-1.0), "ewc_lambda = -1.0 is out of range"),
    (lambda: EWCSpec(fisher="exact"), "choose one of true, empirical"),
    (lambda: EWCSpec(fisher_examples=2.5), "must be an integer"),
    (lambda: OnlineEWCSpec(gamma=0.0), r"ewc_gamma = 0.0 is out of range.*\(0, 1\]"),
    (lambda: SISpec(xi=0.0), "si_xi"),
    (lambda: SISpec(c=True), "must be a number"),
    (lambda: LwFSpec(temperature=0), "lwf_temperature"),
    (lambda: ReplaySpec(buffer=0), "replay_buffer"),
    (lambda: ReplaySpec(selection="herding"), "reservoir, class_balanced"),
])
def test_specs_reject_invalid_values_clearly(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_key_table_defaults_are_valid_and_keys_used_per_strategy():
    for k in STRATEGY_KEYS:
        assert k.used_by and k.doc
    EWCSpec(), OnlineEWCSpec(), SISpec(), LwFSpec(), ReplaySpec()
    assert keys_used(["ewc"]) == ("ewc_lambda", "ewc_fisher", "ewc_fisher_examples")
    assert "ewc_gamma" in keys_used(["online_ewc"])
    assert set(keys_used(["replay"])) == {"replay_buffer", "replay_batch", "replay_selection"}


# ---------------------------------------------------------------------------------------------
# EWC and online EWC penalties
# ---------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2).double()
        self.b = nn.Parameter(torch.randn(4, dtype=torch.float64))

    def forward(self, x, t=None):
        return self.a(x) + self.b[:2].sum()


def random_quadratics(model, k, gen):
    out = []
    for _ in range(k):
        fisher = {n: torch.rand(p.shape, dtype=torch.float64, generator=gen) ** 2 for n, p in model.named_parameters()}
        fisher["b"][1] = 0.0  # a parameter no task found important
        anchor = {n: torch.randn(p.shape, dtype=torch.float64, generator=gen) for n, p in model.named_parameters()}
        out.append((fisher, anchor))
    return out


@FAST
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5), lam=st.floats(0.01, 1e4))
def test_ewc_penalty_and_gradient_equal_the_sum_of_per_task_quadratics(seed, k, lam):
    gen = torch.Generator().manual_seed(seed)
    model = Tiny()
    ewc = EWC(EWCSpec(lam=lam), BuildEnv(model=model, scenario=None, steps_per_task=()))
    assert ewc.penalty() is None
    tasks = random_quadratics(model, k, gen)
    for fisher, anchor in tasks:
        ewc.consolidate(fisher, anchor)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64, generator=gen))
    pen = ewc.penalty()
    grads = torch.autograd.grad(pen, list(model.parameters()))
    expected = 0.0
    for fisher, anchor in tasks:
        for n, p in model.named_parameters():
            expected += float((fisher[n] * (p.detach() - anchor[n]) ** 2).sum())
    assert float(pen.detach()) == pytest.approx(lam / 2 * expected, rel=1e-9)
    for (n, p), g in zip(model.named_parameters(), grads):
        hand = sum(lam * fisher[n] * (p.detach() - anchor[n]) for fisher, anchor in tasks)
        torch.testing.assert_close(g, hand, rtol=1e-9, atol=1e-9)
    assert ewc.memory_bytes() == 2 * sum(p.numel() * 8 for p in model.parameters())


def test_online_ewc_decays_the_running_fisher_and_anchors_at_the_latest_task():
    gen = torch.Generator().manual_seed(3)
    model = Tiny()
    lam, gamma = 7.0, 0.6
    on = OnlineEWC(OnlineEWCSpec(lam=lam, gamma=gamma), BuildEnv(model=model, scenario=None, steps_per_task=()))
    (f0, a0), (f1, a1) = random_quadratics(model, 2, gen)
    on.consolidate(f0, a0)
    on.consolidate(f1, a1)
    pen = on.penalty()
    expected = sum(float((gamma * (gamma * f0[n] + f1[n]) * (p.detach() - a1[n]) ** 2).sum())
                   for n, p in model.named_parameters())
    assert float(pen.detach()) == pytest.approx(lam / 2 * expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# the Fisher: per-example path against a loop over examples
# ---------------------------------------------------------------------------------------------
def loop_fisher(model, x, y, t, labels):
    """sum_n grad(CE(f(x_n), l_n))^2 / N with one backward pass per example (eval mode)."""
    model.eval()
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad()
        logits = model(x[i:i + 1], t[i:i + 1])
        F.cross_entropy(logits, labels(logits, y[i:i + 1])).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                out[n] += p.grad ** 2
    model.zero_grad()
    model.train()
    return {n: v / len(y) for n, v in out.items()}


def shifted_labels(logits, y):
    return (y + 1) % logits.shape[1]


class Extra(nn.Module):
    """A linear layer on (B, L, in) inputs (several locations per example) and a free scale
    parameter (per-example gradients through torch.func)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.tensor([1.5, -0.5]))

    def forward(self, x, t=None):
        h = self.lin(x.view(x.shape[0], 4, 5)).relu().mean(dim=1)     # (B, 3)
        return torch.cat([h * self.scale[0], h[:, :1] * self.scale[1]], dim=1)


MODELS = {
    "mlp": lambda sc: make_net(sc),
    "mlp_kwta_sparse_dale": lambda sc: make_net(sc, sparsify=True, weight_sparsity_fc=0.4, dale=True,
                                                sparse_exec="on", percent_on_fc=0.3),
    "cnn_kwta_sparse": lambda sc: make_net(sc, cnn=True, hidden_layers=1, sparsify=True,
                                           weight_sparsity_conv=0.5, weight_sparsity_fc=0.5),
    "extra": lambda sc: Extra(),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("labels", [empirical_labels, shifted_labels])
def test_fisher_from_per_example_gradients_equals_a_loop_over_examples(kind, labels):
    sc = FakeScenario(setting="task", num_tasks=3, head_size=3)
    model = MODELS[kind](sc).double()
    g = torch.Generator().manual_seed(1)
    n = 11
    x = torch.randn(n, 1, 12, 12, dtype=torch.float64, generator=g) if kind != "extra" else \
        torch.randn(n, 20, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.randint(0, 3, (n,), generator=g)        # rows of several tasks: split by head
    with torch.no_grad():   # a KWinners2d learns its map size (n = C*H*W) from its first input
        model.eval()(x[:1], t[:1])
    model.train()
    state = copy.deepcopy(model.state_dict())
    fisher, count = diagonal_fisher(model, [(x[:6], y[:6], t[:6]), (x[6:], y[6:], t[6:])], labels,
                                    chunk_elements=500)
    assert count == n
    for k, v in model.state_dict().items():                       # no side effects
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k], k
    assert model.training
    ref = loop_fisher(model, x, y, t, labels)
    assert set(fisher) == set(ref)
    for name in ref:
        torch.testing.assert_close(fisher[name], ref[name], rtol=1e-10, atol=1e-14, msg=name)
    assert sum(float(v.sum()) for v in fisher.values()) > 0


def test_fisher_is_zero_exactly_at_masked_weights():
    sc = FakeScenario(setting="domain", num_tasks=2, head_size=3)
    model = make_net(sc, weight_sparsity_fc=0.3, dale=True)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 3, (16,))
    fisher, _ = diagonal_fisher(model, [(x, y, torch.zeros(16, dtype=torch.long))], empirical_labels)
    layer = model.blocks[1].layer
    f = fisher["blocks.1.layer.module.weight"]
    assert bool((f[layer.zero_mask] == 0).all())
    assert bool((f[~layer.zero_mask] > 0).any())


def test_true_fisher_labels_are_drawn_from_the_predictive_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(40_000, 1)
    draw = sampled_labels(torch.Generator().manual_seed(0))
    counts = torch.bincount(draw(logits, torch.zeros(40_000, dtype=torch.long)), minlength=4).numpy()
    p = torch.softmax(logits[0].double(), 0).numpy()
    chi2 = float(((counts - 40_000 * p) ** 2 / (40_000 * p)).sum())
    assert sstats.chi2.sf(chi2, df=3) > 1e-3


def test_fisher_refuses_a_diverged_model():
    model = Tiny()
    with torch.no_grad():
        model.a.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        diagonal_fisher(model, [(torch.randn(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
                                 torch.zeros(3, dtype=torch.long))], empirical_labels)


# ---------------------------------------------------------------------------------------------
# SI on a quadratic: the path integral in closed form
# ---------------------------------------------------------------------------------------------
class Quadratic(nn.Module):
    def __init__(self, theta0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta0, dtype=torch.float64))


def test_si_importance_equals_the_closed_form_path_integral_of_gradient_descent():
    """L = 1/2 sum_i h_i (theta_i - a_i)^2 trained by SGD (step eta, S steps): g_s = h (1 - eta h)^s
    (theta0 - a), so omega = eta h^2 (theta0 - a)^2 (1 - q^(2S)) / (1 - q^2) with q = 1 - eta h,
    and Delta = (theta0 - a)(q^S - 1)."""
    h = np.array([0.5, 2.0, 1.0, 0.0])
    a = np.array([1.0, -1.0, 0.5, 3.0])
    theta0 = np.array([0.0, 1.0, -2.0, 1.0])
    eta, steps, xi, c = 0.1, 25, 0.1, 0.7
    model = Quadratic(theta0)
    si = SI(SISpec(c=c, xi=xi), BuildEnv(model=model, scenario=None, steps_per_task=()))
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    hh, aa = torch.tensor(h), torch.tensor(a)
    si.on_task_start(ctx_for(model, 0))
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (hh * (model.theta - aa) ** 2).sum()).backward()
        opt.step()
        si.after_step(None, torch.zeros(1))
    si.on_task_end(ctx_for(model, 0))
    q = 1 - eta * h
    moving = h > 0                                    # h = 0: no gradient, omega = 0
    omega = np.zeros(4)
    omega[moving] = (eta * h ** 2 * (theta0 - a) ** 2 * (1 - q ** (2 * steps)))[moving] / (1 - q ** 2)[moving]
    delta = (theta0 - a) * (q ** steps - 1)
    np.testing.assert_allclose(si.Omega["theta"].numpy(), omega / (delta ** 2 + xi), rtol=1e-12)
    np.testing.assert_allclose(si.anchor["theta"].numpy(), theta0 + delta, rtol=1e-12)
    assert si.Omega["theta"][3] == 0 and si.stats()["importance_all_zero"] is False
    # in the limit of small steps omega is the loss decrease: here within the discretisation error
    assert float(si.stats()["path_integral_sum"]) == pytest.approx(
        0.5 * float((h * ((theta0 - a) ** 2 - (theta0 + delta - a) ** 2)).sum()), rel=0.1)
    # penalty: c sum Omega (theta - theta*)^2
    with torch.no_grad():
        model.theta.add_(1.0)
    assert float(si.penalty().detach()) == pytest.approx(c * float(si.Omega["theta"].sum()), rel=1e-12)


def test_si_path_integral_leaves_out_its_own_penalty():
    """Second task: the optimizer follows L2 + SI penalty, omega integrates only -grad L2 . dtheta
    (an independent simulation of the same iteration in numpy)."""
    rng = np.random.default_rng(0)
    h1, a1, h2, a2 = rng.uniform(0.2, 2, 5), rng.normal(size=5), rng.uniform(0.2, 2, 5), rng.normal(size=5)
    theta0 = rng.normal(size=5)
    eta, steps, xi, c = 0.05, 30, 0.1, 0.4
    model = Quadratic(theta0)
    si = SI(SISpec(c=c, xi=xi), BuildEnv(model=model, scenario=None, steps_per_task=()))
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    for task, (h, a) in enumerate([(h1, a1), (h2, a2)]):
        si.on_task_start(ctx_for(model, task))
        for _ in range(steps):
            opt.zero_grad()
            loss = 0.5 * (torch.tensor(h) * (model.theta - torch.tensor(a)) ** 2).sum()
            pen = si.penalty()
            (loss if pen is None else loss + pen).backward()
            opt.step()
            si.after_step(None, torch.zeros(1))
        si.on_task_end(ctx_for(model, task))
        if task == 0:
            Omega1, star1 = si.Omega["theta"].numpy().copy(), si.anchor["theta"].numpy().copy()
    theta = theta0.copy()
    for _ in range(steps):
        theta = theta - eta * h1 * (theta - a1)
    theta_start, omega = theta.copy(), np.zeros(5)
    for _ in range(steps):
        g_task = h2 * (theta - a2)
        new = theta - eta * (g_task + 2 * c * Omega1 * (theta - star1))
        omega += -g_task * (new - theta)
        theta = new
    expected = Omega1 + omega / ((theta - theta_start) ** 2 + xi)
    np.testing.assert_allclose(si.Omega["theta"].numpy(), expected, rtol=1e-10)


def test_si_requires_gradients_when_parameters_move():
    model = Quadratic([0.0, 0.0])
    si = SI(SISpec(), BuildEnv(model=model, scenario=None, steps_per_task=()))
    si.on_task_start(ctx_for(model, 0))
    with torch.no_grad():
        model.theta.add_(1.0)
    with pytest.raises(RuntimeError, match="no gradient"):
        si.after_step(None, torch.zeros(1))
    assert SI.needs_grad and SI.uses_loss


# ---------------------------------------------------------------------------------------------
# LwF: the distillation formula in every setting
# ---------------------------------------------------------------------------------------------
def kd(new, old, T):
    """T^2 sum_c p_old,c log(p_old,c / p_new,c), written out in float64."""
    new, old = new.double(), old.double()
    p_old = torch.exp(old / T) / torch.exp(old / T).sum(1, keepdim=True)
    p_new = torch.exp(new / T) / torch.exp(new / T).sum(1, keepdim=True)
    return T ** 2 * (p_old * torch.log(p_old / p_new)).sum(1)


def trunk(model, x):
    h = x.flatten(1)
    for block in model.blocks:
        h = block(h)
    return h


@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_lwf_loss_is_the_distillation_formula(setting):
    sc = FakeScenario(setting=setting, num_tasks=3, head_size=6 if setting == "class" else 2)
    model = make_net(sc, hidden_layers=1)
    alpha, T = 0.7, 2.5
    lwf = LwF(LwFSpec(alpha=alpha, temperature=T), BuildEnv(model=model, scenario=sc, steps_per_task=()))
    assert lwf.example_loss(None, None) is None                    # nothing learned yet
    for task in range(2):                                           # learn tasks 0 and 1
        lwf.on_task_start(ctx_for(model, task))
        lwf.on_task_end(ctx_for(model, task))
    old = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    lwf.on_task_start(ctx_for(model, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1, 12, 12, generator=g)
    t = torch.tensor([2, 2, 0, 2, 1, 2, 2, 0, 2])                   # current task + replayed rows
    batch = Batch(x, torch.zeros(9, dtype=torch.long), t, torch.arange(9))
    objective = Objective(model, [lwf])
    logits = objective.forward(batch)
    term = lwf.example_loss(batch, logits)
    if setting == "task":   # heads of tasks 0 and 1 on every row, averaged
        h_new, h_old = trunk(model, x), trunk(old, x)
        expected = (kd(model.heads[0](h_new), old.heads[0](h_old), T)
                    + kd(model.heads[1](h_new), old.heads[1](h_old), T)) / 2
    elif setting == "domain":
        expected = kd(model(x, t), old(x, t), T)
    else:                   # the 4 outputs of the classes of tasks 0 and 1
        expected = kd(model(x, t)[:, :4], old(x, t)[:, :4], T)
    torch.testing.assert_close(term.double(), alpha * expected, rtol=1e-5, atol=1e-7)
    term.sum().backward()   # the term trains the model, not the frozen copy
    assert model.blocks[0].layer.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lwf.prev.parameters())
    lwf.close()


# ---------------------------------------------------------------------------------------------
# replay buffers
# ---------------------------------------------------------------------------------------------
def offer(buffer, labels, tasks, batch, gen):
    """Offer examples whose x is their stream position, in batches."""
    n = len(labels)
    for s in range(0, n, batch):
        idx = torch.arange(s, min(n, s + batch))
        buffer.add(idx.double().unsqueeze(1), torch.as_tensor(labels)[idx], torch.as_tensor(tasks)[idx], gen)


def test_reservoir_keeps_every_example_with_equal_probability():
    n, m, repeats = 30, 10, 1500
    counts = np.zeros(n)
    gen = torch.Generator().manual_seed(123)
    for _ in range(repeats):
        buf = ReservoirBuffer(m)
        offer(buf, [0] * n, [0] * n, 11, gen)
        kept = buf.x[:, 0].long().numpy()
        assert len(set(kept.tolist())) == m
        counts[kept] += 1
    expected = repeats * m / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert sstats.chi2.sf(chi2, df=n - 1) > 1e-3
    assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected


@FAST
@given(seed=st.integers(0, 10_000), m=st.integers(1, 12), n=st.integers(0, 60), batch=st.integers(1, 9))
def test_reservoir_in_batches_is_algorithm_r_one_example_at_a_time(seed, m, n, batch):
    buf = ReservoirBuffer(m)
    offer(buf, list(range(n)), [0] * n, batch, torch.Generator().manual_seed(seed))
    # algorithm R with the same uniform draws, one example at a time
    draws, ref = [], []
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, batch):
        draws += torch.rand(min(batch, n - s), dtype=torch.float64, generator=g).tolist()
    for i in range(n):
        if i < m:
            ref.append(i)
        else:
            j = math.floor(draws[i] * (i + 1))
            if j < m:
                ref[j] = i
    assert buf.size == min(n, m) and buf.seen == n
    assert (buf.x[: buf.size, 0].long().tolist() if n else []) == ref
    if n:                                                       # labels travel with their rows
        assert torch.equal(buf.y[: buf.size], buf.x[: buf.size, 0].long())


@pytest.mark.parametrize("m", [12, 13])
def test_class_balanced_buffer_gives_every_class_an_equal_share(m):
    gen = torch.Generator().manual_seed(0)
    buf = ClassBalancedBuffer(m)
    # task 0: labels 0, 1 (30 each), then task 1: labels 0, 1 again (new classes), then 2
    labels = [0, 1] * 30 + [0, 1] * 30 + [2] * 40
    tasks = [0] * 60 + [1] * 60 + [1] * 40
    offer(buf, labels, tasks, 5, gen)
    sizes = buf.class_sizes()
    assert set(sizes) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)}
    assert sum(sizes.values()) == m == buf.size
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert sorted(sizes.values()) == sorted([m // 5 + (i < m % 5) for i in range(5)])
    stored = {(int(t), int(y)) for t, y in zip(buf.t[:m], buf.y[:m])}
    assert stored == set(sizes)
    for key, cid in buf.classes.items():   # the slots of a class hold that class's rows
        for slot in buf.members[cid]:
            assert (int(buf.t[slot]), int(buf.y[slot])) == key


@FAST
@given(seed=st.integers(0, 10_000), m=st.integers(2, 20),
       stream=st.lists(st.integers(0, 4), min_size=1, max_size=120))
def test_class_balanced_buffer_balance_holds_for_any_stream(seed, m, stream):
    buf = ClassBalancedBuffer(m)
    offer(buf, stream, [0] * len(stream), 4, torch.Generator().manual_seed(seed))
    sizes = buf.class_sizes()
    seen = {c: stream.count(c) for c in set(stream)}
    assert buf.size == min(m, len(stream))
    if len(stream) >= m:
        share = m // len(seen)
        for (_, c), size in sizes.items():   # every class has its share, or all its examples
            assert size >= min(share, seen[c])
    assert all(size <= seen[c] for (_, c), size in sizes.items())


def test_replay_appends_stored_rows_and_never_replays_the_batch_itself():
    sc = FakeScenario(setting="task", num_tasks=3)
    replay = Replay(ReplaySpec(buffer=6, batch=4), BuildEnv(model=None, scenario=sc, steps_per_task=()))
    with pytest.raises(RuntimeError, match="on_task_start"):
        replay.prepare(Batch(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long),
                             torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
    replay.on_task_start(ctx_for(None, 0))
    first = Batch(torch.arange(3.0).unsqueeze(1), torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.long),
                  torch.arange(3))
    assert replay.prepare(first) is first                          # empty buffer: nothing to add
    replay.after_step(first, torch.zeros(3))
    replay.on_task_start(ctx_for(None, 1))
    second = Batch(torch.tensor([[10.0], [11.0]]), torch.tensor([1, 1]), torch.ones(2, dtype=torch.long),
                   torch.tensor([5, 6]))
    out = replay.prepare(second)
    assert len(out) == 2 + 3 and torch.equal(out.x[:2], second.x)
    assert out.index[2:].tolist() == [OTHER_ROW] * 3 and out.t[2:].tolist() == [0, 0, 0]
    assert sorted(out.x[2:, 0].tolist()) == [0.0, 1.0, 2.0]
    assert torch.equal(out.y[2:], torch.tensor([0, 1, 0])[out.x[2:, 0].long()])
    replay.after_step(out, torch.zeros(5))                        # only the batch's own rows are stored
    assert replay.buffer.seen == 5 and replay.buffer.size == 5
    replay.on_task_end(ctx_for(None, 1))
    s = replay.stats()
    assert s["buffer_per_task"] == [3, 2, 0] and s["replayed_rows"] == 3
    assert s["memory_bytes"] == 6 * 4 + 6 * 8 * 2
