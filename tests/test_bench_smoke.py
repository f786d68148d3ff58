"""The benchmark suite runs end to end and reports every figure (bench/run_all.py --quick),
and its runner reports a figure a script failed to print as missing. No timing is asserted."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import run_all  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

ISSUE_FIGURES = [
    "training/train_over_6pn_bound.mlp1x4000_dense",
    "training/train_over_6pn_bound.mlp1x4000_kwta",
    "training/train_over_6pn_bound.mlp1x4000_kwta_w10",
    "training/train_over_6pn_bound.mlp2x1000_dense",
    "training/eval_task_over_train.mlp1x4000_dense",
    "training/eval_all_over_train.T10.mlp1x4000_dense",
    "training/eval_all_over_train.T50.mlp1x4000_dense",
    "nte/nte_fast_step_time_over_sgd",
    "nte/nte_fast_added_peak_memory_over_sgd",
    *(f"sparse/sparse_step_speedup.density_{d}" for d in ("0.02", "0.05", "0.10", "0.20")),
    "data/data_epoch_over_sgd_epoch.permuted_fashion_mnist_domain_x10",
]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed "
                                                  "(the training benchmark runs on real data)")
def test_quick_suite_reports_every_figure(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "--quick",
                           "--out", str(out), "--budget", "600"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    names = [f["name"] for f in report["figures"]]
    expected = {f"{s}/{n}" for s in run_all.SECTIONS for n in run_all.expected_figures(s)}
    assert expected <= set(names) and not report["missing"]
    assert set(ISSUE_FIGURES) <= set(names)
    assert all(math.isfinite(f["value"]) and f["value"] > 0 for f in report["figures"])
    assert report["suite"]["quick"] and report["machine"]["threads"] == 1
    assert report["machine"]["cpu"] and report["machine"]["torch"]
    printed = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(printed) == len(names) == len(set(names))     # one line per figure
    # the report names no folder of this machine: "python" and repository-relative scripts
    commands = [report["suite"]["command"]] + [s["command"] for s in report["sections"].values()]
    assert all(c[0] == "python" and c[1].startswith("bench/") for c in commands)


def test_a_figure_the_script_did_not_print_is_missing_and_fails_the_suite(tmp_path, monkeypatch):
    script = tmp_path / "fake_bench.py"
    script.write_text("import sys\nprint('speed of a: 1.50x')\nprint(sys.argv[1:])\n")
    section = run_all.Section(str(script), takes_threads=True, patterns=(
        run_all.Pattern("a", r"^speed of a: (?P<v>[0-9.]+)x", goal=2.0),
        run_all.Pattern("b", r"^speed of b: (?P<v>[0-9.]+)x")))
    monkeypatch.setitem(run_all.SECTIONS, "fake", section)
    res = run_all.run_section("fake", quick=False, threads=1)
    assert [(f.name, f.value, f.met) for f in res.figures] == [("a", 1.5, True)]
    assert res.missing == ["b"] and res.returncode == 0
    assert "'--threads', '1'" in res.stdout
    out = tmp_path / "r.json"
    assert run_all.main(["--sections", "fake", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["missing"] == ["fake/b"] and report["figures"][0]["name"] == "fake/a"
