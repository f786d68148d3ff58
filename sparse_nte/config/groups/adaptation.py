"""Fast-adaptation keys: the probe that measures, after each task, how the trained network
adapts to the next task by fine-tuning and by the NTK-GP posterior (sparse_nte.ntk.
adaptation_probe; Maddox et al. 2021, "Fast adaptation with linearized neural networks").

The defaults are the probe's own (:class:`~sparse_nte.ntk.adaptation_probe.AdaptationSpec`), the
solver choices the GP's (:data:`sparse_nte.ntk.gp.METHODS`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.ntk.adaptation_probe import AdaptationSpec, parse_examples
from sparse_nte.ntk.gp import METHODS

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "fast adaptation (NTK-GP)"

_DEFAULT = {f.name: f.default for f in fields(AdaptationSpec)}


@dataclass(frozen=True)
class AdaptationKeys:
    record_adaptation: bool = key(
        _DEFAULT["record_adaptation"],
        doc="After every task but the last, learn the next task from k examples per class by "
            "fine-tuning a copy of the network and by the NTK-GP posterior with its kernel; store "
            "both adapters' accuracy on the new and the old tasks under stats per_task[t] "
            "adaptation (the trial's own training and accuracies are unchanged).")
    adapt_examples_per_class: str = key(
        _DEFAULT["adapt_examples_per_class"], kind="text",
        doc="The k values: comma-separated integers >= 1 (examples per class of the new task).")
    adapt_noise: float = key(
        _DEFAULT["adapt_noise"], interval="(0, inf)",
        doc="Observation noise variance sigma^2 of the NTK-GP (targets are one-hot).")
    adapt_method: str = key(
        _DEFAULT["adapt_method"], choices=METHODS,
        doc="NTK-GP solver: parameter (P x P Cholesky), kernel (the N C x N C kernel formed, "
            "Cholesky), function (conjugate gradients with NTK-vector products) or auto (parameter "
            "up to adapt_max_parameters live parameters, else kernel up to adapt_max_kernel rows, "
            "else function).")
    adapt_max_parameters: int = key(
        _DEFAULT["adapt_max_parameters"], interval="[1, inf)",
        doc="adapt_method = auto: largest number of live parameters solved in parameter space.")
    adapt_max_kernel: int = key(
        _DEFAULT["adapt_max_kernel"], interval="[1, inf)",
        doc="adapt_method = auto: largest kernel (N C rows: examples x outputs) that is formed "
            "(8 (N C)^2 bytes).")
    adapt_cg_max_iter: int = key(
        _DEFAULT["adapt_cg_max_iter"], interval="[1, inf)",
        doc="Iteration cap of the conjugate-gradient solve (function space); a warning gives the "
            "residual when it binds.")
    adapt_finetune_lr: float = key(
        _DEFAULT["adapt_finetune_lr"], interval="(0, inf)",
        doc="Learning rate of the plain-SGD fine-tuning of the copy.")
    adapt_finetune_steps: int = key(
        _DEFAULT["adapt_finetune_steps"], interval="[1, inf)",
        doc="Fine-tuning steps (mini-batches drawn without replacement, cycling over the k-shot set).")
    adapt_finetune_batch: int = key(
        _DEFAULT["adapt_finetune_batch"], interval="[1, inf)",
        doc="Fine-tuning mini-batch size (at most the k-shot set).")


def derive(r: "Resolver") -> None:
    """``adapt_examples_per_class`` in canonical form (``"10, 100, 1000"``: sorted, ``", "``
    joined), so that equal lists name the same configuration."""
    v = r.values
    try:
        v["adapt_examples_per_class"] = ", ".join(
            str(k) for k in parse_examples(v["adapt_examples_per_class"]))
    except ValueError:
        pass   # reported by check, where the value was written


def check(r: "Resolver") -> None:
    try:
        parse_examples(r.values["adapt_examples_per_class"])
    except ValueError as exc:
        r.fail(r.error("adapt_examples_per_class", str(exc)))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if not v["record_adaptation"]:
        return dict.fromkeys((f.name for f in fields(AdaptationKeys)
                              if f.name != "record_adaptation"),
                             "the adaptation probe is off (record_adaptation = false)")
    out: dict[str, str] = {}
    method = v["adapt_method"]
    if method != "auto":
        out.update(dict.fromkeys(("adapt_max_parameters", "adapt_max_kernel"),
                                 f"adapt_method = {method} (the limits choose the solver under auto)"))
    if method in ("parameter", "kernel"):
        out["adapt_cg_max_iter"] = f"adapt_method = {method} solves by Cholesky, not CG"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = AdaptationKeys
