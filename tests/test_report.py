"""The report from a synthetic run: every section and figure, and the HTML rendered in Chromium."""

import html
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from audit.config import params_from_dict
from audit.report import ReportError, build_report
from tests.synthetic import synthetic_results


def _with_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """The synthetic accuracy table plus the other metrics the figures draw."""
    frames = [table]
    rng = np.random.default_rng(0)
    for metric, grid in (("fgsm_robust_accuracy", [0.0, 0.01, 0.05]), ("deepfool_robust_accuracy", [0.5, 1.0]),
                         ("weight_norm", [np.nan]), ("lipschitz_global", [np.nan]), ("lipschitz_local_mean", [0.1])):
        for eps in grid:
            t = table.copy()
            t["metric"], t["eps"] = metric, eps
            scale = 1.0 if np.isnan(eps) else 1 - eps
            t["value"] = t.value * scale + rng.normal(0, 0.01, len(t)) * (0 if np.isnan(eps) else 1)
            if metric in ("weight_norm", "lipschitz_global"):
                t["value"] = 20 / (1 + t.depth) + rng.normal(0, 0.1, len(t))
            frames.append(t)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "results").mkdir()
    table = _with_metrics(synthetic_results(effects={"mergemany": lambda d: -0.02 * d}))
    table.to_csv(root / "results/evaluation.csv", index=False)
    table.drop_duplicates("model").drop(columns=["metric", "eps", "value"]).to_csv(root / "results/models.csv",
                                                                                 index=False)
    lam = np.linspace(0, 1, 5)
    pd.DataFrame({"pair": "s0-s1", "interpolation": ["naive"] * 5 + ["weight_matched"] * 5,
                  "lam": np.r_[lam, lam], "loss": np.r_[0.3 + np.sin(np.pi * lam), 0.3 + 0.1 * np.sin(np.pi * lam)],
                  "accuracy": np.r_[0.9 - 0.5 * np.sin(np.pi * lam), 0.9 - 0.02 * np.sin(np.pi * lam)]}
                 ).to_csv(root / "results/barriers.csv", index=False)
    (root / "results/data.json").write_text(json.dumps({"name": "digits", "fingerprint": "ab" * 32}))
    params = params_from_dict({"zoo": {"depth": 3, "pools": 3}, "audit": {"bootstrap": 500, "beyond_depth": "not_measured"},
                               "tracking": {"enabled": False}})
    from audit.stages.claims import run as run_audit
    from tests.conftest import REPO

    (root / "reports").mkdir()
    shutil.copy(REPO / "reports/claims.yaml", root / "reports/claims.yaml")
    run_audit(params, root)
    return root, params


def test_report_has_verdicts_figures_notes_and_provenance(run_dir):
    root, params = run_dir
    html_path = build_report(root, params)
    md = (root / "reports/audit/report.md").read_text()
    sections = ["## Summary", "## Scope", "## Figures and the claims they test", "## Detailed tables",
                "### Every test", "### Methods against MergeMany", "## Setup and provenance", "## Limitations"]
    positions = [md.index(x) for x in sections]
    assert positions == sorted(positions), "sections out of order"  # the summary first, tables after figures
    assert "F1-hierarchical-beats-mergemany" in md and "supported" in md and "[[verdict" not in md
    figures = sorted(p.name for p in (root / "reports/audit/figures").glob("*.png"))
    assert figures == ["accuracy_by_method.png", "barriers.png", "norms_by_stage.png", "robust_vs_clean.png",
                       "robustness_by_stage.png"]
    assert "Differs from the paper" in md or "Agrees" in md
    assert '"dvc_lock_sha256"' in md and '"versions"' in md
    assert "**Differs from the paper:** data set digits (the paper: CIFAR-10), 153 models (the paper: 1600 MLPs)" in md
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table id=summary>" in html
    assert html.count("<details>") == 2 and not list((root / "reports/audit").rglob(".*.tmp"))


def test_the_summary_has_a_row_per_claim_with_a_badge_the_finding_and_the_caveat(run_dir):
    root, params = run_dir
    page = build_report(root, params).read_text()
    verdicts = json.loads((root / "results/claims.json").read_text())
    summary = page[page.index("<table id=summary>"):page.index("</table>", page.index("<table id=summary>"))]
    rows = summary.split("<tr>")[2:]
    assert len(rows) == len(verdicts)
    for row, v in zip(rows, verdicts):
        assert v["id"] in row and f'<span class="verdict {v["verdict"]}">' in row
        first = v["tests"][0]
        if first.get("effect") is not None and not str(first["unit"]).startswith("not measured"):
            assert html.escape(f"{first['unit']}: ", quote=False) in row  # its unit, then effect [CI]
        assert html.escape(v.get("caveat") or "-", quote=False) in row
    # an MLflow run recorded for a claim becomes a link to it in the UI
    from audit.report import summary_rows

    linked = dict(verdicts[0], mlflow_run={"experiment_id": "7", "run_id": "abc"})
    row = summary_rows([linked], params)[1]
    assert row[0] == f"[{linked['id']}](http://127.0.0.1:5000/#/experiments/7/runs/abc)"


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ReportError, match="results/evaluation.csv: missing; run the pipeline first"):
        build_report(tmp_path, params_from_dict({}))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


