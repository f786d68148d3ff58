"""End-to-end: run_exps.py and the trial loop on generated datasets in the real on-disk formats
(and on the real Fashion-MNIST files when they are installed)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic import write_synthetic_dataset
from sparse_nte.config import load_config
from sparse_nte.results import checkpoint_path, result_path
from sparse_nte.errors import CheckpointError
from sparse_nte.runner import run_trial

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")

CFG = """
[DEFAULT]
dataset = mnist
mnist_mode = permutations
num_batch = 3
hidden_units = 64
hidden_layers = 1
sparsify = True
percent_on_fc = 0.25
duty_cycle_period = 100
train_ep = 2
train_ep_inc = 1
mb_size = 32
lr = 0.05
record_stats = True
data_root = {root}

[tiny]
description = tiny permuted run

[tiny_split_class]
description = split, class-incremental, Dale, SGD
mnist_mode = split
num_batch = 5
scenario = class
dale = True

[tiny_split_task_cumul]
description = split, task-incremental, cumulative
mnist_mode = split
num_batch = 5
cumul = True

[tiny_nte_rigl]
description = NTE with RigL
optimizer = nte
sparsify = False
weight_sparsity_fc = 0.3
plasticity = rigl
plasticity_interval = 5

[tiny_ucb]
description = dynamic data pruning (UCB) on half of each pruned epoch, from the second epoch
data_pruning = ucb
data_prune_rate = 0.5
data_prune_start = 1
train_ep = 3
train_ep_inc = 2

[tiny_ewc_replay]
description = EWC and replay on a sparse Dale network
strategy = ewc, replay
replay_buffer = 100
replay_batch = 16
weight_sparsity_fc = 0.5
dale = True

[tiny_nte_si_lwf_task]
description = NTE with SI and LwF, split task-incremental (several heads)
mnist_mode = split
num_batch = 5
optimizer = nte
sparsify = False
strategy = si, lwf

[tiny_cifar]
description = iCIFAR-10 on a CNN
dataset = cifar10
benchmark = cifar
mnist_mode = split
num_batch = 5
cnn = True
percent_on_conv = 0.2
hidden_units = 32
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", root, num_train=600, num_test=200, seed=0)
    write_synthetic_dataset("cifar10", root, num_train=300, num_test=100, seed=0)
    return root


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory, data_root):
    path = tmp_path_factory.mktemp("cfg") / "exps.cfg"
    path.write_text(CFG.format(root=data_root))
    return path


def config(cfg_file, name, **overrides):
    return load_config(cfg_file, name, {k: str(v) for k, v in overrides.items()}).to_dict()


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "run_exps.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_tiny_permuted_run_writes_documented_pickle(tmp_path, cfg_file):
    res = run_trial(config(cfg_file, "tiny"), tmp_path, progress=False, log=lambda m: None)
    path = result_path(tmp_path, "tiny", 0)
    with open(path, "rb") as f:
        stored = pickle.load(f)
    for key in ("config", "acc_matrix", "metrics", "stats", "versions", "elapsed_s"):
        assert key in stored
    acc = stored["acc_matrix"]
    assert isinstance(acc, np.ndarray) and acc.shape == (3, 3)
    needed = np.tril(np.ones((3, 3), dtype=bool)) | np.eye(3, k=1, dtype=bool)
    assert np.all((acc[needed] >= 0) & (acc[needed] <= 1))
    assert np.isnan(acc[~needed]).all()                  # eval_tasks = needed: no metric reads it
    np.testing.assert_array_equal(stored["acc_examples"] > 0, needed)
    assert set(stored["metrics"]) >= {"avg_acc", "bwt", "forgetting", "fwt", "plasticity"}
    assert stored["metrics"]["avg_acc"] == pytest.approx(acc[-1].mean())
    np.testing.assert_array_equal(stored["metrics"]["plasticity"], np.diag(acc))
    # learning happened (the synthetic classes are separable) and the config is plain data
    assert acc[0, 0] > 0.5 and stored["config"]["name"] == "tiny"
    per_task = stored["stats"]["per_task"]
    assert [s["task"] for s in per_task] == [0, 1, 2]
    for s in per_task:   # each task's training and evaluation time: wall-clock and CPU seconds
        for k in ("train_s", "eval_s", "train_cpu_s", "eval_cpu_s"):
            assert isinstance(s[k], float) and 0 <= s[k] < 600, (k, s[k])
    assert all(s["sign_violations"] == 0 and s["mask_violations"] == 0 for s in per_task)
    act = per_task[-1]["activity"]
    (layer,) = act
    assert act[layer]["overlap"].shape == (3, 3)
    # k-WTA with 25% on: measured activity (before dropout) at most k_inference / n
    assert act[layer]["active_fraction"].max() <= 0.25 * 1.5 + 1e-9
    assert not checkpoint_path(tmp_path, "tiny", 0).exists()
    assert res["status"] == "done"


