"""The controlled ablation (design §3): which groups every method merges, as plain data.

Pool p holds the models of seeds p*2^D .. (p+1)*2^D-1. For every depth d = 1..D the pool is split
into 2^(D-d) contiguous groups of 2^d models, and every method merges the identical groups: once
per merge seed if the method is seeded, once per permuted side at the side-ablation depths if it
is sided (`audit.methods`). A hierarchical tree (adjacent pairing) covers a whole pool: its
stage-d nodes are that pool's depth-d groups. No torch here: the resource estimate and the tests
plan jobs without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import methods
from .config import Params


@dataclass(frozen=True)
class MergeJob:
    method: str
    pool: int
    depth: int
    group: int
    seed: int | None  # None for unseeded methods (naive)
    side: str | None  # sided methods (hierarchical) only
    members: tuple[int, ...]  # model seeds

    @property
    def key(self) -> str:
        parts = [f"p{self.pool}", f"d{self.depth}", f"g{self.group}"]
        parts += [] if self.seed is None else [f"s{self.seed}"]
        parts += [] if self.side is None else [self.side]
        return "-".join(parts)

    @property
    def model_id(self) -> str:
        return f"{self.method}/{self.key}"

    def info(self) -> dict:
        return {"method": self.method, "pool": self.pool, "depth": self.depth, "group": self.group,
                "seed": self.seed, "side": self.side, "members": list(self.members)}


def merge_jobs(params: Params, method: str) -> list[MergeJob]:
    spec = methods.get(method)
    z, m = params.zoo, params.merge
    jobs = []
    for pool in range(z.pools):
        seeds = z.pool_seeds(pool)
        for depth in range(1, z.depth + 1):
            size = 2 ** depth
            sides = ([m.permute] + ([m.other_side] if depth in m.side_ablation else [])) if spec.sided else [None]
            for group in range(z.pool_size // size):
                members = tuple(seeds[group * size:(group + 1) * size])
                jobs += [MergeJob(method, pool, depth, group, s, side, members)
                         for s in (m.seeds if spec.seeded else [None]) for side in sides]
    return jobs


@dataclass(frozen=True)
class TreeJob:
    """One hierarchical tree over a whole pool (adjacent pairing): its stage-d nodes are the
    depth-d jobs of that pool, merge seed and side, so each lower stage is computed once."""

    pool: int
    seed: int
    side: str
    depth: int  # deepest stage needed
    jobs: tuple[MergeJob, ...]
    members: tuple[int, ...]  # the pool's model seeds

    @property
    def name(self) -> str:
        return f"hierarchical/p{self.pool}-s{self.seed}-{self.side} tree to depth {self.depth}"

    @property
    def pair_merges(self) -> int:
        """Pair merges the tree runs: stage d of a pool of 2^D models has 2^(D-d) of them."""
        n = len(self.members)
        return sum(n // 2 ** d for d in range(1, self.depth + 1))


def tree_jobs(params: Params, jobs: list[MergeJob]) -> list[TreeJob]:
    """The hierarchical jobs grouped into one tree per pool, merge seed and side."""
    trees: dict[tuple, list[MergeJob]] = {}
    for job in jobs:
        trees.setdefault((job.pool, job.seed, job.side), []).append(job)
    return [TreeJob(pool, seed, side, max(j.depth for j in js), tuple(js), tuple(params.zoo.pool_seeds(pool)))
            for (pool, seed, side), js in trees.items()]
