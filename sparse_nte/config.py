"""Experiment configuration: the typed, validated schema of ``exps/exps_params.cfg``.

The file is INI, read with :mod:`configparser`: a ``[DEFAULT]`` section with values shared by every
experiment, and one section per named experiment. The keys of the original sparse-dynamic-synapses
project (``benchmark``, ``mnist_mode``, ``num_batch``, ``cumul``, ``sparsify``, ``percent_on_fc``,
..., ``record_stats``) keep their meaning; the new keys configure datasets, scenario settings, the
NTE optimizer, Dale's law and plasticity schedules.

:class:`Config` is the single source of truth: one frozen dataclass field per key, each carrying
its type, default, allowed values and a one-line description (:data:`SCHEMA` is the same table
as :class:`KeySpec` records; :func:`schema_markdown` renders it for the README).

Resolution of one experiment, most specific last (a later layer overrides an earlier one)::

    schema defaults  <  [DEFAULT]  <  [<name>]  <  overrides (run_exps.py --set key=value)

then the dependent values are derived (``_Resolver.derive``, the only place that fills in
values from other values), then consistency is checked. Every problem raises :class:`ConfigError` naming the
file, section (or the ``--set`` flag) and key: unknown keys (with a did-you-mean), wrong types,
out-of-range values, inconsistent combinations, and values that would have no effect.

"Has no effect" rule: a key of a disabled feature (e.g. ``set_zeta`` with ``plasticity = none``)
may keep its schema default, and may be inherited from ``[DEFAULT]`` (shared values necessarily
include parameters some experiments switch off), but a NON-default value written in the
experiment's own section or given with ``--set`` is an error that names the setting disabling it.
"""
from __future__ import annotations

import configparser
import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union, get_type_hints

__all__ = [
    "Config",
    "ConfigError",
    "KeySpec",
    "SCHEMA",
    "ALIASES",
    "DEFAULT_SECTION",
    "load_config",
    "load_experiments",
    "list_experiments",
    "config_from_dict",
    "parse_override",
    "parse_overrides",
    "schema_markdown",
]

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_SECTION = "DEFAULT"

#: Old spellings accepted as keys: alias -> canonical key. ``percent_on`` is the original project's
#: single k-WTA fraction (its first DEFAULT section); it sets ``percent_on_fc``.
ALIASES: Mapping[str, str] = {"percent_on": "percent_on_fc"}

#: Number of classes of each dataset (``num_classes`` is checked against it).
DATASET_CLASSES: Mapping[str, int] = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
#: Datasets of each original ``benchmark`` family (the first one is the default).
BENCHMARK_DATASETS: Mapping[str, tuple[str, ...]] = {
    "mnist": ("mnist", "fashion_mnist"),
    "cifar": ("cifar100", "cifar10"),
}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A configuration or usage error: one readable line naming where it is and what is valid.

    ``str(err)`` is ``"<file> [<section>] <key>: <message>"`` for a value in a file and
    ``"--set <key>: <message>"`` for a command-line override. The parts are also available as
    attributes (``file``, ``section``, ``key``, ``flag``, ``message``; any may be None).
    ``run_exps.py`` prints ``str(err)`` and exits with status 2.
    """

    def __init__(self, message: str, *, file: Optional[PathLike] = None, section: Optional[str] = None,
                 key: Optional[str] = None, flag: Optional[str] = None) -> None:
        self.message = " ".join(str(message).split())  # always one line
        self.file = None if file is None else str(file)
        self.section = section
        self.key = key
        self.flag = flag
        super().__init__(self._format())

    def _format(self) -> str:
        if self.flag is not None:
            where = f"{self.flag} {self.key}" if self.key else self.flag
        else:
            parts = [self.file] if self.file else []
            if self.section is not None:
                parts.append(f"[{self.section}]")
            if self.key:
                parts.append(self.key)
            where = " ".join(parts)
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self):  # keyword-only constructor: make the error picklable (worker processes)
        return (_rebuild_config_error, (self.message, self.file, self.section, self.key, self.flag))


def _rebuild_config_error(message, file, section, key, flag) -> ConfigError:
    return ConfigError(message, file=file, section=section, key=key, flag=flag)


# ---------------------------------------------------------------------------------------------
# The schema: one dataclass field per key
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Interval:
    """A closed/open interval written as in mathematics: ``"(0, 1]"``, ``"[1, inf)"``."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "_Interval":
        m = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", text)
        if m is None:
            raise ValueError(f"bad interval {text!r}")
        return cls(float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]")

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below

    def __str__(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)
        if math.isinf(self.high):
            return f"{'>=' if self.low_closed else '>'} {num(self.low)}"
        return (f"{'[' if self.low_closed else '('}{num(self.low)}, {num(self.high)}"
                f"{']' if self.high_closed else ')'}")


def _key(default: Any, *, doc: str, group: str, choices: Optional[Iterable[str]] = None,
         interval: Optional[str] = None, kind: Optional[str] = None,
         value_aliases: Optional[Mapping[str, str]] = None, derived: Optional[str] = None) -> Any:
    """One row of the schema (a dataclass field whose metadata holds the rest of the row).

    ``derived``: the key's default is a placeholder (``""`` or 0) filled in by :func:`_derive`;
    the string says from what (shown in the README table).
    """
    meta = {
        "doc": doc,
        "group": group,
        "choices": tuple(choices) if choices is not None else None,
        "interval": _Interval.parse(interval) if interval is not None else None,
        "kind": kind,
        "value_aliases": dict(value_aliases or {}),
        "derived": derived,
    }
    return field(default=default, metadata=meta)


_G_RUN = "run"
_G_DATA = "benchmark and scenario"
_G_KWTA = "activity sparsity (k-WTA)"
_G_CONN = "connectivity"
_G_MODEL = "model"
_G_TRAIN = "training"
_G_NTE = "NTE optimizer"
_G_DALE = "Dale's law"
_G_PLAST = "plasticity"


