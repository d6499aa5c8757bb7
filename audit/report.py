"""The statistical report: reports/audit/report.md and a self-contained report.html.

Built from the pipeline's tidy results and the claim statistics only (results/*.csv|json, the
params, the data record, dvc.lock); it never loads a model. Figures are matplotlib PNGs in
reports/audit/figures/, embedded in the HTML as data URIs so the file stands alone.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import __version__
from .claims import verdict_reading
from .config import PRESETS, Params, UserError, to_dict
from .methods import METHODS
from .paths import REPORT_DIR, SENSITIVITY_DIR
from .sensitivity import from_json, heatmap_png, paragraphs
from .storage import atomic_write_bytes

# Merge methods take their colours from the registry; base models and the shipped baselines' here.
METHOD_COLORS = {"base": "#444444", **{name: m.colour for name, m in METHODS.items()}, "l1": "#ff7f0e", "l2": "#9467bd"}


class ReportError(UserError, RuntimeError):
    """Inputs of the report are missing or malformed (one line naming the file)."""


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ReportError(f"{path}: missing; run the pipeline first (make repro or dvc repro)")
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: unreadable table ({str(e).splitlines()[0]}); rerun the pipeline "
                          "(dvc repro)") from None


def _ci95(values) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% CI of the mean (figures only; the tests use the bootstrap)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


# ---------------------------------------------------------------- figures


def _figures(table: pd.DataFrame, barriers: pd.DataFrame, params: Params, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path] = {}
    main_side = params.merge.permute
    t = table[table.side.isna() | (table.side == main_side)]

    def save(fig, name):
        path = out / f"{name}.png"
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        figs[name] = path

    # 1. The paper's Fig. 3 as its claims read it: hierarchical vs MergeMany per number of models,
    # with the unmerged median; naive averaging (far below) in its own panel, so that its range
    # does not squeeze the central comparison into a sliver.
    acc = t[t.metric == "clean_accuracy"]
    merged = acc[acc.kind == "merged"]
    depths = sorted(merged.depth.unique())
    methods = [m for m in METHODS if m in set(merged.method)]
    central = [m for m in ("hierarchical", "mergemany") if m in methods]
    others = [m for m in methods if m not in central]
    base_median = acc[acc.kind == "base"].value.median()
    panels = [(group, " vs ".join(group)) for group in (central, others) if group]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(11, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1][:max(len(panels), 1)]})
    for ax, (group, title) in zip(axes[0], panels):
        width = 0.8 / max(len(group), 1)
        for i, m in enumerate(group):
            data = [merged[(merged.method == m) & (merged.depth == d)].value.to_numpy() for d in depths]
            pos = [j + (i - (len(group) - 1) / 2) * width for j in range(len(depths))]
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True)
            for box in bp["boxes"]:
                box.set(facecolor=METHOD_COLORS[m], alpha=0.55)
            ax.plot([], [], color=METHOD_COLORS[m], lw=6, alpha=0.55, label=m)
        ax.axhline(base_median, color="black", ls="--", lw=1, label=f"unmerged median ({base_median:.3f})")
        ax.set_xticks(range(len(depths)), [f"{2 ** int(d)}" for d in depths])
        ax.set_xlabel("models merged (2^depth)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Clean accuracy by number of merged models (paper's Fig. 3)", fontsize=11)
    save(fig, "accuracy_by_method")

    # 2. Robust accuracy vs eps per stage (hierarchical) with 95% CI bands, with L1/L2 (Fig. 4).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, unit in ((axes[0], "fgsm_robust_accuracy", "FGSM eps (L-inf, pixels)"),
                             (axes[1], "deepfool_robust_accuracy", "DeepFool eps (L2, pixels)")):
        sel = t[t.metric == metric]
        curves = [("unmerged", sel[sel.kind == "base"], "black")]
        cmap = plt.get_cmap("viridis")
        for d in depths:
            curves.append((f"hierarchical, {2 ** int(d)} models",
                           sel[(sel.method == "hierarchical") & (sel.depth == d)], cmap(d / (max(depths) + 0.5))))
        for name in params.zoo.regularized:
            curves.append((f"{name} regularized", sel[(sel.kind == "regularized") & (sel.method == name)],
                           METHOD_COLORS.get(name, "orange")))
        for label, part, color in curves:
            if part.empty:
                continue
            stats_ = part.groupby("eps").value.apply(lambda v: _ci95(v)).apply(pd.Series)
            stats_.columns = ["mean", "lo", "hi"]
            ls = "--" if "regularized" in label else "-"
            ax.plot(stats_.index, stats_["mean"], ls, color=color, label=label, marker="o", ms=3)
            ax.fill_between(stats_.index, stats_["lo"], stats_["hi"], color=color, alpha=0.15)
        ax.set_xlabel(unit)
        ax.set_ylabel("robust accuracy (fraction of all samples)")
        ax.set_title({"fgsm": "FGSM", "deepfool": "DeepFool"}[metric.split("_")[0]] + ": robust accuracy by stage (95% CI)")
    axes[1].legend(fontsize=7)
    save(fig, "robustness_by_stage")

    # 3. Weight norm and both Lipschitz bounds by stage, merged vs naive averaging (Fig. 5).
    panels = [("weight_norm", "weight norm sum ||W||_F + ||b||_2"), ("lipschitz_global", "global Lipschitz bound"),
              ("lipschitz_local_mean", f"local Lipschitz bound (r = {params.eval.metrics.lipschitz_radius:g})")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (metric, label) in zip(axes, panels):
        sel = t[t.metric == metric]
        base = sel[sel.kind == "base"].value
        for m in methods:
            xs, ys, lo, hi = [0], [], [], []
            mean, l_, h_ = _ci95(base)
            ys.append(mean), lo.append(l_), hi.append(h_)
            for d in depths:
                mean, l_, h_ = _ci95(sel[(sel.method == m) & (sel.depth == d)].value)
                xs.append(int(d)), ys.append(mean), lo.append(l_), hi.append(h_)
            ax.plot(xs, ys, "-o", color=METHOD_COLORS[m], label=m, ms=3)
            ax.fill_between(xs, lo, hi, color=METHOD_COLORS[m], alpha=0.15)
        ax.set_xticks([0, *[int(d) for d in depths]])
        ax.set_xlabel("merge depth (0 = unmerged)")
        ax.set_ylabel(label)
        drawn = [v for line in ax.get_lines() for v in line.get_ydata() if np.isfinite(v)]
        log = metric.startswith("lipschitz") and drawn and min(drawn) > 0  # log needs positive data
        ax.set_yscale("log" if log else "linear")
        ax.set_title(label.split(" (")[0])
    axes[0].legend(fontsize=8)
    save(fig, "norms_by_stage")

    # 4. Barrier curves, naive vs weight-matched.
    if not barriers.empty:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, col, label in ((axes[0], "loss", "test loss (cross-entropy)"), (axes[1], "accuracy", "test accuracy")):
            for (pair, kind), part in barriers.groupby(["pair", "interpolation"]):
                ax.plot(part.lam, part[col], color="#1f77b4" if kind == "weight_matched" else "#7f7f7f",
                        alpha=0.8, label=f"{kind} ({pair})")
            ax.set_xlabel("lambda (weight of model B)")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        axes[0].set_title("Interpolation between two base models")
        save(fig, "barriers")

    # 5. Robust accuracy against clean accuracy.
    eps = _reference_eps(t)
    if eps is not None:
        clean = t[t.metric == "clean_accuracy"].set_index("model").value
        rob = t[(t.metric == "fgsm_robust_accuracy") & np.isclose(t.eps, eps)].set_index("model").value
        both = pd.concat([clean.rename("clean"), rob.rename("robust")], axis=1).dropna()
        kinds = t.drop_duplicates("model").set_index("model")
        both["group"] = [kinds.loc[m, "method"] if kinds.loc[m, "kind"] != "base" else "base" for m in both.index]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for g, part in both.groupby("group"):
            ax.scatter(part.clean, part.robust, s=14, alpha=0.7, color=METHOD_COLORS.get(g, "orange"), label=g)
        lim = [float(both[["clean", "robust"]].min().min()) - 0.02, 1.0]
        ax.plot(lim, lim, ":", color="black", lw=0.8, label="robust = clean")
        ax.set_xlabel("clean accuracy (fraction)")
        ax.set_ylabel(f"FGSM robust accuracy at eps {eps:g} (fraction)")
        ax.set_title("Is robustness more than lost accuracy?")
        ax.legend(fontsize=8)
        save(fig, "robust_vs_clean")
    return figs


def _reference_eps(t: pd.DataFrame) -> float | None:
    grid = sorted(t[t.metric == "fgsm_robust_accuracy"].eps.dropna().unique())
    grid = [e for e in grid if e > 0]
    return 0.05 if 0.05 in grid else (grid[len(grid) // 2] if grid else None)


# ---------------------------------------------------------------- provenance


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"rebasin-audit": __version__}
    for pkg in ("torch", "numpy", "scipy", "statsmodels", "pandas", "dvc", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(root: Path, params: Params, catalog: pd.DataFrame) -> dict:
    lock = root / "dvc.lock"
    data = json.loads((root / "results/data.json").read_text()) if (root / "results/data.json").exists() else {}
    return {
        "git_commit": _git_commit(root),
        "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "no dvc.lock",
        "data": data,
        "architecture": list(params.zoo.arch) if not isinstance(params.zoo.arch, str) else params.zoo.arch,
        "models": {k: int(v) for k, v in catalog.kind.value_counts().items()},
        "pools": params.zoo.pools, "pool_size": params.zoo.pool_size,
        "base_seeds": f"0..{params.zoo.pools * params.zoo.pool_size - 1}",
        "merge_seeds": list(params.merge.seeds),
        "versions": _versions(),
    }


# ---------------------------------------------------------------- documents


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if not isinstance(v, float):
        return str(v)
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.{digits}g}"  # tiny p-values and effects: significant digits
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"


def _text(v) -> str:
    return v if isinstance(v, str) and v else "-"


def _claims_table(claims: pd.DataFrame, verdicts: list[dict]) -> list[list[str]]:
    rows = [["claim", "source", "test unit", "n", "effect [95% CI]", "d_z", "MDE", "p (Holm)", "verdict",
             "MergeMany converged", "verdict, converged MergeMany only"]]
    info = {v["id"]: v for v in verdicts}
    for r in claims.itertuples():
        ci = f"{_fmt(r.effect)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if np.isfinite(r.effect) else "-"
        rows.append([r.id, info.get(r.id, {}).get("source", r.source), r.unit, _fmt(int(r.n) if np.isfinite(r.n) else None),
                     ci, _fmt(r.d_z), _fmt(r.mde), _fmt(r.p_holm), r.verdict,
                     _text(getattr(r, "mergemany_converged", "")), _text(getattr(r, "verdict_converged_only", ""))])
    return rows


def _ui_base(params: Params) -> str:
    """Where the MLflow UI serves this store: the tracking server itself, else `audit ui`'s default."""
    uri = params.tracking.uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def _finding(tests: list[dict]) -> str:
    """What the audit finds, in the metric's units: each tested unit's effect and 95% CI (at most
    three units spelled out; the detailed table has every one)."""
    parts = []
    for t in tests[:3]:
        unit = str(t.get("unit") or "")
        if unit.startswith("not measured"):
            parts.append(unit)
        elif t.get("effect") is None:
            parts.append(f"{unit}: -")
        else:
            parts.append(f"{unit}: {_fmt(t['effect'])} [{_fmt(t.get('ci_low'))}, {_fmt(t.get('ci_high'))}]")
    if len(tests) > 3:
        parts.append(f"+{len(tests) - 3} more units")
    metric = tests[0].get("metric") if tests else None
    return (f"{metric}: " if metric else "") + "; ".join(parts)


