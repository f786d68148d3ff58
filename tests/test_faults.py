"""Fault injection: the bad inputs and faults a lab meets, each checked for what a user sees and
relies on -- the exit status; a message naming what was wrong and where (file, section, key,
flag, path); no traceback on the terminal for an error the toolkit understands; the rest of the
sweep still running; and nothing finished lost or overwritten (every result file is hashed
before and after).

Most faults drive the command line in this process (``sparse_nte.cli.main``, which
``run_exps.py`` calls) with its output captured at the file-descriptor level, on tiny generated
datasets in the real MNIST format. The ones that need processes of their own (signals,
``kill -9``, two runs of one trial, worker processes) run ``run_exps.py`` and are marked slow.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from benchmarks.datasets import locate_dataset
from benchmarks.errors import DatasetNotFoundError
from benchmarks.synthetic import idx_bytes, write_synthetic_dataset
from sparse_nte import cli
from sparse_nte.config import load_config
from sparse_nte.locks import TrialLock
from sparse_nte.runner import run_trial

REPO = Path(__file__).resolve().parent.parent
MNIST = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")

CONFIG = """
[DEFAULT]
data_root = {data}
dataset = mnist
mnist_mode = permutations
num_batch = 2
hidden_units = 16
hidden_layers = 1
train_ep = 1
train_ep_inc = 1
mb_size = 50
lr = 0.05
record_stats = False

[A]
description = tiny A

[B]
description = tiny B, another learning rate
lr = 0.02

[C]
description = tiny C, a third learning rate
lr = 0.03

[nte]
description = the NTE rule, tiny
optimizer = nte
train_subset = 100

[medium]
description = three tasks of a second or two each
num_batch = 3
train_ep = 20
train_ep_inc = 20
mb_size = 10

[long]
description = ten long tasks: runs until it is stopped
num_batch = 10
train_ep = 100
train_ep_inc = 100
mb_size = 10
"""

#: Broken copies of the dataset: section name -> (file damaged, damage, words of the message).
DATA_FAULTS = {
    "truncated": ("train-images-idx3-ubyte.gz", "truncate", "gzip data is truncated or corrupt"),
    "huge_header": ("train-images-idx3-ubyte.gz", "huge", "bytes in all"),
    "trailing": ("t10k-labels-idx1-ubyte.gz", "trailing", "trailing bytes after the data"),
    "bad_magic": ("t10k-images-idx3-ubyte.gz", "magic", "bad IDX magic number"),
    "bad_labels": ("train-labels-idx1-ubyte.gz", "labels", "labels must lie in 0..9"),
    "label_count": ("t10k-labels-idx1-ubyte.gz", "count", "labels for 100 images"),
    "zero_bytes": ("t10k-images-idx3-ubyte.gz", "empty", "only 0 bytes, too short for an IDX file"),
}
HUGE_DIMS = (2**32 - 1,) * 3


def _damage(path: Path, how: str) -> None:
    raw = gzip.decompress(path.read_bytes())
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:200])
        return
    if how == "huge":  # an IDX header declaring 3 sizes of 2**32 - 1 (the int64 product wraps)
        raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *HUGE_DIMS)
    elif how == "trailing":
        raw = raw + b"\0" * 7
    elif how == "magic":
        raw = b"hello, this is not an IDX file"
    elif how == "labels":
        labels = np.frombuffer(raw[8:], dtype=np.uint8).copy()
        labels[3] = 200
        raw = idx_bytes(labels)
    elif how == "count":
        raw = idx_bytes(np.frombuffer(raw[8:], dtype=np.uint8)[:90].copy())
    elif how == "empty":
        raw = b""
    path.write_bytes(gzip.compress(raw) if raw else b"")


class World:
    """The module's shared files: datasets (one good, the broken copies, an empty root), the
    experiment file and the results of a real ``run_exps.py`` run (A and B, seed 0)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        write_synthetic_dataset("mnist", self.data, num_train=200, num_test=100, seed=0)
        sections = []
        for name, (file, how, _) in DATA_FAULTS.items():
            shutil.copytree(self.data, root / name)
            _damage(root / name / "mnist" / file, how)
            sections.append(f"\n[{name}]\ndescription = the dataset with a fault: {how}\n"
                            f"data_root = {root / name}\n")
        self.empty = root / "empty"
        self.empty.mkdir()
        sections.append(f"\n[offline]\ndescription = no dataset anywhere, downloads disabled\n"
                        f"data_root = {self.empty}\n")
        self.cfg = root / "exps.cfg"
        self.cfg.write_text(CONFIG.format(data=self.data) + "".join(sections))
        self.finished = root / "finished"
        out = run_exps(self.cfg, self.finished, "--name", "A", "--name", "B")
        assert out.returncode == 0, out.stderr
        self.hashes = hashes(self.finished)
        assert set(self.hashes) == {"A/seed0.pkl", "B/seed0.pkl"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("faults"))


@pytest.fixture
def results(world, tmp_path) -> Path:
    """A copy of the finished results (A and B, seed 0) to run more trials into."""
    path = tmp_path / "results"
    shutil.copytree(world.finished, path)
    return path


def hashes(folder: Path) -> Dict[str, str]:
    """SHA-256 of every result file (``*.pkl``) under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.pkl"))}


def assert_kept(folder: Path, before: Dict[str, str]) -> None:
    """Every result file that existed is still there, byte for byte."""
    after = hashes(folder)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, f"finished results lost or overwritten: {sorted(changed)}"


def run_exps(cfg: Path, results: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_exps.py"), "--config", str(cfg),
                           "--results-dir", str(results), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> Dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", SPARSE_NTE_NO_DOWNLOAD="1")


def main(capfd, *argv: object) -> Tuple[int, str, str]:
    """``run_exps.py *argv`` in this process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def run(capfd, world: World, results: Path, *argv: object) -> Tuple[int, str, str]:
    return main(capfd, "--config", world.cfg, "--results-dir", results, "--threads", "1", *argv)


