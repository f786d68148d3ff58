"""Studies: [study:NAME] sections are parsed and checked with errors naming file, section and key;
a study's trials are exactly the trials --name/--set/--seeds give; the CLI runs and reports them."""
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from sparse_nte.cli import build_parser, main, resolve_trials
from sparse_nte.config import ConfigError, load_config
from sparse_nte.config.studies import list_studies, load_study, parse_seed_list, read_studies
from sparse_nte.identity import differences
from sparse_nte.study import adhoc_study, resolve_study, seeds_text

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "exps" / "exps_params.cfg"

BASE = """
[DEFAULT]
dataset = mnist
num_batch = 3
hidden_units = 32
hidden_layers = 1

[kwta]
description = k-WTA
sparsify = True
percent_on_fc = 0.25

[dense]
description = dense

[nte]
description = NTE
optimizer = nte
"""


def write(tmp_path, body: str) -> Path:
    path = tmp_path / "exps.cfg"
    path.write_text(BASE + body)
    return path


def error_of(tmp_path, body: str, name: str = "s") -> str:
    with pytest.raises(ConfigError) as info:
        load_study(write(tmp_path, body), name)
    return str(info.value)


# -- parsing ---------------------------------------------------------------------------------------

def test_a_study_section_is_parsed(tmp_path):
    path = write(tmp_path, """
[study:s]
question = Which forgets less?
experiments = kwta, dense
seeds = 0-2,7
num_batch = 5   # a shared override
""")
    s = load_study(path, "s")
    assert s.experiments == ("kwta", "dense") and s.seeds == (0, 1, 2, 7)
    assert s.question == "Which forgets less?" and dict(s.overrides) == {"num_batch": "5"}
    assert s.section == "study:s" and list(read_studies(path)) == ["s"]
    assert list_studies(path) == [("s", "Which forgets less?", ("kwta", "dense"))]


@pytest.mark.parametrize("body, key, fragment", [
    ("experiments = kwta, dens", "experiments", "no experiment named 'dens' (did you mean 'dense'?)"),
    ("experiments = kwta, kwta", "experiments", "kwta is listed twice"),
    ("question = q", "experiments", "missing: list the experiments"),
    ("experiments = kwta,, dense", "experiments", "empty name"),
    ("experiments = kwta\nseeds = 0-a", "seeds", "expected integers like 0,1,2 or a range 0-4"),
    ("experiments = kwta\nseeds = 4-2", "seeds", "expected integers"),
    ("experiments = kwta\nseeds = 4294967296", "seeds", "seeds must lie in 0..4294967295"),
    ("experiments = kwta\nnum_bach = 3", "num_bach", "unknown key (did you mean 'num_batch'?)"),
    ("experiments = kwta\nexperiment = dense", "experiment", "did you mean 'experiments'"),
    ("experiments = kwta\nnum_batch = three", "num_batch", "expected an integer >= 1, got 'three'"),
    ("experiments = kwta\nseed = 3", "seed", "a study's seeds are its 'seeds' key"),
    ("experiments = kwta\ndescription = x", "description", "a study has 'question'"),
    ("experiments = kwta\npercent_on = 0.1\npercent_on_fc = 0.2", "percent_on_fc", "the same key"),
])
def test_study_errors_name_file_section_and_key(tmp_path, body, key, fragment):
    msg = error_of(tmp_path, f"\n[study:s]\n{body}\n")
    assert f"exps.cfg [study:s] {key}: " in msg and fragment in msg, msg


def test_every_problem_of_a_study_is_reported_at_once(tmp_path):
    msg = error_of(tmp_path, "\n[study:s]\nexperiments = kwta, dens\nseeds = x\nlr = fast\n")
    lines = msg.splitlines()
    assert len(lines) == 3
    assert [re.search(r"\[study:s\] (\w+):", ln).group(1) for ln in lines] == ["experiments", "seeds", "lr"]


