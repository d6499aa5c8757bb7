"""The merge methods, registered once: every other module looks a method up here.

An entry says what the ablation, the stages, the resource estimate, the report and the claims
need to know about a method: its label and colour, whether it runs once per merge seed and per
permuted side, how its provenance records convergence, and what it logs. How it merges is a
function in `audit.merge` registered under the same name (`audit.merge.RUNNERS`, tested to cover
this registry). Adding a method is one entry here plus one function there; no other logic changes.

This module imports nothing heavy (no torch), so reading params and planning jobs stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _tree_converged(prov: dict) -> bool:
    return all(s["converged"] for stage in prov.get("stages", []) for s in stage)


def _always(prov: dict) -> bool:
    return True


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # how the report and tables name it
    colour: str  # its colour in every figure
    seeded: bool  # runs once per merge seed (merge.seeds); otherwise once per group
    sided: bool  # also runs with the other side permuted at merge.side_ablation depths
    converged: Callable[[dict], bool]  # whether a merge's provenance shows its searches converged
    logged: Callable[[dict], dict[str, float]]  # per-model metrics logged to MLflow from the provenance
    # How it runs and what it costs (in pair matchings, `audit.resources`): "tree": its depth-d
    # models are the stage-d nodes of one tree of pair merges per pool (with merge.pairing
    # adjacent; a group's own tree of k - 1 merges with random pairing); "passes": passes over
    # the group's models, at most merge.mergemany_max_iter; "none": no matching.
    cost: str
    settings: tuple[str, ...]  # the merge.* params a model of this method depends on (its store key)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("hierarchical", "hierarchical", "#1f77b4", seeded=True, sided=True, converged=_tree_converged,
           logged=lambda prov: {"converged": float(_tree_converged(prov))}, cost="tree",
           settings=("lam", "max_iter", "pairing")),
    Method("mergemany", "MergeMany", "#d62728", seeded=True, sided=False,
           converged=lambda prov: bool(prov["converged"]),
           logged=lambda prov: {"iterations": float(prov["iterations"]), "converged": float(prov["converged"])},
           cost="passes", settings=("max_iter", "mergemany_max_iter")),
    Method("naive", "naive averaging", "#7f7f7f", seeded=False, sided=False, converged=_always,
           logged=lambda prov: {}, cost="none", settings=()),
)}
NAMES = tuple(METHODS)


def get(name: str) -> Method:
    """The registered method ``name``; ValueError naming the registered ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; registered: {', '.join(NAMES)}") from None