def assert_clean(*texts: str) -> None:
    """No traceback reached the terminal."""
    for text in texts:
        assert "Traceback" not in text, text


def summary_line(err: str, status: str, folder: str, seed: int) -> str:
    """The end-of-run summary line of one trial (with its continuation lines)."""
    m = re.search(rf"^  {status}\s+{re.escape(folder)} seed {seed}: .*(?:\n      .*)*", err, re.M)
    assert m, f"no {status} line for {folder} seed {seed} in:\n{err}"
    return m.group(0)


def load(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


# =============================================================================================
# Configuration and command-line mistakes: exit 2, one message naming where, nothing written
# =============================================================================================
@pytest.mark.parametrize("argv, words", [
    (["--name", "AA"], ["exps.cfg", "no experiment named 'AA'", "did you mean 'A'"]),
    (["--name", "A", "--set", "hidden_unitz=3"], ["--set hidden_unitz", "unknown key", "hidden_units"]),
    (["--name", "A", "--set", "hidden_units=1.5"], ["--set hidden_units", "expected an integer", "'1.5'"]),
    (["--name", "A", "--set", "lr=-1"], ["--set lr", "expected a number > 0", "'-1'"]),
    (["--name", "A", "--set", "nesterov=true"], ["--set nesterov", "needs momentum > 0"]),
    (["--name", "A", "--set", "lr"], ["--set", "expected key=value", "'lr'"]),
    (["--name", "A", "--seeds", "0-99999999999"], ["--seeds '0-99999999999'", "0..4294967295"]),
    (["--name", "A", "--seeds", "0-20000"], ["--seeds '0-20000'", "more than 10000 seeds"]),
    (["--name", "A", "--device", "gpu"], ["--device gpu", "not a torch device", "cuda:N"]),
    (["--name", "A", "--workers", "0"], ["--workers 0", ">= 1"]),
    ([], ["nothing to do", "--name EXP"]),
])
def test_command_line_mistakes_exit_2_with_one_message(capfd, world, results, argv, words):
    code, out, err = run(capfd, world, results, *argv)
    assert code == 2
    assert err.startswith("run_exps.py: error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err
    assert_clean(out, err)
    assert_kept(results, world.hashes)
    assert sorted(p.name for p in results.iterdir()) == ["A", "B"]


@pytest.mark.parametrize("body, lines", [
    ("[x]\ndescription = typo\nhiden_units = 3\n",
     ["[x] hiden_units: unknown key (did you mean 'hidden_units' or 'hidden_widths'?)"]),
    ("[x]\ndescription = out of range\npercent_on_fc = 1.5\n", ["[x] percent_on_fc: "]),
    ("[x]\ndescription = wrong type\ntrain_ep = two\n", ["[x] train_ep: expected an integer >= 1, got 'two'"]),
    ("[x]\ndescription = contradiction\nmnist_mode = split\nnum_batch = 3\n", ["[x] num_batch: "]),
    ("[x]\ndescription = malformed\nlr = 0.1\nlr = 0.2\n", ["[x]: key lr appears twice"]),
    ("RAW lr = 0.1\n[x]\ndescription = before any header\n", ["line 1 comes before any [section] header"]),
    ("[x]\ndescription = several errors at once\nhiden_units = 3\nlr = -1\ntrain_ep = x\n",
     ["[x] hiden_units: unknown key", "[x] lr: expected a number > 0, got '-1'",
      "[x] train_ep: expected an integer >= 1, got 'x'"]),
])
def test_config_file_mistakes_name_file_section_and_key(capfd, tmp_path, world, body, lines):
    cfg = tmp_path / "mine.cfg"
    raw = body.startswith("RAW ")
    cfg.write_text(body[4:] if raw else f"[DEFAULT]\ndata_root = {world.data}\n{body}")
    code, out, err = main(capfd, "--config", cfg, "--results-dir", tmp_path / "res", "--name", "x")
    assert code == 2
    got = err.strip().splitlines()
    assert len(got) == len(lines), err  # one line per error found
    for line, fragment in zip(got, lines):
        assert str(cfg) in line and fragment in line, err
    assert_clean(out, err)
    assert not (tmp_path / "res").exists()


def test_missing_config_file_says_file_not_found(capfd, tmp_path):
    code, out, err = main(capfd, "--config", tmp_path / "nope.cfg", "--name", "A")
    assert code == 2 and err.strip() == f"run_exps.py: error: --config {tmp_path / 'nope.cfg'}: file not found"
    code, out, err = main(capfd, "--config", tmp_path, "--list")
    assert code == 2 and f"--config {tmp_path}: is a folder" in err
    assert_clean(out, err)


def test_data_root_that_does_not_exist_is_a_usage_error(capfd, world, results, tmp_path):
    code, out, err = run(capfd, world, results, "--name", "A", "--data-root", tmp_path / "nodata")
    assert code == 2 and f"--data-root {tmp_path / 'nodata'}: no such folder" in err
    assert_kept(results, world.hashes)


def test_device_without_cuda_fails_once_up_front(capfd, world, results):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"  # one past the last GPU: "no CUDA" on a CPU machine
    code, out, err = run(capfd, world, results, "--name", "A", "--name", "C", "--device", device)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--device {device}: " in err and ("CUDA is not available" in err or "CUDA device(s)" in err)
    assert not (results / "C").exists()  # before any trial
    assert_kept(results, world.hashes)


def test_results_dir_that_is_a_file_is_a_usage_error(capfd, world, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("notes")
    code, out, err = run(capfd, world, target, "--name", "A")
    assert code == 2 and f"--results-dir {target}: is a file, not a folder" in err
    assert target.read_text() == "notes"


# =============================================================================================
# Data: a broken or missing dataset fails its trial with the whole message, the sweep goes on
# =============================================================================================
@pytest.mark.parametrize("section", list(DATA_FAULTS))
def test_broken_dataset_fails_its_trial_naming_the_file(capfd, world, results, section):
    file, _, words = DATA_FAULTS[section]
    code, out, err = run(capfd, world, results, "--name", section, "--name", "C")
    assert code == 1
    line = summary_line(err, "FAILED", section, 0)
    assert f"{world.root / section / 'mnist' / file}: " in line and words in line
    assert f"(log: {results / section / 'seed0.log'})" in line
    assert "CorruptFileError" in line and "Traceback" in (results / section / "seed0.log").read_text()
    assert_clean(out, err)
    assert not (results / section / "seed0.pkl").exists()
    assert (results / "C" / "seed0.pkl").exists()  # the next trial ran
    assert_kept(results, world.hashes)


def test_huge_idx_header_sizes_do_not_wrap_around(capfd, world, results):
    """The size check multiplies Python ints: 16 + (2**32 - 1)**3 bytes, not a negative number."""
    code, out, err = run(capfd, world, results, "--name", "huge_header")
    line = summary_line(err, "FAILED", "huge_header", 0)
    expected = 16 + math.prod(HUGE_DIMS)
    assert f"shape {HUGE_DIMS} of uint8 = {expected} bytes in all" in line
    assert not re.search(r"= -\d+ bytes", line)


def test_missing_dataset_offline_shows_the_whole_message(capfd, world, results):
    with pytest.raises(DatasetNotFoundError) as caught:  # the same search, asked directly
        locate_dataset("mnist", world.empty)
    message = str(caught.value).splitlines()
    assert len(message) > 3  # every folder searched, and how to provide the files
    code, out, err = run(capfd, world, results, "--name", "offline", "--name", "C")
    assert code == 1
    block = summary_line(err, "FAILED", "offline", 0)
    for line in message:
        assert line.strip() in block, f"{line!r} missing from the summary:\n{block}"
    assert_clean(out, err)
    assert (results / "C" / "seed0.pkl").exists()


# =============================================================================================
# Results folder: a file in its place, read-only, a full disk -- inside the trial's isolation
# =============================================================================================
def _set_immutable(folder: Path, on: bool) -> bool:
    """chattr +i / -i (root ignores permission bits, not this); False where unsupported."""
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_file_where_the_experiment_folder_should_be(capfd, world, results):
    (results / "C").write_text("my notes")
    code, out, err = run(capfd, world, results, "--name", "C", "--name", "B", "--seeds", "0-1")
    assert code == 1
    for seed in (0, 1):
        line = summary_line(err, "FAILED", "C", seed)
        assert f"{results / 'C'} exists but is not a folder; remove or rename it" in line
    summary_line(err, "skipped", "B", 0)
    summary_line(err, "done", "B", 1)
    assert (results / "C").read_text() == "my notes"
    assert_clean(out, err)
    assert_kept(results, world.hashes)


def test_read_only_experiment_folder(capfd, world, results):
    """A real read-only folder: chmod 555 for a normal user; as root (which ignores permission
    bits), chattr +i where the file system supports it."""
    folder = results / "A"
    if os.geteuid() != 0:
        folder.chmod(0o555)
        restore = lambda: folder.chmod(0o755)  # noqa: E731
    elif _set_immutable(folder, True):
        restore = lambda: _set_immutable(folder, False)  # noqa: E731
    else:
        pytest.skip("running as root without chattr +i on this file system: root ignores chmod "
                    "555; test_permission_denied_in_the_experiment_folder covers the same path")
    try:
        code, out, err = run(capfd, world, results, "--name", "A", "--name", "B", "--seeds", "0-1")
    finally:
        restore()
    assert code == 1
    summary_line(err, "skipped", "A", 0)  # a finished result is still read
    line = summary_line(err, "FAILED", "A", 1)
    assert f"cannot create the lock file {folder / 'seed1.lock'}: " in line
    assert ("Permission denied" in line or "Operation not permitted" in line)
    summary_line(err, "done", "B", 1)
    assert_clean(out, err)
    assert_kept(results, world.hashes)


def _under(fd_or_path, folder: Path) -> bool:
    path = os.readlink(f"/proc/self/fd/{fd_or_path}") if isinstance(fd_or_path, int) else fd_or_path
    return str(path).startswith(str(folder) + os.sep)


def test_permission_denied_in_the_experiment_folder(capfd, world, results, monkeypatch):
    """Every file a trial creates goes through os.open: deny it in one folder."""
    folder = results / "A"
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and _under(path, folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    code, out, err = run(capfd, world, results, "--name", "A", "--name", "B", "--seeds", "0-1")
    monkeypatch.undo()
    assert code == 1
    summary_line(err, "skipped", "A", 0)
    line = summary_line(err, "FAILED", "A", 1)
    assert f"cannot create the lock file {folder / 'seed1.lock'}: Permission denied" in line
    summary_line(err, "done", "B", 1)
    assert_clean(out, err)
    assert_kept(results, world.hashes)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to tell files apart")
def test_full_disk_in_one_folder(capfd, world, results, monkeypatch):
    """ENOSPC from fsync (where a full disk shows up for a buffered write) in folder C only."""
    folder = results / "C"
    real_fsync = os.fsync

    def full(fd):
        if _under(fd, folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = run(capfd, world, results, "--name", "C", "--name", "B", "--seeds", "0-1")
    monkeypatch.undo()
    assert code == 1
    for seed in (0, 1):
        line = summary_line(err, "FAILED", "C", seed)
        assert f"cannot write {folder / f'seed{seed}.ckpt'}: No space left on device; free some space" in line
        assert not list(folder.glob(f".seed{seed}.*.tmp"))  # no temporary left behind
    summary_line(err, "done", "B", 1)
    assert_clean(out, err)
    assert_kept(results, world.hashes)


def test_full_disk_on_a_real_tiny_file_system(capfd, world, results):
    """The same on a 16 KiB tmpfs mounted on the experiment's folder (needs root and mount)."""
    folder = results / "C"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "test_full_disk_in_one_folder simulates ENOSPC instead")
    try:
        code, out, err = run(capfd, world, results, "--name", "C", "--name", "B", "--seeds", "1")
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert code == 1
    line = summary_line(err, "FAILED", "C", 1)
    assert "No space left on device" in line and str(folder) in line
    summary_line(err, "done", "B", 1)
    assert_clean(out, err)
    assert_kept(results, world.hashes)


def test_results_path_that_does_not_exist_yet_is_created(capfd, world, tmp_path):
    deep = tmp_path / "new" / "deeper" / "results"
    code, out, err = run(capfd, world, deep, "--name", "C")
    assert code == 0 and (deep / "C" / "seed0.pkl").exists()


# =============================================================================================
# Corrupt or foreign result files: named, skipped by --summary and --plot, never overwritten
# =============================================================================================
def _bad_result(kind: str, results: Path) -> bytes:
    good = (results / "A" / "seed0.pkl").read_bytes()
    other = load(results / "B" / "seed0.pkl")
    return {"garbage": b"\x00\x01 not a pickle at all",
            "truncated": good[: len(good) // 3],
            "zero_bytes": b"",
            "a_list": pickle.dumps([1, 2, 3]),
            "no_config": pickle.dumps({"acc_matrix": np.eye(2), "metrics": {}}),
            "another_config": pickle.dumps({**other, "config": {**other["config"], "seed": 1}}),
            }[kind]


@pytest.mark.parametrize("kind, words", [
    ("garbage", "is not a readable result (UnpicklingError"),
    ("truncated", "is not a readable result"),
    ("zero_bytes", "is not a readable result (EOFError"),
    ("a_list", "is not a result of this toolkit (a list, not a dict)"),
    ("no_config", "is not a result of this toolkit (no config)"),
    ("another_config", "holds the result of another configuration (lr: 0.02 there, 0.05 here)"),
])
def test_bad_result_file_fails_its_trial_and_is_kept(capfd, world, results, kind, words):
    bad = results / "A" / "seed1.pkl"
    bad.write_bytes(_bad_result(kind, results))
    before = hashes(results)
    code, out, err = run(capfd, world, results, "--name", "A", "--name", "C", "--seeds", "0-1")
    assert code == 1
    line = summary_line(err, "FAILED", "A", 1)
    assert f"{bad} {words}" in line and "--overwrite" in line
    summary_line(err, "skipped", "A", 0)
    summary_line(err, "done", "C", 1)
    assert_clean(out, err)
    assert_kept(results, before)  # the bad file too: it is the user's to move away


def test_corrupt_result_is_named_by_summary_and_plot_which_go_on(capfd, world, results):
    bad = results / "A" / "seed1.pkl"
    bad.write_bytes(_bad_result("truncated", results))
    code, out, err = main(capfd, "--summary", "A", "B", "--results-dir", results)
    assert code == 0
    assert re.search(r"^\| A +\| 1 +\| 0 ", out, re.M) and re.search(r"^\| B +\| 1 +\| 0 ", out, re.M)
    assert f"skipped {bad} is not a readable result" in out
    code, out, err = run(capfd, world, results, "--name", "A", "--seeds", "0", "--plot")
    assert code == 0 and f"plot: {results / 'A' / 'seed0.png'}" in out
    assert f"run_exps.py: plot: skipped {bad} is not a readable result" in err
    assert (results / "A" / "seed0.png").exists() and not (results / "A" / "seed1.png").exists()
    assert_clean(out, err)


def test_summary_of_an_experiment_without_results_exits_1(capfd, world, results, tmp_path):
    code, out, err = main(capfd, "--summary", "no_such_exp", "--results-dir", results)
    assert code == 1 and out == ""
    assert err.strip() == f"run_exps.py: error: no results for no_such_exp in {results}"
    code, out, err = main(capfd, "--summary", "A", "no_such_exp", "--results-dir", results)
    assert code == 1 and "| A " in out and "no results for no_such_exp" in err
    code, out, err = main(capfd, "--summary", "A", "--results-dir", tmp_path / "nowhere")
    assert code == 1 and f"({tmp_path / 'nowhere'} does not exist)" in err


# =============================================================================================
# Checkpoints: a bad one names the .ckpt file and --no-resume; --no-resume recovers
# =============================================================================================
class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory) -> bytes:
    """The real checkpoint of trial A seed 1 after its first task (the run crashed there)."""
    out = tmp_path_factory.mktemp("ckpt")
    config = load_config(world.cfg, "A", {"seed": "1"})

    def crash(task):
        raise Crash()

    with pytest.raises(Crash):
        run_trial(config, out, progress=False, log=lambda m: None, after_task_hook=crash)
    return (out / "A" / "seed1.ckpt").read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "zero_bytes"])
def test_corrupt_checkpoint_names_the_file_and_no_resume(capfd, world, results, checkpoint, kind):
    ckpt = results / "A" / "seed1.ckpt"
    ckpt.write_bytes({"truncated": checkpoint[: len(checkpoint) // 2],
                      "garbage": b"PK\x03\x04 garbage " * 50, "zero_bytes": b""}[kind])
    code, out, err = run(capfd, world, results, "--name", "A", "--name", "C", "--seeds", "1")
    assert code == 1
    line = summary_line(err, "FAILED", "A", 1)
    assert f"checkpoint {ckpt} cannot be read (" in line
    assert "run with --no-resume to start this trial again" in line
    summary_line(err, "done", "C", 1)
    assert_clean(out, err)
    code, out, err = run(capfd, world, results, "--name", "A", "--seeds", "1", "--no-resume")
    assert code == 0 and "1 done" in err and not ckpt.exists()
    assert_kept(results, world.hashes)


def test_checkpoint_of_another_configuration_names_the_key(capfd, world, results, checkpoint):
    ckpt = results / "C" / "seed1.ckpt"  # A's checkpoint in C's place: lr differs
    ckpt.parent.mkdir()
    ckpt.write_bytes(checkpoint)
    code, out, err = run(capfd, world, results, "--name", "C", "--seeds", "1")
    assert code == 1
    line = summary_line(err, "FAILED", "C", 1)
    assert f"checkpoint {ckpt} was written by another configuration (lr: 0.05 there, 0.03 here)" in line
    assert "--no-resume" in line and ckpt.read_bytes() == checkpoint
    assert_clean(out, err)


def test_good_checkpoint_resumes(capfd, world, results, checkpoint):
    (results / "A" / "seed1.ckpt").write_bytes(checkpoint)
    code, out, err = run(capfd, world, results, "--name", "A", "--seeds", "1")
    assert code == 0 and "resuming at task 1 from" in out
    uninterrupted = run_trial(load_config(world.cfg, "A", {"seed": "1"}), results / "reference",
                              progress=False, log=lambda m: None)
    np.testing.assert_array_equal(load(results / "A" / "seed1.pkl")["acc_matrix"],
                                  uninterrupted["acc_matrix"])


# =============================================================================================
# Divergence: exit 1, one line saying where, saved and marked, NaN metrics, shown as such
# =============================================================================================
def _suptitles(monkeypatch) -> List[str]:
    """Record the title of every figure saved."""
    from matplotlib.figure import Figure

    titles: List[str] = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        titles.append(fig._suptitle.get_text() if fig._suptitle is not None else "")
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return titles


def test_diverged_run_is_saved_marked_and_shown(capfd, world, results, monkeypatch):
    titles = _suptitles(monkeypatch)
    code, out, err = run(capfd, world, results, "--name", "A", "--name", "C", "--set", "lr=1e30",
                         "--plot")
    assert code == 1
    folder = results / "A+lr=1e30"
    line = summary_line(err, "DIVERGED", "A+lr=1e30", 0)
    m = re.fullmatch(r"  DIVERGED  A\+lr=1e30 seed 0: diverged at task 0, epoch 0, step (\d+): the "
                     rf"training loss is nan \(saved as diverged: {re.escape(str(folder / 'seed0.pkl'))}\)",
                     line)
    assert m, line
    stored = load(folder / "seed0.pkl")
    assert stored["status"] == "diverged" and stored["tasks_trained"] == 0
    assert stored["diverged"] == {"task": 0, "epoch": 0, "step": int(m.group(1)),
                                  "reason": "the training loss is nan"}
    assert all(math.isnan(stored["metrics"][k]) for k in ("avg_acc", "bwt", "forgetting", "fwt"))
    assert np.isnan(stored["acc_matrix"]).all()
    assert any(t.startswith("A+lr=1e30 (seed 0)   DIVERGED at task 0, epoch 0, step ") for t in titles)
    assert not any("ACC" in t for t in titles)
    assert_clean(out, err)

    code, out, err = main(capfd, "--summary", "A", "--results-dir", results)
    assert code == 0
    assert re.search(r"^\| A\+lr=1e30 +\| 0 +\| 1 +\| n/a ", out, re.M)   # counted, not averaged
    assert re.search(r"^\| A +\| 1 +\| 0 +\| \d", out, re.M)               # the base: its own row
    assert "A+lr=1e30: seed 0 DIVERGED at task 0, epoch 0, step" in out

    before = hashes(results)
    code, out, err = run(capfd, world, results, "--name", "A", "--set", "lr=1e30")
    assert code == 1  # asked again: still reported, never turned into a score
    line = summary_line(err, "DIVERGED", "A+lr=1e30", 0)
    assert f"{folder / 'seed0.pkl'} holds a diverged result at task 0" in line and "--overwrite" in line
    assert_kept(results, before)


def test_nte_guard_ends_the_trial_as_diverged(capfd, world, results):
    """nte_beta = 1000: the likelihood guard clamps a large share of terms, the rule reports
    itself unhealthy and the runner ends the trial (the shipped pmnist_nte with nte_beta=1000
    clamps millions of terms the same way)."""
    code, out, err = run(capfd, world, results, "--name", "nte", "--set", "nte_beta=1000")
    assert code == 1
    line = summary_line(err, "DIVERGED", "nte+nte_beta=1000.0", 0)
    assert re.search(r"diverged at task 0, epoch 0, step \d+: the NTE guard clamped \d+ of \d+ "
                     r"likelihood terms .*lower nte_beta", line), line
    assert load(results / "nte+nte_beta=1000.0" / "seed0.pkl")["status"] == "diverged"
    code, out, err = run(capfd, world, results, "--name", "nte")  # the default beta is healthy
    assert code == 0 and "1 done" in err


@pytest.mark.parametrize("argv, folder, reason", [
    (["--name", "quickstart_dense", "--set", "lr=1e30"], "quickstart_dense+lr=1e30",
     r"the training loss is nan"),
    (["--name", "pmnist_nte", "--set", "nte_beta=1000", "--set", "train_subset=100"],
     "pmnist_nte+train_subset=100+nte_beta=1000.0", r"the NTE guard clamped \d+ of \d+ likelihood terms"),
])
def test_shipped_experiments_diverge_as_documented(capfd, tmp_path, argv, folder, reason):
    """The shipped sections themselves (on stand-in data): a huge learning rate, and an NTE beta
    so large that the rule's guard clamps most likelihood terms."""
    data = tmp_path / "data"
    for name in ("mnist", "fashion_mnist"):
        write_synthetic_dataset(name, data, num_train=200, num_test=100)
    code, out, err = main(capfd, *argv, "--data-root", data, "--results-dir", tmp_path / "res",
                          "--threads", "1")
    assert code == 1
    line = summary_line(err, "DIVERGED", folder, 0)
    assert re.search(rf"diverged at task 0, epoch 0, step \d+: {reason}", line), line
    stored = load(tmp_path / "res" / folder / "seed0.pkl")
    assert stored["status"] == "diverged" and math.isnan(stored["metrics"]["avg_acc"])
    assert_clean(out, err)


# =============================================================================================
# Two runs of one trial, permissions of what is written, progress bars, plain data, variants
# =============================================================================================
def test_trial_held_by_another_process_fails_without_touching_its_files(capfd, world, results):
    (results / "C").mkdir()
    with TrialLock.acquire(results / "C" / "seed0.lock"):  # this process is "the other run"
        code, out, err = run(capfd, world, results, "--name", "C", "--name", "B", "--seeds", "0-1")
    assert code == 1
    line = summary_line(err, "FAILED", "C", 0)
    assert (f"C seed 0 is being run by another process (pid {os.getpid()} on host "
            f"{os.uname().nodename}, lock file {results / 'C' / 'seed0.lock'})") in line
    summary_line(err, "done", "C", 1)
    summary_line(err, "done", "B", 1)
    assert not (results / "C" / "seed0.log").exists() and not (results / "C" / "seed0.pkl").exists()
    assert not list(results.rglob("*.lock"))  # every lock released
    assert_clean(out, err)
    assert_kept(results, world.hashes)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(capfd, world, results, checkpoint, umask, mode):
    """Under umask 022 lab-mates can read results, checkpoints, logs and figures."""
    old = os.umask(umask)
    try:
        code, out, err = run(capfd, world, results, "--name", "C", "--plot")
        with pytest.raises(Crash):
            run_trial(load_config(world.cfg, "C", {"seed": "2"}), results, progress=False,
                      log=lambda m: None, after_task_hook=lambda i: (_ for _ in ()).throw(Crash()))
        lock = TrialLock.acquire(results / "C" / "seed3.lock")
        lock_mode = (results / "C" / "seed3.lock").stat().st_mode & 0o777
        lock.release()
    finally:
        os.umask(old)
    assert code == 0
    for name in ("seed0.pkl", "seed0.log", "seed0.png", "seed2.ckpt"):
        assert (results / "C" / name).stat().st_mode & 0o777 == mode, name
    assert lock_mode == mode


def test_progress_bars_only_on_a_terminal_unless_forced(capfd, world, results):
    code, out, err = run(capfd, world, results, "--name", "C")  # stderr is a file here
    assert code == 0 and "\x1b[" not in err and "\r" not in err and "it/s" not in err
    code, out, err = run(capfd, world, results, "--name", "C", "--seeds", "1", "--progress")
    assert code == 0 and "it/s" in err


def test_result_from_run_exps_loads_without_torch_or_this_package(world):
    """A real result of run_exps.py, read where torch and the toolkit cannot be imported."""
    path = world.finished / "A" / "seed0.pkl"
    code = f"""
import pickle, sys
for name in ("torch", "sparse_nte", "benchmarks", "models"):
    sys.modules[name] = None
import numpy as np
def check(x, where):
    if isinstance(x, np.ndarray):
        assert x.dtype != object, where
    elif type(x) is dict:
        for k, v in x.items():
            assert type(k) in (str, int), where
            check(v, f"{{where}}[{{k!r}}]")
    elif type(x) in (list, tuple):
        for i, v in enumerate(x):
            check(v, f"{{where}}[{{i}}]")
    else:
        assert type(x) in (str, int, float, bool, type(None)) or isinstance(x, np.generic), (where, type(x))
with open({str(path)!r}, "rb") as f:
    r = pickle.load(f)
check(r, "result")
assert not any(m.startswith(("torch", "sparse_nte")) for m in sys.modules if sys.modules[m] is not None)
print(r["status"], r["acc_matrix"].shape, r["config"]["name"], sorted(r["versions"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(world.root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:4] == ["done", "(2,", "2)", "A"]


def test_readme_shortened_commands_never_pool_configurations(capfd, world, results):
    """The README's shortened versions (--set overrides) go to their own folders; --summary
    shows the experiment and each variant as separate rows; a result of another configuration
    in a folder (the experiment file was edited) is refused by a run and split by --summary."""
    code, out, err = main(capfd, "--name", "pmnist_sgd", "--name", "pmnist_nte", "--set",
                          "dataset=fashion_mnist", "--set", "num_batch=5", "--set",
                          "train_subset=10000", "--seeds", "0-2", "--dry-run")
    assert code == 0
    for name in ("pmnist_sgd", "pmnist_nte"):
        assert out.count(f"[{name}+dataset=fashion_mnist+num_batch=5+train_subset=10000]  seed") == 3

    code, out, err = run(capfd, world, results, "--name", "A", "--name", "B", "--set", "num_batch=3")
    assert code == 0
    code, out, err = main(capfd, "--summary", "A", "B", "--results-dir", results)
    assert code == 0
    rows = re.findall(r"^\| (\S+) +\| (\d+) ", out, re.M)
    assert rows == [("A", "1"), ("A+num_batch=3", "1"), ("B", "1"), ("B+num_batch=3", "1")]

    edited = world.root / "edited.cfg"  # [A] with another learning rate, same folder name
    edited.write_text(world.cfg.read_text().replace("description = tiny A\n",
                                                    "description = tiny A\nlr = 0.04\n"))
    code, out, err = main(capfd, "--config", edited, "--results-dir", results, "--name", "A")
    assert code == 1
    assert "holds the result of another configuration (lr: 0.05 there, 0.04 here)" in err
    code, out, err = main(capfd, "--config", edited, "--results-dir", results / "elsewhere",
                          "--name", "A", "--seeds", "1")
    shutil.copy(results / "elsewhere" / "A" / "seed1.pkl", results / "A" / "seed1.pkl")
    code, out, err = main(capfd, "--summary", "A", "--results-dir", results)
    assert "| A (configuration 1 of 2) | 1 " in out and "| A (configuration 2 of 2) | 1 " in out
    assert "seeds [1] differ from seeds [0] in lr: 0.05 there, 0.04 here; not pooled" in out
    assert_kept(results, world.hashes)


# =============================================================================================
# Processes: signals, kill -9, two runs of one trial, worker processes
# =============================================================================================
def _as_foreground_job() -> None:
    """A terminal's foreground job receives Ctrl-C; one started with ``&`` by a non-interactive
    shell (e.g. a CI script run in the background) inherits SIGINT ignored, and Python then keeps
    it ignored. The run under test is a foreground job whatever started the test suite."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Running:
    """``run_exps.py`` started in a session of its own (so a signal to its process group reaches
    it and its workers, never pytest), stdout and stderr to files."""

    def __init__(self, world: World, results: Path, *args: str) -> None:
        self.results = results
        self.out = results.parent / f"out{id(self)}.txt"
        self.err = results.parent / f"err{id(self)}.txt"
        with open(self.out, "w") as fo, open(self.err, "w") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "run_exps.py"), "--config", str(world.cfg),
                 "--results-dir", str(results), "--threads", "1", *args],
                cwd=REPO, env=_env(), stdout=fo, stderr=fe, start_new_session=True,
                preexec_fn=_as_foreground_job)

    def wait_for(self, pattern: str, timeout: float = 120) -> Path:
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(self.results.glob(pattern))
            if found:
                return found[0]
            if self.proc.poll() is not None:
                pytest.fail(f"run_exps.py ended ({self.proc.returncode}) before {pattern}:\n"
                            f"{self.err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern} within {timeout} s")
            time.sleep(0.02)

    def finish(self, timeout: float = 120) -> Tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:  # never leave it running
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.out.read_text(), self.err.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _pids(log: Path) -> List[int]:
    return [int(p) for p in re.findall(r"^\[pid (\d+)\] starting ", log.read_text(), re.M)]


