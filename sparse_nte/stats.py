"""Statistics of a model's connectivity, Dale signs and k-WTA layers, as plain Python / numpy
values (results pickles hold builtins and numpy arrays only).

Everything is read from the STORED parameters, without applying the constraints first, so a
missing projection shows up as a non-zero violation count instead of being repaired by the read.

Per weight layer (a ``SparseWeights``/``SparseWeights2d`` wrapper, or a plain ``nn.Linear`` /
``nn.Conv2d`` not inside one), with W the weight, M the mask (True = held at zero) and s the
presynaptic signs::

    density          = #{W != 0} / |W|
    mask_density     = #{not M} / |W|                    (1 for plain layers)
    mask_violations  = #{M and W != 0}                   (must be 0)
    sign_violations  = #{W_ij * s_j < 0}                 (must be 0; Dale's law)
    exc_fraction     = #{j: s_j = +1} / #presynaptic units
    dead             = #{not M and W == 0} / #{not M}    (allowed synapses at exactly zero)
    dead_exc, dead_inh: the same among synapses from excitatory / inhibitory units

:func:`connectivity` (stored by the runner after EVERY task, whatever ``record_stats`` says, so
a run whose densities change, e.g. ``plasticity = grow``, records what they were at each task)
keeps only the two densities, per weight layer and over all weight layers of the model (hidden
layers and heads)::

    mask_density    = sum_l #{not M_l} / sum_l |W_l|
    nonzero_density = sum_l #{W_l != 0} / sum_l |W_l|

Duty-cycle entropy of k-WTA layers (Ahmad & Scheinkman 2019): ``sum_i H(d_i)`` in bits over the
``n`` units of one example, with its maximum ``n H(w/n)`` reached when every unit is active
equally often, ``w`` the winners per example in training. For a ``KWinners2d`` ``n = C*H*W`` (as
nupic.torch counts it) and each unit has its channel's duty cycle; with ``local=True`` ``k``
winners are kept among the channels at each of the ``H*W`` locations, so ``w = k*H*W``.

Hidden activity on the test sets of the tasks seen so far (:func:`activity_stats`) is recorded
before dropout, in eval mode, through the model's ``record_activity()``
(:class:`models.Net`): per layer the fraction of active units per task, the units' usage per
task and the usage overlap between tasks. The runner records it during its evaluation pass
(:mod:`sparse_nte.evaluation`) and builds the statistics from those recordings
(:func:`activity_from_summaries`), so the test sets are read once.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from sparse_nte.evaluation import evaluate_tasks
from sparse_nte.layers import KWinnersBase, SparseWeightsBase

__all__ = [
    "weight_layers",
    "layer_stats",
    "connectivity",
    "sign_violations",
    "mask_violations",
    "kwinners_entropy",
    "usage_overlap",
    "activity_stats",
    "activity_from_summaries",
    "model_stats",
    "to_plain",
    "finalize",
]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every weight layer: sparse-weights wrappers, and ``nn.Linear`` /
    ``nn.Conv2d`` modules that no wrapper owns, in module order."""
    wrapped = {id(m.module) for m in model.modules() if isinstance(m, SparseWeightsBase)}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, SparseWeightsBase)
            or (isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in wrapped)]


def _fraction(num: torch.Tensor, den: torch.Tensor) -> Optional[float]:
    den = int(den)
    return float(num) / den if den else None


def _one_layer(layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, SparseWeightsBase):
        w = layer.module.weight.detach()
        zero_mask = layer.zero_mask
        sign = layer.sign_tensor()
    else:
        w = layer.weight.detach()
        zero_mask, sign = None, None
    nonzero = w != 0
    allowed = torch.ones_like(nonzero) if zero_mask is None else ~zero_mask
    out: dict[str, Any] = {
        "shape": tuple(int(v) for v in w.shape),
        "num_weights": int(w.numel()),
        "density": float(nonzero.sum()) / w.numel(),
        "mask_density": float(allowed.sum()) / w.numel(),
        "mask_violations": int((nonzero & ~allowed).sum()),
        "sign_violations": 0 if sign is None else int((w * sign < 0).sum()),
        "dale": sign is not None,
        "dead": _fraction((allowed & ~nonzero).sum(), allowed.sum()),
        "exc_fraction": None, "num_exc": None, "num_inh": None, "dead_exc": None, "dead_inh": None,
    }
    if sign is not None:
        unit_sign = layer.dale_sign
        out["num_exc"] = int((unit_sign > 0).sum())
        out["num_inh"] = int((unit_sign < 0).sum())
        out["exc_fraction"] = out["num_exc"] / unit_sign.numel()
        for key, of_sign in (("dead_exc", sign > 0), ("dead_inh", sign < 0)):
            syn = allowed & of_sign
            out[key] = _fraction((syn & ~nonzero).sum(), syn.sum())
    return out


