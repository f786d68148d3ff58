"""The continual-learning loop of one trial, i.e. one (experiment variant, seed). Read it top to
bottom.

    config ──► scenario (tasks) ──► model ──► learner (rule + constraints + schedule + strategies
                                                       + selection + probes)
    for each task i:
        learner.on_task_start; train `train_ep` (i = 0) or `train_ep_inc` (i > 0) epochs on task i
        (or tasks 0..i if cumul), each epoch on the rows the selection keeps, or `train_iters`
        steps (epoch after epoch, the last one cut short); learner.on_task_end
        (epoch_eval: after every epoch, task i's test and training accuracy: learning curves)
        evaluate the tasks the metrics need (eval_tasks: 0..i+1, or every task) ──► row i of the
        accuracy matrix R, with the activity statistics recorded in the same pass
        record stats (among them the task's training and evaluation time, wall-clock seconds
        train_s / eval_s, and the process's CPU seconds train_cpu_s / eval_cpu_s, summed over its
        threads: on a shared machine they leave out the waits for a core), write a checkpoint
        (atomically)
    metrics from the trained rows ──► <results>/<folder>/seed<k>.pkl (atomically), checkpoint removed

Identity: the stored result or checkpoint of a trial is reused only if its configuration is the
requested one (:mod:`sparse_nte.identity`); otherwise the trial stops with a
:class:`~sparse_nte.errors.ResultsError` / :class:`~sparse_nte.errors.CheckpointError` naming the
keys that differ.

Divergence: a non-finite training loss, non-finite weights, or a rule reporting that it can no
longer be trusted (:meth:`sparse_nte.seams.Rule.unhealthy`) ends the trial with status
``diverged``: the result is saved with that status, the accuracy rows of the tasks trained so far,
and NaN metrics, so it can never be mistaken for a score.

Determinism: the same config and seed give the same accuracy matrix on CPU, whether or not the
run was interrupted and resumed: every source of randomness is seeded from (seed, task, epoch)
or saved in the checkpoint (torch's global RNG for dropout, the components' own state).
"""
from __future__ import annotations

import io
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from benchmarks.augment import crop_flip
from benchmarks.batching import black_level
from benchmarks.original import original_train_rows
from sparse_nte import stats as model_stats
from sparse_nte.config import Config, config_from_dict
from sparse_nte.errors import CheckpointError, DivergedError, ResultsError
from sparse_nte.evaluation import (EVAL_BATCH, EvalSpec, epoch_accuracy, evaluate_task,
                                   evaluate_tasks, examples_matrix, random_init_tasks, subset_rows,
                                   tasks_after, train_rows)
from sparse_nte.identity import describe_differences, differences
from sparse_nte.layers import update_boost_strength
from sparse_nte.learner import Learner, build_learner
from sparse_nte.metrics import continual_metrics
from sparse_nte.results import (PathLike, atomic_write_bytes, checkpoint_path, load_result,
                                os_error_text, result_path, save_result, versions)
from sparse_nte.seams import Batch, TaskContext

__all__ = ["run_trial", "evaluate", "TrialResult", "as_config", "STATUSES"]

CHECKPOINT_FORMAT = 2
_CHECKPOINT_KEYS = ("config", "model", "learner", "acc", "stats", "elapsed_s", "random_init_acc",
                    "torch_rng", "next_task")
#: Statuses of a trial: ``done`` (ran now), ``skipped`` (its result existed), ``diverged``
#: (training stopped being finite; saved as such), ``failed`` (an error; nothing saved).
STATUSES = ("done", "skipped", "diverged", "failed")

_log = logging.getLogger(__name__)


class TrialResult(dict):
    """The result dict of a trial plus ``status`` (one of :data:`STATUSES`)."""


