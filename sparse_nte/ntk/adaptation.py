"""Fast adaptation to a new task: fine-tuning against the NTK-GP adapter.

Maddox et al., "Fast adaptation with linearized neural networks" (AISTATS 2021): a network
trained on earlier tasks meets a new task with k labelled examples per class. Two adapters:

(a) fine-tuning: a copy of the network trained by plain SGD on the k-shot set (``finetune_lr``,
    ``finetune_steps`` steps of ``finetune_batch`` examples drawn without replacement, cycling
    through the set in a seeded order; masks and Dale signs kept by
    :func:`sparse_nte.dale.constrain_optimizer`). It changes the shared weights, so old tasks
    may be forgotten: their accuracy is measured on the fine-tuned copy.
(b) NTK-GP: the posterior mean of :class:`~sparse_nte.ntk.gp.NTKGaussianProcess` with the kernel
    of the trained network (in eval mode) predicts the new task; the network is not changed, so
    old tasks keep the network's accuracy (measured once, before adaptation).

Predictions are the argmax over the model's outputs (the whole head). Accuracies are on the
test sets. The k-shot rows are the first k of a seeded permutation of each class's training
rows (fewer when a class has fewer).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.dale import constrain_optimizer
from sparse_nte.ntk.gp import NTKGaussianProcess

__all__ = ["TaskData", "task_data", "fast_adaptation", "kshot_rows"]


@dataclass(frozen=True)
class TaskData:
    """One task's tensors as the model sees them (normalised, permuted): ``task`` is its id."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    task: int


def task_data(scenario: Any, task: int, device: Union[str, torch.device] = "cpu",
              batch_size: int = 4096) -> TaskData:
    """Both splits of task ``task`` of a :class:`benchmarks.scenarios.Scenario`, in row order."""
    def split(name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for x, y, _ in scenario.batches(task, name, batch_size=batch_size, shuffle=False,
                                        device=device):
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    return TaskData(train_x, train_y, test_x, test_y, int(task))


def kshot_rows(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Rows of the first ``k`` examples of every class in a permutation seeded by (seed, k)."""
    state = np.random.SeedSequence((seed, k)).generate_state(2, dtype=np.uint32)
    g = torch.Generator().manual_seed((int(state[1]) << 32) | int(state[0]))
    order = torch.randperm(labels.shape[0], generator=g)
    y = labels.cpu()[order]
    picked = [order[y == c][:k] for c in torch.unique(y).tolist()]
    return torch.cat(picked).sort().values


def _ids(n: int, task: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), task, dtype=torch.int64, device=device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: int,
             batch: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y`` by ``model`` (eval mode, task ids ``task``)."""
    was = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for s in range(0, x.shape[0], batch):
                xb = x[s:s + batch]
                pred = model(xb, _ids(xb.shape[0], task, xb.device)).argmax(1)
                correct += int((pred == y[s:s + batch]).sum())
    finally:
        model.train(was)
    return correct / max(1, x.shape[0])


def _finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: int, lr: float,
              steps: int, batch: int, seed: int) -> nn.Module:
    tuned = copy.deepcopy(model).train()
    opt = torch.optim.SGD(tuned.parameters(), lr=lr)
    handle = constrain_optimizer(opt, tuned)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    order, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + min(batch, n) > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + min(batch, n)].to(x.device)
        pos += idx.numel()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(tuned(x[idx], _ids(idx.numel(), task, x.device)), y[idx]).backward()
        opt.step()
    handle.remove()
    return tuned


def _gp_accuracy(model: nn.Module, new: TaskData, rows: torch.Tensor, noise: float,
                 eval_batch: int, gp_options: Dict[str, Any]) -> Tuple[float, Dict[str, Any]]:
    was = model.training
    model.eval()
    try:
        x, y = new.train_x[rows.to(new.train_x.device)], new.train_y[rows.to(new.train_y.device)]
        gp = NTKGaussianProcess(model, x, y, t_train=_ids(x.shape[0], new.task, x.device),
                                noise=noise, chunk=eval_batch, **gp_options)
        correct = 0
        for s in range(0, new.test_x.shape[0], eval_batch):
            xb = new.test_x[s:s + eval_batch]
            mean, _ = gp.predict(xb, _ids(xb.shape[0], new.task, xb.device), variance=False)
            correct += int((mean.argmax(1) == new.test_y[s:s + eval_batch]).sum())
    finally:
        model.train(was)
    info = {"method": gp.method}
    if gp.cg is not None:
        info.update(cg_iterations=gp.cg.iterations, cg_residual=gp.cg.residual,
                    cg_converged=gp.cg.converged)
    return correct / max(1, new.test_x.shape[0]), info


