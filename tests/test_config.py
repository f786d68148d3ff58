"""Experiment configuration: the shipped experiments validate, values resolve as documented
([DEFAULT] < section < --set, derived values), and every kind of mistake is a one-line
ConfigError naming the file, section (or --set) and key."""
from __future__ import annotations

import dataclasses
import pickle
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_nte.config import (
    ALIASES,
    SCHEMA,
    Config,
    ConfigError,
    config_from_dict,
    list_experiments,
    load_config,
    load_experiments,
    parse_override,
    parse_overrides,
    schema_markdown,
)

SHIPPED = Path(__file__).resolve().parents[1] / "exps" / "exps_params.cfg"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exps.cfg"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def one(tmp_path: Path, section_body: str, default_body: str = "", **overrides) -> Config:
    """Resolve experiment [e] of a file made of the given [DEFAULT] and [e] bodies."""
    text = "[DEFAULT]\n" + textwrap.dedent(default_body) + "\n[e]\n" + textwrap.dedent(section_body)
    return load_config(write(tmp_path, text), "e", {k: str(v) for k, v in overrides.items()})


def error_of(fn, *args, **kwargs) -> ConfigError:
    """The (first) error raised; every error found is one line of the message."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert str(err).splitlines() == [str(e) for e in err.errors]
    assert all("\n" not in e.message for e in err.errors)
    return err.errors[0]


# ---------------------------------------------------------------------------------------------
# The shipped experiments
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> dict[str, Config]:
    return load_experiments(SHIPPED)


def test_every_shipped_experiment_validates_and_has_its_own_description(shipped):
    assert len(shipped) >= 20
    names = [name for name, _ in list_experiments(SHIPPED)]
    assert names == list(shipped)
    raw = SHIPPED.read_text(encoding="utf-8")
    for name, cfg in shipped.items():
        section = "\n" + raw.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]   # from its header line
        assert "\ndescription =" in section, f"[{name}] has no description of its own"
        assert cfg.description and len(cfg.description) <= 120
    # the shared section alone is a valid experiment too (the original ran it without --name)
    assert load_config(SHIPPED, "DEFAULT").dataset == "mnist"


def test_shipped_experiments_reproduce_the_original_study(shipped):
    for name, layers, sparse in [("MLP_1Layer", 1, False), ("MLP_1LayerSparse", 1, True),
                                 ("MLP_2Layers", 2, False), ("MLP_2LayersSparse", 2, True)]:
        c = shipped[name]
        assert (c.dataset, c.mnist_mode, c.num_batch, c.scenario) == ("mnist", "permutations", 10, "domain")
        assert (c.hidden_units, c.hidden_layers, c.sparsify, c.cnn) == (4000, layers, sparse, False)
        assert (c.lr, c.momentum, c.nesterov, c.weight_decay, c.dropout) == (0.1, 0.9, True, 1e-4, 0.5)
        assert (c.train_ep, c.train_ep_inc, c.mb_size) == (2, 2, 128)
        if sparse:
            assert (c.percent_on_fc, c.boost_strength, c.k_inference_factor) == (0.001, 1.0, 1.0)
    assert shipped["CNNSparse"].cnn and shipped["CNNSparse"].percent_on_conv == 0.05
    split = shipped["SplitMNIST"]
    assert (split.mnist_mode, split.num_batch, split.scenario, split.train_ep) == ("split", 5, "task", 30)
    icifar = shipped["Cifar100MLP"]
    assert (icifar.dataset, icifar.num_batch, icifar.num_classes) == ("cifar100", 10, 100)
    assert icifar.scenario == "task"
    assert shipped["Cifar100Cumul"].cumul and shipped["CNNCumul"].cumul


def test_shipped_new_questions_change_one_thing_at_a_time(shipped):
    base = shipped["pmnist_sgd"].to_dict()
    for name in ("pmnist_nte", "pmnist_adam", "pmnist_kwta"):
        assert shipped[name].to_dict() != base
    dale = shipped["pmnist_kwta_dale"].to_dict()
    free = shipped["pmnist_kwta"].to_dict()
    assert {k for k in dale if dale[k] != free[k]} == {"name", "description", "dale"}
    grow, fixed = shipped["pmnist_grow"], shipped["pmnist_sparse_fixed"]
    assert grow.grow_end_density == fixed.weight_sparsity_fc       # same final number of connections
    assert shipped["pmnist_nte_prune"].optimizer == "nte"


def test_quickstart_is_small_and_needs_only_offline_data(shipped):
    for name in ("quickstart", "quickstart_dense"):
        q = shipped[name]
        assert q.dataset == "fashion_mnist" and q.data_root == ""
        assert q.num_batch <= 3 and 0 < q.train_subset <= 20000
        assert q.hidden_layers * q.hidden_units <= 1000 and q.train_ep <= 2 and q.train_ep_inc <= 2
    assert shipped["quickstart"].sparsify and not shipped["quickstart_dense"].sparsify


def test_resolved_config_round_trips_through_a_plain_dict(shipped):
    for name, cfg in shipped.items():
        d = cfg.to_dict()
        assert all(type(v) in (str, int, float, bool) for v in d.values())
        assert pickle.loads(pickle.dumps(d)) == d
        assert config_from_dict(d) == cfg, name


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------
def test_default_inheritance_section_and_override_precedence(tmp_path):
    path = write(tmp_path, """
        [DEFAULT]
        lr = 0.5
        hidden_units = 300
        [a]
        lr = 0.2
        [b]
        """)
    a, b = load_config(path, "a"), load_config(path, "b")
    assert (a.lr, a.hidden_units) == (0.2, 300)          # section beats DEFAULT, DEFAULT is inherited
    assert (b.lr, b.hidden_units) == (0.5, 300)
    assert b.mb_size == SCHEMA["mb_size"].default        # neither sets it: the schema default
    c = load_config(path, "a", {"lr": "0.3", "hidden_units": 7})
    assert (c.lr, c.hidden_units) == (0.3, 7)            # --set beats everything, text or typed
    assert load_config(path, "DEFAULT").lr == 0.5


def test_derived_values(tmp_path):
    c = one(tmp_path, "benchmark = mnist")
    assert (c.dataset, c.scenario, c.num_classes) == ("mnist", "domain", 10)
    c = one(tmp_path, "benchmark = cifar\nmnist_mode = split")
    assert (c.dataset, c.scenario, c.num_classes) == ("cifar100", "task", 100)
    c = one(tmp_path, "benchmark = cifar\nmnist_mode = split\ndataset = cifar10\nscenario = class")
    assert (c.dataset, c.scenario, c.num_classes) == ("cifar10", "class", 10)
    c = one(tmp_path, "mnist_mode = split\nnum_batch = 5\nnum_classes = 10")
    assert (c.scenario, c.num_classes) == ("task", 10)
    c = one(tmp_path, "plasticity = grow\ngrow_start_density = 0.05\ngrow_end_density = 0.3\ncnn = true",
            default_body="weight_sparsity_fc = 0.5\nweight_sparsity_conv = 0.7\n")
    assert (c.weight_sparsity_fc, c.weight_sparsity_conv) == (0.05, 0.05)


def test_settings_supported_by_the_scenarios(tmp_path):
    # permuted class-incremental: every task's digits are new classes (benchmarks.scenarios)
    assert one(tmp_path, "scenario = class\n").scenario == "class"
    assert one(tmp_path, "mnist_mode = split\nnum_batch = 10\nscenario = class\n").num_batch == 10
    # pruning schedules work on dense layers that are SparseWeights because of Dale's law
    assert one(tmp_path, "plasticity = gmp\ndale = true\n").plasticity == "gmp"


def test_experiment_name(tmp_path):
    assert one(tmp_path, "").to_dict()["name"] == "e"
    assert config_from_dict({"name": "x1", "lr": 0.5}).name == "x1"
    err = error_of(load_config, write(tmp_path, "[my exp]\nlr = 1\n"), "my exp")
    assert err.section == "my exp" and "results folder" in err.message
    err = error_of(one, tmp_path, "name = other\n")
    assert err.key == "name" and "[section] header" in err.message


def test_original_spellings_are_read(tmp_path):
    c = one(tmp_path, "mnist_mode = perm\nsparsify = true\n", default_body="percent_on = 0.3\n")
    assert c.mnist_mode == "permutations" and c.percent_on_fc == 0.3
    c = one(tmp_path, "sparsify = true\npercent_on_fc = 0.2\n", default_body="percent_on = 0.3\n")
    assert c.percent_on_fc == 0.2                        # the more specific section wins over the alias
    c = one(tmp_path, "sparsify = true\n", percent_on=0.4)
    assert c.percent_on_fc == 0.4


def test_ini_details(tmp_path):
    c = one(tmp_path, "LR = 0.25   # inline comment\n; full-line comment\ndata_root = /d/%(x)s\n")
    assert c.lr == 0.25 and c.data_root == "/d/%(x)s"     # keys case-insensitive, no interpolation
    c = one(tmp_path, "data_root = ~/datasets\n")
    assert c.data_root == str(Path("~/datasets").expanduser())


def test_disabled_feature_values_may_be_inherited_or_default_but_not_written(tmp_path):
    # inherited from [DEFAULT]: shared values include parameters some experiments switch off
    c = one(tmp_path, "sparsify = false\n", default_body="percent_on_fc = 0.3\nset_zeta = 0.5\n")
    assert c.percent_on_fc == 0.3 and c.plasticity == "none"
    # written in the section but equal to the schema default: harmless
    one(tmp_path, f"set_zeta = {SCHEMA['set_zeta'].default}\nnte_beta = {SCHEMA['nte_beta'].default}\n")
    # written with a different value: an error naming the setting that disables it
    err = error_of(one, tmp_path, "set_zeta = 0.5\n")
    assert (err.section, err.key) == ("e", "set_zeta") and "plasticity = none" in err.message


def test_config_is_frozen_and_a_mapping(tmp_path):
    c = one(tmp_path, "lr = 0.2\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    assert c["lr"] == c.lr == 0.2 and c["name"] == c.name == "e"
    assert len(c) == 1 + len(SCHEMA) and dict(c) == c.to_dict() and list(c) == ["name", *SCHEMA]
    assert hash(c) == hash(one(tmp_path, "lr = 0.2\n"))
    with pytest.raises(KeyError, match="percent_on_fc"):
        c["percent_on_f"]


def test_list_experiments(tmp_path):
    path = write(tmp_path, """
        [DEFAULT]
        description = shared
        [b]
        description = second one
        [a]
        """)
    assert list_experiments(path) == [("b", "second one"), ("a", "shared")]


def test_a_broken_section_is_listed_but_not_loaded(tmp_path):
    path = write(tmp_path, """
        [good]
        description = fine
        [bad]
        description = has a typo
        hiden_units = 10
        """)
    assert list_experiments(path) == [("good", "fine"), ("bad", "has a typo")]
    assert load_config(path, "good").description == "fine"
    err = error_of(load_experiments, path)
    assert (err.section, err.key) == ("bad", "hiden_units")


# ---------------------------------------------------------------------------------------------
# Errors: unknown keys, types, ranges
# ---------------------------------------------------------------------------------------------
def test_unknown_key_with_did_you_mean(tmp_path):
    # the original iCIFAR sections wrote `weight_sparsity`, which its runner silently ignored
    err = error_of(one, tmp_path, "weight_sparsity = 0.4\n")
    assert (err.file, err.section, err.key) == (str(tmp_path / "exps.cfg"), "e", "weight_sparsity")
    assert "unknown key" in err.message and "weight_sparsity_fc" in err.message
    assert str(err).startswith(f"{tmp_path / 'exps.cfg'} [e] weight_sparsity: ")
    err = error_of(one, tmp_path, "", default_body="hiden_units = 3\n")
    assert err.section == "DEFAULT" and "'hidden_units'" in err.message
    err = error_of(one, tmp_path, "zzzz = 1\n")
    assert "did you mean" not in err.message and "schema_markdown" in err.message


@pytest.mark.parametrize("body, key, fragment", [
    ("hidden_units = 1.5", "hidden_units", "integer"),
    ("num_batch = 1e3", "num_batch", "integer"),
    ("train_ep = ", "train_ep", "integer"),
    ("sparsify = maybe", "sparsify", "boolean"),
    ("lr = fast", "lr", "number"),
    ("lr = nan", "lr", "finite"),
    ("lr = inf", "lr", "finite"),
    ("optimizer = sdg", "optimizer", "did you mean 'sgd'"),
    ("plasticity = rigl2", "plasticity", "rigl"),
    ("description = two\n  lines", "description", "one line"),
])
def test_wrong_type(tmp_path, body, key, fragment):
    err = error_of(one, tmp_path, body + "\n")
    assert (err.section, err.key) == ("e", key) and fragment in err.message


@pytest.mark.parametrize("key, value, shown", [
    ("lr", "0", "> 0"), ("percent_on_fc", "1.5", "(0, 1]"), ("dropout", "1", "[0, 1)"),
    ("momentum", "1.0", "[0, 1)"), ("num_batch", "0", ">= 1"), ("weight_sparsity_fc", "0", "(0, 1]"),
    ("boost_strength_factor", "1.1", "[0, 1]"), ("seed", "-1", "[0, 4294967295]"),
    ("train_ep_inc", "-1", ">= 0"), ("exc_fraction", "0", "(0, 1]"),
])
def test_out_of_range(tmp_path, key, value, shown):
    err = error_of(one, tmp_path, f"{key} = {value}\n")
    assert err.key == key and shown in err.message and repr(value) in err.message


# ---------------------------------------------------------------------------------------------
# Errors: inconsistent combinations and values without effect
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, key, fragment", [
    ("dataset = cifar10", "dataset", "benchmark = cifar"),
    ("benchmark = cifar\nmnist_mode = permutations\nscenario = task", "mnist_mode", "mnist_mode = split"),
    ("mnist_mode = split\nnum_batch = 10\nscenario = task", "num_batch", "tasks of 1 class"),
    ("mnist_mode = split\nnum_batch = 3", "num_batch", "1, 2, 5, 10"),
    ("benchmark = cifar\nmnist_mode = split\nnum_batch = 30", "num_batch", "1, 2, 4, 5, 10, 20, 25, 50, 100"),
    ("num_classes = 100", "num_classes", "mnist has 10 classes"),
    ("nesterov = true\nmomentum = 0", "nesterov", "momentum > 0"),
    ("num_batch = 4\ntrain_ep_inc = 0", "train_ep_inc", "tasks 1..3"),
    ("sparsify = true\nhidden_units = 10\npercent_on_fc = 0.01", "percent_on_fc", "= 0 winners"),
    ("optimizer = sgd\nplasticity = nte_prune", "plasticity", "optimizer = nte"),
    ("plasticity = set", "plasticity", "every layer is dense"),
    ("plasticity = gmp", "plasticity", "plain torch layers"),
    ("optimizer = nte\nplasticity = nte_prune", "plasticity", "plain torch layers"),
    ("plasticity = gmp\nweight_sparsity_fc = 0.2\ngmp_final_sparsity = 0.5", "gmp_final_sparsity",
     "only prunes"),
    ("plasticity = gmp\nweight_sparsity_fc = 0.5\ngmp_final_sparsity = 0.5", "gmp_final_sparsity",
     "never prune"),
    ("plasticity = grow\ngrow_start_density = 0.3\ngrow_end_density = 0.2", "grow_end_density",
     "must exceed"),
    ("plasticity = grow\nnum_batch = 1", "plasticity", "num_batch >= 2"),
    ("plasticity = grow\nweight_sparsity_fc = 0.3", "weight_sparsity_fc", "grow_start_density"),
])
def test_inconsistent_combinations(tmp_path, body, key, fragment):
    err = error_of(one, tmp_path, body + "\n")
    assert (err.section, err.key) == ("e", key) and fragment in err.message


@pytest.mark.parametrize("body, key, because", [
    ("set_zeta = 0.5", "set_zeta", "plasticity = none"),
    ("rigl_alpha = 0.5\nplasticity = set\nweight_sparsity_fc = 0.2", "rigl_alpha", "plasticity = set"),
    ("percent_on_fc = 0.3", "percent_on_fc", "sparsify = false"),
    ("sparsify = true\npercent_on_conv = 0.3", "percent_on_conv", "cnn = false"),
    ("weight_sparsity_conv = 0.5", "weight_sparsity_conv", "cnn = false"),
    ("sparsify = true\nboost_strength = 0\nboost_strength_factor = 0.5", "boost_strength_factor",
     "boost_strength = 0"),
    ("nte_beta = 0.5", "nte_beta", "optimizer = sgd"),
    ("optimizer = nte\nnte_noise_scale = 0.1", "nte_noise_scale", "nte_expand = origin"),
    ("optimizer = nte\nmomentum = 0.9", "momentum", "plain SGD steps"),
    ("optimizer = nte\nweight_decay = 0.1", "weight_decay", "plain SGD steps"),
    ("optimizer = nte\nnte_params = all\nlr = 0.5", "lr", "nte_params = all"),
    ("optimizer = adam\nmomentum = 0.9", "momentum", "optimizer = adam"),
    ("class_order = seeded", "class_order", "permutations"),
    ("mnist_mode = split\nnum_batch = 5\npermute_first = false", "permute_first", "class splits"),
    ("exc_fraction = 0.5", "exc_fraction", "dale = false"),
    ("dale = true\ndale_kwta = exclude", "dale_kwta", "sparsify = false"),
    ("num_batch = 1\ntrain_ep_inc = 3", "train_ep_inc", "single task"),
    ("weight_sparsity_fc = 0.2\nplasticity = set\ngrow_init_scale = 0.1", "grow_init_scale",
     "optimizer = nte"),
    ("weight_sparsity_fc = 0.2\ngrow_init_scale = 0.1", "grow_init_scale", "no weight is grown"),
    ("erk = true", "erk", "starts dense"),
    ("sparse_exec = on", "sparse_exec", "no SparseWeights fc layer"),
    ("optimizer = nte\nplasticity = nte_prune\nweight_sparsity_fc = 0.5\nnte_prune_z = 3", "nte_prune_z",
     "magnitude"),
    ("optimizer = nte\nplasticity = nte_prune\nweight_sparsity_fc = 0.5\nnte_prune_rule = score\n"
     "nte_prune_rate = 0.5", "nte_prune_rate", "z threshold"),
])
def test_non_default_value_of_a_disabled_feature_is_an_error(tmp_path, body, key, because):
    err = error_of(one, tmp_path, body + "\n")
    assert (err.section, err.key) == ("e", key) and "has no effect" in err.message and because in err.message
    # the same value is accepted when it comes from [DEFAULT]'s shared values
    lines = body.split("\n")
    shared = [line for line in lines if line.split("=")[0].strip() == key]
    own = [line for line in lines if line not in shared]
    assert one(tmp_path, "\n".join(own) + "\n", default_body=shared[0] + "\n")[key] != SCHEMA[key].default


@pytest.mark.parametrize("body", [
    "plasticity = grow\ngrow_init_scale = 0.01",                 # every optimizer, sgd included
    "plasticity = grow\noptimizer = adam\ngrow_init_scale = 0.01",
    "weight_sparsity_head = 0.1\nsparse_exec = on",              # the sparse heads run on it
    "weight_sparsity_head = 0.1\nsparse_init = fan_in",          # and are initialised by it
])
def test_keys_that_act_through_growth_or_sparse_heads_are_accepted(tmp_path, body):
    cfg = one(tmp_path, body + "\n")
    for line in body.split("\n"):
        k, v = (part.strip() for part in line.split("="))
        assert str(cfg[k]) == v


def test_relation_error_points_at_the_value_given_last(tmp_path):
    path = write(tmp_path, "[e]\nnesterov = true\nmomentum = 0.9\n")
    err = error_of(load_config, path, "e", {"momentum": "0"})
    assert (err.flag, err.key) == ("--set", "momentum") and "nesterov = true (in [e])" in err.message
    err = error_of(one, tmp_path, "mnist_mode = split\n", default_body="num_batch = 3\n")
    assert (err.section, err.key) == ("e", "mnist_mode")
    err = error_of(one, tmp_path, "", default_body="nesterov = true\n")      # only defaults involved
    assert (err.section, err.key) == ("DEFAULT", "nesterov")


def test_values_typed_in_a_mapping_are_checked_too():
    assert config_from_dict({"lr": 1, "sparsify": True}).lr == 1.0
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"hidden_units": 2.0})
    with pytest.raises(ConfigError, match="expected a boolean"):
        config_from_dict({"sparsify": 1})
    with pytest.raises(ConfigError, match="expected a number"):
        config_from_dict({"lr": True})


# ---------------------------------------------------------------------------------------------
# Errors: experiment names, --set, files
# ---------------------------------------------------------------------------------------------
def test_unknown_experiment_name_with_did_you_mean():
    err = error_of(load_config, SHIPPED, "mlp_1layer")
    assert err.file == str(SHIPPED) and "did you mean 'MLP_1Layer'" in err.message
    err = error_of(load_config, SHIPPED, "pmnist_ntee")
    assert "'pmnist_nte'" in err.message and "--list" in err.message


def test_bad_set_overrides():
    assert parse_override(" LR = 0.5 ") == ("lr", "0.5")
    assert parse_override("data_root=/a=b") == ("data_root", "/a=b")
    assert parse_override("percent_on=0.2") == ("percent_on", "0.2")
    for text, fragment in [("lr", "key=value"), ("=3", "missing key"), ("lrr=3", "did you mean 'lr'")]:
        err = error_of(parse_override, text)
        assert err.flag == "--set" and fragment in err.message and str(err).startswith("--set")
    err = error_of(parse_overrides, ["lr=0.1", "seed=1", "lr=0.2"])
    assert err.key == "lr" and "twice" in err.message
    err = error_of(parse_overrides, ["percent_on=0.1", "percent_on_fc=0.2"])
    assert "percent_on" in err.message
    err = error_of(load_config, SHIPPED, "pmnist_sgd", parse_overrides(["hidden_units=1.5"]))
    assert (err.flag, err.key, err.section, err.file) == ("--set", "hidden_units", None, None)
    assert str(err) == "--set hidden_units: expected an integer >= 1, got '1.5'"
    err = error_of(load_config, SHIPPED, "pmnist_sgd", {"percent_on_fc": "0.2"})
    assert err.flag == "--set" and "sparsify = false" in err.message


@pytest.mark.parametrize("text, fragment", [
    ("[a]\nlr = 1\nlr = 2\n", "appears twice"),
    ("[a]\n[a]\n", "appears twice"),
    ("lr = 1\n[a]\n", "before any [section]"),
    ("[a]\nthis line has no equals sign\n", "not INI syntax"),
])
def test_file_errors(tmp_path, text, fragment):
    path = write(tmp_path, text)
    err = error_of(load_config, path, "a")
    assert err.file == str(path) and fragment in err.message
    err = error_of(load_config, tmp_path / "missing.cfg", "a")
    assert "cannot read" in err.message


def test_config_error_is_a_picklable_value_error():
    err = ConfigError("bad\nvalue", file="f.cfg", section="s", key="k")
    assert isinstance(err, ValueError) and str(err) == "f.cfg [s] k: bad value"
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.file, back.section, back.key) == (str(err), "f.cfg", "s", "k")


# ---------------------------------------------------------------------------------------------
# Value parsing (properties)
# ---------------------------------------------------------------------------------------------
SPELLINGS = {"1": True, "yes": True, "true": True, "on": True, "0": False, "no": False, "false": False,
             "off": False}


@given(st.sampled_from(sorted(SPELLINGS)), st.lists(st.booleans(), min_size=5, max_size=5))
def test_booleans_accept_the_configparser_spellings_in_any_case(word, upper):
    text = "".join(c.upper() if u else c for c, u in zip(word, upper + [False] * len(word)))
    assert config_from_dict({"sparsify": f" {text} "}).sparsify is SPELLINGS[word]


@given(st.integers(min_value=1, max_value=10**9))
def test_integers_round_trip_and_fractions_are_rejected(n):
    assert config_from_dict({"hidden_units": str(n)}).hidden_units == n
    with pytest.raises(ConfigError, match="integer"):
        config_from_dict({"hidden_units": f"{n}.5"})


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_floats_round_trip_in_any_notation(x):
    assert config_from_dict({"lr": repr(x)}).lr == x
    assert config_from_dict({"lr": f"{x:e}"}).lr == float(f"{x:e}")


def test_float_spellings():
    assert config_from_dict({"weight_decay": "1e-4"}).weight_decay == 1e-4
    assert config_from_dict({"lr": "5"}).lr == 5.0 and isinstance(config_from_dict({"lr": "5"}).lr, float)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_restating_a_value_changes_nothing(data):
    """--set key=<the value in effect> gives the same config, unless the key has no effect in that
    experiment (then the restated, now explicit, non-default value is reported)."""
    exps = load_experiments(SHIPPED)
    name = data.draw(st.sampled_from(sorted(exps)))
    key = data.draw(st.sampled_from(sorted(SCHEMA)))
    cfg = exps[name]
    value = cfg[key]
    try:
        again = load_config(SHIPPED, name, {key: str(value)})
    except ConfigError as err:
        assert "has no effect" in err.message and value != SCHEMA[key].default
    else:
        assert again == cfg


# ---------------------------------------------------------------------------------------------
# Schema table
# ---------------------------------------------------------------------------------------------
def test_schema_is_complete_and_its_defaults_are_valid():
    for name in ("benchmark", "mnist_mode", "num_batch", "cumul", "sparsify", "percent_on_fc",
                 "percent_on_conv", "k_inference_factor", "boost_strength", "boost_strength_factor",
                 "duty_cycle_period", "weight_sparsity_fc", "weight_sparsity_conv", "cnn", "hidden_units",
                 "hidden_layers", "dropout", "lr", "nesterov", "momentum", "weight_decay", "mb_size",
                 "train_ep", "train_ep_inc", "record_stats", "dataset", "scenario", "permute_first",
                 "optimizer", "nte_beta", "nte_eta", "nte_max_delta", "nte_expand", "dale", "exc_fraction",
                 "dale_input", "plasticity", "seed", "data_root", "num_classes"):
        assert name in SCHEMA, name
    assert ALIASES == {"percent_on": "percent_on_fc"}
    for spec in SCHEMA.values():
        assert spec.doc.strip() and spec.type in (bool, int, float, str)
    defaults = config_from_dict({})
    assert defaults.optimizer == "sgd" and defaults.plasticity == "none" and not defaults.dale


def test_schema_markdown_has_one_row_per_key():
    md = schema_markdown()
    lines = md.strip().split("\n")
    assert lines[0] == "| key | type | default | allowed | meaning |"
    rows = lines[2:]
    assert [r.split("`")[1] for r in rows] == list(SCHEMA)
    for row in rows:
        assert row.replace("\\|", "").count("|") == 6
    assert "| `nte_expand` | str | `origin` | origin, init |" in md
    assert "| `lr` | float | `0.01` | number > 0 |" in md
