"""Reset the per-weight optimizer state at positions whose connectivity changed.

When a plasticity schedule prunes or grows a connection, whatever the optimizer remembers about
that weight belongs to a connection that no longer exists (or to none at all). Left in place,
an SGD momentum buffer would push a newly grown weight with the gradient history of the
connection that occupied the position before, and Adam's second moment would shrink its first
steps. RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020) and SET
(Mocanu et al., Nature Communications 2018) both start new connections with fresh state; this
module does that for every optimizer of the project::

    state[key][changed] = initial value of state[key]      for every per-weight state tensor

Compact parameters (:class:`~sparse_nte.layers.compact.CompactLinear`) hold only the live
weights, so a change of connectivity changes the parameter's length: :func:`remap_positions`
moves every per-weight state tensor along with the weights, ``state_new[i] = state_old[src[i]]``
for a connection that survives and the initial value for a grown one (a pruned connection's
state disappears with it), which is :func:`reset_positions` at the changed positions of the
masked-dense layer.

Caveat for the Adam family: the step counter ``state["step"]`` is one scalar per tensor, so a
reset position is bias-corrected as an old one. Its first update is then
``lr * (1 - beta1) * g / sqrt((1 - beta2) * g**2) = lr * (1 - beta1) / sqrt(1 - beta2)``
in magnitude (about 3.2 lr at the default betas) instead of ``lr``; later updates approach the
usual size as the moments fill. This is what RigL's reference implementation does as well.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

__all__ = ["reset_positions", "remap_positions", "ZEROED_STATE_KEYS"]

#: Per-weight state tensors whose initial value is zero, by the optimizers that keep them:
#: SGD / RMSprop ``momentum_buffer``; Adam, AdamW, NAdam, RAdam, Adamax ``exp_avg``;
#: Adam-family ``exp_avg_sq`` and ``max_exp_avg_sq`` (amsgrad); Adamax ``exp_inf``;
#: RMSprop / Adadelta ``square_avg``; RMSprop ``grad_avg`` (centered); Adadelta ``acc_delta``.
ZEROED_STATE_KEYS = frozenset({
    "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "square_avg",
    "grad_avg", "acc_delta",
})

# State whose initial value is not zero: key -> initial value read from the parameter group.
_GROUP_INITIAL: Dict[str, Callable[[dict], float]] = {
    "sum": lambda group: float(group.get("initial_accumulator_value", 0.0)),  # Adagrad
}


def _find_group(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is param:
                return group
    raise ValueError(
        f"reset_positions: the parameter of shape {tuple(param.shape)} is not in any param group "
        f"of {type(optimizer).__name__}; pass the optimizer that trains it"
    )


def reset_positions(optimizer: torch.optim.Optimizer, param: torch.Tensor,
                    changed_mask: torch.Tensor) -> None:
    """Return the optimizer's per-weight state of ``param`` to its initial value where
    ``changed_mask`` is True (positions pruned or grown by a plasticity schedule).

    * An optimizer that defines ``reset_positions(param, changed_mask)`` (the NTE optimizer:
      it re-derives its log-magnitudes and expert signs from the current weight values there)
      is delegated to, and nothing else is touched.
    * Otherwise every per-weight state tensor is reset: the keys in :data:`ZEROED_STATE_KEYS`
      to 0 and Adagrad's ``sum`` to the group's ``initial_accumulator_value``. Scalar state
      (``step``, NAdam's ``mu_product``) is per tensor and left alone (see the module docstring).

    Args:
        optimizer: the optimizer training ``param``.
        param: a parameter of one of the optimizer's param groups.
        changed_mask: bool tensor of ``param``'s shape, True where the connection changed.

    Raises:
        ValueError: ``param`` is not trained by ``optimizer``; the mask has the wrong shape or
            dtype; or the optimizer keeps per-weight state this function does not know how to
            reset (define ``reset_positions`` on the optimizer to support it).
    """
    if not isinstance(changed_mask, torch.Tensor) or changed_mask.dtype != torch.bool \
            or changed_mask.shape != param.shape:
        got = (f"{changed_mask.dtype} {tuple(changed_mask.shape)}"
               if isinstance(changed_mask, torch.Tensor) else type(changed_mask).__name__)
        raise ValueError(f"reset_positions: changed_mask must be a bool tensor of shape "
                         f"{tuple(param.shape)}, got {got}")
    delegate = getattr(optimizer, "reset_positions", None)
    if callable(delegate):
        delegate(param, changed_mask)
        return
    group = _find_group(optimizer, param)
    state = optimizer.state.get(param)
    if not state:
        return  # no step taken yet: the state will be created fresh
    unknown = [k for k, v in state.items()
               if isinstance(v, torch.Tensor) and v.shape == param.shape and v.dim() > 0
               and k not in ZEROED_STATE_KEYS and k not in _GROUP_INITIAL]
    if unknown:
        raise ValueError(
            f"reset_positions: {type(optimizer).__name__} keeps per-weight state {sorted(unknown)} "
            f"whose initial value is unknown; supported keys are {sorted(ZEROED_STATE_KEYS)} and "
            f"{sorted(_GROUP_INITIAL)}, or define {type(optimizer).__name__}.reset_positions("
            f"param, changed_mask)"
        )
    with torch.no_grad():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or value.shape != param.shape or value.dim() == 0:
                continue  # None momentum buffer, scalar step counters
            mask = changed_mask.to(value.device)
            if key in ZEROED_STATE_KEYS:
                value.masked_fill_(mask, 0.0)
            else:
                value.masked_fill_(mask, _GROUP_INITIAL[key](group))


def remap_positions(optimizer: torch.optim.Optimizer, param: torch.Tensor,
                    source: torch.Tensor) -> None:
    """Rearrange the optimizer's per-weight state of the 1-d ``param`` after its entries were
    rearranged: entry ``i`` of the new ``param`` was entry ``source[i]`` of the old one, or is
    new where ``source[i] < 0``. Call it after ``param`` has its new length.

    * An optimizer that defines ``remap_positions(param, source)`` (the NTE optimizer: it moves
      its experts and derives the new ones from the weight values) is delegated to.
    * Otherwise every per-weight state tensor (1-d, the old length) becomes
      ``new[i] = old[source[i]]``, and the initial value of its key (as in
      :func:`reset_positions`) where ``source[i] < 0``. Scalar state (``step``) is unchanged.

    Raises:
        ValueError: ``param`` is not 1-d or not trained by ``optimizer``; ``source`` is not an
            int64 vector of ``param``'s length; a state tensor does not have the old length; or
            the optimizer keeps per-weight state whose initial value is unknown.
    """
    if param.dim() != 1:
        raise ValueError(f"remap_positions: param must be 1-d (compact live values), got shape "
                         f"{tuple(param.shape)}")
    if not isinstance(source, torch.Tensor) or source.dtype != torch.int64 \
            or source.shape != param.shape:
        got = (f"{source.dtype} {tuple(source.shape)}" if isinstance(source, torch.Tensor)
               else type(source).__name__)
        raise ValueError(f"remap_positions: source must be an int64 tensor of shape "
                         f"{tuple(param.shape)}, got {got}")
    delegate = getattr(optimizer, "remap_positions", None)
    if callable(delegate):
        delegate(param, source)
        return
    group = _find_group(optimizer, param)
    state = optimizer.state.get(param)
    if not state:
        return
    kept = source >= 0
    src = source.clamp(min=0)
    with torch.no_grad():
        for key, value in list(state.items()):
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            if key not in ZEROED_STATE_KEYS and key not in _GROUP_INITIAL:
                raise ValueError(
                    f"remap_positions: {type(optimizer).__name__} keeps per-weight state "
                    f"{key!r} whose initial value is unknown; supported keys are "
                    f"{sorted(ZEROED_STATE_KEYS)} and {sorted(_GROUP_INITIAL)}, or define "
                    f"{type(optimizer).__name__}.remap_positions(param, source)")
            if value.dim() != 1 or (bool(kept.any()) and int(src[kept].max()) >= value.numel()):
                raise ValueError(f"remap_positions: state {key!r} has shape {tuple(value.shape)},"
                                 f" which does not hold the old positions named by source")
            initial = 0.0 if key in ZEROED_STATE_KEYS else _GROUP_INITIAL[key](group)
            if value.numel():
                moved = value.index_select(0, src.to(value.device))
                moved.masked_fill_(~kept.to(value.device), initial)
            else:
                moved = torch.full(param.shape, initial, dtype=value.dtype, device=value.device)
            state[key] = moved
