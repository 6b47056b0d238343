"""`matcard benchmark`: every loss on one task, over several seeds, paired against cross-entropy.

A **study** (a YAML file in ``configs/benchmarks/``, or options of ``matcard benchmark``) names a
task, a list of loss entries and seeds. Every (loss entry, seed) pair is a **cell**:

- ``kind: train`` cells are ordinary ``matcard.train`` runs (crystal GNNs or the composition MLP)
  that share everything but the loss. The seed drives the split, the initialisation and the
  sampling, so every loss of one seed is trained and tested on exactly the same items (checked: the
  test ids of every cell are compared with the baseline's). Checkpoints are selected on validation
  macro-F1; the test split is used once.
- ``kind: synthetic`` cells are the reference synthetic experiment (methods brief §2: MLP 20-32-10,
  plain SGD, batch 32) under its validation-selected protocol: the epoch with the best validation
  macro-F1 is selected, its test predictions are reported.

Each finished cell leaves ``cell.json`` (written last, atomically) in its folder
``cells/<label>/seed<seed>-<key>``; ``key`` hashes the cell's resolved settings, so a rerun skips
finished cells, resumes interrupted training runs from their last checkpoint, and a changed
setting gets a new cell instead of silently reusing an old one.

Reported per loss: macro-F1, balanced accuracy, minority-class recall, macro PR-AUC and ECE, mean ±
std over seeds; and the paired difference of macro-F1 and minority recall against the baseline
(cross-entropy) on the same seeds, with a percentile bootstrap confidence interval that resamples
both the seeds and the test items (the same resampled items for both losses: a paired bootstrap).

Modules: ``schema`` (study YAML, entries, result), ``planning`` (study -> cells with resolved
settings), ``cells`` (train one cell, read its record), ``stats`` (scores, paired bootstrap), ``run``
(every cell, controls after their entries), ``summary`` (rows per seed and entry, paired differences
against the baseline and a count-matched control), ``report`` (tables, files, plots).
"""

from __future__ import annotations

from matcard.benchmark.cells import (
    _cell_predictions,
    prediction_arrays,
    run_cell,
    synthetic_class_names,
)
from matcard.benchmark.decision_table import decision_markdown, decision_rich_table
from matcard.benchmark.planning import (
    Cell,
    load_benchmark_config,
    plan_cells,
    read_cell,
    study_from_options,
)
from matcard.benchmark.report import (
    markdown_table,
    plot_metrics,
    plot_paired,
    plot_recall_heatmap,
    rich_table,
    study_description,
    summary_for_json,
    write_outputs,
)
from matcard.benchmark.run import run_benchmark
from matcard.benchmark.schema import (
    CELL_FILE,
    FORBIDDEN_OVERRIDES,
    LOWER_IS_BETTER,
    METRIC_TITLES,
    PAIRED_METRICS,
    STANDARD,
    STANDARD_ENTRIES,
    SYNTHETIC_SETTINGS,
    TABLE_METRICS,
    BenchmarkConfig,
    BenchmarkResult,
    BootstrapConfig,
    LossEntry,
    parse_loss_list,
    parse_seed_option,
    select_losses,
)
from matcard.benchmark.stats import (
    _confusion,
    _scores,
    choose_minority,
    minority_pr_auc,
    minority_recall,
    paired_bootstrap,
)
from matcard.benchmark.summary import environment, summarise

__all__ = [
    "CELL_FILE",
    "FORBIDDEN_OVERRIDES",
    "LOWER_IS_BETTER",
    "METRIC_TITLES",
    "PAIRED_METRICS",
    "STANDARD",
    "STANDARD_ENTRIES",
    "SYNTHETIC_SETTINGS",
    "TABLE_METRICS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "BootstrapConfig",
    "Cell",
    "LossEntry",
    "_cell_predictions",
    "_confusion",
    "_scores",
    "choose_minority",
    "decision_markdown",
    "decision_rich_table",
    "environment",
    "load_benchmark_config",
    "markdown_table",
    "minority_pr_auc",
    "minority_recall",
    "paired_bootstrap",
    "parse_loss_list",
    "parse_seed_option",
    "plan_cells",
    "plot_metrics",
    "plot_paired",
    "plot_recall_heatmap",
    "prediction_arrays",
    "read_cell",
    "rich_table",
    "run_benchmark",
    "run_cell",
    "select_losses",
    "study_description",
    "study_from_options",
    "summarise",
    "summary_for_json",
    "synthetic_class_names",
    "write_outputs",
]
