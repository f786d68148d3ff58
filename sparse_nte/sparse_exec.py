"""Sparse execution of sparse linear layers: compute at live connections only.

A :class:`~sparse_nte.layers.SparseWeights` layer keeps a dense ``(out, in)`` weight ``W`` whose
masked entries are exactly zero. The masked-dense product costs the same whatever the mask; this
module computes the three products of a linear layer from the ``nnz`` live entries only::

    forward          y[b, i]  = b_i + sum_{j in live(i)} W[i, j] x[b, j]
    input gradient  dx[b, j]  = sum_{i : j in live(i)} W[i, j] dy[b, i]
    weight gradient dW[i, j]  = sum_b dy[b, i] x[b, j]   at live (i, j), 0 at masked ones

which is the masked-dense computation ``y = x (W * live)^T + b`` (Rumelhart et al. 1986
back-propagation through a linear map) up to float rounding: only the summation order differs.
The weight gradient is scattered into a dense tensor (zeros at masked positions), so the dense
``nn.Parameter``, optimizers, state dicts, Dale's projection, plasticity and the NTE optimizer work
unchanged.

Kernels (CPU; the fastest of those measured with torch 2.13 by ``bench/bench_sparse.py`` on a
2-core AMD EPYC with AVX-512 and MKL):

* forward and input gradient: ``torch.nn.functional.embedding_bag`` in ``sum`` mode with
  per-sample weights (FBGEMM kernels). With the transposed input ``x^T`` (in, batch) as the
  table, output unit ``i`` is the bag of its live inputs ``j`` weighted by ``W[i, j]``: a CSR
  matrix times a dense matrix. The input gradient uses the column-major (transposed) structure
  with ``dy^T`` as the table. 2-2.5x faster than ``torch.sparse.mm`` with a CSR weight (MKL).
* weight gradient: ``torch.sparse.sampled_addmm`` (sampled dense-dense product, SDDMM) of
  ``dy^T`` and ``x`` on the CSR pattern of the live entries (MKL); 2x faster than the
  per-sample-weights backward of ``embedding_bag``. A gradient the current backward call does
  not use (``torch.autograd.grad`` w.r.t. other tensors, as the NTE optimizer's capture pass
  does) is not computed, as with the built-in linear backward.

The index structure (:class:`LiveConnections`) depends only on the mask; the layer caches it and
rebuilds it when the mask changes. The live values are gathered from the dense weight at every
forward pass (``nnz`` reads), so any change of the weight, even through ``weight.data``, is seen.

Choosing the path, ``sparse_exec="auto"`` (:func:`prefers_sparse`): sparse when the density
``nnz / (out * in)`` is at most 0.2 for inputs of at least 64 rows, at most 0.1 for 16-63 rows
(:data:`AUTO_DENSITY_BY_BATCH`), never below 16 rows, for layers of at least
:data:`AUTO_MIN_WEIGHTS` weights, on CPU, in float32/float64. Small batches lose because of
fixed costs: gathering the live values touches most cache lines of the dense weight at these
densities, and the input and output are transposed. The rule is a fixed function of shapes and
density, never of timings taken during the run: the two paths round differently, and two runs
of the same config must compute the same floats. The constants are the crossovers measured by
``bench/bench_sparse.py --sections crossover``; on other hardware re-run it and force the path
with ``"on"`` / ``"off"`` if they differ.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "SPARSE_EXEC_MODES",
    "AUTO_DENSITY_BY_BATCH",
    "AUTO_MIN_WEIGHTS",
    "LiveConnections",
    "sparse_linear",
    "prefers_sparse",
    "prefers_compact",
    "resolve_sparse_exec",
    "AUTO_COMPACT_MAX_DENSITY",
    "auto_max_density",
    "check_sparse_exec",
    "set_sparse_exec",
    "SparseLinearOverride",
    "SparseExecutable",
]

SPARSE_EXEC_MODES = ("auto", "on", "off", "compact")

# The auto rule: (minimum batch rows, maximum density) pairs, largest batch first. Crossovers
# measured on a 2-core AMD EPYC (AVX-512, torch 2.13 + MKL, 1 thread) by
# bench/bench_sparse.py --sections crossover (layers 784x4000, 4000x4000, 4000x784, 1024x1024):
# from 64 rows on the sparse path wins up to density ~0.2, at 16-32 rows up to ~0.1, and below
# 16 rows hardly at all (the fixed costs dominate). Small layers (256x256, 4000x10) won only
# marginally or lost at every batch size: they stay dense below AUTO_MIN_WEIGHTS weights.
AUTO_DENSITY_BY_BATCH: tuple[tuple[int, float], ...] = ((64, 0.20), (16, 0.10))
AUTO_MIN_WEIGHTS = 1 << 17
# The storage rule of the config value ``auto`` (:func:`prefers_compact`): compact storage (only
# the live weights stored, trained and updated) for layers of at least AUTO_MIN_WEIGHTS weights up
# to this density. Crossover of a whole training step (products, gradient, SGD with momentum and
# weight decay, constraint projection) at batch 128 measured by bench/bench_sparse.py --sections
# compact; evaluation batches of compact layers above EVAL_DENSE_DENSITY run on the cached dense
# view (sparse_nte.layers.compact).
AUTO_COMPACT_MAX_DENSITY = 0.25

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_sparse_exec(mode: Any, where: str = "sparse_exec") -> str:
    """Return ``mode`` if it is one of :data:`SPARSE_EXEC_MODES`; else raise ``ValueError``."""
    if not isinstance(mode, str) or mode not in SPARSE_EXEC_MODES:
        raise ValueError(f"{where} must be one of {', '.join(SPARSE_EXEC_MODES)}, got {mode!r}")
    return mode


@contextmanager
def _quiet_csr() -> Iterator[None]:
    """Silence torch's one-time 'sparse CSR support is in beta' notice (the CSR tensors here are
    internal and built from validated indices)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        yield


