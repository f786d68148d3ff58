"""A parameter penalty in the NTE step (``NTE.step(closure, penalty)``): one more observation.

The oracle is a float64 transcription written from the equations, with torch.func gradients::

    l_i <- l_i + eta * [ sum_b log(1 - beta s_i g_{b,i}) + log(1 - beta s_i g_R,i) ]
    l_i <- min(l_i + log Z_t - logsumexp_j l_j, log max_delta),   w_i = theta0_i + s_i exp(l_i)
    unmanaged: theta <- theta - lr * (mean_b g_b + g_R)

with g_R = dR/dtheta of an EWC-style penalty R = (lam/2) sum F (theta - theta*)^2, and Z_t the
total Z minus the mass of the tensors that take no part in the step.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, vmap

from sparse_nte.layers import SparseWeights
from sparse_nte.nte import LOG_MAGNITUDE, NTE, PRUNE_SCORE, SIGN, THETA0

DT = torch.float64


def mlp(sparsity: float, dale: bool, seed: int) -> nn.Sequential:
    """6-9-3 ReLU MLP in float64; the hidden layer is SparseWeights (mask, Dale signs)."""
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Linear(6, 9).to(DT), nn.Linear(9, 3).to(DT)
    for lin in (first, second):
        with torch.no_grad():
            lin.weight.uniform_(-0.6, 0.6, generator=g)
            lin.bias.uniform_(-0.3, 0.3, generator=g)
    hidden = SparseWeights(first, sparsity=sparsity, generator=g)
    if dale:
        sign = torch.where(torch.rand(6, generator=g) < 0.6, 1.0, -1.0).to(DT)
        with torch.no_grad():
            first.weight.abs_().mul_(sign)
        hidden.set_presynaptic_sign(sign)
    return nn.Sequential(hidden, nn.ReLU(), second)


def names(model):
    return {"w0": model[0].module.weight, "b0": model[0].module.bias,
            "w1": model[2].weight, "b1": model[2].bias}


def forward(p, x):
    return F.linear(torch.relu(F.linear(x, p["w0"], p["b0"])), p["w1"], p["b1"])


class EWC:
    """R = (lam / 2) sum_k F_k (theta_k - theta*_k)^2 over the given parameters."""

    def __init__(self, params, lam, seed):
        g = torch.Generator().manual_seed(seed)
        self.params = params
        self.lam = lam
        self.fisher = {k: torch.rand(p.shape, generator=g, dtype=p.dtype)
                       for k, p in params.items()}
        self.star = {k: p.detach() + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
                     for k, p in params.items()}

    def value(self, p):
        return 0.5 * self.lam * sum((self.fisher[k] * (p[k] - self.star[k]) ** 2).sum() for k in p)

    def __call__(self):
        return self.value(self.params)

    def grads(self):
        return grad(self.value)({k: v.detach() for k, v in self.params.items()})


def example_grads(params, x, y, fwd=forward):
    def loss(p, xb, yb):
        return F.cross_entropy(fwd(p, xb[None]), yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()}, x, y)


def group_of(opt, p):
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def reference(opt, params, grads, g_r, untouched=()):
    """Expected parameters after one step, and the number of clamped likelihood terms."""
    floor = opt.min_likelihood
    new_l, out, clamped = {}, {}, 0
    for k, p in params.items():
        group = group_of(opt, p)
        gk = grads.get(k)
        if not group["managed"]:
            step = g_r.get(k, 0.0) + (gk.mean(0) if gk is not None else 0.0)
            out[k] = p.detach() - group["lr"] * step
            continue
        if k in untouched:
            continue
        s = opt.state[p][SIGN].to(DT)
        terms = []
        if gk is not None:
            terms.append(1.0 - group["beta"] * s * gk)
        if k in g_r:
            terms.append((1.0 - group["beta"] * s * g_r[k]).unsqueeze(0))
        like = torch.cat(terms)
        clamped += int((like < floor).sum())
        new_l[k] = opt.state[p][LOG_MAGNITUDE] + group["eta"] * like.clamp(min=floor).log().sum(0)
    mass = sum(float(opt.state[params[k]][LOG_MAGNITUDE].exp().sum()) for k in untouched)
    target = math.log(math.exp(opt.log_total) - mass)
    lse = torch.logsumexp(torch.cat([v.flatten() for v in new_l.values()]), 0)
    for k, l in new_l.items():
        p = params[k]
        l = (l + target - lse).clamp(max=math.log(group_of(opt, p)["max_delta"]))
        out[k] = opt.state[p][SIGN].to(DT) * l.exp() + opt.state[p].get(THETA0, 0.0)
    return out, clamped


def err(params, expected):
    return max(float((params[k].detach() - v).abs().max()) for k, v in expected.items())


def build(model, managed, fast, **kw):
    p = names(model)
    if managed == "all":
        groups = [{"params": list(p.values())}]
    else:
        groups = [{"params": [p["w0"], p["w1"]]},
                  {"params": [p["b0"], p["b1"]], "managed": False, "lr": 0.3}]
    return NTE(groups, model, beta=0.05, eta=0.8, max_delta=0.5, fast=fast, fast_tol=1e-14, **kw)


@pytest.mark.parametrize("fast", ["off", "on"])
@pytest.mark.parametrize("managed", ["all", "weights"])
@pytest.mark.parametrize("sparsity,dale,expand", [(0.0, False, "origin"), (0.4, False, "init"),
                                                   (0.3, True, "origin")])
def test_step_with_penalty_equals_transcription(sparsity, dale, expand, managed, fast):
    model = mlp(sparsity, dale, seed=1)
    opt = build(model, managed, fast, expand=expand, keep_grad=True, score_momentum=0.5)
    params = names(model)
    ewc = EWC(params, lam=2.0, seed=2)
    score = {k: torch.zeros_like(p) for k, p in params.items()}
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(10, 6, generator=gen, dtype=DT)
        y = torch.randint(0, 3, (10,), generator=gen)
        grads, g_r = example_grads(params, x, y), ewc.grads()
        expected, clamped = reference(opt, params, grads, g_r)
        assert clamped == 0
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), penalty=ewc)
        assert err(params, expected) < 1e-10
        for k, p in params.items():   # keep_grad: the gradient of (batch-mean loss + R)
            torch.testing.assert_close(p.grad, grads[k].mean(0) + g_r[k], rtol=0, atol=1e-12)
        for k in ("w0", "w1") if managed == "weights" else params:   # the pruning score
            p = params[k]
            score[k] = 0.5 * score[k] + 0.5 * (grads[k].mean(0) + g_r[k]) * opt.state[p][SIGN]
            torch.testing.assert_close(opt.state[p][PRUNE_SCORE], score[k], rtol=0, atol=1e-12)
    assert opt.guard_count == 0
    if sparsity:   # masked weights stay exact zeros
        assert bool((model[0].module.weight[model[0].zero_mask] == 0).all())


def test_penalty_factor_is_guarded_and_counted():
    """A penalty gradient with beta s g_R >= 1 would make the log undefined: the factor is
    clamped at min_likelihood and counted like an example's."""
    model = mlp(0.0, False, seed=4)
    opt = build(model, "all", "off", min_likelihood=1e-3)
    params = names(model)
    ewc = EWC(params, lam=200.0, seed=5)
    x = torch.randn(6, 6, dtype=DT)
    y = torch.randint(0, 3, (6,))
    expected, clamped = reference(opt, params, example_grads(params, x, y), ewc.grads())
    assert clamped > 0
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), penalty=ewc)
    assert opt.last_step["guard"] == clamped == opt.guard_count
    assert err(params, expected) < 1e-10
    assert all(bool(torch.isfinite(p).all()) for p in params.values())