def summary_rows(verdicts: list[dict], params: Params) -> list[list[str]]:
    """The summary table: per claim what the paper says, what the audit finds, the verdict (a
    badge in the HTML) and the caveat a reader needs beside it."""
    rows = [["claim", "the paper says", "the audit finds (effect [95% CI])", "verdict", "caveat"]]
    ui = _ui_base(params)
    for v in verdicts:
        run = v.get("mlflow_run")
        claim = f"[{v['id']}]({ui}/#/experiments/{run['experiment_id']}/runs/{run['run_id']})" if run else v["id"]
        reading = verdict_reading(v["verdict"], v.get("caveat") or "")
        rows.append([claim, f"\"{v['quote']}\" ({v['source']})", _finding(v.get("tests") or []),
                     f"[[verdict:{v['verdict']}:{reading}]]", v.get("caveat") or "-"])
    return rows


def scope_paragraph(params: Params, prov: dict, n_models: int) -> str:
    """What was rerun, at what scale, and what differs from the paper (the ML Reproducibility
    Challenge's scope section, in one paragraph)."""
    z, t, m = params.zoo, params.zoo.train, params.merge
    arch = "-".join(map(str, PRESETS[z.arch])) if isinstance(z.arch, str) else "-".join(map(str, z.arch))
    data = prov["data"].get("name", params.data.name)
    return (f"**Rerun:** the controlled ablation of Franke et al. (2025): Git Re-Basin weight matching with "
            f"interpolation at lambda {m.lam:g}, merged hierarchically (2^d models over d stages) and by MergeMany "
            f"(at most {m.mergemany_max_iter} passes), beside naive averaging, on identical groups of "
            f"{', '.join(str(2 ** d) for d in range(1, z.depth + 1))} models from {z.pools} pool(s) of "
            f"{z.pool_size} base models ({n_models} models evaluated, merge seeds {list(m.seeds)}). "
            f"**Differs from the paper:** data set {data}" + ("" if data == "cifar10" else " (the paper: CIFAR-10)")
            + f", {n_models} models (the paper: 1600 MLPs); MLP {arch}"
            + ("" if arch == "512-512-512-256" else " (the paper: 512-512-512-256)") + "; "
            + (f"models imported from {z.import_.path} (their training is not known here)" if z.source == "import"
               else f"training {t.optimizer} lr {t.lr:g}, {t.epochs} epochs, batch {t.batch_size}, weight decay "
                    f"{t.weight_decay:g}")
            + f", input normalization {z.input_norm} as a fixed layer inside each model; attacks in [0, 1] pixel space with eps in pixel units (FGSM L-inf; DeepFool L2, "
            f"overshoot {params.eval.metrics.deepfool_overshoot:g}, robust accuracy at eps = share of samples whose "
            f"minimal perturbation exceeds eps, the foolbox convention); robust accuracy counts samples correct and "
            f"still correct under attack, over all test samples.")