class LiveConnections:
    """Index structure of the live (unmasked) entries of an ``(out, in)`` weight.

    Row-major (CSR) order, used by the forward pass and the weight gradient:
        ``row_ptr`` (out + 1,): the live entries of row ``i`` are ``row_ptr[i]:row_ptr[i+1]``;
        ``col_idx`` (nnz,): their columns; ``flat_idx`` (nnz,): ``i * in + j``.
    Column-major (CSC) order, used by the input gradient:
        ``col_ptr`` (in + 1,), ``row_idx_t`` (nnz,): the same for columns; ``order_t`` (nnz,):
        the row-major position of each column-major entry (values_t = values[order_t]).

    All index tensors are int64 on the mask's device. Memory: about ``4 * 8 * nnz`` bytes,
    plus ``nnz`` values per dtype for the weight-gradient pattern.
    """

    def __init__(self, zero_mask: torch.Tensor) -> None:
        if zero_mask.dim() != 2 or zero_mask.dtype != torch.bool:
            raise ValueError(f"LiveConnections expects a 2-d bool mask (True = masked), got "
                             f"{zero_mask.dtype} of shape {tuple(zero_mask.shape)}")
        out_f, in_f = zero_mask.shape
        live = ~zero_mask
        self.out_features, self.in_features = int(out_f), int(in_f)
        self.flat_idx = live.reshape(-1).nonzero().squeeze(1)
        self.col_idx = self.flat_idx % in_f
        self.row_ptr = _offsets(live.sum(dim=1))
        flat_t = live.t().contiguous().reshape(-1).nonzero().squeeze(1)   # j * out + i
        self.row_idx_t = flat_t % out_f
        self.order_t = torch.searchsorted(self.flat_idx, self.row_idx_t * in_f + flat_t // out_f)
        self.col_ptr = _offsets(live.sum(dim=0))
        self.nnz = int(self.flat_idx.numel())
        self._patterns: dict[torch.dtype, torch.Tensor] = {}

    @property
    def density(self) -> float:
        """Fraction of live entries, ``nnz / (out * in)``."""
        return self.nnz / max(1, self.out_features * self.in_features)

    def pattern(self, dtype: torch.dtype) -> torch.Tensor:
        """The live pattern as a CSR tensor of ``dtype`` (values unused: SDDMM with beta = 0)."""
        pat = self._patterns.get(dtype)
        if pat is None:
            with _quiet_csr():
                pat = torch.sparse_csr_tensor(
                    self.row_ptr, self.col_idx,
                    torch.zeros(self.nnz, dtype=dtype, device=self.row_ptr.device),
                    size=(self.out_features, self.in_features), check_invariants=False)
            self._patterns[dtype] = pat
        return pat

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The live entries of ``weight`` in row-major order.

        Gathered afresh at every call (``nnz`` reads): caching them by the weight's version
        counter would miss edits made through ``weight.data``, which many training scripts use.
        """
        return weight.detach().reshape(-1).index_select(0, self.flat_idx)

    def column_major(self, values: torch.Tensor) -> torch.Tensor:
        """Row-major live values reordered column by column (for the transposed product); a
        gather within the ``nnz`` values, cheaper than a second gather from the weight."""
        return values.index_select(0, self.order_t)

    @property
    def row_idx(self) -> torch.Tensor:
        """(nnz,) int64: the row (output unit) of every live entry, in row-major order."""
        rows = self.__dict__.get("_row_idx")
        if rows is None:
            rows = self.flat_idx.div(self.in_features, rounding_mode="floor")
            self._row_idx = rows
        return rows

    def positions(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pos, live)`` for int64 flat indices ``i * in + j`` of the dense weight: ``pos`` the
        position of each among the live entries (row-major) and ``live`` whether it is one
        (``pos`` is meaningless where ``live`` is False). A binary search in ``flat_idx``."""
        flat = flat.to(self.flat_idx.device)
        if self.nnz == 0:
            zeros = torch.zeros_like(flat)
            return zeros, torch.zeros_like(flat, dtype=torch.bool)
        pos = torch.searchsorted(self.flat_idx, flat).clamp_(max=self.nnz - 1)
        return pos, self.flat_idx.index_select(0, pos) == flat

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense ``(out, in)`` matrix holding ``values`` (row-major live order) at the live
        entries and exact zeros elsewhere (differentiable; also under ``torch.func``)."""
        dense = values.new_zeros(self.out_features * self.in_features)
        return dense.index_put((self.flat_idx,), values).view(self.out_features,
                                                               self.in_features)

    def sampled_mm(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``(left @ right)`` at the live entries, (nnz,) in row-major order, for ``left``
        (out, K) and ``right`` (K, in): a sampled dense-dense product (SDDMM), ``nnz * K``
        multiply-adds instead of ``out * in * K``. With ``left = dy^T`` and ``right = x`` it is
        the weight gradient of the live entries."""
        if self.nnz == 0:
            return left.new_zeros(0)
        with _quiet_csr():
            sampled = torch.sparse.sampled_addmm(self.pattern(left.dtype), left, right, beta=0.0)
        return sampled.values()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_patterns"] = {}   # sparse CSR tensors are rebuilt on demand
        state.pop("_row_idx", None)
        return state

    def __repr__(self) -> str:
        return (f"LiveConnections(out={self.out_features}, in={self.in_features}, nnz={self.nnz}, "
                f"density={self.density:.4g})")


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, dim=0, out=offsets[1:])
    return offsets


