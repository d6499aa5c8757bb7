"""The confound map's outputs: results/sensitivity/sensitivity.{csv,json} and reports/sensitivity/ (a heatmap
of verdicts, claim x setting, and a paragraph per setting-dependent claim). Every file is
written atomically (audit.storage), so an interrupted write leaves the previous version."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import SENSITIVITY_DIR
from .report import markdown_html
from .sensitivity import heatmap_png, paragraphs, to_json, wide
from .storage import atomic_write_bytes

OUT_DIR = Path("reports/sensitivity")
def write(root: Path, frame: pd.DataFrame, meta: dict) -> Path:
    """Write the results and the page; return the page's HTML path."""
    root = Path(root)
    # results/sensitivity/ is a dep of the report stage: the next dvc repro puts the map in the report too
    atomic_write_bytes(root / SENSITIVITY_DIR / "sensitivity.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    atomic_write_bytes(root / SENSITIVITY_DIR / "sensitivity.json", to_json(frame, meta).encode())
    out = root / OUT_DIR
    fig = out / "heatmap.png"
    atomic_write_bytes(fig, heatmap_png(frame))
    table = wide(frame)
    counts = frame.groupby("claim", sort=False).label.first().value_counts()
    md = ["# rebasin-audit: the confound map", "",
          f"Baseline commit {meta.get('baseline', '?')}; {len(set(frame.setting))} settings, each a DVC experiment "
          f"(`dvc exp show`), varied one factor at a time from the reference at the scale "
          f"`sensitivity.scale` states: {', '.join(f'{k}={v}' for k, v in meta.get('scale', {}).items()) or 'none'}.",
          "", "Labels: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in counts.index) + ".", ""]
    if meta.get("skipped"):
        md += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()), ""]
    if meta.get("missing"):
        md += ["**No results from:** " + ", ".join(meta["missing"]) + " (failed or not finished; their claims count "
               "as not measured there, so none of them can be stable).", ""]
    md += ["## Verdicts by setting", "", "![heatmap](heatmap.png)", "",
           "*Each cell: the claim's verdict in that setting; the number is the effect of its first tested unit.*", ""]
    dependent = paragraphs(frame)
    md += ["## Setting-dependent claims", ""] + ([p for x in dependent for p in (x, "")] or ["None.", ""])
    md += ["## Table", "", "S supported, C contradicted, M mixed, I inconclusive, - not measured; effect [95% CI].", ""]
    md += ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    md += ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in table.itertuples(index=False)]
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    page = out / "report.html"
    atomic_write_bytes(page, markdown_html(md, {"heatmap": fig}, title="rebasin-audit confound map").encode())
    return page