def test_study_names(tmp_path):
    assert "did you mean 'smoke'?" in error_of(tmp_path, "\n[study:smoke]\nexperiments = kwta\n", "smok")
    assert "the file has none" in error_of(tmp_path, "", "x")
    msg = error_of(tmp_path, "\n[study:Dense]\nexperiments = kwta\n", "Dense")
    assert "[study:Dense]" in msg and "name of experiment [dense]" in msg
    assert "must be letters" in error_of(tmp_path, "\n[study:_x]\nexperiments = kwta\n", "_x")


def test_an_override_invalid_for_one_experiment_names_the_study_key_and_the_experiment(tmp_path):
    path = write(tmp_path, "\n[study:s]\nexperiments = kwta, nte\nmomentum = 0.9\n")
    with pytest.raises(ConfigError) as info:
        resolve_study(path, "s")
    msg = str(info.value)
    assert msg.startswith(f"{path} [study:s] momentum: momentum = 0.9 has no effect")
    assert "optimizer = nte" in msg and "(for experiment [nte] of the study)" in msg
    # the same override given with --set is reported at --set, not at the study
    path = write(tmp_path, "\n[study:s]\nexperiments = nte\n")
    with pytest.raises(ConfigError, match=r"^--set momentum: "):
        resolve_study(path, "s", {"momentum": "0.9"})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12))
def test_seed_lists_round_trip(seeds):
    assert parse_seed_list(seeds_text(seeds)) == sorted(set(seeds))


# -- resolution ------------------------------------------------------------------------------------

def _cli_trials(path, names, sets=(), seeds=None):
    argv = ["--config", str(path)] + [a for n in names for a in ("--name", n)]
    argv += [a for s in sets for a in ("--set", s)] + (["--seeds", seeds] if seeds else [])
    return resolve_trials(build_parser().parse_args(argv))


OVERRIDES = st.fixed_dictionaries({}, optional={
    "num_batch": st.sampled_from(["2", "3", "5"]), "lr": st.sampled_from(["0.01", "0.2", "1e-3"]),
    "hidden_units": st.sampled_from(["32", "64"]), "train_subset": st.sampled_from(["0", "500"]),
    "record_stats": st.sampled_from(["true", "false"])})


@settings(max_examples=25, deadline=None)
@given(overrides=OVERRIDES, seeds=st.sampled_from([None, "0-1", "3,5"]))
def test_a_study_gives_the_trials_of_name_and_set(tmp_path_factory, overrides, seeds):
    """A study's shared overrides make exactly the trials (folders, configs, seeds) that
    --name ... --set key=value --seeds ... make."""
    tmp = tmp_path_factory.mktemp("s")
    lines = "".join(f"{k} = {v}\n" for k, v in overrides.items())
    seeds_line = f"seeds = {seeds}\n" if seeds else ""
    path = write(tmp, f"\n[study:s]\nexperiments = kwta, dense\n{seeds_line}{lines}")
    study = resolve_study(path, "s")
    cli = _cli_trials(path, ["kwta", "dense"], [f"{k}={v}" for k, v in overrides.items()], seeds)
    assert [(t.folder, t.seed) for t in study.trials] == [(t.folder, t.seed) for t in cli]
    assert [t.config for t in study.trials] == [t.config for t in cli]
    file_cfg = load_config(path, "kwta")
    changed = {k for k, v in overrides.items() if not (k == "lr" and float(v) == file_cfg.lr)
               and str(file_cfg[k]).lower() != v}
    assert (study.folders["kwta"] == "kwta") == (not changed)