MESSAGE = ("run_exps.py: {why}; finished trials are saved, and running the same command again "
           "resumes the others from their last checkpoint")


@pytest.mark.slow
def test_sigterm_exits_143_with_one_line_and_an_intact_checkpoint(world, results):
    import torch

    run = Running(world, results, "--name", "long")
    ckpt = run.wait_for("long/seed0.ckpt")
    os.kill(run.proc.pid, signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143
    assert err.strip().splitlines()[-1] == MESSAGE.format(why="terminated by SIGTERM")
    assert_clean(out, err)
    state = torch.load(ckpt, weights_only=False)
    assert state["next_task"] >= 1 and state["config"]["name"] == "long"
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("*.lock"))
    assert (results / "long" / "seed0.log").read_text().rstrip().endswith(
        "interrupted by SIGTERM: the trial resumes from its last checkpoint next time")
    assert_kept(results, world.hashes)


@pytest.mark.slow
def test_sigterm_with_workers_stops_them_cleanly(world, results):
    run = Running(world, results, "--name", "long", "--seeds", "0-1", "--workers", "2")
    run.wait_for("long/seed*.ckpt")
    workers = {p for s in (0, 1) for p in _pids(results / "long" / f"seed{s}.log")}
    assert len(workers) == 2 and run.proc.pid not in workers
    os.kill(run.proc.pid, signal.SIGTERM)  # forwarded to the workers
    code, out, err = run.finish()
    assert code == 143
    assert err.strip().splitlines()[-1] == MESSAGE.format(why="terminated by SIGTERM")
    assert_clean(out, err)
    assert not any(_alive(p) for p in workers)
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("*.lock"))
    assert_kept(results, world.hashes)