def _confound_map(root: Path, fig_dir: Path):
    """(long table, meta, heatmap path) from results/sensitivity/sensitivity.json, or None."""
    path = root / SENSITIVITY_DIR / "sensitivity.json"
    if not path.exists():
        return None
    try:
        frame, meta = from_json(path.read_text())
    except (ValueError, KeyError) as e:
        raise ReportError(f"{path}: unreadable confound map ({e}); rerun audit sensitivity") from None
    if frame.empty:
        return None
    fig = fig_dir / "confound_map.png"
    atomic_write_bytes(fig, heatmap_png(frame))
    return frame, meta, fig


FIGURE_TITLES = {
    "accuracy_by_method": "Fig. 3: clean accuracy, hierarchical vs MergeMany",
    "robustness_by_stage": "Fig. 4: robustness by stage",
    "norms_by_stage": "Fig. 5: weight norm and Lipschitz bounds by stage",
    "barriers": "Barriers between two base models",
    "robust_vs_clean": "Robust against clean accuracy",
}


PAPER_NOTES = {
    "accuracy_by_method": ("F1-hierarchical-beats-mergemany", "F3-mergemany-deteriorates-4-to-8",
                           "F2-gap-grows-with-models"),
    "robustness_by_stage": ("F4-fgsm-robustness-grows-with-depth", "F5-deepfool-robustness-grows-with-depth",
                            "F6-weaker-attacks-favour-base-models", "F7-l2-more-robust-than-merged"),
    "norms_by_stage": ("F8-weight-norm-falls-with-stage", "F9-lipschitz-bound-falls-with-stage",
                       "C2-norm-falls-under-naive-averaging-too", "C3-merged-norm-vs-naive"),
    "barriers": ("A1-near-zero-barrier", "F11-merging-costs-accuracy"),
    "robust_vs_clean": ("C1-success-rate-grows-with-depth",),
}

