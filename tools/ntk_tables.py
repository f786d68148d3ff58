"""Print the Markdown tables of a study's NTK probe results (docs/results/ntk.md is made of them).

    python tools/ntk_tables.py --study ntk_adaptation --results-dir results
    python tools/ntk_tables.py --study ntk_alignment --results-dir results --steps 0,100,500,2500

Reads the study's result files (only its own configurations' finished trials; see
:mod:`sparse_nte.reporting.ntk_tables`) and prints every table they support.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparse_nte.reporting.ntk_tables import ntk_markdown  # noqa: E402
from sparse_nte.study import collect, resolve_study  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a [study:NAME] section")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--config", default=str(ROOT / "exps" / "exps_params.cfg"))
    parser.add_argument("--steps", default="", help="within-task steps to show, e.g. 0,100,500")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    study = resolve_study(args.config, args.study)
    print(ntk_markdown(collect(args.results_dir, study), steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