def test_precedence_set_over_study_and_seeds_over_study_seeds(tmp_path):
    path = write(tmp_path, "\n[study:s]\nexperiments = kwta\nseeds = 0-4\nnum_batch = 5\nlr = 0.2\n")
    study = resolve_study(path, "s", {"lr": "0.3"}, [7])
    (trial,) = study.trials
    assert trial.seed == 7 and trial.config.num_batch == 5 and trial.config.lr == 0.3
    assert trial.folder == "kwta+num_batch=5+lr=0.3"
    assert study.folders["kwta"] == trial.folder
    assert dict(study.variants["kwta"]) == {"num_batch": 5, "lr": 0.3}
    # no seeds anywhere: the experiment's own seed; an override equal to the file's value: no variant
    path = write(tmp_path, "\n[study:s]\nexperiments = kwta\nnum_batch = 3\n")
    (trial,) = resolve_study(path, "s").trials
    assert trial.seed == 0 and trial.folder == "kwta"


def test_the_commands_of_a_study_reproduce_its_trials(tmp_path, capsys):
    path = write(tmp_path, "\n[study:s]\nexperiments = kwta, dense\nseeds = 1-2\nnum_batch = 2\n")
    study = resolve_study(path, "s")
    want = {(t.folder, t.seed) for t in study.trials}
    commands = study.commands()
    assert commands[0] == f"python run_exps.py --study s --config {path}"
    for cmd in commands:
        argv = __import__("shlex").split(cmd)[2:]
        assert main([*argv, "--dry-run"]) == 0
        out = capsys.readouterr().out
        got = {(f, int(s)) for f, s in re.findall(r"^\[(\S+)\]  seed (\d+)", out, flags=re.M)}
        assert got <= want and (got == want) == (cmd == commands[0])
    assert len(commands) == 3


def test_an_adhoc_report_is_named_after_its_experiments_and_finds_seeds_on_disk(tmp_path):
    path = write(tmp_path, "")
    study = adhoc_study(path, ["kwta", "dense", "kwta"], {"lr": "0.2"})
    assert study.name == "report-kwta-dense" and study.experiments == ("kwta", "dense")
    assert study.discover_seeds and not study.named
    assert study.folders == {"kwta": "kwta+lr=0.2", "dense": "dense+lr=0.2"}
    assert all(c.startswith("python run_exps.py --name") for c in study.commands())


# -- the shipped studies ---------------------------------------------------------------------------

def test_shipped_studies_resolve_and_smoke_is_tiny():
    studies = read_studies(SHIPPED)
    assert {"smoke", "constraints_pfmnist"} <= set(studies)
    smoke = resolve_study(SHIPPED, "smoke")
    for t in smoke.trials:
        c = t.config
        assert c.dataset == "fashion_mnist" and c.num_batch <= 3 and 0 < c.train_subset <= 1000
        assert c.hidden_layers * c.hidden_units <= 100 and c.train_ep == c.train_ep_inc == 1
    assert {t.config.optimizer for t in smoke.trials} == {"sgd", "nte"}
    assert any(t.config.dale for t in smoke.trials) and any(t.config.sparsify for t in smoke.trials)