CAPTIONS = {
    "accuracy_by_method": "Test accuracy of merged models by number of merged models: hierarchical vs "
                          "MergeMany (the paper's Fig. 3 comparison), naive averaging in its own panel; dashed: "
                          "median of the unmerged models.",
    "robustness_by_stage": "Robust accuracy (share of all test samples correct and still correct under attack) "
                           "over attack strength, per hierarchical stage, with L1/L2-regularized baselines "
                           "(paper's Fig. 4); bands: 95% CI of the mean over models.",
    "norms_by_stage": "Weight norm and Lipschitz upper bounds by merge depth: hierarchical, MergeMany and naive "
                      "averaging of the identical groups (paper's Fig. 5); bands: 95% CI.",
    "barriers": "Loss and accuracy along the linear path between two base models, naive and after weight matching.",
    "confound_map": "Each claim's verdict in each setting of the sensitivity grid (blue supported, orange "
                    "contradicted, purple mixed, grey inconclusive); the number is the effect of its first tested unit.",
    "robust_vs_clean": "Each model's FGSM robust accuracy against its clean accuracy: points near the diagonal "
                       "lose little to the attack; a shift along the diagonal is lost clean accuracy.",
}


def _notes_for(fig: str, verdicts: dict[str, dict]) -> list[str]:
    notes = []
    for cid in PAPER_NOTES.get(fig, ()):
        v = verdicts.get(cid)
        if v is None:
            continue
        differs = v["verdict"] != "supported"
        mark = "Differs from the paper" if differs and not v.get("control") else "Agrees" if not differs else "Control"
        notes.append(f"{mark} - {cid} ({v['source']}): {v['verdict']}. {v['detail']}")
    return notes


