"""Training keys: the optimizer, batches, and how long each task trains (epochs, or a fixed
number of optimizer steps per task, ``train_iters``, as van de Ven & Tolias count training)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key

from benchmarks.original import TRAIN_ORDERS
from sparse_nte.rules.optimizers import OPTIMIZERS

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "training"


@dataclass(frozen=True)
class TrainingKeys:
    optimizer: str = key(
        "sgd", choices=tuple(OPTIMIZERS),
        doc="sgd (torch.optim.SGD), adam (torch.optim.Adam) or nte (Neural Tangent Ensemble posterior "
            "update, Benjamin et al. 2024).")
    lr: float = key(
        0.01, interval="(0, inf)",
        doc="Learning rate (sgd, adam; nte: plain SGD steps of the parameters NTE does not manage).")
    momentum: float = key(
        0.0, interval="[0, 1)",
        doc="SGD momentum (optimizer = sgd only).")
    nesterov: bool = key(
        False,
        doc="Nesterov momentum (optimizer = sgd; needs momentum > 0).")
    weight_decay: float = key(
        0.0, interval="[0, inf)",
        doc="L2 weight decay (sgd, adam).")
    fused_optimizer: bool = key(
        False,
        doc="sgd, adam, adamw: torch's fused update (one pass over each parameter, its gradient and "
            "state instead of one per arithmetic operation; 2-4x faster for large dense layers). "
            "Its rounding differs from the default update's in the last bit, so results for a seed "
            "differ slightly from fused_optimizer = false.")
    mb_size: int = key(
        128, interval="[1, inf)",
        doc="Minibatch size.")
    train_ep: int = key(
        1, interval="[1, inf)",
        doc="Epochs on the first task.")
    train_ep_inc: int = key(
        1, interval="[0, inf)",
        doc="Epochs on every later task (> 0 when num_batch > 1).")
    train_iters: int = key(
        0, interval="[0, inf)",
        doc="Optimizer steps per task, the first included (van de Ven & Tolias's 'iterations per "
            "task'); 0 = count epochs (train_ep, train_ep_inc). The steps run through the task's "
            "training set epoch after epoch, each epoch in its own order, the last one stopped "
            "where the count is reached; with cumul every task takes this many steps on the union "
            "of its training sets.")
    adam_beta2: float = key(
        0.999, interval="(0, 1)",
        doc="beta2 of adam / adamw (torch's default 0.999; Daruwalla & Lipasti's runs: 0.99).")
    train_order: str = key(
        "shuffle", choices=TRAIN_ORDERS,
        doc="Order of each epoch: shuffle (a new random order per (seed, task, epoch), last batch "
            "smaller) or original (the original project's: the task's rows padded to whole "
            "mini-batches by repeating its first rows, shuffled once by numpy RandomState(0), the "
            "same order in every epoch, task and seed).")


def check(r: "Resolver") -> None:
    v, w = r.values, r.where
    if v["num_batch"] > 1 and v["train_ep_inc"] == 0 and v["train_iters"] == 0:
        r.fail(r.conflict(f"{w('train_ep_inc')} would leave tasks 1..{v['num_batch'] - 1} untrained "
                          f"({w('num_batch')}); give them at least 1 epoch", "train_ep_inc", "num_batch"))
    if v["train_order"] == "original" and v["data_pruning"] != "none":
        r.fail(r.conflict(f"{w('train_order')} fixes every epoch's rows, but {w('data_pruning')} "
                          f"chooses them; use train_order = shuffle", "train_order", "data_pruning"))
    if v["train_iters"] > 0 and v["data_pruning"] != "none":
        r.fail(r.conflict(f"{w('train_iters')} counts steps, but {w('data_pruning')} plans its rows "
                          f"per epoch; use train_iters = 0 (epochs) with data pruning",
                          "train_iters", "data_pruning"))
    if v["nesterov"] and v["momentum"] == 0 and v["optimizer"] == "sgd":
        r.fail(r.conflict(f"{w('nesterov')} needs momentum > 0, but {w('momentum')} (torch.optim.SGD "
                          f"rejects this too)", "nesterov", "momentum"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if v["train_iters"] > 0:
        out.update(dict.fromkeys(("train_ep", "train_ep_inc"),
                                 f"train_iters = {v['train_iters']} sets the steps of every task"))
    elif v["num_batch"] == 1:
        out["train_ep_inc"] = "there is a single task (num_batch = 1)"
    if v["optimizer"] in ("adam", "adamw"):
        out.update(dict.fromkeys(("momentum", "nesterov"),
                                 f"optimizer = {v['optimizer']} has no SGD momentum"))
    else:
        out["adam_beta2"] = f"optimizer = {v['optimizer']}, not adam or adamw"
    if v["optimizer"] == "nte":
        out["fused_optimizer"] = "the NTE rule has no fused update (optimizer = nte)"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = TrainingKeys