@pytest.mark.slow
def test_ctrl_c_with_workers_prints_no_traceback_and_the_bar_does_not_jump(world, results):
    run = Running(world, results, "--name", "long", "--seeds", "0-3", "--workers", "2", "--progress")
    run.wait_for("long/seed*.ckpt")
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code, out, err = run.finish()
    assert code == 130
    assert err.strip().splitlines()[-1] == MESSAGE.format(why="interrupted")
    assert_clean(out, err)
    assert "trials:" in err and "/4" in err
    assert not re.search(r"[1-4]/4", err) and "100%" not in err  # nothing finished, none counted
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("*.lock"))


@pytest.mark.slow
def test_second_run_of_a_trial_is_refused_and_kill_9_releases_it(world, results):
    first = Running(world, results, "--name", "medium")
    first.wait_for("medium/seed0.ckpt")
    os.kill(first.proc.pid, signal.SIGSTOP)  # frozen mid-trial, holding the lock: no race
    try:
        second = run_exps(world.cfg, results, "--name", "medium", "--name", "C", "--threads", "1")
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.finish()
    assert second.returncode == 1
    line = summary_line(second.stderr, "FAILED", "medium", 0)
    assert f"medium seed 0 is being run by another process (pid {first.proc.pid} on host " in line
    summary_line(second.stderr, "done", "C", 0)
    assert_clean(second.stdout, second.stderr)
    assert _pids(results / "medium" / "seed0.log") == [first.proc.pid]  # its log untouched too

    assert (results / "medium" / "seed0.lock").exists()  # left by kill -9, but no longer held
    third = run_exps(world.cfg, results, "--name", "medium", "--threads", "1")
    assert third.returncode == 0, third.stderr
    assert "resuming at task" in third.stdout and not (results / "medium" / "seed0.lock").exists()
    reference = run_trial(load_config(world.cfg, "medium"), results / "reference", progress=False,
                          log=lambda m: None)
    np.testing.assert_array_equal(load(results / "medium" / "seed0.pkl")["acc_matrix"],
                                  reference["acc_matrix"])
    assert_kept(results, world.hashes)