def build_report(root: Path, params: Params) -> Path:
    """Write reports/audit/report.md, report.html and figures/; return the HTML path."""
    root = Path(root)
    table = _read_csv(root / "results/evaluation.csv")
    if table.empty:
        raise ReportError(f"{root / 'results/evaluation.csv'}: no rows; rerun the evaluate stage (dvc repro)")
    catalog = _read_csv(root / "results/models.csv")
    barriers = _read_csv(root / "results/barriers.csv")
    claims = _read_csv(root / "results/claims.csv")
    verdict_path = root / "results/claims.json"
    if not verdict_path.exists():
        raise ReportError(f"{verdict_path}: missing; run the audit stage first (dvc repro)")
    verdict_list = json.loads(verdict_path.read_text())
    verdicts = {v["id"]: v for v in verdict_list}
    compare = _read_csv(root / "results/compare.csv") if (root / "results/compare.csv").exists() else pd.DataFrame()

    out = root / REPORT_DIR
    figs = _figures(table, barriers, params, out / "figures")
    confound = _confound_map(root, out / "figures")  # the sensitivity grid's results, where collected
    if confound is not None:
        figs["confound_map"] = confound[2]
        dependent = confound[0][confound[0].label == "setting-dependent"].groupby("claim", sort=False)
        for cid, g in dependent:
            if cid in verdicts:
                where = "; ".join(f"{v} under {', '.join(g[g.verdict == v].setting)}"
                                  for v in ("supported", "contradicted", "mixed") if (g.verdict == v).any())
                note = f"setting-dependent in the confound map ({where})"
                verdicts[cid]["caveat"] = "; ".join(x for x in (verdicts[cid].get("caveat"), note) if x)
    prov = provenance(root, params, catalog)
    counts = pd.Series([v["verdict"] for v in verdict_list]).value_counts()
    n_models = len(catalog)

    md: list[str] = ["# rebasin-audit report", ""]
    md += [f"Data set **{prov['data'].get('name', params.data.name)}**, {n_models} models "
           f"({', '.join(f'{v} {k}' for k, v in prov['models'].items())}), {params.zoo.pools} pool(s) of "
           f"{params.zoo.pool_size} base models, merge seeds {list(params.merge.seeds)}; every interval is a 95% CI, "
           f"p-values are Holm-adjusted over all claims (alpha {params.audit.alpha}).", ""]
    by_construction = sum(str(v.get("caveat") or "").startswith("holds by construction") for v in verdict_list)
    md += ["## Summary", "",
           f"{counts.get('supported', 0)} supported ({by_construction} of them hold by construction and are no "
           f"evidence), {counts.get('contradicted', 0)} contradicted, {counts.get('mixed', 0)} mixed, "
           f"{counts.get('inconclusive', 0)} inconclusive (of {len(verdict_list)} claims).", ""]
    md += ["::: summary"] + _md_table(summary_rows(verdict_list, params)) + [":::", ""]
    md += ["## Scope", "", scope_paragraph(params, prov, n_models), ""]
    md += ["## Figures and the claims they test", ""]
    for name, path in figs.items():
        if name == "confound_map":
            continue  # its own section, after the figures
        md += [f"### {FIGURE_TITLES[name]}", "", f"![{name}](figures/{path.name})", "", f"*{CAPTIONS[name]}*", ""]
        md += [f"> {n}" for n in _notes_for(name, verdicts)] + [""]
    if confound is not None:
        frame, meta, _ = confound
        md += ["## The confound map: does each verdict survive the setting?", "",
               f"From `audit sensitivity` ({len(set(frame.setting))} settings, each a DVC experiment on baseline commit "
               f"{str(meta.get('baseline', '?'))[:10]}, one factor varied at a time from the reference at the reduced "
               f"scale {', '.join(f'{k}={v}' for k, v in meta.get('scale', {}).items()) or '(none)'}; "
               "reports/sensitivity/ has its table).", "", "![confound_map](figures/confound_map.png)", "",
               f"*{CAPTIONS['confound_map']}*", ""]
        md += [x for para in paragraphs(frame) for x in (para, "")] or ["No claim is setting-dependent.", ""]
    md += ["## Detailed tables", "", f"::: details Every test ({len(claims)} rows)"]
    md += _md_table(_claims_table(claims, verdict_list)) + [":::", ""]
    if not compare.empty:
        cols = ["metric", "eps", "models", "method", "n", "mean", "baseline_mean", "diff", "diff_ci_low",
                "diff_ci_high", "d_z", "mde", "p_holm", "verdict", "mergemany_converged"]
        md += [f"::: details Methods against MergeMany, paired on identical groups ({len(compare)} rows)"]
        md += _md_table([cols] + [[_fmt(x) if not isinstance(x, str) else x for x in r]
                                  for r in compare[cols].itertuples(index=False)]) + [":::", ""]
    md += ["## Setup and provenance", "", "```json", json.dumps(prov, indent=1), "```", "",
           "Params of this run:", "", "```yaml", yaml.safe_dump(to_dict(params), sort_keys=False).strip(), "```", ""]
    md += ["## Limitations", ""] + [f"- {x}" for x in _limitations(params, catalog)] + [""]
    atomic_write_bytes(out / "report.md", ("\n".join(markdown_text(md)) + "\n").encode())
    html_path = out / "report.html"
    atomic_write_bytes(html_path, markdown_html(md, figs).encode())
    return html_path