def as_config(config: Any) -> Config:
    """A :class:`Config` as is; a mapping (e.g. a results file's config) validated into one."""
    return config if isinstance(config, Config) else config_from_dict(config)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _shuffle_generator(seed: int, task: int, epoch: int, stream: int = 0x5348) -> torch.Generator:
    """Batch order of (seed, task, epoch): a pure function of the three numbers, the same in
    every process (unlike ``hash()``, which Python salts per process). Another ``stream``
    (augmentation: ``0x4147``) gives independent draws from the same three numbers."""
    state = np.random.SeedSequence([int(seed), int(task), int(epoch), stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


@torch.inference_mode()
def evaluate(model: nn.Module, scenario, task_index: int, after_task: int, device: str = "cpu",
             batch_size: int = EVAL_BATCH) -> float:
    """Test accuracy on task ``task_index`` after training task ``after_task`` (exact: every test
    example counted once), in eval mode.

    Class-incremental: the prediction is the argmax over the classes seen up to ``after_task``.
    """
    model.eval()
    correct, total = evaluate_task(model, scenario, task_index, after_task, device, batch_size)
    return correct / max(total, 1)


def _evaluate_all(model, scenario, after_task: int, device: str) -> np.ndarray:
    """Every task's accuracy after ``after_task`` (the full row of the matrix)."""
    return np.array([evaluate(model, scenario, j, after_task, device) for j in range(len(scenario.tasks))])


def _evaluate_row(model: nn.Module, scenario, after_task: int, spec: EvalSpec, seed: int,
                  device: str, record: bool):
    """Row ``after_task`` of the accuracy matrix as the spec asks (:mod:`sparse_nte.evaluation`):
    the tasks it needs, old ones on their subsets between full rows; with ``record``, the
    activity of the seen tasks from the same pass."""
    num_tasks = len(scenario.tasks)
    tasks = tasks_after(after_task, num_tasks, spec.tasks)
    rows = None
    if not spec.full_row(after_task, num_tasks):
        rows = {j: subset_rows(scenario.tasks[j].num_test, spec.subset, seed, j)
                for j in tasks if j < after_task}
    seen = list(range(after_task + 1)) if record else []
    return evaluate_tasks(model, scenario, tasks, after_task, device, rows=rows, record=seen)


def _nonfinite_parameter(model: nn.Module) -> Optional[str]:
    """The name of the first parameter with a NaN or infinite entry, or None (one sum each)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p.detach().sum())) and not bool(torch.isfinite(p).all()):
                return name
    return None


def _augmenter(scenario, ctx: TaskContext, epoch: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The training-batch augmentation of this epoch (None without one): its own generator of
    (seed, task, epoch), so the batch order is that of the run without augmentation."""
    if ctx.augment == "none":
        return None
    gen = _shuffle_generator(ctx.seed, ctx.task, epoch, stream=0x4147)
    fill = black_level(scenario.input_scaling, scenario.mean, scenario.std)
    return lambda x: crop_flip(x, fill, gen)


def _train_task(learner: Learner, ctx: TaskContext, progress: bool,
                curve: Optional[int] = None) -> Dict[str, Any]:
    """Train task ``ctx.task`` for its epochs. ``curve`` (config ``epoch_eval_train`` when
    ``epoch_eval`` is on, else None): after every epoch, record the task's test accuracy and
    its accuracy on ``curve`` training rows (0: none) as ``epoch_test_acc`` / ``epoch_train_acc``."""
    from tqdm.auto import tqdm

    model, scenario = learner.model, ctx.scenario
    losses: List[float] = []
    last_epoch: List[float] = []
    curve_test: List[float] = []
    curve_train: List[float] = []
    curve_rows = (train_rows(len(scenario.tasks[ctx.task].train_y), curve, ctx.seed, ctx.task)
                  if curve else None)
    learner.on_task_start(ctx)
    done = 0   # steps of this task
    for epoch in tqdm(range(ctx.epochs), desc=f"task {ctx.task} epochs", leave=False, disable=not progress):
        model.train()
        gen = _shuffle_generator(ctx.seed, ctx.task, epoch)
        rows, shuffle = learner.epoch_rows(ctx, epoch), True
        if rows is None and ctx.train_order == "original":   # the original project's fixed order
            rows, shuffle = original_train_rows(len(scenario.tasks[ctx.task].train_y), ctx.batch_size), False
        n_rows = len(scenario.tasks[ctx.task].train_y) if rows is None else int(rows.numel())
        batches = scenario.batches(ctx.task, "train", batch_size=ctx.batch_size, shuffle=shuffle,
                                   generator=gen, device=ctx.device, rows=rows, with_index=True)
        n_batches = math.ceil(n_rows / ctx.batch_size)
        if ctx.step_limit > 0:   # train_iters: stop where the task's count is reached
            n_batches = min(n_batches, ctx.step_limit - done)
            batches = itertools.islice(batches, n_batches)
        last_epoch = []
        augment = _augmenter(scenario, ctx, epoch)
        for x, y, t, index in tqdm(batches, total=n_batches, desc="batches", leave=False,
                                   disable=not progress, mininterval=0.5):
            if augment is not None:
                x = augment(x)
            loss = learner.train_step(Batch(x, y, t, index))
            done += 1
            if not math.isfinite(loss):
                raise DivergedError(f"the training loss is {loss}", task=ctx.task, epoch=epoch,
                                    step=learner.step - 1)
            last_epoch.append(loss)
        losses.extend(last_epoch)
        model.apply(update_boost_strength)
        bad = _nonfinite_parameter(model)
        why = (f"parameter {bad} is not finite" if bad is not None else learner.rule.unhealthy())
        if why is not None:
            raise DivergedError(why, task=ctx.task, epoch=epoch, step=learner.step - 1)
        if curve is not None:
            test, train = epoch_accuracy(model, scenario, ctx.task, ctx.device,
                                         train_subset=curve_rows, train=curve > 0)
            curve_test.append(test)
            if train is not None:
                curve_train.append(train)
    try:
        learner.on_task_end(ctx)   # consolidation (e.g. EWC's Fisher) reads the network's outputs
    except FloatingPointError as exc:
        raise DivergedError(str(exc), task=ctx.task, epoch=ctx.epochs - 1, step=learner.step - 1) from None
    info: Dict[str, Any] = {"train_loss_last_epoch": float(np.mean(last_epoch)) if last_epoch
                            else float("nan")}
    if curve is not None:
        info["epoch_test_acc"] = curve_test
        if curve:
            info["epoch_train_acc"] = curve_train
    return info


def reusable_result(out: Path, config: Config) -> Optional[dict]:
    """The stored result at ``out`` if it is one of ``config``; ResultsError if it is another
    configuration's; None if there is none."""
    if not out.exists():
        return None
    stored = load_result(out)
    if "config" not in stored:
        raise ResultsError(f"{out} is not a result of this toolkit (no config); move it away, or run "
                           f"with --overwrite")
    diff = differences(stored["config"], config.to_dict())
    if diff:
        raise ResultsError(f"{out} holds the result of another configuration "
                           f"({describe_differences(diff)}); run with --overwrite to replace it, "
                           f"or pass --results-dir DIR to keep both")
    return stored


def _load_checkpoint(ckpt: Path, config: Config, device: str) -> dict:
    try:
        state = torch.load(ckpt, map_location=device, weights_only=False)
    except Exception as exc:  # EOFError, UnpicklingError, zip errors, ...
        raise CheckpointError(f"checkpoint {ckpt} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); run with --no-resume to "
                              f"start this trial again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {ckpt} has format {found}, this version writes "
                              f"{CHECKPOINT_FORMAT}; run with --no-resume to start this trial again")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], Mapping):
        raise CheckpointError(f"checkpoint {ckpt} is incomplete (missing {', '.join(missing) or 'config'}); "
                              f"run with --no-resume to start this trial again")
    diff = differences(state["config"], config.to_dict())
    if diff:
        raise CheckpointError(f"checkpoint {ckpt} was written by another configuration "
                              f"({describe_differences(diff)}); run with --no-resume to start this "
                              f"trial again, or --results-dir DIR to keep both")
    return state


