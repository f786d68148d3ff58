"""What a configuration is, in words, and the accuracy a guess would get.

Works on the plain config dict a result stores (keys missing from an older result take their
schema default, as :func:`sparse_nte.identity.identity` does).

Chance level of the test accuracy on a task after training task ``i`` (settings of van de Ven &
Tolias 2019, "Three scenarios for continual learning"), with ``C`` the dataset's classes and ``T``
the number of tasks:

- classes per task ``m = C`` for permuted tasks (every task holds every class), ``C / T`` for
  split tasks;
- task- and domain-incremental: the prediction is one of the ``m`` outputs of a head, so
  ``chance = 1 / m``;
- class-incremental: the prediction is the argmax over the classes seen so far
  (:func:`sparse_nte.runner.evaluate`), ``(i + 1) m`` of them, so ``chance(i) = 1 / ((i + 1) m)``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from sparse_nte.config import SCHEMA

__all__ = ["full_config", "classes_per_task", "chance_level", "describe", "subtitle",
           "overrides_text"]

_DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
_DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100"}


def full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every schema key present (missing keys take their default)."""
    out = {k: s.default for k, s in SCHEMA.items()}
    out.update(config)
    return out


def _num_classes(c: Mapping[str, Any]) -> int:
    n = int(c.get("num_classes") or 0)
    return n if n > 0 else _DATASET_CLASSES.get(str(c.get("dataset")), 10)


def _setting(c: Mapping[str, Any]) -> str:
    if c.get("scenario"):
        return str(c["scenario"])
    return "domain" if c.get("mnist_mode") == "permutations" else "task"


def classes_per_task(config: Mapping[str, Any]) -> int:
    """``m``: the dataset's classes for permuted tasks, ``classes / num_batch`` for split ones."""
    c = full_config(config)
    n = _num_classes(c)
    return n if c["mnist_mode"] == "permutations" else max(n // max(int(c["num_batch"]), 1), 1)


def chance_level(config: Mapping[str, Any], after_task: int = 0) -> float:
    """Accuracy of a uniform guess after training task ``after_task`` (see the module docstring)."""
    if after_task < 0:
        raise ValueError(f"after_task must be >= 0, got {after_task}")
    m = classes_per_task(config)
    seen = (after_task + 1) * m if _setting(full_config(config)) == "class" else m
    return 1.0 / seen


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe(config: Mapping[str, Any]) -> dict[str, str]:
    """``dataset``, ``scenario``, ``model``, ``rule`` and ``constraints`` of a configuration, each
    a short phrase (e.g. ``"MLP 1x4000, dropout 0.5"``, ``"SGD lr 0.1, Nesterov 0.9, wd 0.0001"``)."""
    c = full_config(config)
    perm = c["mnist_mode"] == "permutations"
    dataset = ("permuted " if perm else "split ") + _DATASET_NAMES.get(c["dataset"], str(c["dataset"]))
    subset = f", {c['train_subset']} examples/task" if c["train_subset"] else ""
    scenario = f"{c['num_batch']} tasks, {_setting(c)}-IL{', cumulative' if c['cumul'] else ''}{subset}"
    body = "CNN + " if c["cnn"] else ""
    widths = str(c.get("hidden_widths", "") or "")
    model = (f"{body}MLP {widths.replace(',', '-')}" if widths
             else f"{body}MLP {c['hidden_layers']}x{c['hidden_units']}")
    if c["dropout"]:
        model += f", dropout {_num(c['dropout'])}"
    opt = c["optimizer"]
    if opt == "nte":
        rule = f"NTE (beta {_num(c['nte_beta'])}, eta {_num(c['nte_eta'])}, around the {c['nte_expand']})"
    else:
        rule = f"{'Adam' if opt == 'adam' else opt.upper()} lr {_num(c['lr'])}"
        if opt == "sgd" and c["momentum"]:
            rule += f", {'Nesterov' if c['nesterov'] else 'momentum'} {_num(c['momentum'])}"
    if opt != "nte" and c["weight_decay"]:
        rule += f", wd {_num(c['weight_decay'])}"
    if c.get("learning_rule", "backprop") != "backprop":
        rule = f"{c['learning_rule']}; {rule}"
    if c["train_iters"] > 0:
        rule += f", batch {c['mb_size']}, {c['train_iters']} steps/task"
    else:
        rule += f", batch {c['mb_size']}, {c['train_ep']} ep"
    if c["strategy"] not in ("", "none"):
        rule += f", strategy {c['strategy']}"
    parts = []
    if c["sparsify"]:
        if widths:
            parts.append(f"k-WTA {_num(c['percent_on_fc'])} on")
        else:
            k = max(1, round(c["hidden_units"] * c["percent_on_fc"]))
            parts.append(f"k-WTA {k}/{c['hidden_units']}")
    if c["weight_sparsity_fc"] < 1:
        parts.append(f"fc density {_num(c['weight_sparsity_fc'])}")
    if c["dale"]:
        parts.append(f"Dale {_num(c['exc_fraction'])} exc")
    if c["plasticity"] != "none":
        if c["plasticity"] == "grow":
            parts.append(f"grow {_num(c['grow_start_density'])}->{_num(c['grow_end_density'])} "
                         f"(old lr x{_num(c['grow_old_lr'])})")
        else:
            parts.append(str(c["plasticity"]))
    return {"dataset": dataset, "scenario": scenario, "model": model, "rule": rule,
            "constraints": ", ".join(parts) or "none"}


def overrides_text(overrides: Optional[Mapping[str, Any]]) -> str:
    """``"num_batch=3, lr=0.1"`` or ``"none"``."""
    if not overrides:
        return "none"
    return ", ".join(f"{k}={_show(v)}" for k, v in overrides.items())


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _num(v)


def subtitle(config: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> str:
    """Two lines for a figure: dataset and scenario, model and rule; constraints and overrides."""
    d = describe(config)
    return (f"{d['dataset']} ({d['scenario']}) | {d['model']} | {d['rule']}\n"
            f"constraints: {d['constraints']} | overrides: {overrides_text(overrides)}")


def diverged_text(result: Mapping[str, Any]) -> str:
    """``"DIVERGED at task 0, epoch 1, step 37: the training loss is nan"`` for a diverged
    result, else ``""``."""
    if result.get("status", "done") != "diverged":
        return ""
    d = result.get("diverged") or {}
    if not d:
        return "DIVERGED"
    return f"DIVERGED at task {d.get('task')}, epoch {d.get('epoch')}, step {d.get('step')}: {d.get('reason')}"
