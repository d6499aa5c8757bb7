"""The evaluation table's schema, and reading one: the pipeline's results/evaluation.csv or any
table another tool wrote in the same layout (`audit claims --results FILE`).

One row per model x metric x eps. Columns (README, "Audit your own models"):

- ``model``: a unique name per model; ``kind``: base | merged | regularized;
- ``method``: ``none`` for base models, a merge method (audit.methods) for merged ones, the
  baseline's name for regularized ones;
- ``pool``: the pool index (0..); ``depth``: 0 for base and regularized models, d for a merged
  model of 2^d base models; ``seed``: a base model's seed (pool p holds seeds p*2^D .. (p+1)*2^D - 1);
  ``group``: a merged model's group index within its pool at its depth (0 .. 2^(D-d) - 1, the
  group of base seeds p*2^D + g*2^d .. + 2^d - 1);
- ``side``: first | second (which model of each pair was permuted; empty where it does not apply);
- ``metric``, ``eps`` (empty for metrics without one), ``value``;
- optional: ``merge_seed``, ``n_models``, ``converged`` (MergeMany: reached a fixed point).

A table that does not fit is refused with one line naming the file, the row and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import UserError
from .methods import METHODS

REQUIRED = ("model", "kind", "method", "pool", "depth", "seed", "group", "side", "metric", "eps", "value")
KINDS = ("base", "merged", "regularized")
SIDES = ("first", "second")


class TableError(UserError, ValueError):
    """An evaluation table that does not fit the schema or the pool layout."""


def read_evaluation(path: Path, depth: int, main_side: str = "second"):
    """``path`` as `audit.claims.Results` for a pool layout of depth ``depth`` (zoo.depth)."""
    from .claims import Results

    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: " + ("no evaluated results yet; run the pipeline first (make repro or dvc repro)"
                                       if path.name == "evaluation.csv" else "not found"))
    if not path.is_file():
        raise TableError(f"{path}: not a file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise TableError(f"{path}: unreadable evaluation table ({str(e).splitlines()[0]})") from None
    check(table, depth, str(path))
    return Results(table, pool_depth=depth, main_side=main_side)


def _v(value) -> str:
    """A cell as the user wrote it: numbers plainly (3, 0.5), anything else quoted."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return repr(value)


def _row(table: pd.DataFrame, mask) -> str:
    i = int(np.flatnonzero(np.asarray(mask))[0])
    return f"row {i + 2}"  # the header is line 1


def check(table: pd.DataFrame, depth: int, where: str) -> None:
    """Refuse, with one line, a table that is not in the schema or does not fit ``depth``."""
    if table.empty:
        raise TableError(f"{where}: the evaluation table has no rows")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise TableError(f"{where}: not an evaluation table: missing column {missing[0]!r} "
                         f"(required: {', '.join(REQUIRED)})")
    bad = ~table.kind.isin(KINDS)
    if bad.any():
        raise TableError(f"{where}: {_row(table, bad)}: kind {table.kind[bad].iloc[0]!r} unknown; "
                         f"allowed: {', '.join(KINDS)}")
    merged = table.kind == "merged"
    bad = merged & ~table.method.isin(list(METHODS))
    if bad.any():
        raise TableError(f"{where}: {_row(table, bad)}: method {table.method[bad].iloc[0]!r} unknown; "
                         f"allowed: {', '.join(METHODS)}")
    for col in ("pool", "depth", "value"):
        numeric = pd.to_numeric(table[col], errors="coerce")
        bad = numeric.isna() if col != "value" else numeric.isna() & table[col].notna()
        if bad.any():
            raise TableError(f"{where}: {_row(table, bad)}: {col} {table[col][bad].iloc[0]!r} is not a number")
    d = table.depth.astype(float)
    bad = merged & ~d.isin(range(1, depth + 1))
    if bad.any():
        raise TableError(f"{where}: {_row(table, bad)}: depth {table.depth[bad].iloc[0]:g} does not fit the pool "
                         f"layout (zoo.depth {depth}: merged depths 1..{depth})")
    bad = ~merged & (d != 0)
    if bad.any():
        raise TableError(f"{where}: {_row(table, bad)}: a {table.kind[bad].iloc[0]} model has depth "
                         f"{table.depth[bad].iloc[0]:g}; only merged models have depth > 0")
    group = pd.to_numeric(table.group, errors="coerce")
    groups = 2.0 ** (depth - d)
    bad = merged & ~((group >= 0) & (group < groups) & (group == np.floor(group)))
    if bad.any():
        i = np.flatnonzero(np.asarray(bad))[0]
        raise TableError(f"{where}: {_row(table, bad)}: group {_v(table.group.iloc[i])} at depth {d.iloc[i]:g} does not "
                         f"fit the pool layout (a pool of {2 ** depth} has groups 0..{int(groups.iloc[i]) - 1} there)")
    seed = pd.to_numeric(table.seed, errors="coerce")
    size = 2 ** depth
    base = table.kind == "base"
    bad = base & ~((seed >= table.pool.astype(float) * size) & (seed < (table.pool.astype(float) + 1) * size))
    if bad.any():
        i = np.flatnonzero(np.asarray(bad))[0]
        raise TableError(f"{where}: {_row(table, bad)}: base seed {_v(table.seed.iloc[i])} is not in pool "
                         f"{_v(table.pool.iloc[i])} (seeds {int(table.pool.iloc[i]) * size}..{(int(table.pool.iloc[i]) + 1) * size - 1} "
                         f"at zoo.depth {depth})")
    dup = table.duplicated(["model", "metric", "eps"])
    if dup.any():
        i = np.flatnonzero(np.asarray(dup))[0]
        raise TableError(f"{where}: {_row(table, dup)}: model {table.model.iloc[i]!r}, metric {table.metric.iloc[i]!r} at eps "
                         f"{_v(table.eps.iloc[i])} appears twice (one row per model x metric x eps)")
    bad = table.side.notna() & ~table.side.isin(SIDES)
    if bad.any():
        raise TableError(f"{where}: {_row(table, bad)}: side {table.side[bad].iloc[0]!r} unknown; allowed: first, second")
