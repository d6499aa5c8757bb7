"""Stage `audit`: the claims registry's verdicts (results/claims.csv|json) and every method
against MergeMany (results/compare.csv), from the evaluation table alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..claims import (VERDICTS, ClaimsError, NotMeasured, Results, check_claims, claim_verdicts, evaluate_claims,
                      load_claims, verdict_records)
from ..compare import COLUMNS as COMPARE_COLUMNS, compare
from ..config import METHODS, Params
from ..evaluation_table import read_evaluation
from ..paths import (CLAIMS_CSV, CLAIMS_YAML, COMPARE_CSV, EVALUATION_CSV, METRICS_DIR, SENSITIVITY_DIR,
                     VERDICTS_JSON)
from ..storage import atomic_write_json
from .common import PipelineError, stage_main, tracker, write_csv

# What the audit stage compares against MergeMany in results/compare.csv.
COMPARE_METRICS = [("clean_accuracy", None), ("fgsm_robust_accuracy", 0.01), ("fgsm_robust_accuracy", 0.05),
                   ("deepfool_median_norm", None), ("weight_norm", None), ("lipschitz_global", None)]


def load_results(params: Params, root: Path, path: Path | None = None) -> Results:
    """The evaluation table of the last run (or ``path``, any table in its schema: see
    audit.evaluation_table) as `audit.claims.Results`."""
    return read_evaluation(path or root / EVALUATION_CSV, params.zoo.depth, params.merge.permute)


def _measured(results: Results, metric: str, eps: float | None) -> bool:
    try:
        results.values(metric, eps)
        return True
    except NotMeasured:
        return False


def run(params: Params, root: Path) -> dict:
    """Judge every registered claim: results/claims.csv|json, compare.csv, metrics/audit.json."""
    try:  # a bad registry is refused before anything is computed
        check_claims(load_claims(root / CLAIMS_YAML), methods=METHODS, depth=params.zoo.depth,
                     path=root / CLAIMS_YAML, beyond_depth=params.audit.beyond_depth)
    except ClaimsError as e:
        raise PipelineError(str(e)) from None
    results = load_results(params, root)
    a = params.audit
    try:
        claims = load_claims(root / CLAIMS_YAML)
        rows = evaluate_claims(claims, results, alpha=a.alpha, margin=a.equivalence_margin, n_boot=a.bootstrap,
                               seed=a.seed)
    except ClaimsError as e:
        raise PipelineError(str(e)) from None
    verdicts = claim_verdicts(rows)
    write_csv(root / CLAIMS_CSV, rows)
    by_id = {c.id: c for c in claims}
    records = verdict_records(claims, rows)
    atomic_write_json(root / VERDICTS_JSON, records)
    if "mergemany" in params.merge.methods and len(params.merge.methods) > 1:
        measured = [(m, e) for m, e in COMPARE_METRICS if _measured(results, m, e)]
        table = compare(results, baseline="mergemany", metrics=measured, alpha=a.alpha, n_boot=a.bootstrap,
                        seed=a.seed)
    else:  # nothing to compare with: an empty table keeps the stage's outs complete
        table = pd.DataFrame(columns=COMPARE_COLUMNS)
    write_csv(root / COMPARE_CSV, table)
    counts = {v: int((verdicts.verdict == v).sum()) for v in VERDICTS}
    # "supported" claims that hold by construction are no evidence: counted apart as well.
    counts["by_construction"] = int(verdicts.caveat.str.startswith("holds by construction").sum())
    summary = {**counts, "claims": len(verdicts), "tests": len(rows)}
    with tracker(params, root, "audit") as tr:
        tr.log_parent(params={"audit": a}, metrics={k: float(v) for k, v in summary.items()})
        for v in verdicts.to_dict("records"):
            tr.child(f"claim/{v['id']}", tags={"verdict": v["verdict"], "source": by_id[v["id"]].source},
                     metrics={f"{r.unit}/p_holm": r.p_holm for r in rows[rows.id == v["id"]].itertuples()})
        # Each claim's MLflow run, for the report's links (written again only when tracking logged).
        if tr.run_ids:
            for r in records:
                if run := tr.run_ids.get(f"claim/{r['id']}"):
                    r["mlflow_run"] = {"experiment_id": tr.experiment_id, "run_id": run}
            atomic_write_json(root / VERDICTS_JSON, records)
        for path in (CLAIMS_CSV, VERDICTS_JSON, COMPARE_CSV):
            if (root / path).exists():
                tr.log_artifact(root / path)
    # The report stage reads the confound map's directory (a dep): it exists before any
    # `audit sensitivity` too, also where results/ was cleared.
    (root / SENSITIVITY_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / METRICS_DIR / "audit.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