@pytest.mark.slow
def test_results_folder_faults_with_workers_stay_in_their_trials(world, results):
    (results / "C").write_text("my notes")
    code_ro = results / "A"
    immutable = os.geteuid() == 0 and _set_immutable(code_ro, True)
    if os.geteuid() != 0:
        code_ro.chmod(0o555)
    try:
        done = run_exps(world.cfg, results, "--name", "C", "--name", "A", "--name", "B", "--seeds",
                        "0-1", "--workers", "2", "--threads", "1")
    finally:
        if immutable:
            _set_immutable(code_ro, False)
        elif os.geteuid() != 0:
            code_ro.chmod(0o755)
    assert done.returncode == 1
    for seed in (0, 1):
        assert f"{results / 'C'} exists but is not a folder" in summary_line(done.stderr, "FAILED", "C", seed)
    if immutable or os.geteuid() != 0:
        assert "cannot create the lock file" in summary_line(done.stderr, "FAILED", "A", 1)
    summary_line(done.stderr, "done", "B", 1)
    assert_clean(done.stdout, done.stderr)
    assert (results / "C").read_text() == "my notes"
    assert_kept(results, world.hashes)


def test_variant_folder_named_by_a_hash_says_what_it_changes(capfd, world, results):
    overrides = {"hidden_units": 17, "train_subset": 150, "mb_size": 25, "lr": 0.07,
                 "weight_decay": 0.0001, "momentum": 0.5, "train_ep": 2}
    argv = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    code, out, err = run(capfd, world, results, "--name", "A", *argv)
    assert code == 0
    (folder,) = [p for p in results.iterdir() if p.name.startswith("A+")]
    assert re.fullmatch(r"A\+[0-9a-f]{10}", folder.name)  # too long to spell out
    info = json.loads((folder / "variant.json").read_text())
    assert info == {"experiment": "A", "differs_in": {k: overrides[k] for k in info["differs_in"]}}
    assert set(info["differs_in"]) == set(overrides)
    code, out, err = main(capfd, "--summary", "A", "--results-dir", results)
    assert code == 0 and re.search(rf"^\| {re.escape(folder.name)} +\| 1 ", out, re.M)
    assert f"{folder.name}: A with " in out and "hidden_units=17" in out


