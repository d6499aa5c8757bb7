"""Where every artifact lives, relative to the project root (each a DVC out of exactly one stage).

    results/data.json                      data:     data set summary and fingerprint
    models/zoo/pool-<p>/                   train:    base models, one ModelStore per pool
    models/regularized/<name>/             train:    regularized baselines (L1, L2 ...)
    metrics/train.json                     train:    DVC metrics
    models/merged/<method>/                merge:    one ModelStore per method (+ metrics/merge-<method>.json)
    results/evaluation.csv, models.csv     evaluate: tidy metric table and the model catalog
    results/eval-cache/                    evaluate: each model's metrics as they finish (for resume)
    results/barriers.csv                   evaluate: barrier curves (naive and weight-matched)
    results/plots/*.csv, metrics/eval.json evaluate: DVC plots and metrics
    results/claims.csv|json, compare.csv   audit:    verdicts per claim, methods vs MergeMany
    reports/audit/                         report:   report.md, report.html, figures/
"""

from __future__ import annotations

from pathlib import Path

DATA_RECORD = Path("results/data.json")
ZOO_DIR = Path("models/zoo")
REGULARIZED_DIR = Path("models/regularized")
MERGED_DIR = Path("models/merged")
EVALUATION_CSV = Path("results/evaluation.csv")
CATALOG_CSV = Path("results/models.csv")
BARRIERS_CSV = Path("results/barriers.csv")
EVAL_CACHE = Path("results/eval-cache")
PLOTS_DIR = Path("results/plots")
METRICS_DIR = Path("metrics")
CLAIMS_YAML = Path("reports/claims.yaml")
CLAIMS_CSV = Path("results/claims.csv")
VERDICTS_JSON = Path("results/claims.json")
COMPARE_CSV = Path("results/compare.csv")
REPORT_DIR = Path("reports/audit")


def pool_dir(root: Path, pool: int) -> Path:
    return root / ZOO_DIR / f"pool-{pool}"
SENSITIVITY_DIR = Path("results/sensitivity")  # the confound map's tables (audit sensitivity); a dep of the report