def _restore(ckpt: Path, state: dict, model: nn.Module, learner: Learner) -> None:
    """Load the model's and the learner's state from a checkpoint of this configuration; a
    CheckpointError naming the file if they do not fit (a checkpoint edited or written by
    another version of the code)."""
    try:
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {ckpt} does not fit this trial ({type(exc).__name__}: "
                              f"{first}); run with --no-resume to start this trial again") from None


def _save_checkpoint(ckpt: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(ckpt, buf.getvalue())


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ResultsError(f"cannot remove {path}: {os_error_text(exc)}") from None


def _nan_metrics(num_tasks: int) -> dict:
    nan = float("nan")
    return {"avg_acc": nan, "bwt": nan, "forgetting": nan, "fwt": nan, "learning_acc": nan,
            "plasticity": np.full(num_tasks, np.nan), "avg_acc_curve": np.full(num_tasks, np.nan)}


def run_trial(config: Any, results_dir: PathLike = "results", *, folder: Optional[str] = None,
              device: str = "cpu", overwrite: bool = False, resume: bool = True, progress: bool = True,
              log: Optional[Callable[[str], None]] = None,
              after_task_hook: Optional[Callable[[int], None]] = None) -> TrialResult:
    """Run (or resume, or skip) one trial and return its result.

    ``config`` is the :class:`Config` of one experiment (a mapping is validated into one),
    including ``name`` and ``seed``. The result is written to
    ``<results_dir>/<folder>/seed<seed>.pkl`` (``folder`` defaults to the experiment's name; the
    CLI gives variants their own, :func:`sparse_nte.identity.folder_name`). With ``resume`` a
    checkpoint left by an interrupted run of the same configuration is continued; ``overwrite``
    discards both the result and the checkpoint. ``after_task_hook(i)`` runs after task i's
    checkpoint is written (tests use it to simulate a crash). ``log`` receives the progress
    lines (default: the ``sparse_nte.runner`` logger, at INFO).
    """
    from benchmarks import build_scenario
    from models import build_model
    from sparse_nte.ntk.linearize import LinearizedNetwork, linearize
    from tqdm.auto import tqdm

    config = as_config(config)
    log = log or _log.info
    exp, seed = config.name, config.seed
    folder = folder or exp
    out = result_path(results_dir, folder, seed)
    ckpt = checkpoint_path(results_dir, folder, seed)
    if overwrite:
        _remove(out)
        _remove(ckpt)
    else:
        stored = reusable_result(out, config)
        if stored is not None:
            res = TrialResult(stored)
            res["status"] = "skipped"
            return res

    _seed_everything(seed)
    scenario = build_scenario(
        dataset=config.dataset, mode=config.mnist_mode, num_tasks=config.num_batch,
        setting=config.scenario, cumulative=config.cumul, seed=seed,
        permute_first=config.permute_first, class_order=config.class_order,
        data_root=config.data_root or None, train_subset=config.train_subset or None,
        input_scaling=config.input_scaling, permutation_rng=config.permutation_rng,
    )
    log(f"[{exp} seed {seed}] data: {config.dataset} from {scenario.source}")
    model: nn.Module = build_model(config, scenario)
    if config.linearize:    # train f(x; theta0) + J(x; theta0)(theta - theta0) instead
        model = linearize(model)
    model = model.to(device)
    num_tasks = len(scenario.tasks)
    learner = build_learner(config, model, scenario, device)
    steps, epochs = learner.steps_per_task, learner.epochs_per_task
    for warning in learner.warnings:
        log(f"[{exp} seed {seed}] {warning}")

    eval_spec = EvalSpec.from_config(config)
    acc = np.full((num_tasks, num_tasks), np.nan)
    stats: Dict[str, list] = {"per_task": []}
    elapsed = 0.0
    start_task = 0
    random_init_acc = None
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, config, device)
        _restore(ckpt, state, model, learner)
        acc, stats, elapsed = state["acc"], state["stats"], state["elapsed_s"]
        random_init_acc = state["random_init_acc"]
        start_task = state["next_task"]
        log(f"[{exp} seed {seed}] resuming at task {start_task} from {ckpt}")
    if random_init_acc is None:
        init_row = evaluate_tasks(model, scenario, random_init_tasks(num_tasks, eval_spec.tasks),
                                  num_tasks - 1, device)
        random_init_acc = np.full(num_tasks, np.nan)
        for j, a in init_row.accuracy.items():
            random_init_acc[j] = a

    diverged: Optional[DivergedError] = None
    trained = start_task
    for i in tqdm(range(start_task, num_tasks), desc=f"{exp} seed {seed}", initial=start_task,
                  total=num_tasks, disable=not progress):
        t0, c0 = time.perf_counter(), time.process_time()
        ctx = TaskContext(task=i, num_tasks=num_tasks, scenario=scenario, model=model, device=device,
                          seed=seed, steps=steps[i], epochs=epochs[i],
                          batch_size=config.mb_size, train_order=config.train_order,
                          step_limit=config.train_iters, augment=config.augment)
        try:
            train_info = _train_task(learner, ctx, progress,
                                     config.epoch_eval_train if config.epoch_eval else None)
        except DivergedError as exc:
            diverged = exc
            log(f"[{exp} seed {seed}] {exc}")
            break
        t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
        linearized = isinstance(model, LinearizedNetwork)   # its own layers have no activity
        row = _evaluate_row(model, scenario, i, eval_spec, seed, device,
                            record=config.record_stats and not linearized)
        for j, a in row.accuracy.items():
            acc[i, j] = a
        t_eval, c_eval = time.perf_counter() - t0 - t_train, time.process_time() - c0 - c_train
        net = model.net if isinstance(model, LinearizedNetwork) else model
        task_stats = {"task": i, "train_s": t_train, "eval_s": t_eval,
                      "train_cpu_s": c_train, "eval_cpu_s": c_eval,
                      "eval_examples": dict(row.examples), **train_info, **learner.stats(),
                      "connectivity": model_stats.connectivity(net)}
        if config.record_stats:
            activity = None if linearized else [row.activity[j] for j in range(i + 1)]
            task_stats.update(model_stats.model_stats(net, activity=activity))
        stats["per_task"].append(task_stats)
        elapsed += time.perf_counter() - t0
        trained = i + 1
        log(f"[{exp} seed {seed}] task {i}: acc on seen tasks "
            + " ".join(f"{100 * a:.1f}" for a in acc[i, : i + 1]) + f"  ({t_train:.1f}s train)")
        state = {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
            "learner": learner.state_dict(), "acc": acc, "stats": stats, "elapsed_s": elapsed,
            "random_init_acc": random_init_acc, "torch_rng": torch.get_rng_state(), "next_task": i + 1,
        }
        _save_checkpoint(ckpt, state)
        if after_task_hook is not None:
            after_task_hook(i)
    learner.close()

    if diverged is None:
        metrics = continual_metrics(acc, random_init_acc=random_init_acc)
    else:
        metrics = _nan_metrics(num_tasks)
    result = {
        "config": config.to_dict(),
        "status": "done" if diverged is None else "diverged",
        "acc_matrix": acc,
        "acc_examples": examples_matrix([t.get("eval_examples") for t in stats["per_task"]]
                                        + [None] * (num_tasks - len(stats["per_task"])), num_tasks),
        "random_init_acc": np.asarray(random_init_acc),
        "metrics": metrics,
        "stats": model_stats.finalize(stats, learner.history()),
        "versions": versions(),
        "elapsed_s": float(elapsed),
        "tasks_trained": int(trained),
        "data_folder": str(scenario.source),
    }
    if diverged is not None:
        result["diverged"] = {"task": diverged.task, "epoch": diverged.epoch, "step": diverged.step,
                              "reason": diverged.reason}
    save_result(out, result)
    _remove(ckpt)
    res = TrialResult(result)
    res["status"] = result["status"]
    return res