def test_the_constraints_study_adds_one_constraint_at_a_time_on_the_original_protocol():
    study = resolve_study(SHIPPED, "constraints_pfmnist")
    cfgs = [study.configs[e].to_dict() for e in study.experiments]
    assert study.seeds == (0, 1, 2, 3, 4) and len(study.trials) == 5 * len(cfgs)
    for c in cfgs:
        assert c["dataset"] == "fashion_mnist" and c["mnist_mode"] == "permutations" and c["num_batch"] == 10
        assert c["hidden_units"] == 4000 and c["hidden_layers"] == 1 and c["dropout"] == 0.5
        assert c["mb_size"] == 128 and c["train_ep"] == c["train_ep_inc"] == 2 and c["train_subset"] == 0
        assert c["optimizer"] == "nte" or (c["lr"] == 0.1 and c["momentum"] == 0.9 and c["nesterov"])
    steps = [{k for k, _, _ in differences(a, b)} for a, b in zip(cfgs, cfgs[1:])]
    assert steps[0] == {"sparsify", "percent_on_fc", "boost_strength"}   # k-WTA, k = 4 of 4000
    assert steps[1] == {"weight_sparsity_fc", "sparse_init"}
    assert steps[2] == {"dale"} and cfgs[3]["exc_fraction"] == 0.8
    assert steps[3] == {"optimizer", "momentum", "nesterov", "weight_decay"}
    assert steps[4] == {"plasticity", "grow_start_density", "grow_end_density", "weight_sparsity_fc"}
    assert cfgs[5]["grow_old_lr"] == 0.1       # the schema default, so not a difference
    assert cfgs[5]["grow_end_density"] <= 0.1 and cfgs[3]["weight_sparsity_fc"] <= 0.1
    assert steps[5] == {"grow_old_lr"} and cfgs[6]["grow_old_lr"] == 0
    assert all(f.endswith("+dataset=fashion_mnist") for f in study.folders.values())


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--study", "smok"], "did you mean 'smoke'?"),
    (["--study", "smoke", "--name", "quickstart"], "--study and --name are alternatives"),
    (["--summary", "x", "--format", "xml"], None),
    (["--name", "quickstart", "--format", "csv"], "--format csv applies to --summary"),
    (["--report"], "--report needs --study NAME or --name EXP"),
    (["--study", "smoke", "--report-file", "x.html"], "--report-file needs --report"),
    (["--summary"], "--summary needs results folders"),
    (["--summary", "x", "--study", "smoke"], "--summary takes either"),
    (["--study", "smoke", "--study", "constraints_pfmnist", "--report", "--report-file", "a.html"],
     "--report-file names one page"),
])
def test_cli_usage_errors(tmp_path, args, message, capsys):
    if message is None:          # argparse's own check of the choices
        with pytest.raises(SystemExit) as info:
            main(["--config", str(SHIPPED), *args])
        assert info.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
        return
    assert main(["--config", str(SHIPPED), "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_list_shows_studies_after_the_experiments(capsys):
    assert main(["--config", str(SHIPPED), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines.index("studies (run_exps.py --study NAME):")
    assert any(ln.startswith("quickstart ") for ln in lines[:head])
    assert lines[head + 1].startswith("smoke ")
    assert lines[head + 1].endswith("[quickstart_dense, quickstart, quickstart_nte_dale]")


def test_cli_report_and_summary_of_a_study_from_its_results(tmp_path, capsys):
    import csv
    import io

    from report_cases import PLAN, write_case

    cfg, results, study = write_case(tmp_path)
    base = ["--config", str(cfg), "--results-dir", str(results)]
    assert main([*base, "--study", "demo", "--summary", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted((r["experiment"], int(r["seed"]), r["status"]) for r in rows if r["level"] == "trial") \
        == sorted((e, s, st) for (e, s), st in PLAN.items())
    assert main([*base, "--study", "demo", "--report"]) == 0      # runs nothing
    out = capsys.readouterr().out
    assert f"report: {results / 'demo' / 'report.html'}" in out and "| beta" in out
    assert (results / "demo" / "report_accuracy.csv").exists()
    assert main([*base, "--report", "--name", "alpha", "--set", "lr=0.02", "--plot"]) == 0
    page = results / "report-alpha.html"
    assert page.exists() and "Report: alpha" in page.read_text()
    for stem in ("report-alpha_curves", "report-alpha_metrics"):      # figures for papers
        assert (results / f"{stem}.png").stat().st_size > 0 and (results / f"{stem}.svg").exists()
    assert sorted(p.name for p in (results / study.folders["alpha"]).glob("*.png")) == \
        [f"seed{s}.png" for s in range(4)]
    # --summary of results folders, without an experiment file, in every format
    folder = study.folders["alpha"]
    assert main(["--results-dir", str(results), "--summary", folder, "--format", "json"]) == 0
    assert '"n": 4' in capsys.readouterr().out
    assert main(["--results-dir", str(results), "--summary", folder]) == 0
    assert f"| {folder}" in capsys.readouterr().out