def _limitations(params: Params, catalog: pd.DataFrame) -> list[str]:
    out = []
    n_base = int((catalog.kind == "base").sum())
    if params.data.name != "cifar10" or n_base < 1600:
        out.append(f"Scale: {n_base} base models on {params.data.name}; the paper trained 1600 MLPs on CIFAR-10. "
                   "Effects and their sizes need not transfer; run params/paper-cifar10.yaml for the paper's scale.")
    if params.zoo.pools < 3:
        out.append(f"{params.zoo.pools} pool(s): depth trends use OLS and treat models sharing base models as "
                   "independent, so their p-values are optimistic; use zoo.pools >= 3 for the mixed model.")
    if params.merge.mergemany_max_iter < 100:
        out.append(f"MergeMany was capped at {params.merge.mergemany_max_iter} passes; groups that did not converge "
                   "are listed in models/merged/mergemany/manifest.json.")
    out.append("Robust accuracy counts misclassified clean samples as non-robust (foolbox convention); DeepFool's "
               "robust accuracy at eps is the share of correct samples whose minimal L2 perturbation exceeds eps.")
    return out


def _md_table(rows: list[list[str]]) -> list[str]:
    esc = [[" ".join(str(c).split()).replace("|", "\\|") for c in r] for r in rows]  # one line per row
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])] + ["| " + " | ".join(r) + " |" for r in esc[1:]]


