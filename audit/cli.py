"""The ``audit`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from . import __version__


@click.group(name="audit", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audit")
def main() -> None:
    """rebasin-audit: train a zoo, merge it every way, evaluate, and test published claims."""


def _load(params_path: str):
    from .config import ConfigError, load_params

    try:
        return load_params(params_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def ui_command(params, host: str, port: int) -> list[str]:
    """The MLflow UI command line for the tracking store in params (one worker: it is a local viewer)."""
    uri = params.tracking.uri
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow") or "mlflow"
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]


@main.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="params file")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dry-run", is_flag=True, help="print the command instead of starting the server")
def ui(params_path: str, host: str, port: int, dry_run: bool) -> None:
    """Start the MLflow UI on the pipeline's tracking store and print its URL."""
    params = _load(params_path)
    cmd = ui_command(params, host, port)
    uri = params.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        click.echo(f"note: {uri} does not exist yet; run the pipeline first (make repro)", err=True)
    click.echo(f"MLflow UI: http://{host}:{port}  (store {uri}; Ctrl-C stops it)")
    if dry_run:
        click.echo(" ".join(cmd))
        return
    try:
        raise SystemExit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise SystemExit(0) from None


def _metric_option(values: tuple[str, ...]) -> list[tuple[str, float | None]]:
    out = []
    for v in values:
        name, _, eps = v.partition("@")
        try:
            out.append((name, float(eps) if eps else None))
        except ValueError:
            raise click.BadParameter(f"{v!r}: write METRIC or METRIC@EPS, e.g. fgsm_robust_accuracy@0.01",
                                     param_hint="--metric") from None
    return out


def _emit(frame, fmt: str) -> None:
    import json

    if fmt == "csv":
        click.echo(frame.to_csv(index=False, float_format="%.6g"), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(frame.astype(object).where(frame.notna(), None).to_dict("records"), indent=1))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.float_format", "{:.4g}".format):
            click.echo(frame.to_string(index=False))


def _results(params_path: str, results_path: str | None = None):
    from .config import UserError
    from .stages.claims import load_results

    params = _load(params_path)
    try:
        return params, load_results(params, Path(params_path).resolve().parent,
                                    Path(results_path) if results_path else None)
    except UserError as e:
        raise click.ClickException(str(e)) from None


RESULTS_OPTION = click.option("--results", "results_path", default=None, metavar="FILE",
                              help="an evaluation table in the documented schema (default: this run's "
                                   "results/evaluation.csv); zoo.depth and merge.permute come from --params")


FORMATS = click.Choice(["table", "csv", "json"])


@main.command("compare")
@click.option("--baseline", default="mergemany", show_default=True, help="method every other is compared with")
@click.option("--method", "methods", multiple=True, help="method(s) to compare (default: all others)")
@click.option("--metric", "metric_names", multiple=True, metavar="METRIC[@EPS]",
              help="metric(s), e.g. clean_accuracy or fgsm_robust_accuracy@0.01 (default: clean_accuracy)")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="params file of the run")
@RESULTS_OPTION
def compare_cmd(baseline: str, methods: tuple[str, ...], metric_names: tuple[str, ...], fmt: str,
                params_path: str, results_path: str | None) -> None:
    """Per depth: each method vs the baseline on identical groups (mean, CI, difference, Holm p, d_z)."""
    from .claims import ClaimsError
    from .compare import compare

    params, results = _results(params_path, results_path)
    metrics = _metric_option(metric_names) or [("clean_accuracy", None)]
    try:
        table = compare(results, baseline=baseline, methods=list(methods) or None, metrics=metrics,
                        alpha=params.audit.alpha, n_boot=params.audit.bootstrap, seed=params.audit.seed)
    except (ClaimsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    _emit(table, fmt)
    if fmt == "table":
        tested = int(table.p.notna().sum())  # undefined rows are no test
        click.echo(f"\nverdict: higher/lower = significant after Holm over these {tested} comparisons "
                   f"(alpha {params.audit.alpha}); n.s. = not significant, compare |diff| with mde "
                   f"(the smallest difference this n detects with 80% power); undefined = a value is "
                   f"infinite, so nothing is tested (an infinite DeepFool median norm: most points "
                   f"never flipped, see deepfool_unflipped_rate).")


@main.command("claims")
@click.option("--claims", "claims_path", default="reports/claims.yaml", show_default=True, help="claims registry")
@click.option("--detail", is_flag=True, help="one row per tested unit (depth, change...) instead of per claim")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="params file of the run")
@RESULTS_OPTION
def claims_cmd(claims_path: str, detail: bool, fmt: str, params_path: str, results_path: str | None) -> None:
    """Evaluate every claim of the registry on the last run: supported / contradicted / inconclusive."""
    from .claims import VERDICTS, ClaimsError, check_claims, claim_verdicts, evaluate_claims, load_claims
    from .config import METHODS

    params = _load(params_path)
    try:  # the registry is user input: checked before anything is computed
        claims = load_claims(claims_path)
        check_claims(claims, methods=METHODS, depth=params.zoo.depth, path=claims_path,
                     beyond_depth=params.audit.beyond_depth)
    except ClaimsError as e:
        raise click.ClickException(str(e)) from None
    params, results = _results(params_path, results_path)
    a = params.audit
    try:
        rows = evaluate_claims(claims, results, alpha=a.alpha, margin=a.equivalence_margin,
                               n_boot=a.bootstrap, seed=a.seed)
    except ClaimsError as e:
        raise click.ClickException(str(e)) from None
    if detail:
        _emit(rows[["id", "unit", "n", "effect", "ci_low", "ci_high", "d_z", "mde", "p", "p_holm", "verdict"]], fmt)
    else:
        table = claim_verdicts(rows)
        _emit(table, fmt)
        if fmt == "table":
            counts = table.verdict.value_counts()
            click.echo("\n" + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS))


