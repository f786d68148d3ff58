"""The scoring run of the static selectors (EL2N, GraNd, forgetting), and their shared base.

At the start of a task that has pruned epochs, for each of R = ``data_prune_score_repeats``
repeats:

1. copy the model as the task starts (``copy.deepcopy``: weights, masks, Dale signs, k-WTA duty
   cycles), so the trial's model is not touched;
2. train the copy for E = ``data_prune_score_epochs`` epochs of plain SGD (learning rate
   ``data_prune_score_lr``, the trial's batch size, batch-mean cross-entropy) on the task's
   training set, in train mode, with the masks and Dale signs re-applied after every step
   (:func:`sparse_nte.dale.constrain_optimizer`) and the k-WTA boost strength decayed after
   every epoch as in training;
3. score every training example (the selector's :meth:`StaticSelection._score_copy`).

The task's score is the mean over the repeats (Paul, Ganguli & Dziugaite 2021 average EL2N and
GraNd over independent runs). The repeats differ in the data order of the scoring run, drawn
from a generator seeded from (seed, task, repeat). Dropout inside the scoring run draws from
torch's global generator, which is forked around the run (``torch.random.fork_rng``) and seeded
from (seed, task, repeat) too, so the trial's own random streams continue exactly as if no scoring
had happened. In continual learning the copy starts from the network trained on the earlier
tasks, not from a fresh initialisation: the scores say which examples are hard for the network
that will learn them.

The time of the whole scoring (all repeats) is recorded as the task's ``score_s``; it belongs
to the run's training time.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.dale import constrain_optimizer
from sparse_nte.layers import update_boost_strength
from sparse_nte.seams import TaskContext
from sparse_nte.selection import sampling
from sparse_nte.selection.base import PrunedSelection, seeded_generator

__all__ = ["StaticSelection", "scoring_generator", "isolated_rng", "train_copy",
           "task_grouped_batches", "predictions"]

_SCORE_TAG = 0x5C03E
_RNG_TAG = 0x5C03F

#: Rows per forward pass when scoring a trained copy.
SCORE_BATCH = 1024

OnBatch = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def scoring_generator(seed: int, task: int, repeat: int) -> torch.Generator:
    """The generator of repeat ``repeat`` of task ``task``'s scoring run."""
    return seeded_generator(seed, task, repeat, _SCORE_TAG)


def _global_seed(seed: int, task: int, repeat: int) -> int:
    """Seed of torch's global generator (dropout) inside repeat ``repeat``'s scoring run."""
    return int(seeded_generator(seed, task, repeat, _RNG_TAG).initial_seed())


@contextmanager
def isolated_rng(device: str, seed: int) -> Iterator[None]:
    """Fork torch's global generator(s) for ``device`` and seed them with ``seed``; the global
    state is restored on exit."""
    dev = torch.device(device)
    devices = []
    if dev.type == "cuda":
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def predictions(logits: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
    """Predicted outputs, as the runner evaluates: in the class-incremental setting the argmax
    over the outputs of the classes seen up to this task, otherwise over the whole head."""
    scenario = ctx.scenario
    if scenario.setting == "class":
        allowed = scenario.seen_outputs(ctx.task).to(logits.device)
        return allowed[logits.index_select(1, allowed).argmax(1)]
    return logits.argmax(1)


def train_copy(model: nn.Module, ctx: TaskContext, epochs: int, lr: float,
               generator: torch.Generator, on_batch: Optional[OnBatch] = None) -> None:
    """SGD on the task's training set for ``epochs`` epochs (shuffled by ``generator``).

    ``on_batch(epoch, rows, logits, y)`` sees every batch's detached logits of the forward pass
    that the step then trains on (before the update), with the batch's row numbers.
    """
    if epochs == 0:
        return
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    handle = constrain_optimizer(opt, model)
    try:
        for epoch in range(epochs):
            model.train()
            for x, y, t, rows in ctx.scenario.batches(
                    ctx.task, "train", batch_size=ctx.batch_size, shuffle=True,
                    generator=generator, device=ctx.device, with_index=True):
                logits = model(x, t)
                if on_batch is not None:
                    on_batch(epoch, rows, logits.detach(), y)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.apply(update_boost_strength)
    finally:
        handle.remove()


Rows = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def task_grouped_batches(ctx: TaskContext, batch_size: int) -> Iterator[Rows]:
    """``(x, y, t, rows)`` over the task's training set, in row order, each batch holding the
    rows of one task id only (cumulative scenarios mix task ids; a multi-head network then
    calls each head on the whole batch, which the per-example gradients need)."""
    train_t = ctx.scenario.tasks[ctx.task].train_t
    for value in torch.unique(train_t).tolist():
        rows = torch.nonzero(train_t == value).flatten()
        yield from ctx.scenario.batches(ctx.task, "train", batch_size=batch_size, shuffle=False,
                                        device=ctx.device, rows=rows, with_index=True)


class StaticSelection(PrunedSelection):
    """Scores from a scoring run at the task's start; keeps the k highest (random ties)."""

    static = True

    def _reset_scores(self, n: int) -> None:
        self.score = torch.zeros(n, dtype=torch.float64)

    # -- what a static selector implements -----------------------------------------------------
    def _on_batch(self, repeat: int) -> Optional[OnBatch]:
        """A callback for the scoring run's training batches (forgetting), or None."""
        return None

    def _score_copy(self, model: nn.Module, ctx: TaskContext, repeat: int) -> torch.Tensor:
        """Float64 (N,) scores of repeat ``repeat`` from the trained copy."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    def _score_task(self, ctx: TaskContext) -> None:
        spec = self.spec
        total = torch.zeros(self._n, dtype=torch.float64)
        for repeat in range(spec.data_prune_score_repeats):
            gen = scoring_generator(ctx.seed, ctx.task, repeat)
            model = copy.deepcopy(ctx.model)
            with isolated_rng(ctx.device, _global_seed(ctx.seed, ctx.task, repeat)):
                train_copy(model, ctx, spec.data_prune_score_epochs, spec.data_prune_score_lr,
                           gen, self._on_batch(repeat))
                total += self._score_copy(model, ctx, repeat).to("cpu", torch.float64)
            del model
        self.score = total / spec.data_prune_score_repeats

    def _select(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return sampling.top_k(self.score, self._k, self._generator)

    def _scores_state(self) -> Dict[str, Any]:
        return {"score": self.score.clone()}

    def _load_scores(self, state: Mapping[str, Any]) -> None:
        self.score = state["score"].clone()