class ThreeHeads(nn.Module):
    """A trunk and three heads; each example goes to its task's head only."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(5, 7).to(DT)
        self.heads = nn.ModuleList([nn.Linear(7, 3).to(DT) for _ in range(3)])

    def forward(self, x, t):
        h = torch.relu(self.trunk(x))
        out = h.new_zeros(len(t), 3)
        for i, head in enumerate(self.heads):
            sel = t == i
            if bool(sel.any()):
                out = out.index_put((sel,), head(h[sel]))
        return out


def test_penalty_on_a_head_that_did_not_run_brings_it_into_the_step():
    """Head 1 did not run but the penalty depends on it: it takes part with the penalty factor
    alone. Head 2 neither ran nor is penalised: it keeps its mass out of the renormalisation."""
    torch.manual_seed(6)
    model = ThreeHeads()
    opt = NTE(model.parameters(), model, beta=0.1, max_delta=10.0, fast="off")
    params = dict(model.named_parameters())
    ewc = EWC({k: v for k, v in params.items() if not k.startswith("heads.2")}, 3.0, seed=7)
    x = torch.randn(8, 5, dtype=DT)
    t = torch.zeros(8, dtype=torch.long)
    y = torch.randint(0, 3, (8,))

    def fwd(p, xb):
        return F.linear(torch.relu(F.linear(xb, p["trunk.weight"], p["trunk.bias"])),
                        p["heads.0.weight"], p["heads.0.bias"])

    ran = {k: v for k, v in params.items() if k.startswith(("trunk", "heads.0"))}
    grads = example_grads(ran, x, y, fwd)
    head2 = [p.detach().clone() for p in model.heads[2].parameters()]
    expected, _ = reference(opt, params, grads, ewc.grads(),
                            untouched=("heads.2.weight", "heads.2.bias"))
    opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"), penalty=ewc)
    assert err(params, expected) < 1e-10
    assert all(torch.equal(a, b) for a, b in zip(head2, model.heads[2].parameters()))
    assert "heads.1.weight" in opt.last_step["updated"]
    assert "heads.2.weight" not in opt.last_step["updated"]
    total = sum(float(opt.state[p][LOG_MAGNITUDE].exp().sum()) for p in opt.managed_params())
    assert total == pytest.approx(math.exp(opt.log_total), rel=1e-12)


def test_penalty_returning_none_is_no_penalty():
    steps = []
    for penalty in (None, lambda: None):
        model = mlp(0.3, True, seed=8)
        opt = build(model, "weights", "auto")
        x = torch.randn(9, 6, dtype=DT, generator=torch.Generator().manual_seed(9))
        y = torch.arange(9) % 3
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), penalty=penalty)
        steps.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*steps))


def test_bad_penalties_are_rejected_with_the_reason():
    model = mlp(0.0, False, seed=10)
    opt = build(model, "all", "off")
    x, y = torch.randn(5, 6, dtype=DT), torch.randint(0, 3, (5,))
    seen = {}

    def closure():
        seen["logits"] = model(x)
        return F.cross_entropy(seen["logits"], y, reduction="none")

    w = model[2].weight
    cases = [("not a callable", "callable"),
             (lambda: w.sum(1), "0-dim"),
             (lambda: w.detach().sum(), "does not depend"),
             (lambda: w.sum() * float("inf"), "not finite"),
             (lambda: seen["logits"].sum(), "depends on the batch")]
    for penalty, message in cases:
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=message):
            opt.step(closure, penalty=penalty)
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