_VERDICT = re.compile(r"\[\[verdict:([a-z ]+):([^\]]*)\]\]")
_LINK = re.compile(r"\[([^\]]+)\]\(((?:https?|file)://[^)\s\"'<>]+)\)")


def markdown_text(md_lines: list[str]) -> list[str]:
    """The lines as report.md holds them: a verdict badge is its words, a block marker a heading."""
    out = []
    for line in md_lines:
        if line.startswith(":::"):
            title = line[3:].strip().partition(" ")[2]
            if title:
                out += [f"### {title}", ""]
            continue
        out.append(_VERDICT.sub(lambda m: f"**{m.group(2)}**", line))
    return out


def markdown_html(md_lines: list[str], figs: dict[str, Path], title: str = "rebasin-audit report") -> str:
    """A minimal, dependency-free Markdown subset -> HTML, images embedded as data URIs. Beyond
    Markdown: ``[[verdict:<verdict>:<words>]]`` is a coloured badge (class ``verdict <verdict>``),
    ``::: details TITLE`` ... ``:::`` a collapsible block, ``::: summary`` ... ``:::`` the summary."""
    body, in_code, in_table = [], False, False
    table_id = None
    for line in md_lines:
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            if set(line) <= set("|-"):
                continue
            if not in_table:
                ident = f" id={table_id}" if table_id else ""
                body.append(f"<div class=scroll><table{ident}><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells)
                            + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table></div>")
            in_table = False
        if line.startswith(":::"):
            kind, _, text = line[3:].strip().partition(" ")
            if kind == "details":
                body.append(f"<details><summary>{html.escape(text)}</summary>")
                table_id = None
            elif kind == "summary":
                table_id = "summary"
            else:  # the end of a block
                body.append("</details>" if table_id is None else "")
                table_id = None
            continue
        if line.startswith("!["):
            name = line[2:line.index("]")]
            data = base64.b64encode(figs[name].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("> "):
            body.append(f"<p class=note>{_inline(line[2:])}</p>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.startswith("*") and line.endswith("*"):
            body.append(f"<p class=caption>{html.escape(line.strip('*'))}</p>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table></div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;"
             "vertical-align:top}.scroll{overflow-x:auto;max-width:100%}"
             "img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}"
             ".note{background:#fff6e0;padding:4px 8px;font-size:13px}.caption{font-style:italic;font-size:13px}"
             ".verdict{display:inline-block;padding:1px 7px;border-radius:9px;font-weight:bold;white-space:nowrap;"
             "font-size:12px}.verdict.supported{background:#d7ecfa;color:#0b4f7c}"
             ".verdict.contradicted{background:#fde3cf;color:#8a3a00}.verdict.mixed{background:#eadcf3;color:#5b2a7a}"
             ".verdict.inconclusive{background:#eeeeee;color:#444}"
             "details{margin:0.6em 0}summary{cursor:pointer;font-weight:bold}")
    # The title becomes "report ready: N/N images" once every image has decoded; a browser test reads it.
    script = ("window.addEventListener('load',()=>{const i=[...document.images];"
              "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
              "document.title='report ready: '+ok+'/'+i.length+' images';});")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script>{script}</script></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out, last = [], 0
    for m in _LINK.finditer(text):
        out.append(_inline_plain(text[last:m.start()]))
        out.append(f'<a href="{html.escape(m.group(2), quote=True)}">{_inline_plain(m.group(1))}</a>')
        last = m.end()
    out.append(_inline_plain(text[last:]))
    return "".join(out)


def _inline_plain(text: str) -> str:
    out = html.escape(text, quote=False)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    return _VERDICT.sub(lambda m: f'<span class="verdict {m.group(1)}">{m.group(2)}</span>', out)
