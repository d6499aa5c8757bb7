"""The confound map: does each claim's verdict survive a change of setting?

Each setting of `audit.grid` is a DVC experiment; this reads every experiment's claims table from
its git commit and sets the verdicts side by side. A claim is labelled

* **stable**: the same decisive verdict (supported, contradicted or mixed) in every setting;
* **setting-dependent**: decisive verdicts that disagree (supported in one setting, contradicted or
  mixed in another): the finding turns on the setting, whatever the power;
* **unsettled**: one decisive verdict where decided, inconclusive elsewhere: a change of setting
  and a lack of power cannot be told apart, so no label beyond "not shown stable";
* **undecided**: inconclusive (or not measured) in every setting;
* **by construction**: it holds by construction (audit.claims), so its verdicts are no evidence.

A claim's effect in a setting is that of its first tested unit (the registry's first depth or
change), in the metric's units, with the bootstrap CI its claims table reports.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable

import pandas as pd

DECISIVE = ("supported", "contradicted", "mixed")
LABELS = ("setting-dependent", "stable", "unsettled", "undecided", "by construction")
SHORT = {"supported": "S", "contradicted": "C", "mixed": "M", "inconclusive": "I"}


def rows_from_claims(claims: list[dict], setting: str) -> list[dict]:
    """One row per claim of one setting's results/claims.json."""
    out = []
    for c in claims:
        tests = c.get("tests") or [{}]
        first = tests[0]
        by_construction = all(isinstance(t.get("by_construction"), str) and t.get("by_construction") for t in tests)
        verdict = c.get("verdict", "not measured")
        if str(first.get("unit", "")).startswith("not measured"):
            verdict = "not measured"
        out.append({"setting": setting, "claim": c["id"], "verdict": verdict, "unit": first.get("unit"),
                    "n": first.get("n"), "effect": first.get("effect"), "ci_low": first.get("ci_low"),
                    "ci_high": first.get("ci_high"), "metric": first.get("metric"),
                    "by_construction": bool(by_construction), "caveat": c.get("caveat", ""),
                    "quote": c.get("quote", ""), "source": c.get("source", "")})
    return out


def label(verdicts: Iterable[str], by_construction: bool = False) -> str:
    if by_construction:
        return "by construction"
    verdicts = list(verdicts)
    decisive = {v for v in verdicts if v in DECISIVE}
    if len(decisive) > 1:
        return "setting-dependent"
    if not decisive:
        return "undecided"
    return "stable" if all(v in decisive for v in verdicts) else "unsettled"


def labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Per claim: its label, and the settings behind each decisive verdict. A setting with results
    in which the claim is absent counts as "not measured" there (so it cannot be shown stable)."""
    settings = list(dict.fromkeys(frame.setting))
    out = []
    for claim, g in frame.groupby("claim", sort=False):
        by_setting = dict(zip(g.setting, g.verdict))
        verdicts = [by_setting.get(s, "not measured") for s in settings]
        out.append({"claim": claim, "label": label(verdicts, bool(g.by_construction.all())),
                    **{f"{v}_in": ", ".join(s for s, w in by_setting.items() if w == v) for v in DECISIVE}})
    return pd.DataFrame(out)


def collect(settings, read_claims: Callable[[object], list[dict] | None]) -> tuple[pd.DataFrame, list[str]]:
    """The long table (one row per claim x setting) over ``settings`` (audit.grid.Setting), reading
    each one's claims with ``read_claims`` (None: no results); returns it and the settings missing."""
    rows, missing = [], []
    for s in settings:
        claims = read_claims(s)
        if claims is None:
            missing.append(s.label)
            continue
        for r in rows_from_claims(claims, s.label):
            rows.append({**r, "factor": s.factor or "", "level": s.level or "", "experiment": s.name})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, missing
    return frame.merge(labels(frame)[["claim", "label"]], on="claim"), missing


def cell(row) -> str:
    """A wide table's cell: verdict initial, effect and CI (metric units)."""
    v = SHORT.get(row.verdict, "-")
    if _missing(row.effect):
        return v
    lo, hi = row.ci_low, row.ci_high
    ci = "" if _missing(lo) or _missing(hi) else f" [{lo:+.3g}, {hi:+.3g}]"
    return f"{v} {row.effect:+.3g}{ci}"


def _missing(x) -> bool:
    return x is None or pd.isna(x)


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """claim x setting, cells as `cell`, the label last."""
    settings = list(dict.fromkeys(frame.setting))
    table = frame.assign(cell=[cell(r) for r in frame.itertuples()]).pivot(index="claim", columns="setting", values="cell")
    table = table.reindex(index=list(dict.fromkeys(frame.claim)), columns=settings)
    table["label"] = frame.groupby("claim", sort=False).label.first()
    return table.reset_index()


def from_json(text: str) -> tuple[pd.DataFrame, dict]:
    """results/sensitivity/sensitivity.json back as (the long table, its meta)."""
    obj = json.loads(text)
    rows = obj.pop("rows")
    return pd.DataFrame(rows), obj


def to_json(frame: pd.DataFrame, meta: dict) -> str:
    records = json.loads(frame.to_json(orient="records"))
    return json.dumps({**meta, "rows": records}, indent=1, sort_keys=True) + "\n"


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
    # the legend above the grid, clear of the rotated setting names below it
    ax.legend(handles, list(COLOURS), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(COLOURS), fontsize=7,
              frameon=False)
    ax.set_title("Verdict by setting (cell: effect of the first tested unit, metric units)", fontsize=9, pad=20)
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
