"""The confound map's outputs: results/sensitivity.{csv,json} and reports/sensitivity/ (a heatmap
of verdicts, claim x setting, and a paragraph per setting-dependent claim). Every file is
written atomically (audit.storage), so an interrupted write leaves the previous version."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .report import markdown_html
from .sensitivity import DECISIVE, to_json, wide
from .storage import atomic_write_bytes

OUT_DIR = Path("reports/sensitivity")
RESULTS = Path("results/sensitivity")  # .csv and .json
# Verdict colours of the heatmap (colour-blind safe: blue / orange / purple, greys for no decision).
COLOURS = {"supported": "#2b83ba", "contradicted": "#e66101", "mixed": "#8e44ad", "inconclusive": "#d9d9d9",
           "not measured": "#ffffff"}


def heatmap_png(frame: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    claims = list(dict.fromkeys(frame.claim))
    settings = list(dict.fromkeys(frame.setting))
    cell = {(r.claim, r.setting): r for r in frame.itertuples()}
    grid = [[to_rgb(COLOURS.get(cell[(c, s)].verdict, "#ffffff")) if (c, s) in cell else (1, 1, 1)
             for s in settings] for c in claims]
    fig, ax = plt.subplots(figsize=(1.6 + 1.15 * len(settings), 1.0 + 0.32 * len(claims)))
    ax.imshow(grid, aspect="auto")
    for i, c in enumerate(claims):
        for j, s in enumerate(settings):
            r = cell.get((c, s))
            if r is not None and r.effect is not None and pd.notna(r.effect):
                ax.text(j, i, f"{r.effect:+.2g}", ha="center", va="center", fontsize=7)
    labels = frame.groupby("claim", sort=False).label.first()
    ax.set_yticks(range(len(claims)), [f"{c}  [{labels[c]}]" for c in claims], fontsize=7)
    ax.set_xticks(range(len(settings)), settings, rotation=35, ha="right", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=v, edgecolor="#888") for v in COLOURS.values()]
    ax.legend(handles, list(COLOURS), loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.5 / max(len(claims), 1)),
              ncol=len(COLOURS), fontsize=7, frameon=False)
    ax.set_title("Verdict by setting (cell: effect of the first tested unit, metric units)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # room for the long claim names
    plt.close(fig)
    return buf.getvalue()


def paragraphs(frame: pd.DataFrame) -> list[str]:
    """One paragraph per setting-dependent claim: which settings give which verdict, with effects."""
    out = []
    for claim, g in frame.groupby("claim", sort=False):
        if g.label.iloc[0] != "setting-dependent":
            continue
        parts = []
        for v in DECISIVE + ("inconclusive",):
            h = g[g.verdict == v]
            if len(h):
                parts.append(f"{v} under " + ", ".join(
                    f"{r.setting} ({r.effect:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}])"
                    if all(x is not None and pd.notna(x) for x in (r.effect, r.ci_low, r.ci_high))
                    else r.setting for r in h.itertuples()))
        first = g.iloc[0]
        out.append(f"**{claim}** ({first.source}: \"{first.quote}\") is setting-dependent: " + "; ".join(parts)
                   + f". Effects are {first.metric} on the first tested unit ({first.unit}).")
    return out


def write(root: Path, frame: pd.DataFrame, meta: dict) -> Path:
    """Write the results and the page; return the page's HTML path."""
    root = Path(root)
    atomic_write_bytes(root / RESULTS.with_suffix(".csv"), frame.to_csv(index=False, float_format="%.6g").encode())
    atomic_write_bytes(root / RESULTS.with_suffix(".json"), to_json(frame, meta).encode())
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