def fast_adaptation(model: nn.Module, data: Union[Any, Tuple[TaskData, Sequence[TaskData]]], *,
                    new_task: Optional[int] = None, old_tasks: Optional[Sequence[int]] = None,
                    examples_per_class: Sequence[int] = (10, 100, 1000), noise: float = 0.1,
                    finetune_lr: float = 0.01, finetune_steps: int = 100,
                    finetune_batch: int = 32, seed: int = 0, eval_batch: int = 1024,
                    device: Union[str, torch.device] = "cpu",
                    gp_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Learn a new task from k examples per class by fine-tuning and by the NTK-GP (module doc).

    Args:
        model: the network trained on the old tasks (``model(x, t)``); left unchanged.
        data: a ``Scenario`` (then ``new_task`` defaults to its last task and ``old_tasks`` to
            the tasks before it), or a tuple ``(new, old)`` of :class:`TaskData`.
        examples_per_class: the k values (each an int >= 1).
        noise: GP observation noise variance sigma^2 (> 0).
        finetune_lr, finetune_steps, finetune_batch: the SGD fine-tuning (lr > 0, steps >= 1).
        seed: seeds the k-shot rows and the fine-tuning batch order.
        gp_options: more keyword arguments of :class:`NTKGaussianProcess` (``method``,
            ``cg_tol``, ``cg_max_iter``, ``max_parameters``).

    Returns plain data: ``{"new_task", "old_tasks", "before": {"new", "old"}, "results": [
    {"k", "n_train", "finetune": {"new", "old"}, "gp": {"new", "old", "method", ...}}]}`` with
    accuracies in [0, 1] (``old`` lists follow ``old_tasks``).
    """
    if not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
        raise ValueError(f"fast_adaptation: finetune_lr must be > 0, got {finetune_lr!r}")
    if not (isinstance(finetune_steps, int) and finetune_steps >= 1):
        raise ValueError(f"fast_adaptation: finetune_steps must be an int >= 1, got "
                         f"{finetune_steps!r}")
    ks = list(examples_per_class)
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"fast_adaptation: examples_per_class must be ints >= 1, got {ks!r}")
    if isinstance(data, tuple):
        new, old = data
        old = list(old)
    else:
        num = data.num_tasks
        new_task = num - 1 if new_task is None else int(new_task)
        if not 0 <= new_task < num:
            raise ValueError(f"fast_adaptation: new_task must be in 0..{num - 1}, got {new_task}")
        old_ids = list(range(new_task)) if old_tasks is None else [int(o) for o in old_tasks]
        new = task_data(data, new_task, device)
        old = [task_data(data, o, device) for o in old_ids]
    before_old = [accuracy(model, d.test_x, d.test_y, d.task, eval_batch) for d in old]
    out: Dict[str, Any] = {
        "new_task": new.task, "old_tasks": [d.task for d in old],
        "before": {"new": accuracy(model, new.test_x, new.test_y, new.task, eval_batch),
                   "old": before_old},
        "results": []}
    reference = [p.detach().clone() for p in model.parameters()]
    for k in ks:
        rows = kshot_rows(new.train_y, k, seed)
        x, y = new.train_x[rows.to(new.train_x.device)], new.train_y[rows.to(new.train_y.device)]
        tuned = _finetune(model, x, y, new.task, float(finetune_lr), finetune_steps,
                          finetune_batch, seed)
        finetune = {"new": accuracy(tuned, new.test_x, new.test_y, new.task, eval_batch),
                    "old": [accuracy(tuned, d.test_x, d.test_y, d.task, eval_batch) for d in old]}
        del tuned
        gp_new, info = _gp_accuracy(model, new, rows, noise, eval_batch, dict(gp_options or {}))
        if any(not torch.equal(p, q) for p, q in zip(model.parameters(), reference)):
            raise RuntimeError("fast_adaptation: the network changed during GP adaptation")
        out["results"].append({"k": k, "n_train": int(rows.numel()), "finetune": finetune,
                               "gp": {"new": gp_new, "old": list(before_old), **info}})
    return out