# =============================================================================================
# The building blocks of the above: signals deferred during a write, lock files
# =============================================================================================
def test_sigterm_during_a_write_takes_effect_after_the_rename(tmp_path):
    from sparse_nte.errors import Terminated
    from sparse_nte.interrupts import deferred, terminate_raises
    from sparse_nte.results import atomic_write_bytes

    target = tmp_path / "r" / "seed0.pkl"
    with pytest.raises(Terminated) as caught, terminate_raises():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-"write"
            time.sleep(0.05)                      # a handler would have run by now
            atomic_write_bytes(target, b"whole")  # nested: deferred to the outer block
            written = target.read_bytes()
    assert caught.value.signum == signal.SIGTERM and written == b"whole"
    assert os.listdir(target.parent) == ["seed0.pkl"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    from sparse_nte.errors import TrialBusyError

    path = tmp_path / "seed0.lock"
    path.write_text("999999 elsewhere\n")  # what kill -9 leaves: the file, no lock
    lock = TrialLock.acquire(path, "A seed 0")
    assert path.read_text() == f"{os.getpid()} {os.uname().nodename}\n"
    with pytest.raises(TrialBusyError, match=rf"A seed 0 is being run by another process \(pid "
                                             rf"{os.getpid()} on host .*, lock file {re.escape(str(path))}\)"):
        TrialLock.acquire(path, "A seed 0")  # flock: another open file of this process conflicts too
    lock.release()
    assert not path.exists()
    lock.release()  # idempotent
    with TrialLock.acquire(path):
        assert path.exists()
    assert not path.exists()
