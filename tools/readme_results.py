"""Copy each results page's headline table into README.md's "Results" section.

    python tools/readme_results.py            # rewrite README.md
    python tools/readme_results.py --check    # exit 1 if README.md differs from the pages

Every table lives in its page under docs/results/, where the page's own script writes it from
the result files (``tools/flagship_results.py``, ``tools/original_study.py``,
``tools/baselines_table.py``, ``tools/pruning_tables.py``, ``bench/local_rules_tables.py``,
``tools/ntk_tables.py``, ``bench/speed_tables.py``). This script only copies the block between a page's
``<!-- NAME -->`` marker and the next ``<!-- /...`` marker into README.md between
``<!-- readme:STEM/BLOCK:begin -->`` and ``<!-- readme:STEM/BLOCK:end -->``, with the page's title, the
command that runs the study and a link, so the README's numbers are always the pages' numbers.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

ROOT = Path(__file__).resolve().parents[1]


class Headline(NamedTuple):
    stem: str          # docs/results/<stem>.md
    marker: str        # the page's block marker
    caption: str       # one line above the table: protocol, seeds
    command: str       # the command that runs what the table shows

    @property
    def key(self) -> str:
        """The README's marker name: the page and its block (``baselines/vdv_pfmnist_short``)."""
        return f"{self.stem}/{self.marker.split(':')[-1]}"


HEADLINES = (
    Headline("original_study", "generated:reproduction",
             "10-task permuted Fashion-MNIST, 2 epochs per task, MLP 1x4000; toolkit 5 seeds against "
             "the original 2019 code run unchanged.",
             "python run_exps.py --study original_pfmnist"),
    Headline("baselines", "table:vdv_pfmnist_short",
             "van de Ven & Tolias's permuted protocol scaled down to 5 Fashion-MNIST tasks of 10,000 "
             "examples, 200 Adam steps each, MLP 2x400; 3 seeds; the anchor's MNIST numbers beside.",
             "python run_exps.py --study vdv_pfmnist_short"),
    Headline("baselines", "table:bio_baselines",
             "The baselines on a k-WTA + 10% connectivity + Dale network and with the NTE rule, same "
             "scaled-down protocol; 3 seeds; cells not run are marked.",
             "python run_exps.py --study bio_baselines"),
    Headline("data_pruning", "table:claims_pfmnist",
             "Dynamic data pruning, 5-task permuted Fashion-MNIST, MLP 1x400, 6 epochs per task; 3 "
             "seeds; the anchor's claims as paired accuracy differences.",
             "python run_exps.py --study pruning_pfmnist"),
    Headline("local_rules", "table:one_task",
             "Learning without backprop, one task of Fashion-MNIST (the first 10k images, and all "
             "60k), MLP [128, 64]; 3 seeds; the papers' numbers beside.",
             "python bench/repro_local_rules.py ib --seeds 3 --epochs 25 --window 8 --out ib_full.json"),
    Headline("local_rules", "table:continual",
             "The local rule in continual learning (neither paper ran it): 5 tasks of 1,000 Fashion-MNIST "
             "examples, MLP [128, 64], backprop against IB-Hebbian, alone and with the constraints; 3 "
             "seeds.",
             "python run_exps.py --study local_rules_cl"),
    Headline("ntk", "table:adaptation",
             "Fast adaptation to the next task of split Fashion-MNIST: fine-tuning against the NTK-GP "
             "with the trained network's kernel; 3 seeds.",
             "python run_exps.py --study ntk_adaptation"),
    Headline("speed", "table:goals",
             "The speed goals of sparse networks and evaluation: ratios timed in one run, 1 torch "
             "thread; where a goal is not met, the cost that stands in the way.",
             "python bench/run_all.py --sections training,nte,speed --out docs/results/speed_report.json"),
)


def _title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise ValueError("the page has no '# ' title")


def block(page: Path, marker: str) -> str:
    """The text between ``<!-- marker -->`` and the next ``<!-- /`` line of ``page``."""
    text = page.read_text(encoding="utf-8")
    m = re.search(rf"^<!-- {re.escape(marker)} -->\n(.*?)^<!-- /", text, re.S | re.M)
    if m is None:
        raise ValueError(f"{page}: no block <!-- {marker} --> ... <!-- /...")
    return m.group(1).rstrip("\n")


def section(h: Headline, docs: Path) -> str:
    page = docs / "results" / f"{h.stem}.md"
    title = _title(page.read_text(encoding="utf-8"))
    return (f"**{title}** — {h.caption} [Details, protocol and what held]"
            f"(docs/results/{h.stem}.md).\n\n```bash\n{h.command}\n```\n\n{block(page, h.marker)}")


def render(readme: str, docs: Path) -> str:
    for h in HEADLINES:
        key = re.escape(h.key)
        pattern = re.compile(rf"(<!-- readme:{key}:begin -->\n).*?(<!-- readme:{key}:end -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- readme:{h.key}:begin/end --> markers")
        body = section(h, docs)
        readme = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = ap.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text(encoding="utf-8")
    new = render(old, ROOT / "docs")
    if args.check:
        if new != old:
            print("README.md's results differ from docs/results/: run python tools/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new, encoding="utf-8")
    print("README.md results: " + ", ".join(h.key for h in HEADLINES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
