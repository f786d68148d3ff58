"""Reports of studies: what a lab publishes is a comparison across experiments and seeds.

Modules, in the order data flows through them:

- :mod:`~sparse_nte.reporting.collect`: result files -> one record per trial (done, diverged,
  failed, interrupted, not run, unreadable, another configuration's);
- :mod:`~sparse_nte.reporting.tables`: records -> the numbers (mean ± sd over done seeds, mean
  accuracy matrices, per-layer statistics, NTE guard counts, configs side by side);
- :mod:`~sparse_nte.reporting.describe`: a configuration in words, and its chance level;
- :mod:`~sparse_nte.reporting.figures`: matplotlib figures (per-seed plot, curves with seed bands,
  per-seed metrics), as inline SVG or PNG/SVG files;
- :mod:`~sparse_nte.reporting.exports`: summary as Markdown/CSV/JSON, long-format accuracy CSV;
- :mod:`~sparse_nte.reporting.html`: the self-contained page;
- :mod:`~sparse_nte.reporting.study_report`: writes the page and its exports.
"""
from sparse_nte.reporting.collect import (ExperimentRecords, StudyResults, TrialRecord, collect_folders,
                                          collect_study)
from sparse_nte.reporting.exports import FORMATS, accuracy_csv, render_summary
from sparse_nte.reporting.study_report import export_paths, write_report

__all__ = ["TrialRecord", "ExperimentRecords", "StudyResults", "collect_study", "collect_folders",
           "FORMATS", "render_summary", "accuracy_csv", "write_report", "export_paths"]
