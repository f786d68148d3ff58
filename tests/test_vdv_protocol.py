"""The shipped van de Ven & Tolias experiments (``pmnist_vdv_*``) resolve to their permuted-MNIST
protocol ("Three scenarios for continual learning", arXiv:1904.07734, and the 2019 defaults of
their code for permuted MNIST, domain setting), and their studies run them together."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparse_nte.config import load_config
from sparse_nte.config.studies import load_study, study_config

SHIPPED = Path(__file__).resolve().parents[1] / "exps" / "exps_params.cfg"

#: The paper's protocol, written out from the paper (section 4 and appendix) and their code.
PROTOCOL = dict(
    dataset="mnist", mnist_mode="permutations", num_batch=10, permute_first=False,
    scenario="domain",                         # one shared 10-way head
    input_scaling="unit",                      # torchvision ToTensor: x / 255
    cnn=False, hidden_layers=2, hidden_units=1000, dropout=0.0,
    sparsify=False, weight_sparsity_fc=1.0, dale=False, plasticity="none",
    learning_rule="backprop", optimizer="adam", lr=1e-4, adam_beta2=0.999, weight_decay=0.0,
    mb_size=128, train_iters=5000, train_subset=0, data_pruning="none",
)
#: Each method's own values (their param_values.py of 2019, permuted MNIST, domain setting).
METHODS = {
    "pmnist_vdv_none": dict(strategy="none", cumul=False),
    "pmnist_vdv_ewc": dict(strategy="ewc", ewc_lambda=500.0, ewc_fisher="true",
                           ewc_fisher_examples=0, cumul=False),
    "pmnist_vdv_online_ewc": dict(strategy="online_ewc", ewc_lambda=1000.0, ewc_gamma=0.9,
                                  ewc_fisher="true", ewc_fisher_examples=0, cumul=False),
    "pmnist_vdv_si": dict(strategy="si", si_c=5.0, si_xi=0.1, cumul=False),
    "pmnist_vdv_lwf": dict(strategy="lwf", lwf_alpha=1.0, lwf_temperature=2.0, cumul=False),
    "pmnist_vdv_replay": dict(strategy="replay", replay_buffer=1000, replay_batch=128,
                              replay_selection="class_balanced", cumul=False),
    "pmnist_vdv_joint": dict(strategy="none", cumul=True),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_vdv_sections_resolve_to_the_protocol(name):
    c = load_config(SHIPPED, name)
    want = {**PROTOCOL, **METHODS[name]}
    assert {k: getattr(c, k) for k in want} == want
    assert c.num_classes == 10 and c.description


def test_5000_steps_of_128_are_the_papers_10_7_epochs():
    from types import SimpleNamespace

    from sparse_nte.learner import epochs_per_task

    c = load_config(SHIPPED, "pmnist_vdv_none")
    assert c.train_iters * c.mb_size / 60000 == pytest.approx(10.67, abs=0.01)
    assert epochs_per_task(SimpleNamespace(**c.to_dict()), 2, [60000, 60000]) == [11, 11]
    assert math.ceil(60000 / 128) * 10 < c.train_iters      # the 11th epoch is cut short


def test_vdv_study_runs_the_seven_with_at_least_three_seeds_and_offline():
    spec = load_study(SHIPPED, "vdv_pmnist")
    assert list(spec.experiments) == list(METHODS)
    assert len(spec.seeds) >= 3
    for name in METHODS:                       # --set dataset=fashion_mnist resolves for each
        c = study_config(spec, name, {"dataset": "fashion_mnist"})
        assert c.dataset == "fashion_mnist" and c.train_iters == 5000


SHORT = dict(dataset="fashion_mnist", num_batch=5, train_iters=200, train_subset=10000,
             hidden_units=400, lr=1e-3)


def test_short_fashion_study_changes_only_the_documented_scale():
    spec = load_study(SHIPPED, "vdv_pfmnist_short")
    assert list(spec.experiments) == list(METHODS) and len(spec.seeds) >= 3
    for name in METHODS:
        full = load_config(SHIPPED, name).to_dict()
        short = study_config(spec, name).to_dict()
        changed = {k for k in full if full[k] != short[k]}
        assert changed == set(SHORT), name
        assert {k: short[k] for k in SHORT} == SHORT


#: The constraints the bio sections add to the protocol (k-WTA, 10% connectivity, Dale's law).
CONSTRAINTS = dict(sparsify=True, percent_on_fc=0.1, weight_sparsity_fc=0.1, dale=True,
                   exc_fraction=0.8)


@pytest.mark.parametrize("method", ["none", "ewc", "si", "replay"])
def test_bio_sections_are_the_protocol_plus_the_constraints(method):
    dense = load_config(SHIPPED, f"pmnist_vdv_{method}").to_dict()
    bio = load_config(SHIPPED, f"pmnist_vdv_bio_{method}").to_dict()
    # exc_fraction = 0.8 is also the key's default, so only the other four differ
    assert {k for k in dense if dense[k] != bio[k]} - {"name", "description"} \
        == set(CONSTRAINTS) - {"exc_fraction"}
    assert {k: bio[k] for k in CONSTRAINTS} == CONSTRAINTS


def test_nte_ewc_is_nte_plus_the_papers_ewc_strength():
    # NTE weighs the penalty against the batch's summed loss, Adam against its mean: the same
    # lambda is 1/mb_size of Adam's relative weight (500 x mb_size failed, see the file's notes)
    adam = load_config(SHIPPED, "pmnist_vdv_bio_ewc")
    nte = load_config(SHIPPED, "pmnist_vdv_bio_nte_ewc")
    alone = load_config(SHIPPED, "pmnist_vdv_bio_nte")
    assert nte.optimizer == alone.optimizer == "nte" and nte.strategy == "ewc"
    assert nte.ewc_lambda == adam.ewc_lambda == 500
    a, b = alone.to_dict(), nte.to_dict()
    # the EWC keys left at their defaults (Fisher "true" on every example) are the protocol's
    assert {k for k in a if a[k] != b[k]} == {"name", "description", "strategy", "ewc_lambda"}


def test_bio_study_shares_the_short_scale_and_the_dense_runs():
    bio = load_study(SHIPPED, "bio_baselines")
    short = load_study(SHIPPED, "vdv_pfmnist_short")
    assert dict(bio.overrides) == dict(short.overrides) and bio.seeds == short.seeds
    for name in ("pmnist_vdv_none", "pmnist_vdv_ewc", "pmnist_vdv_si", "pmnist_vdv_replay"):
        assert name in bio.experiments        # the dense rows are the short study's runs
        assert study_config(bio, name).to_dict() == study_config(short, name).to_dict()


@pytest.mark.parametrize("name", ["nte", "nte_ewc"])
def test_dense_nte_sections_are_the_bio_ones_without_the_constraints(name):
    dense = load_config(SHIPPED, f"pmnist_vdv_{name}").to_dict()
    bio = load_config(SHIPPED, f"pmnist_vdv_bio_{name}").to_dict()
    assert {k for k in dense if dense[k] != bio[k]} - {"name", "description"} \
        == set(CONSTRAINTS) - {"exc_fraction"}
    assert not dense["sparsify"] and dense["weight_sparsity_fc"] == 1.0 and not dense["dale"]