@main.command("report")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="params file of the run")
def report_cmd(params_path: str) -> None:
    """Write reports/audit/report.md and report.html from the last run's results (no model is loaded)."""
    from .report import ReportError, build_report

    params = _load(params_path)
    try:
        path = build_report(Path(params_path).resolve().parent, params)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {path}")


@main.command("plan")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="params file")
def plan_cmd(params_path: str) -> None:
    """Estimate the disk and time the experiment needs on this machine, and whether it fits
    (run in the project directory; the train stage makes the same check before it starts)."""
    from .data import DataError
    from .resources import estimate, shape_of, shortfalls

    params = _load(params_path)
    root = Path.cwd()
    try:
        est = estimate(params, shape_of(params, root))
    except DataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(est.describe())
    if problems := shortfalls(params, root, est):
        raise click.ClickException("does not fit: " + "; ".join(problems))
    click.echo("fits: the train stage will start")


@main.command("sensitivity")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              help="params file whose sensitivity section declares the grid (the project root is its directory)")
@click.option("--collect-only", is_flag=True, help="queue and run nothing: collect the experiments that exist")
@click.option("--jobs", type=click.IntRange(1), default=None, help="experiments at once (default: sensitivity.jobs)")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def sensitivity_cmd(params_path: str, collect_only: bool, jobs: int | None, fmt: str) -> None:
    """The confound map: run each setting of the sensitivity section as a DVC experiment (dvc exp run
    --queue; dvc queue start), then print claim x setting verdicts with effects and CIs, label each
    claim stable or setting-dependent, and write results/sensitivity.{csv,json} and
    reports/sensitivity/. Resumes: finished experiments with the same params and code are kept."""
    import json

    from .config import UserError
    from .confound import run
    from .experiments import head, read
    from .sensitivity import collect, wide
    from .sensitivity_report import write

    params = _load(params_path)
    root = Path(params_path).resolve().parent
    if Path(params_path).name != "params.yaml":
        # DVC experiments set params in the project's params.yaml, which every stage reads
        raise click.ClickException(f"{params_path}: the grid runs from the project's params.yaml (dvc exp run -S "
                                   "sets it); copy this file there or pass --params <project>/params.yaml")

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        plan, revs = run(params, root, jobs=jobs or params.sensitivity.jobs, execute=not collect_only, echo=say)

        def claims_of(setting):
            rev = revs.get(setting.name)
            text = read(root, rev, "results/claims.json") if rev else None
            try:
                return json.loads(text) if text else None
            except json.JSONDecodeError:
                say(f"{setting.name}: results/claims.json in {rev[:8]} is not JSON; left out")
                return None

        frame, missing = collect(plan.settings, claims_of)
        if frame.empty or "reference" in missing:
            raise click.ClickException("sensitivity: the reference experiment has no results yet"
                                       + (" (run without --collect-only)" if collect_only else " (see above)"))
        meta = {"baseline": head(root), "scale": dict(params.sensitivity.scale), "skipped": plan.skipped,
                "missing": missing, "experiments": {s.label: s.name for s in plan.settings},
                "commits": {s.label: revs.get(s.name) for s in plan.settings}}
        page = write(root, frame, meta)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    if fmt == "table":
        _emit(wide(frame), "table")
        labels = frame.groupby("claim", sort=False).label.first().value_counts()
        click.echo("\n" + ", ".join(f"{n} {k}" for k, n in labels.items())
                   + (f"; no results from: {', '.join(missing)}" if missing else ""))
        click.echo(f"report: {page}")
    else:
        _emit(frame, fmt)
    if plan.failed:  # the table and files above hold what finished; the exit status says not all did
        raise click.ClickException(f"sensitivity: {len(plan.failed)} experiment(s) failed: {', '.join(plan.failed)}")