def test_same_seed_same_matrix_different_seed_differs(tmp_path, cfg_file):
    a = run_trial(config(cfg_file, "tiny"), tmp_path / "a", progress=False, log=lambda m: None)
    b = run_trial(config(cfg_file, "tiny"), tmp_path / "b", progress=False, log=lambda m: None)
    c = run_trial(config(cfg_file, "tiny", seed=1), tmp_path / "c", progress=False, log=lambda m: None)
    np.testing.assert_array_equal(a["acc_matrix"], b["acc_matrix"])
    assert not np.array_equal(a["acc_matrix"], c["acc_matrix"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", ["tiny", "tiny_nte_rigl", "tiny_ucb", "tiny_ewc_replay",
                                  "tiny_nte_si_lwf_task"])
def test_resume_after_crash_gives_identical_results(tmp_path, cfg_file, name):
    cfg = config(cfg_file, name)
    full = run_trial(cfg, tmp_path / "full", progress=False, log=lambda m: None)

    def crash_after_task_1(i):
        if i == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, tmp_path / "crash", progress=False, log=lambda m: None,
                  after_task_hook=crash_after_task_1)
    assert checkpoint_path(tmp_path / "crash", name, 0).exists()
    assert not result_path(tmp_path / "crash", name, 0).exists()
    logs = []
    resumed = run_trial(cfg, tmp_path / "crash", progress=False, log=logs.append)
    assert any("resuming at task 2" in m for m in logs)
    np.testing.assert_array_equal(resumed["acc_matrix"], full["acc_matrix"])
    assert resumed["metrics"]["avg_acc"] == full["metrics"]["avg_acc"]
    assert resumed["stats"].get("history") == full["stats"].get("history")


def test_checkpoint_from_other_config_is_refused(tmp_path, cfg_file):
    cfg = config(cfg_file, "tiny")

    def crash(i):
        raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, tmp_path, progress=False, log=lambda m: None, after_task_hook=crash)
    with pytest.raises(CheckpointError, match=r"another configuration \(lr: 0.05 there, 0.01 here\); "
                                              r"run with --no-resume"):
        run_trial(config(cfg_file, "tiny", lr=0.01), tmp_path, progress=False, log=lambda m: None)


@pytest.mark.parametrize("name, heads", [("tiny_split_class", 1), ("tiny_split_task_cumul", 5)])
def test_split_settings_run(tmp_path, cfg_file, name, heads):
    res = run_trial(config(cfg_file, name), tmp_path, progress=False, log=lambda m: None)
    acc = res["acc_matrix"]
    assert acc.shape == (5, 5)
    if name == "tiny_split_class":
        # class-incremental: predictions range over the classes seen so far, so a task whose
        # classes have not been seen yet scores exactly 0 (the next task; later ones are not
        # evaluated: eval_tasks = needed)
        assert np.all(np.diag(acc, k=1) == 0)
        assert np.isnan(acc[np.triu_indices(5, k=2)]).all()
        assert np.diag(acc).mean() > 0.7
    else:
        # task-incremental with separate heads: 2-way tasks learnt well above chance
        assert np.diag(acc).mean() > 0.7


def test_cnn_on_cifar_format(tmp_path, cfg_file):
    res = run_trial(config(cfg_file, "tiny_cifar"), tmp_path, progress=False, log=lambda m: None)
    assert res["acc_matrix"].shape == (5, 5)
    assert np.isfinite(res["metrics"]["avg_acc"])


def test_cli_runs_skips_and_overwrites(tmp_path, cfg_file):
    out = cli("--config", cfg_file, "--name", "tiny", "--results-dir", tmp_path, "--no-progress",
              "--threads", "1", "--plot")
    assert out.returncode == 0, out.stderr
    assert "1 done" in out.stderr and (tmp_path / "tiny" / "seed0.png").exists()
    first = (tmp_path / "tiny" / "seed0.pkl").stat().st_mtime_ns
    again = cli("--config", cfg_file, "--name", "tiny", "--results-dir", tmp_path, "--no-progress")
    assert again.returncode == 0 and "1 skipped" in again.stderr
    assert (tmp_path / "tiny" / "seed0.pkl").stat().st_mtime_ns == first
    summary = cli("--summary", "tiny", "--results-dir", tmp_path)
    assert summary.returncode == 0 and "| tiny" in summary.stdout