@dataclass(frozen=True)
class Config(Mapping):
    """A resolved, validated experiment configuration (immutable).

    Read values as attributes (``cfg.lr``) or as a mapping (``cfg["lr"]``: components that take
    ``Mapping[str, Any]`` accept a Config directly). :meth:`to_dict` gives a plain dict of builtins
    (what results pickles store). Build one with :func:`load_config` or :func:`config_from_dict`;
    constructing it directly skips validation.

    ``name`` is the experiment's section name (results go to ``results/<name>/``); it is not a
    key of the file, so it is not in :data:`SCHEMA`, but it is part of :meth:`to_dict`.
    """

    name: str = ""

    # --- run --------------------------------------------------------------------------------
    description: str = _key(
        "", group=_G_RUN, kind="text",
        doc="One line describing the experiment (shown by `run_exps.py --list`).")
    seed: int = _key(
        0, group=_G_RUN, interval="[0, 4294967295]",
        doc="Seed of everything random: weights, masks, Dale signs, permutations, class order, batch "
            "order, subsets.")
    data_root: str = _key(
        "", group=_G_RUN, kind="path",
        doc="Folder with the dataset files; empty = the default locations searched by `benchmarks` "
            "(`~` is expanded; relative paths start at the working directory).")
    record_stats: bool = _key(
        True, group=_G_RUN,
        doc="Record per-step statistics (active-unit fractions, densities, Dale violations) in the "
            "results, as the original `record_stats`.")

    # --- benchmark and scenario --------------------------------------------------------------
    benchmark: str = _key(
        "mnist", group=_G_DATA, choices=("mnist", "cifar"),
        doc="Benchmark family of the original project: mnist (28x28 grey images) or cifar (32x32 "
            "colour images).")
    dataset: str = _key(
        "", group=_G_DATA, choices=("mnist", "fashion_mnist", "cifar10", "cifar100"),
        derived="empty = from `benchmark`: mnist -> mnist, cifar -> cifar100 (the original's iCIFAR-100)",
        doc="Dataset; must belong to `benchmark` (mnist: mnist, fashion_mnist; cifar: cifar10, cifar100).")
    mnist_mode: str = _key(
        "permutations", group=_G_DATA, choices=("permutations", "split"),
        value_aliases={"perm": "permutations"},
        doc="How tasks are made: permutations (every task is the whole dataset under its own fixed pixel "
            "permutation) or split (disjoint class subsets); cifar supports split only. The original "
            "spelling `perm` is read as permutations.")
    num_batch: int = _key(
        10, group=_G_DATA, interval="[1, inf)",
        doc="Number of tasks (the original's incremental batches); split gives every task "
            "num_classes / num_batch classes.")
    scenario: str = _key(
        "", group=_G_DATA, choices=("task", "domain", "class"),
        derived="empty = domain for permutations, task for split (as the original: one head per task "
                "only for split MNIST and iCIFAR)",
        doc="Continual-learning setting (van de Ven & Tolias 2019): task (one head per task, task id "
            "given), domain (one shared head, labels within a task), class (one head over the classes "
            "of all tasks; permuted: 10 new classes per task).")
    cumul: bool = _key(
        False, group=_G_DATA,
        doc="Cumulative training (joint-training upper bound): task i trains on the union of the "
            "training sets of tasks 0..i.")
    permute_first: bool = _key(
        True, group=_G_DATA,
        doc="permutations: task 0 is permuted too; false = task 0 keeps the original pixel order.")
    class_order: str = _key(
        "fixed", group=_G_DATA, choices=("fixed", "seeded"),
        doc="split: classes go to tasks in label order (fixed) or in an order shuffled with `seed` "
            "(seeded).")
    train_subset: int = _key(
        0, group=_G_DATA, interval="[0, inf)",
        doc="Training examples per task (0 = all), drawn at random with `seed`; for quick runs, results "
            "are not comparable with full-data runs.")
    num_classes: int = _key(
        0, group=_G_DATA, interval="[0, inf)", derived="0 = from `dataset` (10, or 100 for cifar100)",
        doc="Original key, kept for old files: if given it must equal the dataset's number of classes.")
    input_scaling: str = _key(
        "standard", group=_G_DATA, choices=("standard", "unit", "imagenet"),
        doc="Input scaling: standard ((x/255 - mean) / std per channel, the training split's "
            "statistics), unit (x/255 in [0, 1], the original project's MNIST input) or imagenet "
            "(ImageNet's channel statistics, the original project's iCIFAR input; 3-channel datasets "
            "only).")
    permutation_rng: str = _key(
        "seeded", group=_G_DATA, choices=("seeded", "original"),
        doc="permutations: task i's pixel permutation drawn from (seed, i) (seeded) or the original "
            "project's numpy RandomState(i).permutation, the same for every seed (original).")

    # --- activity sparsity (k-WTA) ------------------------------------------------------------
    sparsify: bool = _key(
        False, group=_G_KWTA,
        doc="k-winner-take-all activations instead of ReLU in the hidden layers (Ahmad & Scheinkman "
            "2019).")
    percent_on_fc: float = _key(
        0.1, group=_G_KWTA, interval="(0, 1]",
        doc="Fraction of winners in each hidden fc layer: k = round(n * percent_on_fc), at least 1. "
            "Alias: `percent_on`.")
    percent_on_conv: float = _key(
        0.1, group=_G_KWTA, interval="(0, 1]",
        doc="Fraction of winners in each conv layer's output (KWinners2d).")
    k_inference_factor: float = _key(
        1.5, group=_G_KWTA, interval="(0, inf)",
        doc="Winners at inference: min(n, int(k * k_inference_factor)).")
    boost_strength: float = _key(
        1.0, group=_G_KWTA, interval="[0, inf)",
        doc="Boost strength beta: winners are chosen on x_i * exp(-beta * d_i), d_i the duty cycle of "
            "unit i; 0 = no boosting.")
    boost_strength_factor: float = _key(
        1.0, group=_G_KWTA, interval="[0, 1]",
        doc="beta <- beta * boost_strength_factor after every epoch (update_boost_strength).")
    duty_cycle_period: int = _key(
        1000, group=_G_KWTA, interval="[1, inf)",
        doc="Window (in examples) of the duty-cycle running average.")

    # --- connectivity -------------------------------------------------------------------------
    weight_sparsity_fc: float = _key(
        1.0, group=_G_CONN, interval="(0, 1]",
        doc="ORIGINAL MEANING: density (fraction of NON-zero weights kept) of the hidden fc layers; "
            "1.0 = dense, 0.1 = 90% of the weights are zero.")
    weight_sparsity_conv: float = _key(
        1.0, group=_G_CONN, interval="(0, 1]",
        doc="Density of the conv layers (same meaning as weight_sparsity_fc).")
    erk: bool = _key(
        False, group=_G_CONN,
        doc="Allocate per-layer densities by Erdos-Renyi-Kernel scaling (Evci et al. 2020), keeping the "
            "total number of connections of the uniform densities.")
    sparse_exec: str = _key(
        "auto", group=_G_CONN, choices=("auto", "on", "off"),
        doc="Sparse execution path for sparse fc layers: auto (when faster), on, off.")
    sparse_init: str = _key(
        "torch", group=_G_CONN, choices=("torch", "fan_in"),
        doc="Initial weights of sparse layers without Dale's law: torch (PyTorch's default, scaled for "
            "the full fan-in, as the original project) or fan_in (scaled for the live inputs: times "
            "sqrt(fan_in / live inputs), nupic.torch's normalize_sparse_weights), which keeps the "
            "signal from shrinking by sqrt(density) per layer.")

    # --- model --------------------------------------------------------------------------------
    cnn: bool = _key(
        False, group=_G_MODEL,
        doc="Convolutional network (the original SimpleCNN) instead of an MLP.")
    conv_layers: int = _key(
        2, group=_G_MODEL, interval="[1, 2]",
        doc="Convolutions of the CNN (5x5, 64 then 128 channels): 2 (the original's final SimpleCNN) "
            "or 1 (the one-convolution SimpleCNN of its permuted-MNIST results).")
    hidden_units: int = _key(
        1024, group=_G_MODEL, interval="[1, inf)",
        doc="Units per hidden fc layer.")
    hidden_layers: int = _key(
        1, group=_G_MODEL, interval="[1, inf)",
        doc="Number of hidden fc layers.")
    dropout: float = _key(
        0.0, group=_G_MODEL, interval="[0, 1)",
        doc="Dropout probability after each hidden layer.")

    # --- training -----------------------------------------------------------------------------
    optimizer: str = _key(
        "sgd", group=_G_TRAIN, choices=("sgd", "adam", "nte"),
        doc="sgd (torch.optim.SGD), adam (torch.optim.Adam) or nte (Neural Tangent Ensemble posterior "
            "update, Benjamin et al. 2024).")
    lr: float = _key(
        0.01, group=_G_TRAIN, interval="(0, inf)",
        doc="Learning rate (sgd, adam; nte: plain SGD steps of the parameters NTE does not manage).")
    momentum: float = _key(
        0.0, group=_G_TRAIN, interval="[0, 1)",
        doc="SGD momentum (optimizer = sgd only).")
    nesterov: bool = _key(
        False, group=_G_TRAIN,
        doc="Nesterov momentum (optimizer = sgd; needs momentum > 0).")
    weight_decay: float = _key(
        0.0, group=_G_TRAIN, interval="[0, inf)",
        doc="L2 weight decay (sgd, adam).")
    mb_size: int = _key(
        128, group=_G_TRAIN, interval="[1, inf)",
        doc="Minibatch size.")
    train_ep: int = _key(
        1, group=_G_TRAIN, interval="[1, inf)",
        doc="Epochs on the first task.")
    train_ep_inc: int = _key(
        1, group=_G_TRAIN, interval="[0, inf)",
        doc="Epochs on every later task (> 0 when num_batch > 1).")
    train_order: str = _key(
        "shuffle", group=_G_TRAIN, choices=("shuffle", "original"),
        doc="Order of each epoch: shuffle (a new random order per (seed, task, epoch), last batch "
            "smaller) or original (the original project's: the task's rows padded to whole "
            "mini-batches by repeating its first rows, shuffled once by numpy RandomState(0), the "
            "same order in every epoch, task and seed).")

    # --- NTE optimizer ------------------------------------------------------------------------
    nte_beta: float = _key(
        0.01, group=_G_NTE, interval="(0, inf)",
        doc="Inverse temperature beta of each expert's likelihood 1 - beta * sign(w) * dl_n/dw of "
            "example n.")
    nte_eta: float = _key(
        1.0, group=_G_NTE, interval="(0, inf)",
        doc="Exponent eta of the likelihood: log-weights change by eta * sum_n log(1 - beta * sign(w) * "
            "dl_n/dw); 1 = the Bayesian posterior.")
    nte_max_delta: float = _key(
        0.1, group=_G_NTE, interval="(0, inf)",
        doc="Largest magnitude an expert weight may reach after renormalisation.")
    nte_expand: str = _key(
        "origin", group=_G_NTE, choices=("origin", "init"),
        doc="Ensemble weights are the weights (origin: expansion around 0, signs fixed) or their change "
            "from initialisation (init).")
    nte_noise_scale: float = _key(
        1e-3, group=_G_NTE, interval="(0, inf)",
        doc="nte_expand = init: ensemble weights start at nte_noise_scale * N(0, 1).")
    nte_params: str = _key(
        "weights", group=_G_NTE, choices=("weights", "all"),
        doc="Parameters NTE manages: weights (of linear and conv layers; the others, e.g. biases, take "
            "plain SGD steps with lr) or all.")
    nte_fast: str = _key(
        "auto", group=_G_NTE, choices=("auto", "on", "off"),
        doc="Power-series fast path for the per-example likelihoods: auto, on, off.")

    # --- Dale's law ---------------------------------------------------------------------------
    dale: bool = _key(
        False, group=_G_DALE,
        doc="Dale's law: every presynaptic unit is excitatory or inhibitory and all its outgoing weights "
            "keep its sign or are zero.")
    exc_fraction: float = _key(
        0.8, group=_G_DALE, interval="(0, 1]",
        doc="Fraction of excitatory presynaptic units in each constrained layer.")
    dale_input: bool = _key(
        False, group=_G_DALE,
        doc="Constrain the input layer too (input pixels get signs).")
    dale_kwta: str = _key(
        "include", group=_G_DALE, choices=("include", "exclude"),
        doc="Whether inhibitory units compete in the k-WTA (include) or the winners are chosen among "
            "excitatory units only (exclude).")

    # --- plasticity ---------------------------------------------------------------------------
    plasticity: str = _key(
        "none", group=_G_PLAST, choices=("none", "set", "rigl", "gmp", "grow", "nte_prune"),
        doc="Connectivity schedule: none, set (Mocanu et al. 2018), rigl (Evci et al. 2020), gmp "
            "(gradual magnitude pruning, Zhu & Gupta 2017), grow (density grows from task to task), "
            "nte_prune (NTE pruning; needs optimizer = nte).")
    plasticity_interval: int = _key(
        100, group=_G_PLAST, interval="[1, inf)",
        doc="Optimizer steps between connectivity updates (set, rigl, gmp: delta_t, nte_prune).")
    plasticity_end: float = _key(
        0.75, group=_G_PLAST, interval="(0, 1]",
        doc="Fraction of each task's steps after which connectivity is frozen (set, rigl, nte_prune).")
    set_zeta: float = _key(
        0.3, group=_G_PLAST, interval="(0, 1)",
        doc="SET: fraction zeta of each layer's connections with the smallest |w| removed at every "
            "update, and as many regrown at random.")
    rigl_alpha: float = _key(
        0.3, group=_G_PLAST, interval="(0, 1)",
        doc="RigL: drop fraction alpha/2 * (1 + cos(pi * t / T_end)) of smallest-|w| connections, "
            "regrown where |gradient| is largest.")
    gmp_final_sparsity: float = _key(
        0.9, group=_G_PLAST, interval="(0, 1)",
        doc="GMP: fraction of ZEROS s_f reached; s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * "
            "delta_t))^3.")
    gmp_start: int = _key(
        0, group=_G_PLAST, interval="[0, inf)",
        doc="GMP: step t0 of the first pruning event.")
    gmp_n: int = _key(
        10, group=_G_PLAST, interval="[1, inf)",
        doc="GMP: number n of pruning events.")
    grow_start_density: float = _key(
        0.1, group=_G_PLAST, interval="(0, 1]",
        doc="grow: density of every sparse layer on the first task (sets weight_sparsity_fc/conv).")
    grow_end_density: float = _key(
        0.5, group=_G_PLAST, interval="(0, 1]",
        doc="grow: density reached on the last task (linear in between).")
    grow_old_lr: float = _key(
        0.1, group=_G_PLAST, interval="[0, 1]",
        doc="grow: learning-rate factor of connections owned by earlier tasks (0 = frozen, 1 = no "
            "protection).")
    grow_init_scale: float = _key(
        1e-3, group=_G_PLAST, interval="(0, inf)",
        doc="Magnitude of newly grown weights under optimizer = nte (set, rigl, grow); additive "
            "optimizers start them at 0.")
    nte_prune_rule: str = _key(
        "magnitude", group=_G_PLAST, choices=("magnitude", "score"),
        doc="nte_prune: remove the nte_prune_rate fraction of smallest magnitudes (magnitude) or the "
            "experts whose running score of grad * sign is >= mean + nte_prune_z * std (score).")
    nte_prune_rate: float = _key(
        0.01, group=_G_PLAST, interval="(0, 1)",
        doc="nte_prune, magnitude rule: fraction of a layer's live connections pruned per event.")
    nte_prune_momentum: float = _key(
        0.99, group=_G_PLAST, interval="[0, 1)",
        doc="nte_prune, score rule: momentum m of the score v <- m v + (1 - m) grad * sign.")
    nte_prune_z: float = _key(
        2.33, group=_G_PLAST, interval="(0, inf)",
        doc="nte_prune, score rule: z threshold of the running score (2.33 = one-sided 1%).")

    # --- mapping interface and conversion ------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key != "name" and key not in SCHEMA:
            raise KeyError(f"{key!r} is not a config key{_did_you_mean(key, SCHEMA)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        yield "name"
        yield from SCHEMA

    def __len__(self) -> int:
        return 1 + len(SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        """``name`` and every key, as a plain ``dict`` of ``str``/``int``/``float``/``bool``
        (schema order): what results files store."""
        return {"name": self.name, **{k: getattr(self, k) for k in SCHEMA}}


@dataclass(frozen=True)
class KeySpec:
    """One row of the schema: a config key's type, default, allowed values and meaning."""

    name: str
    type: type
    default: Any
    doc: str
    group: str
    choices: Optional[tuple[str, ...]] = None
    interval: Optional[_Interval] = None
    kind: Optional[str] = None              # "text" (one line), "path", or None
    value_aliases: Mapping[str, str] = field(default_factory=dict)
    derived: Optional[str] = None

    def allowed(self) -> str:
        """Allowed values in words, e.g. ``"(0, 1]"``, ``"sgd, adam, nte"``, ``"integer >= 1"``."""
        if self.type is bool:
            return "true, false"
        if self.choices is not None:
            return ", ".join(self.choices)
        if self.interval is not None:
            return f"{'integer' if self.type is int else 'number'} {_interval_words(self.interval)}"
        return "one line of text" if self.kind == "text" else "a folder path"


def _interval_words(iv: _Interval) -> str:
    text = str(iv)
    return text if text.startswith((">", "<")) else f"in {text}"


def _build_schema() -> dict[str, KeySpec]:
    hints = get_type_hints(Config)
    out: dict[str, KeySpec] = {}
    for f in dataclasses.fields(Config):
        if "doc" not in f.metadata:     # ``name``: the section header, not a key
            continue
        m = f.metadata
        out[f.name] = KeySpec(name=f.name, type=hints[f.name], default=f.default, doc=m["doc"],
                              group=m["group"], choices=m["choices"], interval=m["interval"],
                              kind=m["kind"], value_aliases=m["value_aliases"], derived=m["derived"])
    return out


#: The schema: key -> KeySpec, in file order (benchmark keys first, plasticity last).
SCHEMA: Mapping[str, KeySpec] = _build_schema()


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------
_TRUE = {"1", "yes", "true", "on"}      # configparser.ConfigParser.BOOLEAN_STATES
_FALSE = {"0", "no", "false", "off"}
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?)"


def _expected(spec: KeySpec) -> str:
    """Type and range in words, for error messages: ``"a number in (0, 1]"``."""
    if spec.type is bool:
        return "a boolean (true/false, yes/no, on/off, 1/0)"
    if spec.choices is not None:
        extra = " or empty (derived)" if spec.derived else ""
        return "one of " + ", ".join(spec.choices) + extra
    if spec.type in (int, float):
        noun = "an integer" if spec.type is int else "a number"
        return f"{noun} {_interval_words(spec.interval)}" if spec.interval else noun
    return "one line of text" if spec.kind == "text" else "a folder path"


def _parse_value(spec: KeySpec, raw: Any) -> Any:
    """Parse ``raw`` (text from the file / ``--set``, or an already typed value) into the key's type.

    Raises ``ValueError`` with the reason; the caller adds file, section and key.
    """
    t = spec.type
    if spec.kind == "path" and isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if t is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
        if t is int:
            if not _INT_RE.fullmatch(text):
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
            value: Any = int(text)
        elif t is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {raw!r}")
        elif spec.choices is not None:
            low = text.lower()
            value = spec.value_aliases.get(low, low)
            if value == "" and spec.derived:
                return ""
            if value not in spec.choices:
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}"
                                 f"{_did_you_mean(low, spec.choices)}")
            return value
        elif spec.kind == "text":
            if "\n" in text:
                raise ValueError(f"must be one line, got {raw!r}")
            return text
        else:  # path
            if "\n" in text:
                raise ValueError(f"must be one line, got {raw!r}")
            return os.path.expanduser(text) if text else ""
    else:
        # typed values (config_from_dict, overrides given as Python values); bool is not a number
        if t is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
            return raw
        if t is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
            value = int(raw)
        elif t is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {raw!r}")
        else:
            raise ValueError(f"expected {_expected(spec)} as text, got {raw!r}")
    if spec.interval is not None and value not in spec.interval:
        raise ValueError(f"expected {_expected(spec)}, got {raw!r}")
    return value


