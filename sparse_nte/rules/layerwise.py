"""Layer-local forward passes of the toolkit's networks (:class:`models.Net`), for learning
rules whose errors never cross layers.

For hidden block l of a ``Net`` (``blocks[l] = pool(dropout(norm(activation(layer(.)))))``)::

    z_l = norm_l(activation_l(layer_l(h_{l-1})))        the block's output (before dropout)
    h_l = pool_l(dropout_l(z_l))                        what the next layer receives
    logits = head_{t}(h_L)

:func:`local_forward` returns every ``z_l`` with each block's input DETACHED, so a cotangent
placed on ``z_l`` reaches the parameters of block l only; :func:`heads_forward` computes the
logits from the detached last ``h_L``, so a loss on them reaches the heads only (no error
crosses a layer). The input is flattened before the first fully
connected block, as ``Net.forward`` does.

k-winner-take-all duty cycles (:class:`~sparse_nte.layers.KWinnersBase`) are running averages
of activity; a local rule that recomputes the same samples several times (a sliding window, a
fresh forward per layer) must count each sample once. :func:`frozen_duty_cycles` restores
every k-WTA layer's duty cycles and sample counter after the passes made inside it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from sparse_nte.layers import KWinnersBase

__all__ = ["check_net", "local_forward", "heads_forward", "block_forward", "frozen_duty_cycles", "hidden_params",
           "head_params"]


def check_net(model: nn.Module, where: str) -> None:
    """Raise ValueError unless ``model`` has the structure of a :class:`models.Net`."""
    missing = [a for a in ("blocks", "heads", "flatten_before", "head_of_task", "_route")
               if not hasattr(model, a)]
    if missing:
        raise ValueError(f"{where}: the model must be a models.Net (hidden ``blocks`` and output "
                         f"``heads``); {type(model).__name__} lacks {', '.join(missing)}")


def block_forward(model: nn.Module, index: int, h: torch.Tensor) -> torch.Tensor:
    """``z_l`` of block ``index`` for its input ``h`` (flattened first where the net flattens);
    the caller decides whether ``h`` is detached."""
    block = model.blocks[index]
    if index == model.flatten_before:
        h = h.flatten(1)
    z = block.activation(block.layer(h))
    norm = getattr(block, "norm", None)
    return norm(z) if norm is not None else z


def local_forward(model: nn.Module, x: torch.Tensor, upto: Optional[int] = None
                  ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Outputs ``[z_0, ..., z_l]`` of the hidden blocks up to ``upto`` (default: all), every
    block's input detached (module docstring), and ``h_l = pool_l(dropout_l(z_l))``, what the next stage
    receives (the heads, after the last block)."""
    model._check_input(x)
    last = len(model.blocks) - 1 if upto is None else upto
    zs: List[torch.Tensor] = []
    h = x
    for i in range(last + 1):
        z = block_forward(model, i, h.detach())
        zs.append(z)
        h = model.blocks[i].pass_on(z)
    return zs, h


def heads_forward(model: nn.Module, h: torch.Tensor, t: Optional[torch.Tensor]) -> torch.Tensor:
    """Logits of the heads on the last block's (detached) output ``h`` (flattened, for a CNN
    without fc layers), routed by task ids."""
    return model._route(h.detach().flatten(1), t)


@contextmanager
def frozen_duty_cycles(model: nn.Module) -> Iterator[None]:
    """Forward passes inside the block leave every k-WTA layer's duty cycles and sample counter
    as they were (the outputs are those of a normal training-mode pass)."""
    saved = [(m, m.duty_cycle.clone(), m.learning_iterations) for m in model.modules()
             if isinstance(m, KWinnersBase)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, duty, seen in saved:
                m.duty_cycle.copy_(duty)
                m.learning_iterations = seen


def hidden_params(model: nn.Module, index: int) -> List[nn.Parameter]:
    """The trainable parameters of hidden block ``index`` (its layer; norms have none)."""
    return [p for p in model.blocks[index].parameters() if p.requires_grad]


def head_params(model: nn.Module) -> List[nn.Parameter]:
    """The trainable parameters of every output head."""
    return [p for p in model.heads.parameters() if p.requires_grad]
