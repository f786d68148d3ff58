"""sparse_nte.run_experiment: the Python form of ``sparse-nte --name`` (same folders, same
results, same errors), and the ``sparse_nte`` logger the command line shows."""
import logging
import pickle

import numpy as np
import pytest

import sparse_nte
from benchmarks.synthetic import write_synthetic_dataset
from sparse_nte import cli
from sparse_nte.config import ConfigError, load_config
from sparse_nte.errors import TrialError

CFG = """
[DEFAULT]
dataset = mnist
num_batch = 2
hidden_units = 32
hidden_layers = 1
train_ep = 1
train_ep_inc = 1
mb_size = 64
lr = 0.1
record_stats = false
data_root = {root}

[tiny]
description = two tiny permuted tasks

[tiny_kwta]
description = the same with k-WTA
sparsify = true
percent_on_fc = 0.25
"""


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", root, num_train=200, num_test=100, seed=0)
    path = root / "exps.cfg"
    path.write_text(CFG.format(root=root))
    return path


def test_returns_one_result_per_seed_equal_to_the_pickles(cfg_file, tmp_path):
    res = sparse_nte.run_experiment("tiny", seeds="0-1", config_file=cfg_file, results_dir=tmp_path)
    assert [r["config"]["seed"] for r in res] == [0, 1]
    for r in res:
        assert r["status"] == "done" and r["config"]["name"] == "tiny"
        with open(tmp_path / "tiny" / f"seed{r['config']['seed']}.pkl", "rb") as fh:
            on_disk = pickle.load(fh)
        np.testing.assert_array_equal(on_disk["acc_matrix"], r["acc_matrix"])
        # the final average accuracy is the mean of the last row of the accuracy matrix
        assert r["metrics"]["avg_acc"] == pytest.approx(float(np.mean(r["acc_matrix"][-1])))
    assert not np.array_equal(res[0]["acc_matrix"], res[1]["acc_matrix"])  # seeds differ


def test_same_trial_as_the_command_line(cfg_file, tmp_path, capsys):
    """A trial run by the CLI is found finished by the API (same folder, same configuration)
    and returned unchanged; overrides go to the variant folder --set uses."""
    assert cli.main(["--config", str(cfg_file), "--name", "tiny_kwta", "--set", "lr=0.05",
                     "--results-dir", str(tmp_path), "--no-progress"]) == 0
    folder = tmp_path / "tiny_kwta+lr=0.05"
    with open(folder / "seed0.pkl", "rb") as fh:
        by_cli = pickle.load(fh)
    mtime = (folder / "seed0.pkl").stat().st_mtime_ns
    (res,) = sparse_nte.run_experiment("tiny_kwta", overrides={"lr": 0.05}, config_file=cfg_file,
                                       results_dir=tmp_path)
    assert (folder / "seed0.pkl").stat().st_mtime_ns == mtime  # skipped, not rerun
    np.testing.assert_array_equal(res["acc_matrix"], by_cli["acc_matrix"])
    assert res["config"] == load_config(cfg_file, "tiny_kwta", {"lr": "0.05"}).to_dict()


def test_a_config_runs_as_is_and_reruns_deterministically(cfg_file, tmp_path):
    cfg = load_config(cfg_file, "tiny")
    (a,) = sparse_nte.run_experiment(cfg, results_dir=tmp_path / "a")
    (b,) = sparse_nte.run_experiment(a["config"], results_dir=tmp_path / "b")  # a results file's config
    np.testing.assert_array_equal(a["acc_matrix"], b["acc_matrix"])
    assert (tmp_path / "a" / "tiny" / "seed0.pkl").exists()


def test_errors_before_anything_runs(cfg_file, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        sparse_nte.run_experiment("tiyn", config_file=cfg_file, results_dir=tmp_path)
    with pytest.raises(ConfigError, match="hidden_units"):
        sparse_nte.run_experiment("tiny", overrides={"hidden_units": 0}, config_file=cfg_file,
                                  results_dir=tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        sparse_nte.run_experiment("tiny", seeds=[-1], config_file=cfg_file, results_dir=tmp_path)
    with pytest.raises(ValueError, match="name"):
        sparse_nte.run_experiment({"dataset": "mnist"}, results_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_failed_trial_raises_naming_it(cfg_file, tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "seed0.pkl").write_bytes(b"not a pickle")
    with pytest.raises(TrialError, match="tiny seed 0 failed"):
        sparse_nte.run_experiment("tiny", seeds=[0, 1], config_file=cfg_file, results_dir=tmp_path)
    assert (tmp_path / "tiny" / "seed1.pkl").exists()  # the other trial still ran


def test_progress_lines_go_to_the_sparse_nte_logger(cfg_file, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="sparse_nte"):
        sparse_nte.run_experiment("tiny", config_file=cfg_file, results_dir=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("sparse_nte")]
    assert any("task" in line for line in lines), lines
    assert capsys.readouterr().out == ""  # a library prints nothing itself


def test_the_cli_shows_the_log_lines_on_stdout(cfg_file, tmp_path, capsys):
    assert cli.main(["--config", str(cfg_file), "--name", "tiny", "--results-dir", str(tmp_path),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    log = (tmp_path / "tiny" / "seed0.log").read_text()
    said = [line for line in log.splitlines() if line.startswith("[tiny seed 0] ")]  # the trial's lines
    assert len(said) >= 3 and all(line in out.splitlines() for line in said), (said, out)
    assert logging.getLogger("sparse_nte").handlers == [
        h for h in logging.getLogger("sparse_nte").handlers if isinstance(h, logging.NullHandler)]
