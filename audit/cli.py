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
