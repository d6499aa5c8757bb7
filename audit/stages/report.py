"""Stage `report`: reports/audit/report.md, report.html and figures/ from the results alone."""

from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..report import ReportError, build_report
from .common import PipelineError, stage_main, tracker


def run(params: Params, root: Path) -> dict:
    """Write the statistical report: reports/audit/."""
    try:
        html_path = build_report(root, params)
    except ReportError as e:
        raise PipelineError(str(e)) from None
    figures = sorted(p.name for p in (html_path.parent / "figures").glob("*.png"))
    with tracker(params, root, "report") as tr:
        tr.log_parent(params={"figures": ",".join(figures)})
        tr.log_artifact(html_path.parent / "report.md", "report")
        tr.log_artifact(html_path, "report")
        for name in figures:
            tr.log_artifact(html_path.parent / "figures" / name, "report/figures")
    return {"report": str(html_path.relative_to(root)), "figures": figures}


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
