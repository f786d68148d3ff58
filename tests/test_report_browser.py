"""The study report in a real browser: headless Chromium (driven over the DevTools protocol, see
cdp.py) renders the shipped smoke study's report, after run_exps.py ran the study on a generated
Fashion-MNIST, and the report of a study with diverged, failed and missing trials. Checked: no
console errors and no request leaving the page's folder, every figure drawn with a non-zero size,
and every number shown equal to the result files. The screenshots are kept in tests/artifacts/."""
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.synthetic import write_synthetic_dataset
from cdp import Browser, find_chromium
from report_cases import PLAN, write_case
from sparse_nte.reporting import write_report
from sparse_nte.results import result_path
from sparse_nte.study import collect, resolve_study

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
METRICS = ("avg_acc", "forgetting", "bwt", "fwt", "learning_acc")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_chromium() is None,
                                 reason="chromium is not installed (.ci/run installs it when it runs as "
                                        "root; apt-get install chromium)")]

#: What the page shows, read in the page: figures' sizes, number cells, statuses, resources.
PROBE = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const figures = [...document.querySelectorAll("figure")].map(f => {
    const drawn = f.querySelector("svg, table, img");
    return {id: f.id || f.querySelector("h3")?.innerText || "", size: drawn ? box(drawn) : [0, 0]};
  });
  const cells = [...document.querySelectorAll("td[data-metric]")].map(td => ({
    exp: td.dataset.exp, seed: td.dataset.seed === undefined ? null : Number(td.dataset.seed),
    metric: td.dataset.metric, n: td.dataset.n === undefined ? null : Number(td.dataset.n),
    text: td.innerText.trim()}));
  const statuses = [...document.querySelectorAll("tr[data-status]")].map(tr => tr.dataset.status);
  const resources = performance.getEntriesByType("resource").map(e => e.name);
  return {figures, cells, statuses, resources, title: document.title,
          width: document.documentElement.scrollWidth};
})()"""


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _check_page(page, study, results, folder_uri: str, plan) -> dict:
    got = page.evaluate(PROBE)
    assert page.problems == [], page.problems
    assert all(u.startswith(folder_uri) or u.startswith("data:") for u in page.requests), page.requests
    assert got["resources"] == []                      # nothing loaded besides the page itself
    assert got["figures"] and all(w > 0 and h > 0 for w, h in (f["size"] for f in got["figures"])), got
    assert got["width"] <= 1280                        # no horizontal scrolling of the page
    assert sorted(got["statuses"]) == sorted(plan.values())
    stored = {}
    for (e, seed), status in plan.items():
        path = result_path(results, study.folders[e], seed)
        if status in ("done", "diverged"):
            stored[(e, seed)] = pickle.loads(path.read_bytes())
    trial_cells = [c for c in got["cells"] if c["seed"] is not None]
    assert len(trial_cells) == len(plan) * len(METRICS)
    for c in trial_cells:
        res = stored.get((c["exp"], c["seed"]))
        want = res["metrics"][c["metric"]] if res else float("nan")
        assert c["text"] == _shown(want), c
    for c in (c for c in got["cells"] if c["seed"] is None):
        values = [stored[(c["exp"], s)]["metrics"][c["metric"]] for (e, s), st in plan.items()
                  if e == c["exp"] and st == "done"]
        values = [v for v in values if not math.isnan(v)]
        assert c["n"] == len(values)
        if len(values) >= 2:
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            assert c["text"] == f"{100 * mean:.2f} ± {100 * sd:.2f}", c
        else:
            assert c["text"] == (_shown(values[0]) if values else "n/a"), c
    return got


def test_reports_render_in_chromium_with_the_numbers_of_the_result_files(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset("fashion_mnist", data, num_train=1200, num_test=300, seed=0)
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, str(REPO / "run_exps.py"), "--study", "smoke", "--data-root",
                          str(data), "--results-dir", str(results), "--threads", "1", "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    smoke_page = results / "smoke" / "report.html"
    assert f"report: {smoke_page}" in run.stdout
    smoke = resolve_study(REPO / "exps" / "exps_params.cfg", "smoke", {"data_root": str(data)})
    smoke_plan = {(t.name, t.seed): "done" for t in smoke.trials}

    demo_cfg, demo_results, demo = write_case(tmp_path / "demo")
    demo_page = write_report(collect(demo_results, demo), demo_results / "demo" / "report.html",
                             command="python run_exps.py --study demo --report")[0]

    ARTIFACTS.mkdir(exist_ok=True)
    with Browser() as browser:
        for name, page_path, study, res_dir, plan in (
                ("smoke", smoke_page, smoke, results, smoke_plan),
                ("statuses", demo_page, demo, demo_results, PLAN)):
            page = browser.open(page_path)
            got = _check_page(page, study, res_dir, page_path.parent.as_uri(), plan)
            shot = page.screenshot(ARTIFACTS / f"report_{name}.png")
            print(f"screenshot of the {name} report: {shot}")
            assert shot.stat().st_size > 20_000 and shot.read_bytes()[:4] == b"\x89PNG"
            ids = {f["id"] for f in got["figures"]}
            assert {"fig-metrics", "fig-curves"} <= ids
            assert sum(1 for f in got["figures"] if f["id"] in study.experiments) == len(study.experiments)


def test_the_browser_check_sees_console_errors_requests_and_empty_figures(tmp_path):
    """The checks above can fail: a page with a script error, a console error, a remote image and
    an empty figure shows all four."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><figure id="f"><svg width="0" height="0"></svg></figure>'
                   '<img src="http://192.0.2.1/x.png"><script>console.error("broken");'
                   "undefined_function();</script></body></html>")
    with Browser() as browser:
        page = browser.open(bad)
        got = page.evaluate(PROBE)
    assert any("broken" in p for p in page.problems)
    assert any(p.startswith("exception:") for p in page.problems)
    assert "http://192.0.2.1/x.png" in page.requests
    assert got["figures"] == [{"id": "f", "size": [0, 0]}]
