"""Stage `data`: load the data set the params name and record its summary and fingerprint."""

from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..paths import DATA_RECORD
from ..storage import atomic_write_json
from .common import eval_split, load_data, source, stage_main, tracker


def run(params: Params, root: Path) -> dict:
    """Record the data set: results/data.json."""
    data = load_data(params, root)
    summary = {**data.summary(), "eval_samples": len(eval_split(params, data)[1])}
    atomic_write_json(root / DATA_RECORD, summary)
    with tracker(params, root, "data") as tr:
        tr.log_parent(params={"data": params.data})
        tr.log_dataset(summary, data.fingerprint, source(params), context="train+test")
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