def _bag_product(indices: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor,
                 table: torch.Tensor) -> torch.Tensor:
    """``out[r] = sum_{e in bag r} values[e] * table[indices[e]]`` (a CSR matrix times ``table``)."""
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=values,
                           include_last_offset=True)


def _gradient_node(t: torch.Tensor) -> Any:
    """The autograd node that receives the gradient of ``t`` (its AccumulateGrad for a leaf)."""
    try:
        return torch.autograd.graph.get_gradient_edge(t).node
    except (AttributeError, RuntimeError):   # no graph (e.g. inference tensors): nothing to skip
        return None


def _will_run(node: Any) -> bool:
    """Whether the running backward pass will execute ``node``, i.e. use that gradient.

    Built-in autograd formulas skip gradients nobody asked for; a custom Function must ask the
    engine (``torch._C._will_engine_execute_node``, the query behind
    ``torch.autograd.graph.register_multi_grad_hook``). If the query is unavailable, assume yes.
    """
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             live: LiveConnections) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = x W^T + b for a (B, in) input; returns y (B, out), x^T (in, B) and the live values."""
    values = live.gather(weight)
    x_t = x.t().contiguous()                                              # (in, B)
    y_t = _bag_product(live.col_idx, live.row_ptr, values, x_t)           # (out, B)
    y = y_t.t().contiguous()                                              # (B, out)
    if bias is not None:
        y.add_(bias)
    return y, x_t, values


class _SparseLinear(torch.autograd.Function):
    """y = x W^T + b from the live entries of W; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                live: LiveConnections) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        y, x_t, values = _forward(x, weight, bias, live)
        ctx.live = live
        ctx.has_bias = bias is not None
        # Autograd nodes of x and of the weight: the backward pass skips a gradient that the
        # current backward call does not use (e.g. torch.autograd.grad w.r.t. other tensors).
        ctx.x_node = _gradient_node(x) if need_x else None
        ctx.w_node = _gradient_node(weight) if need_w else None
        values_t = live.column_major(values) if need_x else None
        ctx.save_for_backward(x_t if need_w else None, values_t)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):
        live: LiveConnections = ctx.live
        x_t, values_t = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0] and _will_run(ctx.x_node)
        need_w = ctx.needs_input_grad[1] and _will_run(ctx.w_node)
        need_b = ctx.needs_input_grad[2]
        grad_y_t = grad_y.t().contiguous()                                # (out, B)
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x_t = _bag_product(live.row_idx_t, live.col_ptr, values_t, grad_y_t)  # (in, B)
            grad_x = grad_x_t.t().contiguous()
        if need_w:
            grad_w = grad_y.new_zeros(live.out_features * live.in_features)
            grad_w.index_copy_(0, live.flat_idx, live.sampled_mm(grad_y_t, x_t.t()))
            grad_w = grad_w.view(live.out_features, live.in_features)
        if need_b and ctx.has_bias:
            grad_b = grad_y.sum(dim=0)
        return grad_x, grad_w, grad_b, None


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  live: LiveConnections) -> torch.Tensor:
    """``F.linear(x, weight * live, bias)`` computed from the live entries only.

    ``x`` has shape ``(*, in)``; the result ``(*, out)``. Gradients flow to ``x``, ``weight``
    (dense, exactly zero at masked positions) and ``bias`` like ``F.linear``'s, up to float
    rounding. Entries of ``weight`` at masked positions are never read.
    """
    out_f, in_f = live.out_features, live.in_features
    if weight.shape != (out_f, in_f):
        raise ValueError(f"sparse_linear: weight of shape {tuple(weight.shape)} does not match the "
                         f"live structure ({out_f}, {in_f})")
    if x.shape[-1:] != (in_f,):
        raise ValueError(f"sparse_linear: input of shape {tuple(x.shape)} does not end in "
                         f"in_features={in_f}")
    if weight.dtype not in _SUPPORTED_DTYPES or x.dtype != weight.dtype:
        raise ValueError(f"sparse_linear supports float32 and float64 inputs and weights of the "
                         f"same dtype, got input {x.dtype} and weight {weight.dtype}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)
    if x2.shape[0] == 0:
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        y = _SparseLinear.apply(x2, weight, bias, live)
    else:
        y = _forward(x2.detach(), weight.detach(), None if bias is None else bias.detach(),
                     live)[0]
    return y.reshape(*lead, out_f)


def auto_max_density(batch: int) -> float:
    """The largest density at which ``auto`` takes the sparse path for ``batch`` input rows
    (0 when no density qualifies): the first entry of :data:`AUTO_DENSITY_BY_BATCH` whose
    minimum batch ``batch`` reaches."""
    for min_batch, max_density in AUTO_DENSITY_BY_BATCH:
        if batch >= min_batch:
            return max_density
    return 0.0


def prefers_sparse(density: float, num_weights: int, batch: int, device: torch.device,
                   dtype: torch.dtype) -> bool:
    """The ``auto`` rule: is the sparse path expected to be faster than the masked-dense one?

    True when the layer is on the CPU, float32/float64, has at least :data:`AUTO_MIN_WEIGHTS`
    weights, and its density is at most :func:`auto_max_density` of ``batch`` (the number of
    input rows: the product of all input dimensions but the last).
    """
    if device.type != "cpu" or dtype not in _SUPPORTED_DTYPES or num_weights < AUTO_MIN_WEIGHTS:
        return False
    return 0.0 < density <= auto_max_density(batch)


def prefers_compact(density: float, num_weights: int, device: torch.device,
                    dtype: torch.dtype) -> bool:
    """The storage rule of the config value ``sparse_exec = auto``: is storing (and training)
    only the live weights expected to be faster than the masked-dense layer?

    True for CPU float32/float64 layers of at least :data:`AUTO_MIN_WEIGHTS` weights whose
    density is in ``(0, AUTO_COMPACT_MAX_DENSITY]``. A fixed function of shape and density
    (never of timings taken during the run), decided when the model is built."""
    if device.type != "cpu" or dtype not in _SUPPORTED_DTYPES or num_weights < AUTO_MIN_WEIGHTS:
        return False
    return 0.0 < density <= AUTO_COMPACT_MAX_DENSITY


def resolve_sparse_exec(mode: str, density: float, num_weights: int, device: torch.device,
                        dtype: torch.dtype) -> str:
    """The layer mode the config key ``sparse_exec`` gives a sparse fc layer of ``density`` and
    ``num_weights`` weights (what :func:`models.build_model` sets):

    * ``off``, ``on``: as given (the layer's own meaning);
    * ``compact``: ``compact`` for a layer below density 1 (a layer that starts dense, e.g. a
      head carrying Dale's signs or a layer a schedule will prune, keeps the dense storage with
      ``auto`` products);
    * ``auto``: ``compact`` where :func:`prefers_compact`, else the layer's ``auto``.
    """
    check_sparse_exec(mode)
    if mode == "compact":
        return "compact" if density < 1.0 else "auto"
    if mode == "auto" and prefers_compact(density, num_weights, device, dtype):
        return "compact"
    return mode


class SparseLinearOverride(TorchFunctionMode):
    """Inside this context, ``F.linear(x, weight, bias)`` with exactly ``weight`` (the same
    tensor object) runs :func:`sparse_linear` with ``live``; every other call runs unchanged.

    The wrapped ``nn.Linear`` is still called as a module, so its forward hooks, forward
    pre-hooks and full backward hooks fire as usual (the NTE optimizer relies on them).
    """

    def __init__(self, weight: torch.Tensor, live: LiveConnections) -> None:
        super().__init__()
        self.weight = weight
        self.live = live
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if w is self.weight:
                b = args[2] if len(args) > 2 else kwargs.get("bias")
                self.calls += 1
                return sparse_linear(x, w, b, self.live)
        return func(*args, **kwargs)


@runtime_checkable
class SparseExecutable(Protocol):
    """A layer with a choice of execution path: a ``sparse_exec`` mode (``auto`` | ``on`` |
    ``off``) and the :class:`LiveConnections` of its weight.
    :class:`sparse_nte.layers.SparseWeights` is one; this module depends on the protocol only,
    never on the layers that implement it."""

    sparse_exec: str

    def live_connections(self) -> LiveConnections: ...


def set_sparse_exec(model: nn.Module, mode: str) -> int:
    """Set ``sparse_exec`` (``auto`` | ``on`` | ``off``) on every sparse linear layer of ``model``
    (every :class:`SparseExecutable` module; what the config key ``sparse_exec`` does); return
    the number of layers set."""
    check_sparse_exec(mode)
    count = 0
    for m in model.modules():
        if isinstance(m, SparseExecutable):
            m.sparse_exec = mode
            count += 1
    return count