def _show(value: Any) -> str:
    """A value as it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else "(empty)"


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Origin:
    """Where a value came from: a file section, the ``--set`` flag, a mapping, or the schema."""

    section: Optional[str] = None       # section name for file values
    flag: Optional[str] = None          # "--set" for overrides
    spelled: Optional[str] = None       # the key as written (an alias spelling, or None)
    explicit: bool = False              # written in the experiment's own section / --set


@dataclass(frozen=True)
class _Layer:
    values: Mapping[str, Any]
    origin: _Origin


class _Resolver:
    """Merges layers, derives dependent values and checks consistency, remembering origins."""

    def __init__(self, file: Optional[str], section: Optional[str]) -> None:
        self.file = file
        self.section = section or "<mapping>"  # the experiment's section: where a missing key belongs
        self.values: dict[str, Any] = {k: s.default for k, s in SCHEMA.items()}
        self.origins: dict[str, _Origin] = {k: _Origin() for k in SCHEMA}

    # errors ------------------------------------------------------------------------------------
    def error(self, key: str, message: str) -> ConfigError:
        """An error about ``key``, located where its value was written."""
        o = self.origins[key]
        shown = o.spelled or key
        if o.flag is not None:
            return ConfigError(message, flag=o.flag, key=shown)
        if o.section is not None:
            return ConfigError(message, file=self.file, section=o.section, key=shown)
        return ConfigError(f"{message} ({shown} is not set; its default is {_show(self.values[key])})",
                           file=self.file, section=self.section, key=shown)

    def conflict(self, message: str, *keys: str) -> ConfigError:
        """An error about a relation between ``keys``, located at the most specific of them
        (``--set`` before the experiment's section before [DEFAULT] before the schema default):
        usually the value the user changed last."""
        def rank(k: str) -> int:
            o = self.origins[k]
            return 3 if o.flag is not None else 2 if o.explicit else 1 if o.section is not None else 0
        return self.error(max(keys, key=rank), message)  # max keeps the first of equal ranks

    def where(self, key: str) -> str:
        """``"benchmark = mnist (in [DEFAULT])"``: a related value and its origin, for messages."""
        o = self.origins[key]
        place = ("--set" if o.flag is not None else f"in [{o.section}]" if o.section is not None
                 else "default")
        return f"{key} = {_show(self.values[key])} ({place})"

    # merging -----------------------------------------------------------------------------------
    def apply(self, layer: _Layer) -> None:
        seen: dict[str, str] = {}
        for raw_key, raw in layer.values.items():
            key = str(raw_key).strip().lower()
            canonical = ALIASES.get(key, key)
            origin = dataclasses.replace(layer.origin, spelled=key if key != canonical else None)
            if canonical == "name":
                raise self._layer_error(origin, key, "an experiment's name is its [section] header, "
                                                     "not a key")
            if canonical not in SCHEMA:
                hint = _did_you_mean(key, list(SCHEMA) + list(ALIASES))
                hint = hint or " (sparse_nte.config.schema_markdown() lists the valid keys)"
                raise self._layer_error(origin, key, f"unknown key{hint}")
            if canonical in seen:
                raise self._layer_error(origin, key, f"{key} and {seen[canonical]} are the same key "
                                                     f"({key if key != canonical else seen[canonical]} is an "
                                                     f"alias of {canonical}); give only one")
            seen[canonical] = key
            try:
                value = _parse_value(SCHEMA[canonical], raw)
            except ValueError as exc:
                raise self._layer_error(origin, key, str(exc)) from None
            self.values[canonical] = value
            self.origins[canonical] = origin

    def _layer_error(self, origin: _Origin, key: str, message: str) -> ConfigError:
        if origin.flag is not None:
            return ConfigError(message, flag=origin.flag, key=key)
        return ConfigError(message, file=self.file, section=origin.section, key=key)

    def explicit_non_default(self, key: str) -> bool:
        return self.origins[key].explicit and self.values[key] != SCHEMA[key].default

    # derivation --------------------------------------------------------------------------------
    def derive(self) -> None:
        """Fill in the values that depend on other values. This is the only place that does so.

        1. ``dataset`` empty -> the first dataset of ``benchmark``: mnist -> mnist,
           cifar -> cifar100 (the original iCIFAR-100).
        2. ``scenario`` empty -> ``domain`` for ``mnist_mode = permutations`` (one shared head, as
           the original ran permuted MNIST), ``task`` for ``split`` (the original kept one head per
           task for split MNIST and iCIFAR).
        3. ``num_classes`` 0 -> the number of classes of ``dataset``.
        4. ``plasticity = grow``: the first task's density is ``grow_start_density``, so
           ``weight_sparsity_fc`` (and ``weight_sparsity_conv`` when ``cnn``) are set to it; a
           different value written in the experiment's own section or with ``--set`` is an error.
        """
        v = self.values
        if v["dataset"] == "":
            v["dataset"] = BENCHMARK_DATASETS[v["benchmark"]][0]
        if v["scenario"] == "":
            v["scenario"] = "domain" if v["mnist_mode"] == "permutations" else "task"
        if v["num_classes"] == 0:
            v["num_classes"] = DATASET_CLASSES.get(v["dataset"], 0)
        if v["plasticity"] == "grow":
            start = v["grow_start_density"]
            for key in ("weight_sparsity_fc", "weight_sparsity_conv"):
                if key == "weight_sparsity_conv" and not v["cnn"]:
                    continue
                if self.origins[key].explicit and v[key] != start:
                    raise self.error(key, f"{key} = {_show(v[key])} contradicts plasticity = grow, whose "
                                          f"first-task density is {self.where('grow_start_density')}; "
                                          f"remove {key} or make it equal")
                v[key] = start

    # consistency -------------------------------------------------------------------------------
    def check(self) -> None:
        """Reject combinations that contradict each other, then values that would have no effect."""
        v, w = self.values, self.where
        # dataset, benchmark, tasks
        family = BENCHMARK_DATASETS[v["benchmark"]]
        if v["dataset"] not in family:
            right = next(b for b, ds in BENCHMARK_DATASETS.items() if v["dataset"] in ds)
            raise self.conflict(f"{w('dataset')} does not belong to {w('benchmark')}; set benchmark = "
                                f"{right}, or dataset to one of {', '.join(family)}", "dataset", "benchmark")
        if v["benchmark"] == "cifar" and v["mnist_mode"] != "split":
            raise self.conflict(f"{w('benchmark')} splits the classes into tasks (permuted CIFAR is not "
                                f"supported), but {w('mnist_mode')}; set mnist_mode = split",
                                "mnist_mode", "benchmark")
        n_classes = DATASET_CLASSES[v["dataset"]]
        if v["input_scaling"] == "imagenet" and v["benchmark"] != "cifar":
            raise self.conflict(f"{w('input_scaling')} normalises 3 RGB channels with ImageNet's "
                                f"statistics, but {w('dataset')} has grey images; use standard or unit",
                                "input_scaling", "dataset")
        if v["num_classes"] != n_classes:
            raise self.conflict(f"{w('num_classes')} but {v['dataset']} has {n_classes} classes; remove "
                                f"num_classes (it is derived from dataset)", "num_classes", "dataset")
        if v["mnist_mode"] == "split":
            divisors = [d for d in range(1, n_classes + 1) if n_classes % d == 0]
            if n_classes % v["num_batch"]:
                raise self.conflict(f"split {v['dataset']} has {n_classes} classes, which "
                                    f"{w('num_batch')} does not divide evenly; use one of "
                                    f"{', '.join(map(str, divisors))}", "num_batch", "mnist_mode", "dataset")
            if v["num_batch"] == n_classes and v["scenario"] != "class" and n_classes > 1:
                raise self.conflict(f"{w('num_batch')} gives tasks of 1 class, which leaves nothing to "
                                    f"classify within a task with {w('scenario')}; use scenario = class or "
                                    f"fewer tasks", "num_batch", "scenario")
        # training schedule and optimizer
        if v["num_batch"] > 1 and v["train_ep_inc"] == 0:
            raise self.conflict(f"{w('train_ep_inc')} would leave tasks 1..{v['num_batch'] - 1} untrained "
                                f"({w('num_batch')}); give them at least 1 epoch",
                                "train_ep_inc", "num_batch")
        if v["nesterov"] and v["momentum"] == 0 and v["optimizer"] != "adam":
            raise self.conflict(f"{w('nesterov')} needs momentum > 0, but {w('momentum')} (torch.optim.SGD "
                                f"rejects this too)", "nesterov", "momentum")
        # k-WTA needs at least one winner in each hidden fc layer (k as in sparse_nte.layers.KWinners)
        if v["sparsify"] and round(v["hidden_units"] * v["percent_on_fc"]) < 1:
            raise self.conflict(f"k = round(hidden_units * percent_on_fc) = round({v['hidden_units']} * "
                                f"{v['percent_on_fc']}) = 0 winners; percent_on_fc must exceed "
                                f"{0.5 / v['hidden_units']:.4g}", "percent_on_fc", "hidden_units")
        # plasticity
        p = v["plasticity"]
        if p == "nte_prune" and v["optimizer"] != "nte":
            raise self.conflict(f"{w('plasticity')} prunes by the NTE posterior and needs optimizer = nte, "
                                f"but {w('optimizer')}", "plasticity", "optimizer")
        if p in ("gmp", "nte_prune") and not (self._sparse_at_start() or v["dale"]):
            raise self.conflict(f"{w('plasticity')} prunes SparseWeights layers, but every hidden layer is "
                                f"dense and sign-free ({w('weight_sparsity_fc')}), so the model builds "
                                f"plain torch layers; start below density 1 (e.g. weight_sparsity_fc = "
                                f"0.99)", "plasticity", "weight_sparsity_fc")
        if p in ("set", "rigl") and not self._sparse_at_start():
            raise self.conflict(f"{w('plasticity')} rewires a sparse network at constant density, but every "
                                f"layer is dense ({w('weight_sparsity_fc')}); set weight_sparsity_fc < 1",
                                "plasticity", "weight_sparsity_fc")
        if p == "gmp":
            s_f = v["gmp_final_sparsity"]
            layers = ["weight_sparsity_fc"] + (["weight_sparsity_conv"] if v["cnn"] else [])
            for key in layers:
                if 1.0 - v[key] > s_f + 1e-12:
                    raise self.conflict(f"{w('gmp_final_sparsity')} is below the starting sparsity "
                                        f"1 - {key} = {1.0 - v[key]:.4g} ({w(key)}); GMP only prunes",
                                        "gmp_final_sparsity", key)
            if all(abs((1.0 - v[key]) - s_f) <= 1e-12 for key in layers):
                raise self.conflict(f"{w('gmp_final_sparsity')} equals the starting sparsity "
                                    f"(1 - weight_sparsity_fc), so GMP would never prune",
                                    "gmp_final_sparsity", *layers)
        if p == "grow":
            if v["grow_end_density"] <= v["grow_start_density"]:
                raise self.conflict(f"{w('grow_end_density')} must exceed {w('grow_start_density')}; for a "
                                    f"fixed density use plasticity = none with weight_sparsity_fc",
                                    "grow_end_density", "grow_start_density")
            if v["num_batch"] < 2:
                raise self.conflict(f"{w('plasticity')} grows connections from task to task and needs "
                                    f"num_batch >= 2, but {w('num_batch')}", "plasticity", "num_batch")
        self._check_no_effect()

    def _sparse_at_start(self) -> bool:
        v = self.values
        return v["weight_sparsity_fc"] < 1.0 or (v["cnn"] and v["weight_sparsity_conv"] < 1.0)

    def no_effect(self) -> dict[str, str]:
        """Keys that have no effect under the current values -> why (names the disabling setting)."""
        v = self.values
        out: dict[str, str] = {}

        def off(keys: Iterable[str], why: str) -> None:
            for k in keys:
                out.setdefault(k, why)

        if not v["sparsify"]:
            off(("percent_on_fc", "percent_on_conv", "k_inference_factor", "boost_strength",
                 "boost_strength_factor", "duty_cycle_period", "dale_kwta"),
                "k-WTA is off (sparsify = false)")
        elif v["boost_strength"] == 0:
            off(("boost_strength_factor",), "boost_strength = 0, so there is no boost to decay")
        if not v["cnn"]:
            off(("percent_on_conv", "weight_sparsity_conv", "conv_layers"),
                "there are no conv layers (cnn = false)")
        if v["mnist_mode"] == "permutations":
            off(("class_order",), "tasks are permutations (mnist_mode = permutations), not class splits")
        else:
            off(("permute_first", "permutation_rng"),
                "tasks are class splits (mnist_mode = split), not permutations")
        if v["num_batch"] == 1:
            off(("train_ep_inc",), "there is a single task (num_batch = 1)")
        if v["optimizer"] == "adam":
            off(("momentum", "nesterov"), "optimizer = adam has no SGD momentum")
        if v["optimizer"] != "nte":
            off(("nte_beta", "nte_eta", "nte_max_delta", "nte_expand", "nte_noise_scale", "nte_params",
                 "nte_fast"), f"optimizer = {v['optimizer']}, not nte")
        else:
            if v["nte_expand"] == "origin":
                off(("nte_noise_scale",),
                    "nte_expand = origin (the noise scale is used by nte_expand = init)")
            if v["nte_params"] == "all":
                off(("lr",), "optimizer = nte with nte_params = all manages every parameter (no SGD part)")
            off(("momentum", "nesterov", "weight_decay"),
                "optimizer = nte: the parameters it does not manage take plain SGD steps with lr")
        if not v["dale"]:
            off(("exc_fraction", "dale_input", "dale_kwta"), "Dale's law is off (dale = false)")
        # plasticity parameters: key -> schedules that read it
        p = v["plasticity"]
        users = {
            "plasticity_interval": ("set", "rigl", "gmp", "nte_prune"),
            "plasticity_end": ("set", "rigl", "nte_prune"),
            "set_zeta": ("set",), "rigl_alpha": ("rigl",),
            "gmp_final_sparsity": ("gmp",), "gmp_start": ("gmp",), "gmp_n": ("gmp",),
            "grow_start_density": ("grow",), "grow_end_density": ("grow",), "grow_old_lr": ("grow",),
            "nte_prune_rule": ("nte_prune",), "nte_prune_rate": ("nte_prune",),
            "nte_prune_momentum": ("nte_prune",), "nte_prune_z": ("nte_prune",),
        }
        for key, by in users.items():
            if p not in by:
                off((key,), f"plasticity = {p} does not use it (used by: {', '.join(by)})")
        if p == "nte_prune" and v["nte_prune_rule"] == "magnitude":
            off(("nte_prune_momentum", "nte_prune_z"), "nte_prune_rule = magnitude (used by the score rule)")
        if p == "nte_prune" and v["nte_prune_rule"] == "score":
            off(("nte_prune_rate",), "nte_prune_rule = score prunes by its z threshold (the rate is used by "
                                     "the magnitude rule)")
        if not (v["optimizer"] == "nte" and p in ("set", "rigl", "grow")):
            off(("grow_init_scale",), "it sizes weights grown under optimizer = nte with plasticity = set, "
                                      "rigl or grow; here new weights are not grown or start at 0")
        prunes = p in ("gmp", "nte_prune")
        if not self._sparse_at_start():
            off(("erk",), "every layer starts dense (weight_sparsity_fc = 1), so there are no densities to "
                          "allocate")
        if not self._sparse_at_start():
            off(("sparse_init",), "every layer starts dense (weight_sparsity_fc = 1), so no layer is "
                                  "initialised for sparse inputs")
        if not (v["weight_sparsity_fc"] < 1.0 or prunes or v["dale"]):
            off(("sparse_exec",), "there is no SparseWeights fc layer (weight_sparsity_fc = 1, dale = false, "
                                  "nothing prunes)")
        return out

    def _check_no_effect(self) -> None:
        for key, why in self.no_effect().items():
            if self.explicit_non_default(key):
                raise self.error(key, f"{key} = {_show(self.values[key])} has no effect: {why}; remove it, "
                                      f"or enable what it configures")

    def build(self, name: str) -> Config:
        return Config(name=name, **self.values)


def _resolve(layers: Iterable[_Layer], file: Optional[str], name: str) -> Config:
    r = _Resolver(file, name)
    for layer in layers:
        r.apply(layer)
    r.derive()
    r.check()
    return r.build(name)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
_NO_DEFAULT = "\x00sparse_nte: [DEFAULT] is read as a plain section\x00"


def _read(path: PathLike) -> tuple[configparser.ConfigParser, dict[str, dict[str, str]]]:
    """Parse the INI file; returns the parser and ``{section: {key: text}}`` in file order, DEFAULT
    included as a plain section (inheritance is done here, not by configparser)."""
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT, strict=True,
                                       inline_comment_prefixes=("#",), empty_lines_in_values=False)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=path) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"section [{exc.section}] appears twice (line {exc.lineno})", file=path) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"key {exc.option} appears twice in the section (line {exc.lineno})", file=path,
                          section=exc.section) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"line {exc.lineno} comes before any [section] header: {exc.line.strip()!r}",
                          file=path) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(f"line {n}: {text.strip()!r}" for n, text in exc.errors[:3])
        raise ConfigError(f"not INI syntax ({lines}); write key = value under a [section]",
                          file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=path) from None
    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    return parser, sections


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(name: str, file: Optional[PathLike]) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"experiment name {name!r} must be letters, digits, '_', '-' or '.' (not "
                          f"starting with '_', '-' or '.'): it names the results folder",
                          file=file, section=name if isinstance(name, str) else None)


def _experiment_layers(sections: Mapping[str, Mapping[str, str]], name: str, path: PathLike,
                       overrides: Optional[Mapping[str, Any]]) -> list[_Layer]:
    """The layers of experiment ``name``, general to specific: [DEFAULT], [name], --set."""
    if name != DEFAULT_SECTION and name not in sections:
        named = [s for s in sections if s != DEFAULT_SECTION]
        raise ConfigError(f"no experiment named {name!r}{_did_you_mean(name, named)}; "
                          f"run_exps.py --list shows the {len(named)} experiments", file=path)
    _check_name(name, path)
    layers = []
    if DEFAULT_SECTION in sections:
        layers.append(_Layer(sections[DEFAULT_SECTION], _Origin(section=DEFAULT_SECTION)))
    if name != DEFAULT_SECTION:
        layers.append(_Layer(sections[name], _Origin(section=name, explicit=True)))
    if overrides:
        layers.append(_Layer(dict(overrides), _Origin(flag="--set", explicit=True)))
    return layers


def load_config(path: PathLike, name: str, overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Resolve and validate experiment ``name`` of the INI file ``path``.

    ``overrides`` (key -> text or typed value, e.g. from :func:`parse_overrides`) win over the
    file; their errors name the ``--set`` flag. ``name = "DEFAULT"`` resolves the shared section
    alone. Raises :class:`ConfigError`.
    """
    _, sections = _read(path)
    return _resolve(_experiment_layers(sections, name, path, overrides), str(path), name)


def load_experiments(path: PathLike) -> dict[str, Config]:
    """Resolve and validate every named experiment of ``path`` (file order; ``[DEFAULT]`` is not
    an experiment). Raises :class:`ConfigError` at the first invalid one."""
    _, sections = _read(path)
    return {name: _resolve(_experiment_layers(sections, name, path, None), str(path), name)
            for name in sections if name != DEFAULT_SECTION}


def list_experiments(path: PathLike) -> list[tuple[str, str]]:
    """``(name, description)`` of every named experiment in file order, for ``run_exps.py --list``.

    Only the descriptions are validated (one line), so a broken section does not hide the list.
    """
    _, sections = _read(path)
    default_desc = sections.get(DEFAULT_SECTION, {}).get("description", "")
    out = []
    spec = SCHEMA["description"]
    for name, values in sections.items():
        if name == DEFAULT_SECTION:
            continue
        raw = values.get("description", default_desc)
        try:
            out.append((name, _parse_value(spec, raw)))
        except ValueError as exc:
            section = name if "description" in values else DEFAULT_SECTION
            raise ConfigError(str(exc), file=path, section=section, key="description") from None
    return out


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Validate a mapping of key -> value (text or typed) as one complete experiment.

    Missing keys take their schema defaults; an entry ``name`` names the experiment (default
    ``""``). The values count as shared (like ``[DEFAULT]``), so keys of disabled features are
    accepted. ``config_from_dict(cfg.to_dict()) == cfg`` for every resolved ``cfg``: a results
    file's config can be validated and rerun. Raises :class:`ConfigError`.
    """
    values = dict(values)
    name = values.pop("name", "")
    if name != "":
        _check_name(name, None)
    return _resolve([_Layer(values, _Origin(section="<mapping>"))], None, name)


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``--set key=value`` argument into ``(key, value)`` (key lower-cased, both stripped;
    the value may contain ``=``). The key is checked against the schema, with a did-you-mean."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}", flag="--set")
    key, value = text.split("=", 1)
    key = key.strip().lower()
    if not key:
        raise ConfigError(f"missing key before '=' in {text!r}", flag="--set")
    if ALIASES.get(key, key) not in SCHEMA:
        hint = _did_you_mean(key, list(SCHEMA) + list(ALIASES))
        hint = hint or " (sparse_nte.config.schema_markdown() lists the valid keys)"
        raise ConfigError(f"unknown key{hint}", flag="--set", key=key)
    return key, value.strip()


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--set`` arguments; a key (or its alias) given twice is an error."""
    out: dict[str, str] = {}
    canon: dict[str, str] = {}
    for item in items:
        key, value = parse_override(item)
        c = ALIASES.get(key, key)
        if c in canon:
            raise ConfigError(f"given twice (also as {canon[c]}={out[canon[c]]})", flag="--set", key=key)
        canon[c] = key
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Documentation
# ---------------------------------------------------------------------------------------------
def schema_markdown() -> str:
    """The schema as one Markdown table (key, type, default, allowed values, meaning), in schema
    order; generated so the README cannot drift from the code."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for spec in SCHEMA.values():
        if spec.derived:
            default = "(derived)"
        elif spec.default == "":
            default = "(empty)"
        else:
            default = f"`{_show(spec.default)}`"
        type_name = {bool: "bool", int: "int", float: "float"}.get(spec.type, "str")
        allowed = spec.allowed()
        if spec.value_aliases:
            allowed += " (also " + ", ".join(f"{a} = {c}" for a, c in spec.value_aliases.items()) + ")"
        doc = spec.doc + (f" Derived: {spec.derived}." if spec.derived else "")
        rows.append(f"| `{spec.name}` | {type_name} | {cell(default)} | {cell(allowed)} | {cell(doc)} |")
    return "\n".join(rows) + "\n"
