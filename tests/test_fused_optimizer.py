"""fused_optimizer: torch's fused updates, equal to the default updates up to the last bit, and
SGD's fused update also when a parameter gets its first gradient after the others."""
import pytest
import torch
import torch.nn as nn

from sparse_nte.config import config_from_dict
from sparse_nte.rules.optimizers import FusedSGD, build_optimizer


def run(opt_of, steps=12, late=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(50, 7, generator=g, dtype=dtype))
    b = nn.Parameter(torch.randn(9, generator=g, dtype=dtype))   # first gradient at step `late`
    opt = opt_of([a, b])
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        a.grad = torch.randn(a.shape, generator=g, dtype=dtype)
        if step >= late:
            b.grad = torch.randn(b.shape, generator=g, dtype=dtype)
        opt.step()
    return a.detach(), b.detach()


@pytest.mark.parametrize("nesterov,wd", [(False, 0.0), (True, 1e-3)])
def test_fused_sgd_follows_sgd_when_a_parameter_starts_late(nesterov, wd):
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    ref = run(lambda p: torch.optim.SGD(p, **kw))
    fused = run(lambda p: FusedSGD(p, **kw))
    for x, y in zip(fused, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_config_key_builds_the_fused_update(name):
    model = nn.Linear(6, 3)
    extra = dict(momentum=0.9, nesterov=True) if name == "sgd" else {}
    opt = build_optimizer(config_from_dict(dict(optimizer=name, lr=0.01, weight_decay=1e-3,
                                                fused_optimizer=True, **extra)), model)
    assert opt.defaults["fused"] is True
    plain = build_optimizer(config_from_dict(dict(optimizer=name, lr=0.01, weight_decay=1e-3,
                                                  **extra)), nn.Linear(6, 3))
    assert not plain.defaults.get("fused")
    cls = type(plain)
    ref = run(lambda p: cls(p, **{k: v for k, v in plain.defaults.items()
                                  if k in ("lr", "momentum", "nesterov", "weight_decay")}),
              dtype=torch.float32)
    got = run(lambda p: type(opt)(p, **{k: v for k, v in opt.defaults.items()
                                        if k in ("lr", "momentum", "nesterov", "weight_decay")},
                                  **({} if name == "sgd" else {"fused": True})),
              dtype=torch.float32)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
