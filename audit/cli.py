"""The ``audit`` command."""

from __future__ import annotations

import click

from . import __version__


@click.group(name="audit", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audit")
def main() -> None:
    """rebasin-audit: train a zoo, merge it every way, evaluate, and test published claims."""