HARNESS = """<!doctype html><html><head><title>loading</title></head><body style="margin:0">
<iframe id=r src="{src}" style="width:1280px;height:900px;border:0"></iframe>
<script>
document.getElementById('r').addEventListener('load', () => setTimeout(() => {{
  const d = document.getElementById('r').contentDocument;
  const imgs = [...d.images];
  const drawn = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const summary = d.getElementById('summary');
  const details = [...d.querySelectorAll('details table')];
  const first = summary && details.every(t => summary.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING);
  document.title = `width ${{d.documentElement.scrollWidth}}/${{d.documentElement.clientWidth}}; ` +
    `images ${{drawn}}/${{imgs.length}}; tables ${{details.length}}; summary first ${{first}}`;
}}, 500));
</script></body></html>"""


def _chromium(tmp_path, *args):
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_html_renders_in_headless_chromium_with_every_image(run_dir, tmp_path):
    """At 1280 px: no horizontal overflow, every figure decoded with a natural size, the summary
    before every detailed table; the screenshot is saved in the test's temporary directory."""
    root, params = run_dir
    html_path = build_report(root, params)
    out = _chromium(tmp_path, "--dump-dom", html_path.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<title>report ready: 5/5 images</title>" in out.stdout
    console_errors = [line for line in out.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors and "Uncaught" not in out.stderr
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS.format(src=html_path.as_uri()))
    out = _chromium(tmp_path, "--dump-dom", harness.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    title = out.stdout[out.stdout.index("<title>") + 7:out.stdout.index("</title>")]
    scroll_width, client_width = title.split(";")[0].removeprefix("width ").split("/")
    assert int(scroll_width) <= int(client_width) <= 1280, f"horizontal overflow at 1280 px: {title}"
    assert "images 5/5" in title and "tables 2" in title and "summary first true" in title, title
    shot = tmp_path / "report-1280.png"
    out = _chromium(tmp_path, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}", html_path.as_uri())
    assert out.returncode == 0 and shot.stat().st_size > 10_000, out.stderr[-2000:]


def test_registry_text_cannot_inject_html(tmp_path):
    from audit.report import markdown_html

    evil = 'see [x](https://e.com/"onmouseover="alert(1)) and <script>alert(2)</script> **b**'
    page = markdown_html([evil, "| a | b |", "|---|---|", f"| {evil} | [[verdict:supported:ok]] |"], {})
    assert "<script>alert(2)" not in page and "<a " not in page  # no tag from user text: the quote ends no attribute
    assert '<span class="verdict supported">ok</span>' in page and "<b>b</b>" in page
    good = markdown_html(["[run](http://127.0.0.1:5000/#/experiments/1/runs/ab)"], {})
    assert '<a href="http://127.0.0.1:5000/#/experiments/1/runs/ab">run</a>' in good


def test_a_collected_confound_map_joins_the_report(run_dir, tmp_path):
    """results/sensitivity/sensitivity.json (audit sensitivity's output, a dep of the report stage)
    adds the heatmap, a paragraph per setting-dependent claim and that caveat in the summary."""
    import pandas as pd

    from audit.sensitivity_report import write

    root, params = run_dir
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    rows = [{"setting": s, "claim": c, "verdict": v, "unit": "slope", "n": 3, "effect": e, "ci_low": e - 0.01,
             "ci_high": e + 0.01, "metric": "fgsm_robust_accuracy", "by_construction": False, "caveat": "",
             "quote": "q", "source": "src", "factor": "", "level": "", "experiment": "sens-x", "label": lab}
            for c, lab, cells in (("F4-fgsm-robustness-grows-with-depth", "setting-dependent",
                                   (("reference", "contradicted", -0.02), ("input_norm=none", "supported", 0.03))),
                                  ("F1-hierarchical-beats-mergemany", "undecided",
                                   (("reference", "inconclusive", 0.0), ("input_norm=none", "inconclusive", 0.001))))
            for s, v, e in cells]
    write(copy, pd.DataFrame(rows), {"baseline": "0123456789abcdef", "scale": {"zoo.pools": 3}})
    page = build_report(copy, params).read_text()
    md = (copy / "reports/audit/report.md").read_text()
    assert md.index("## The confound map") > md.index("## Figures") and md.index("## The confound map") < md.index("## Detailed tables")
    assert "baseline commit 0123456789" in md and "![confound_map](figures/confound_map.png)" in md
    para = [ln for ln in md.splitlines() if ln.startswith("**F4-fgsm-robustness-grows-with-depth**")]
    assert len(para) == 1 and "supported under input_norm=none" in para[0]
    assert "setting-dependent in the confound map (supported under input_norm=none; contradicted under reference)" in page
    assert page.count("data:image/png;base64,") == 6

