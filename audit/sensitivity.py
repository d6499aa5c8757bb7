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


def to_json(frame: pd.DataFrame, meta: dict) -> str:
    records = json.loads(frame.to_json(orient="records"))
    return json.dumps({**meta, "rows": records}, indent=1, sort_keys=True) + "\n"