@pytest.mark.parametrize("args, message", [
    (["--name", "tinny"], "did you mean 'tiny'"),
    (["--name", "tiny", "--set", "lr=fast"], "--set lr"),
    (["--name", "tiny", "--set", "hidden_unitz=3"], "hidden_units"),
    (["--name", "tiny", "--seeds", "a-b"], "--seeds"),
    (["--name", "tiny", "--workers", "0"], "--workers"),
    ([], "nothing to do"),
])
def test_cli_usage_errors_exit_2_with_one_line(tmp_path, cfg_file, args, message, capsys):
    from sparse_nte.cli import main

    assert main(["--config", str(cfg_file), "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_config_error_from_the_real_entry_point_has_no_traceback(tmp_path, cfg_file):
    out = cli("--config", cfg_file, "--results-dir", tmp_path, "--name", "tinny")
    assert out.returncode == 2 and "did you mean 'tiny'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_dry_run_prints_resolved_config(tmp_path, cfg_file):
    out = cli("--config", cfg_file, "--name", "tiny", "--seeds", "3,5", "--set", "lr=0.2", "--dry-run")
    assert out.returncode == 0
    # an override that changes the configuration gets its own results folder, shown with the path
    assert out.stdout.count("[tiny+lr=0.2]") == 2 and "seed 5" in out.stdout
    assert "-> results/tiny+lr=0.2/seed5.pkl  (run)" in out.stdout
    assert "lr                    = 0.2" in out.stdout or "= 0.2" in out.stdout
    assert not (tmp_path / "tiny").exists()


def test_cli_failed_run_exits_1(tmp_path, cfg_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli("--config", cfg_file, "--name", "tiny", "--results-dir", tmp_path / "res",
              "--data-root", empty, "--no-progress")
    assert out.returncode == 1
    assert "1 failed" in out.stderr and "DatasetNotFoundError" in out.stderr


def test_shipped_experiment_list():
    out = cli("--list")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert "quickstart" in names and "MLP_1LayerSparse" in names and "pmnist_nte" in names


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed "
                                                  "(.ci/run installs it when it runs as root)")
def test_quickstart_on_real_fashion_mnist_shows_forgetting_direction(tmp_path):
    """The quickstart on real data, shortened: permuted Fashion-MNIST, 3 tasks."""
    overrides = {"train_subset": "6000", "train_ep": "1", "train_ep_inc": "1"}
    cfg = load_config(REPO / "exps" / "exps_params.cfg", "quickstart", overrides).to_dict()
    res = run_trial(cfg, tmp_path, progress=False, log=lambda m: None)
    acc = res["acc_matrix"]
    assert acc[0, 0] > 0.7                     # real learning on task 0
    assert acc[0, 1] < 0.5                     # an unseen permutation is not solved
    assert acc[2, 2] > 0.7 and acc[2, 0] < acc[0, 0] + 0.02   # no backward boost from later tasks


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_split_fashion_mnist_class_il_forgets_task_il_does_not(tmp_path):
    """The published direction (e.g. van de Ven & Tolias 2019): with plain SGD, class-incremental
    learning forgets old tasks almost completely, task-incremental (multi-head) hardly at all."""
    overrides = {"train_subset": "2000", "hidden_units": "256", "train_ep": "2", "train_ep_inc": "2"}
    final = {}
    for name in ("sfmnist_class", "sfmnist_task"):
        cfg = load_config(REPO / "exps" / "exps_params.cfg", name, overrides).to_dict()
        final[name] = run_trial(cfg, tmp_path, progress=False, log=lambda m: None)["acc_matrix"]
    cls, task = final["sfmnist_class"], final["sfmnist_task"]
    assert cls[0, 0] > 0.8 and cls[-1, 0] < 0.2          # task 0 learnt, then forgotten
    assert task[-1, 0] > 0.75                            # separate heads keep it
    assert task[-1, :].mean() > cls[-1, :].mean() + 0.3


def test_schedule_that_can_never_act_is_reported(tmp_path, cfg_file):
    logs = []
    cfg = config(cfg_file, "tiny_nte_rigl", plasticity_interval=1000, num_batch=2)
    run_trial(cfg, tmp_path, progress=False, log=logs.append)
    assert any("will never act" in m and "plasticity_interval = 1000" in m for m in logs)


def test_same_result_in_separate_processes_with_different_hash_seeds(tmp_path, cfg_file):
    """Determinism across processes: nothing may depend on Python's per-process hash salt."""
    mats = []
    for hs in ("1", "2"):
        out = tmp_path / f"h{hs}"
        env = dict(os.environ, PYTHONHASHSEED=hs)
        done = subprocess.run([sys.executable, str(REPO / "run_exps.py"), "--config", str(cfg_file),
                               "--name", "tiny", "--results-dir", str(out), "--no-progress",
                               "--threads", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        with open(result_path(out, "tiny", 0), "rb") as f:
            mats.append(pickle.load(f)["acc_matrix"])
    np.testing.assert_array_equal(mats[0], mats[1])


def test_sparse_execution_path_end_to_end(tmp_path, cfg_file):
    """A 90%-sparse network trained and evaluated (inference_mode) on the sparse path gives the
    masked-dense results up to float rounding."""
    res = {}
    for mode in ("on", "off"):
        cfg = config(cfg_file, "tiny", weight_sparsity_fc=0.1, sparse_init="fan_in", hidden_units=512,
                     sparse_exec=mode)
        res[mode] = run_trial(cfg, tmp_path / mode, progress=False, log=lambda m: None)
    np.testing.assert_allclose(res["on"]["acc_matrix"], res["off"]["acc_matrix"], atol=0.02)
    assert all(s["mask_violations"] == 0 for s in res["on"]["stats"]["per_task"])


def test_data_pruning_trains_on_the_kept_rows_and_records_the_selection(tmp_path, cfg_file):
    """UCB at p = 0.5 from epoch 1: epoch 0 uses all 600 rows, later epochs 300; the runner
    counts exactly those steps and the results record what was kept."""
    res = run_trial(config(cfg_file, "tiny_ucb"), tmp_path, progress=False, log=lambda m: None)
    per_task = res["stats"]["per_task"]
    steps = [p["steps"] for p in per_task]
    # steps so far: task 0 = ceil(600/32) + 2 ceil(300/32), tasks 1, 2 = ceil(600/32) + ceil(300/32)
    assert steps == [39, 39 + 29, 39 + 2 * 29]
    sel = per_task[0]["selection"]
    assert sel["selector"] == "ucb" and sel["kept_fraction"] == [1.0, 0.5, 0.5]   # per epoch
    assert res["metrics"]["avg_acc"] > 0.2


@pytest.mark.parametrize("name", ["tiny_ewc_replay", "tiny_nte_si_lwf_task"])
def test_strategies_run_in_the_runner_with_their_stats_and_no_violations(tmp_path, cfg_file, name):
    res = run_trial(config(cfg_file, name), tmp_path, progress=False, log=lambda m: None)
    last = res["stats"]["per_task"][-1]
    assert set(last["strategy"]) == set(res["config"]["strategy"].split(", "))
    assert all(s["memory_bytes"] > 0 for s in last["strategy"].values())
    assert last["sign_violations"] == 0 and last["mask_violations"] == 0
    assert np.isfinite(res["metrics"]["avg_acc"])


def test_growth_records_the_density_of_every_task_mask_and_nonzero(tmp_path, cfg_file):
    """plasticity = grow under SGD: the stored config names the STARTING density; every task's
    densities (mask and non-zero, per layer and over all weights, sparse heads included) are in
    stats per_task[k]["connectivity"]; grown weights start non-zero, so the two agree."""
    res = run_trial(config(cfg_file, "tiny", plasticity="grow", grow_start_density=0.2,
                           grow_end_density=0.6, weight_sparsity_head=0.5),
                    tmp_path, progress=False, log=lambda m: None)
    assert res["config"]["weight_sparsity_fc"] == 0.2
    fan_in, units = 28 * 28, 64
    for k, (task, d) in enumerate(zip(res["stats"]["per_task"], (0.2, 0.4, 0.6))):
        c = task["connectivity"]
        hidden = c["layers"]["blocks.0.layer"]
        assert hidden["mask_density"] == round(d * fan_in) / fan_in, k
        assert hidden["nonzero_density"] == hidden["mask_density"], k
        assert c["layers"]["heads.0"]["mask_density"] == 0.5
        live = round(d * fan_in) * units + 10 * round(0.5 * units)
        assert c["num_weights"] == fan_in * units + units * 10
        assert c["mask_density"] == pytest.approx(live / c["num_weights"], rel=0, abs=1e-15)
        assert task["mask_violations"] == 0
    events = [h for h in res["stats"]["history"] if h["grown"]]
    assert [h["task"] for h in events] == [1, 2]
    assert all(h["nonzero_density"] == h["density"] for h in events)
