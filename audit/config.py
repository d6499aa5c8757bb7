"""params.yaml -> validated, frozen dataclasses.

`load_params` checks every key against the dataclasses below: an unknown key, a wrong type or an
impossible value is a `ConfigError` whose one-line message names the file, the dotted key and what
is allowed. Defaults live here and only here: params.yaml states every knob explicitly, with units, and a test
keeps the two equal. No torch is imported: reading params is cheap and a stage's imports stay
narrow.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .methods import NAMES as METHODS

# Allowed values, here so that reading params needs no torch (the modules using them import them).
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "idx")
EXECUTORS = ("local", "ray")
PERMUTE_SIDES = ("first", "second")
PAIRINGS = ("adjacent", "random")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
ENGINES = ("auto", "loop", "batched")
DEVICES = ("auto", "cpu", "cuda")
INPUT_NORMS = ("dataset", "none")
ZOO_SOURCES = ("train", "import")
IMPORT_FORMATS = ("safetensors", "torch")
# Hidden widths of the published architectures.
PRESETS: dict[str, tuple[int, ...]] = {
    "paper": (512, 512, 512, 256),  # Franke et al. 2025 (from the PyTorch port they adapted)
    "rebasin": (512, 512, 512),  # Ainsworth et al. 2023, MNIST/CIFAR-10 MLP
    "paper-half": (256, 256, 256, 128),  # the paper's MLP at half width: the laptop-scale default
}


class UserError(Exception):
    """Bad input or a state the user can fix (a params file, a data set, a store, a registry):
    every entry point prints its one-line message, never a traceback, and keeps what is computed."""


class ConfigError(UserError, ValueError):
    """A bad params file: the message names the file and the key."""


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained (zoo.train, and the regularized baselines)."""

    optimizer: str = "adam"
    lr: float = 1e-3  # learning rate (per step)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # torch's coupled weight decay (added to the gradient)
    schedule: str = "constant"  # constant, or cosine decay to 0 over all steps
    epochs: int = 10
    batch_size: int = 64  # the last, smaller batch of an epoch is kept
    l1: float = 0.0  # loss += l1 * sum |theta| over weights and biases
    l2: float = 0.0  # loss += l2 * sum theta^2 over weights and biases
    augment: bool = False  # random crop (4 px zero padding) and horizontal flip, for CIFAR

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown value {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown value {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        for name in ("lr", "momentum", "weight_decay", "l1", "l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.lr == 0:
            raise ValueError("lr: must be > 0, got 0")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    """What `audit.metrics.evaluate` measures. eps in pixel units (see that module's docstring)."""

    fgsm_eps: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)  # L-inf
    pgd_eps: tuple[float, ...] = (0.01, 0.02, 0.05)  # L-inf
    pgd_steps: int = 10
    deepfool_eps: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # L2
    deepfool_overshoot: float = 0.02
    deepfool_max_iter: int = 50
    lipschitz_points: int = 5  # first n test samples at which the local bound is computed
    lipschitz_radius: float = 0.1  # L2 ball radius for the local bound
    seed: int = 0  # PGD random starts; the paper-style power iterations' starts
    batch_size: int = 4096  # samples per forward pass

    def __post_init__(self):
        for name in ("fgsm_eps", "pgd_eps", "deepfool_eps"):
            values = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, values)
            bad = [v for v in values if not 0.0 <= v <= (1.0 if name != "deepfool_eps" else float("inf"))]
            if bad:
                raise ValueError(f"{name}: eps must be {'in [0, 1]' if name != 'deepfool_eps' else '>= 0'}, got {bad[0]}")
        for name in ("pgd_steps", "deepfool_max_iter", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        for name in ("lipschitz_points", "lipschitz_radius", "deepfool_overshoot"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataParams:
    name: str = "digits"  # one of audit.data.DATASETS
    root: str = "data"  # directory of torchvision data sets
    download: bool = False  # fetch torchvision data sets if missing (needs internet)
    path: str | None = None  # IDX directory, for name: idx
    seed: int = 0  # seed of the train/test split where the set has no official one
    test_fraction: float = 0.2  # share of samples held out, where the set has no official split
    eval_samples: int | None = None  # first n test samples used for evaluation (null: all)

    def check(self):
        _one_of("name", self.name, DATASETS)
        if self.name == "idx" and not self.path:
            raise ValueError("path: required when name is idx (a directory with an IDX image/label pair)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: must be in (0, 1), got {self.test_fraction}")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ValueError(f"eval_samples: must be a positive integer or null, got {self.eval_samples}")


@dataclass(frozen=True)
class RegularizedParams:
    l1: float = 0.0  # L1 penalty coefficient on all weights and biases
    l2: float = 0.0  # L2 penalty coefficient (0.5 * l2 * ||w||^2)


@dataclass(frozen=True)
class ImportParams:
    """zoo.import: checkpoints trained elsewhere, read as the zoo (zoo.source: import)."""

    path: str | None = None  # directory of checkpoints, one MLP per file (relative to the project)
    format: str = "safetensors"  # safetensors | torch (read with torch.load(weights_only=True) only)
    # checkpoint key -> this project's key (hidden.<i>.weight|bias, head.weight|bias); empty: the
    # nn.Sequential layout (0.weight, 2.weight, ...) and the reference port's (layer0.weight, ...)
    # are recognised
    key_map: Mapping[str, str] = field(default_factory=dict)

    def check(self):
        _one_of("format", self.format, IMPORT_FORMATS)


@dataclass(frozen=True)
class ZooParams:
    arch: str | tuple[int, ...] = "paper-half"  # a preset (paper: 512-512-512-256, rebasin: 512x3) or widths
    depth: int = 4  # D: each pool holds 2^D base models; the ablation merges groups of 2^d, d = 1..D
    pools: int = 4  # independent pools (zoo seeds); pool p holds model seeds p*2^D .. (p+1)*2^D - 1
    # The models' fixed input normalization: dataset (the training split's per-channel mean and
    # std, a layer inside every model) | none (the identity: the models see [0, 1] pixels).
    input_norm: str = "dataset"
    device: str = "auto"  # auto | cpu | cuda
    engine: str = "auto"  # auto | loop | batched
    train: TrainConfig = field(default_factory=TrainConfig)
    regularized: Mapping[str, RegularizedParams] = field(default_factory=lambda: {
        "l1": RegularizedParams(l1=1e-4), "l2": RegularizedParams(l2=1e-3)})  # baselines by name
    regularized_models: int = 4  # models per regularized baseline (seeds 0..n-1 of pool 0)
    source: str = "train"  # train (this pipeline trains the pools) | import (zoo.import's checkpoints)
    import_: ImportParams = field(default_factory=ImportParams)  # YAML key: import

    def check(self):
        _one_of("source", self.source, ZOO_SOURCES)
        if self.source == "import":
            if not self.import_.path:
                raise ValueError("import.path: required when source is import (a directory of checkpoints)")
            if self.regularized:
                raise ValueError("regularized: must be {} when source is import (the baselines are trained like "
                                 "pool 0's first models, whose training is not known for imported ones)")
        if isinstance(self.arch, str):
            _one_of("arch", self.arch, tuple(PRESETS))
        elif not self.arch or any(w < 1 for w in self.arch):
            raise ValueError(f"arch: hidden widths must be positive integers, got {list(self.arch)}")
        if not 1 <= self.depth <= 12:
            raise ValueError(f"depth: must be an integer in 1..12 (pools of 2^depth models), got {self.depth}")
        if self.pools < 1:
            raise ValueError(f"pools: must be >= 1, got {self.pools}")
        _one_of("input_norm", self.input_norm, INPUT_NORMS)
        _one_of("device", self.device, DEVICES)
        _one_of("engine", self.engine, ENGINES)
        for name in self.regularized:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"regularized: baseline name {name!r} must be letters, digits, - or _")
        if self.regularized and self.regularized_models < 1:
            raise ValueError(f"regularized_models: must be >= 1, got {self.regularized_models}")

    @property
    def pool_size(self) -> int:
        return 2 ** self.depth

    def pool_seeds(self, pool: int) -> list[int]:
        return list(range(pool * self.pool_size, (pool + 1) * self.pool_size))


@dataclass(frozen=True)
class MergeParams:
    methods: tuple[str, ...] = METHODS  # merge methods run on identical groups
    seeds: tuple[int, ...] = (0, 1)  # merge seeds: layer orders of weight matching (hierarchical; the tree too with pairing random), visiting order (MergeMany)
    permute: str = "second"  # which model of each pair is permuted onto the other (hierarchical)
    side_ablation: tuple[int, ...] = (2,)  # depths (>= 2) at which hierarchical also runs with the other side permuted
    # hierarchical tree: adjacent (one tree per pool: the stage-d nodes are the depth-d groups, as
    # the paper nests its stages) | random (each group's own tree, drawn from the merge seed)
    pairing: str = "adjacent"
    lam: float = 0.5  # interpolation weight of the second model of a pair
    max_iter: int = 100  # weight-matching sweeps, at most
    mergemany_max_iter: int = 200  # MergeMany iterations (passes over all models), at most
    workers: int = 0  # merge processes; 0: one per CPU core

    def check(self):
        if not self.methods:
            raise ValueError(f"methods: at least one of {', '.join(METHODS)}")
        for m in self.methods:
            _one_of("methods", m, METHODS)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: listed twice in {list(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: at least one merge seed, none twice, got {list(self.seeds)}")
        _one_of("permute", self.permute, PERMUTE_SIDES)
        if 1 in self.side_ablation:
            # (A + P(B))/2 and (P^-1(A) + B)/2 are one network up to a permutation: matching B onto
            # A and A onto B optimise the same objective, so a depth-1 side test cannot fail.
            raise ValueError("side_ablation: depth 1 is an identity (permuting either model of a pair gives "
                             "the same network up to a permutation); use depths >= 2")
        if any(d < 1 for d in self.side_ablation):
            raise ValueError(f"side_ablation: depths must be >= 2, got {list(self.side_ablation)}")
        _one_of("pairing", self.pairing, PAIRINGS)
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam: must be in [0, 1], got {self.lam}")
        for name in ("max_iter", "mergemany_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0: one per core), got {self.workers}")

    @property
    def other_side(self) -> str:
        return next(s for s in PERMUTE_SIDES if s != self.permute)


@dataclass(frozen=True)
class EvalParams:
    metrics: EvalConfig = field(default_factory=EvalConfig)
    barrier_points: int = 25  # lam grid of the barrier curves
    barrier_pairs: int = 2  # base-model pairs (0,1), (2,3), ... of pool 0 whose barrier curves are measured
    workers: int = 0  # evaluation processes on CPU; 0: one per core (CUDA evaluates in-process)

    def check(self):
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0: one per core), got {self.workers}")
        if self.barrier_points < 2:
            raise ValueError(f"barrier_points: must be >= 2, got {self.barrier_points}")
        if self.barrier_pairs < 0:
            raise ValueError(f"barrier_pairs: must be >= 0, got {self.barrier_pairs}")


@dataclass(frozen=True)
class AuditParams:
    alpha: float = 0.05  # family-wise error rate (Holm)
    equivalence_margin: float = 0.01  # TOST margin for "no influence" claims, in the metric's units
    bootstrap: int = 2000  # bootstrap resamples for confidence intervals
    seed: int = 0  # bootstrap seed
    # A registry claim naming a depth beyond zoo.depth: "error" stops the audit with one line naming
    # it (the default: a typo or the wrong preset); "not_measured" reports that claim as not
    # measured (a deliberately shallow run with the shipped, paper-scale registry).
    beyond_depth: str = "error"

    def check(self):
        _one_of("beyond_depth", self.beyond_depth, ("error", "not_measured"))
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha: must be in (0, 1), got {self.alpha}")
        if self.equivalence_margin <= 0:
            raise ValueError(f"equivalence_margin: must be > 0, got {self.equivalence_margin}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap: must be >= 100, got {self.bootstrap}")


@dataclass(frozen=True)
class TrackingParams:
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI; relative sqlite paths are from the project root
    experiment_prefix: str = "rebasin-audit"  # experiment name = "<prefix>-<data set>"
    enabled: bool = True


@dataclass(frozen=True)
class RayParams:
    address: str | None = None  # cluster address (host:6379 or ray://host:10001); null: RAY_ADDRESS, else local
    gpus_per_task: float = 0.25  # share of one GPU per task where the cluster has GPUs (4 tasks per GPU)
    retries: int = 2  # re-runs of a task whose worker died before it is reported as failed

    def check(self):
        if not 0.0 <= self.gpus_per_task <= 1.0:
            raise ValueError(f"gpus_per_task: must be in [0, 1], got {self.gpus_per_task}")
        if self.retries < 0:
            raise ValueError(f"retries: must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class ResourceParams:
    max_hours: float | None = 24.0  # refuse to start when the estimated time exceeds this (null: no limit)
    disk_margin_gib: float = 1.0  # disk to leave free beyond the estimate, GiB

    def check(self):
        if self.max_hours is not None and self.max_hours <= 0:
            raise ValueError(f"max_hours: must be > 0 or null, got {self.max_hours}")
        if self.disk_margin_gib < 0:
            raise ValueError(f"disk_margin_gib: must be >= 0, got {self.disk_margin_gib}")


# The confound map's default grid (`audit sensitivity`, see audit/grid.py): each factor's levels,
# a level being the dotted params it sets; the level equal to the reference is the reference.
DEFAULT_SCALE: dict[str, typing.Any] = {
    "zoo.pools": 3, "zoo.regularized_models": 2, "merge.seeds": [0], "data.eval_samples": 1000,
    "tracking.enabled": False}
DEFAULT_FACTORS: dict[str, dict[str, dict[str, typing.Any]]] = {
    "input_norm": {"dataset": {"zoo.input_norm": "dataset"}, "none": {"zoo.input_norm": "none"}},
    "arch": {"paper-half": {"zoo.arch": "paper-half"}, "rebasin": {"zoo.arch": "rebasin"}},
    "optimizer": {"adam": {"zoo.train.optimizer": "adam", "zoo.train.lr": 0.001},
                  "sgd": {"zoo.train.optimizer": "sgd", "zoo.train.lr": 0.05, "zoo.train.momentum": 0.9,
                          "zoo.train.schedule": "cosine"}},
    "weight_decay": {"0": {"zoo.train.weight_decay": 0.0}, "5e-4": {"zoo.train.weight_decay": 0.0005}},
    "mergemany_budget": {"converged": {"merge.mergemany_max_iter": 200}, "3-passes": {"merge.mergemany_max_iter": 3}},
    "data": {"digits": {"data.name": "digits"}, "mnist": {"data.name": "mnist"},
             "fashion-mnist": {"data.name": "fashion-mnist"}},
}


@dataclass(frozen=True)
class SensitivityParams:
    """The confound map: every level of every factor is one DVC experiment, varied alone from the
    reference (this params file with ``scale`` applied). Read by `audit sensitivity` only; no stage."""

    scale: Mapping[str, typing.Any] = field(default_factory=lambda: dict(DEFAULT_SCALE))
    factors: Mapping[str, Mapping[str, Mapping[str, typing.Any]]] = field(
        default_factory=lambda: {f: {lv: dict(o) for lv, o in levels.items()} for f, levels in DEFAULT_FACTORS.items()})
    jobs: int = 1  # experiments run at once (`dvc queue start -j`); each uses every core it is given

    def check(self):
        if self.jobs < 1:
            raise ValueError(f"jobs: must be >= 1, got {self.jobs}")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    zoo: ZooParams = field(default_factory=ZooParams)
    merge: MergeParams = field(default_factory=MergeParams)
    eval: EvalParams = field(default_factory=EvalParams)
    audit: AuditParams = field(default_factory=AuditParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    executor: str = "local"  # local: this machine's processes | ray: Ray tasks (see the ray section)
    ray: RayParams = field(default_factory=RayParams)
    resources: ResourceParams = field(default_factory=ResourceParams)
    sensitivity: SensitivityParams = field(default_factory=SensitivityParams)

    def check(self):
        _one_of("executor", self.executor, EXECUTORS)
        too_deep = [d for d in self.merge.side_ablation if d > self.zoo.depth]
        if too_deep:
            raise ValueError(f"merge.side_ablation: depth {too_deep[0]} exceeds zoo.depth {self.zoo.depth}")
        from .grid import settings  # every setting of the grid is a valid params file, checked here

        settings(self)


def read_yaml(path: Path, what: str, error: type[Exception]):
    """Parse a YAML file; a missing file or bad syntax raises ``error`` with one line naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; `ConfigError` names the file and the offending key."""
    path = Path(path)
    return params_from_dict(read_yaml(path, "params file", ConfigError) or {}, source=str(path))


def params_from_dict(raw, source: str = "params") -> Params:
    try:
        return _build(Params, raw, "")
    except _KeyError as e:
        raise ConfigError(f"{source}: {e.key}: {e.message}") from None


def to_dict(obj) -> dict:
    """A params dataclass as plain JSON/YAML-serializable data."""
    if dataclasses.is_dataclass(obj):
        return {_key(f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


# ---------------------------------------------------------------- the checker


class _KeyError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _KeyError(prefix or "(top level)", f"expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f.name): f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise _KeyError(_join(prefix, str(key)),
                            f"unknown key (value {_short(raw[key])}); allowed: {', '.join(fields)}")
    values = {fields[name].name: _convert(hints[fields[name].name], raw[name], _join(prefix, name))
              for name in fields if name in raw}
    try:
        obj = cls(**values)
        if hasattr(obj, "check"):
            obj.check()
    except ValueError as e:
        # "key: message" from a check names a field of this section; anything else is the section's.
        msg = str(e)
        head, _, rest = msg.partition(": ")
        if head in fields or head.split(".")[0] in fields:  # "sensitivity.factors.x: ..." names a key too
            raise _KeyError(_join(prefix, head), rest) from None
        raise _KeyError(prefix or "(top level)", msg) from None
    return obj


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list",
             Mapping: "a mapping", dict: "a mapping"}


def _key(field_name: str) -> str:
    """A field's params key: ``import_`` is ``import`` (a Python keyword cannot name a field)."""
    return field_name.removesuffix("_")


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _convert(hint, value, key: str):
    if hint is typing.Any:  # a params override (sensitivity): checked where it is applied
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if value is None:
            wanted = " or ".join(_EXPECTED.get(typing.get_origin(a) or a, str(a)) for a in args)
            raise _KeyError(key, f"missing value; expected {wanted}")
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except _KeyError as e:
                errors.append(e.message)
        raise _KeyError(key, " or ".join(dict.fromkeys(errors)))
    if value is None and not dataclasses.is_dataclass(hint):
        raise _KeyError(key, f"missing value; expected {_EXPECTED.get(hint, _EXPECTED.get(origin, str(hint)))}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _KeyError(key, f"expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise _KeyError(key, f"expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _KeyError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _KeyError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads 1e-3 (no dot) as a string: accept any string Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _KeyError(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _KeyError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {hint} at {key}")  # a bug in this module, not user input