def layer_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per weight layer (by module name): shape, num_weights, density, mask_density,
    mask_violations, sign_violations, dale, dead, and with Dale's law exc_fraction, num_exc,
    num_inh, dead_exc, dead_inh (None otherwise, or when a fraction has no synapse to count)."""
    with torch.no_grad():
        return {name: _one_layer(layer) for name, layer in weight_layers(model)}


def connectivity(model: nn.Module) -> dict[str, Any]:
    """Mask and non-zero densities of every weight layer and of the whole model (module
    docstring): ``{"mask_density", "nonzero_density", "num_weights", "layers": {name:
    {"mask_density", "nonzero_density", "num_weights"}}}``; ``num_weights`` counts all positions,
    masked or not. Read from the stored weights, without applying the constraints."""
    layers: dict[str, dict[str, Any]] = {}
    allowed_total = nonzero_total = size_total = 0
    with torch.no_grad():
        for name, layer in weight_layers(model):
            if isinstance(layer, SparseWeightsBase):
                w, mask = layer.module.weight.detach(), layer.zero_mask
            else:
                w, mask = layer.weight.detach(), None
            n = w.numel()
            allowed = n if mask is None else n - int(mask.sum())
            nonzero = int((w != 0).sum())
            layers[name] = {"mask_density": allowed / n, "nonzero_density": nonzero / n,
                            "num_weights": n}
            allowed_total += allowed
            nonzero_total += nonzero
            size_total += n
    if not size_total:
        raise ValueError(f"connectivity: {type(model).__name__} has no weight layer "
                         f"(nn.Linear, nn.Conv2d or sparse_nte SparseWeights)")
    return {"mask_density": allowed_total / size_total,
            "nonzero_density": nonzero_total / size_total,
            "num_weights": size_total, "layers": layers}


def sign_violations(model: nn.Module) -> int:
    """Total number of stored weights whose sign contradicts their presynaptic unit's."""
    return sum(s["sign_violations"] for s in layer_stats(model).values())


def mask_violations(model: nn.Module) -> int:
    """Total number of stored non-zero weights at masked (pruned) positions."""
    return sum(s["mask_violations"] for s in layer_stats(model).values())


def kwinners_entropy(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per k-WTA layer (by module name): ``entropy`` (bits, of the duty cycles),
    ``max_entropy`` (bits), ``n`` (units of one example), ``k`` (winners of one competition in
    training: per location for a local ``KWinners2d``) and ``winners`` (winners per example in
    training, ``k * H * W`` for a local ``KWinners2d``, else ``k``)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, KWinnersBase):
            out[name] = {"entropy": float(m.entropy()), "max_entropy": float(m.max_entropy()),
                         "n": int(m.n), "k": int(m.k), "winners": int(m.winners_per_example())}
    return out


def usage_overlap(p: Any, q: Any) -> float:
    """Overlap of two unit-usage vectors (e.g. ``unit_active_fraction`` recorded on two tasks by
    ``model.record_activity()``): their cosine similarity::

        overlap = sum_u p_u q_u / sqrt(sum_u p_u^2 * sum_u q_u^2)

    1 when both tasks use the units in the same proportions, 0 when they use disjoint units;
    0 if either vector is all zero.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"usage_overlap: vectors of different lengths {p.size} and {q.size}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("usage_overlap: usage vectors must be non-negative")
    norm = float(np.sqrt((p * p).sum() * (q * q).sum()))
    return float((p * q).sum()) / norm if norm > 0 else 0.0


def activity_stats(model: nn.Module, scenario: Any, task_index: int, *, device: Any = "cpu",
                   batch_size: int = 1024) -> dict[str, dict[str, np.ndarray]]:
    """Hidden activity on the test sets of tasks 0..``task_index``, in eval mode (k-WTA with
    ``k_inference``, no dropout), measured before dropout by ``model.record_activity()``.

    Per hidden layer (by module name), for T = task_index + 1 tasks:
    ``active_fraction`` (T,), ``active_fraction_exc`` / ``active_fraction_inh`` (T,; NaN without
    Dale's law), ``unit_active_fraction`` (T, units) and ``overlap`` (T, T), the
    :func:`usage_overlap` of the tasks' unit usage. The model's training mode is restored.
    """
    if not hasattr(model, "record_activity"):
        raise ValueError(f"activity_stats needs a model with record_activity() (models.Net), got "
                         f"{type(model).__name__}")
    if not (isinstance(task_index, int) and 0 <= task_index < len(scenario.tasks)):
        raise ValueError(f"activity_stats: task_index must be in [0, {len(scenario.tasks)}), got "
                         f"{task_index!r}")
    seen = list(range(task_index + 1))
    row = evaluate_tasks(model, scenario, seen, task_index, device, batch_size=batch_size,
                         record=seen)
    return activity_from_summaries([row.activity[j] for j in seen])


def activity_from_summaries(per_task: Sequence[Mapping[str, Any]]
                            ) -> dict[str, dict[str, np.ndarray]]:
    """The statistics of :func:`activity_stats` from one ``ActivityRecorder.summary()`` per task
    (tasks 0..T-1 in order), e.g. recorded during the evaluation pass."""
    if not per_task:
        raise ValueError("activity_from_summaries: no task summaries")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in per_task[0]:
        entries = [summary[name] for summary in per_task]
        usage = np.stack([e["unit_active_fraction"] for e in entries])
        nan = float("nan")
        out[name] = {
            "active_fraction": np.array([e["active_fraction"] for e in entries]),
            "active_fraction_exc": np.array([nan if e.get("active_fraction_exc") is None
                                             else e["active_fraction_exc"] for e in entries]),
            "active_fraction_inh": np.array([nan if e.get("active_fraction_inh") is None
                                             else e["active_fraction_inh"] for e in entries]),
            "unit_active_fraction": usage,
            "overlap": np.array([[usage_overlap(a, b) for b in usage] for a in usage]),
        }
    return out


def model_stats(model: nn.Module, scenario: Any = None, task_index: Optional[int] = None, *,
                device: Any = "cpu", batch_size: int = 1024,
                activity: Optional[Sequence[Mapping[str, Any]]] = None) -> dict[str, Any]:
    """All of the above in one dict: ``layers`` (:func:`layer_stats`), ``sign_violations`` and
    ``mask_violations`` (totals), ``kwinners`` (:func:`kwinners_entropy`), and with a
    ``scenario`` and ``task_index`` also ``activity`` (:func:`activity_stats`), or from
    ``activity``, recorder summaries of the seen tasks taken during evaluation
    (:func:`activity_from_summaries`)."""
    layers = layer_stats(model)
    out = {
        "layers": layers,
        "sign_violations": sum(s["sign_violations"] for s in layers.values()),
        "mask_violations": sum(s["mask_violations"] for s in layers.values()),
        "kwinners": kwinners_entropy(model),
    }
    if activity is not None:
        out["activity"] = activity_from_summaries(activity)
    elif scenario is not None:
        if task_index is None:
            raise ValueError("model_stats: with a scenario, pass task_index (the last task trained)")
        out["activity"] = activity_stats(model, scenario, task_index, device=device,
                                         batch_size=batch_size)
    return out


def to_plain(value: Any) -> Any:
    """``value`` with tensors turned into numpy arrays (0-d ones into Python numbers), numpy
    scalars into Python numbers and tuples/lists/dicts converted recursively; raises ValueError
    for any other type, so a results pickle loads without torch or this package."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError("to_plain: numpy object arrays are not plain values")
        return value.item() if value.ndim == 0 else value
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {_plain_key(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    raise ValueError(f"to_plain: cannot store a {type(value).__module__}.{type(value).__name__} in "
                     f"a results file (allowed: builtins, numpy arrays, tensors)")


def _plain_key(key: Any) -> Any:
    key = to_plain(key)
    if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
        raise ValueError(f"to_plain: dict key {key!r} is not a plain value")
    return key


def finalize(stats: Mapping[str, Any], history: Any = None) -> dict[str, Any]:
    """The statistics of a whole trial ready for the results pickle: ``stats`` (e.g.
    ``{"per_task": [model_stats(...) + timings, ...]}``) plus ``history`` (the learner's record,
    under key ``"history"`` when given), converted by :func:`to_plain`."""
    out = dict(stats)
    if history is not None:
        out["history"] = history
    return to_plain(out)
