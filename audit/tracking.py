"""MLflow tracking, two levels deep: a parent run per stage invocation, a child run per model or
merged group.

* One experiment per data set: ``<experiment_prefix>-<data set>``.
* Parent run: the stage's params section (flattened), the data set as an input with its digest,
  tags (stage, package version, git commit when available), CSV/figure artifacts.
* Child runs: tags (kind, method, depth, group, pool, merge seed, ...), params, metrics, and the
  weights' path and sha256 as tags; weights themselves are tracked by DVC, never copied here.
  Params, metrics and tags go in one ``log_batch`` call per run (chunked at MLflow's limits).
* ``tracking.enabled: false`` gives a tracker that records nothing.

Faults: an unreachable, locked or broken store never stops the computation or touches its results.
The first MLflow error switches the tracker off, is kept (`failures`) and reported by the stage
after its results are on disk. Each parent run carries a key (the stage and its params); a rerun
with the same key finds the unfinished parent, resumes it, and logs only the child runs missing
from it, so nothing is logged twice.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .config import TrackingParams, to_dict

_FAILURES: list[str] = []


def failures() -> list[str]:
    """MLflow errors met by trackers in this process, one line each (see module docstring)."""
    return list(_FAILURES)


# MLflow's per-call limits of log_batch.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


def flatten(obj, prefix: str = "") -> dict[str, str]:
    """Nested params -> {"a.b.c": "value"} with strings as MLflow stores them."""
    data = to_dict(obj)
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = str(data)
    return out


def experiment_name(params: TrackingParams, data_name: str) -> str:
    return f"{params.experiment_prefix}-{data_name}"


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """Context manager around one stage invocation (the parent run). ``key`` identifies the
    invocation's inputs: an unfinished parent with the same key is resumed, not duplicated."""

    def __init__(self, params: TrackingParams, *, data_name: str, stage: str, root: str | Path = ".",
                 key: str | None = None):
        self.params, self.stage, self.root = params, stage, Path(root).resolve()
        self.experiment = experiment_name(params, data_name)
        self.key = key
        self.client = None
        self.parent_id: str | None = None
        self.logged: set[str] = set()  # child run names already in a resumed parent
        self.run_ids: dict[str, str] = {}  # child run name -> its run id (this parent's, resumed ones too)
        self.error: str | None = None

    # -- lifecycle

    def __enter__(self) -> "Tracker":
        if self.params.enabled:
            with self._guard():
                self._start()
        return self

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        _check_reachable(self.params.uri)
        self.client = MlflowClient(self.params.uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            # Artifacts beside the store, in the project (git- and DVC-ignored), not in the cwd.
            location = (self.root / "mlartifacts" / self.experiment).as_uri()
            exp_id = self.client.create_experiment(self.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        # MLflow 3's UI opens an experiment by its kind; without it, on the GenAI overview, one click
        # away from the runs. Set on existing experiments too.
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        self.experiment_id = exp_id
        if self.key and (old := self._unfinished_parent()):
            self.parent_id = old
            self.client.update_run(old, status="RUNNING")
            self.logged = self._child_names(old)
            return
        tags = {"stage": self.stage, "audit_version": __version__}
        if self.key:
            tags["audit_run_key"] = self.key
        if commit := _git_commit(self.root):
            tags["mlflow.source.git.commit"] = commit
        self.parent_id = self.client.create_run(exp_id, run_name=self.stage, tags=tags).info.run_id

    def _unfinished_parent(self) -> str | None:
        runs = self.client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                       filter_string=f"tags.audit_run_key = '{self.key}' and "
                                                     "attributes.status != 'FINISHED'")
        return runs[0].info.run_id if runs else None

    def _child_names(self, parent: str) -> set[str]:
        names, token = set(), None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{parent}'",
                                           max_results=5000, page_token=token)
            done = [r for r in page if r.info.status == "FINISHED"]
            names |= {r.info.run_name for r in done}
            self.run_ids.update({r.info.run_name: r.info.run_id for r in done})
            token = page.token
            if not token:
                return names

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.client is not None and self.parent_id is not None:
            with self._guard():
                self.client.set_terminated(self.parent_id, "FAILED" if exc_type else "FINISHED")

    @contextmanager
    def _guard(self):
        """Run MLflow calls; the first error switches tracking off for this stage and is recorded."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 (any store fault: network, sqlite lock, server error)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.error = f"{self.params.uri}: {type(e).__name__}: {first}"
            _FAILURES.append(self.error)
            self.client = None

    # -- logging

    def log_parent(self, *, params: Mapping | None = None, metrics: Mapping[str, float] | None = None,
                   tags: Mapping[str, str] | None = None) -> None:
        if self.client is not None:
            with self._guard():
                self._log_batch(self.parent_id, params or {}, metrics or {}, tags or {})

    def log_dataset(self, summary: Mapping, fingerprint: str, source: str, context: str = "train") -> None:
        """The data set as an MLflow input of the parent run: name, digest and source, no copy."""
        if self.client is None:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        with self._guard():
            dataset = MetaDataset(HTTPDatasetSource(source), name=str(summary.get("name")), digest=fingerprint[:36])
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
            self.client.log_inputs(self.parent_id, datasets=[entity])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client is not None:
            with self._guard():
                self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def child(self, name: str, *, tags: Mapping | None = None, params: Mapping | None = None,
              metrics: Mapping[str, float] | None = None) -> str | None:
        """One finished child run under the stage's parent; returns its id (None if not logged now:
        tracking off or failed, or the child is already in a resumed parent)."""
        if self.client is None or name in self.logged:
            return None  # (a resumed child's id: run_ids)
        all_tags = {"mlflow.parentRunId": self.parent_id, "stage": self.stage, **{k: str(v) for k, v in (tags or {}).items()}}
        with self._guard():
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
            self._log_batch(run_id, params or {}, metrics or {}, {})
            self.client.set_terminated(run_id, "FINISHED")
            self.logged.add(name)
            self.run_ids[name] = run_id
            return run_id
        return None

    def _log_batch(self, run_id: str, params: Mapping, metrics: Mapping[str, float], tags: Mapping) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        m = [Metric(_metric_key(k), float(v), now, 0) for k, v in metrics.items()
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
        t = [RunTag(k, str(v)) for k, v in tags.items()]
        while p or m or t:
            self.client.log_batch(run_id, metrics=m[:_MAX_METRICS], params=p[:_MAX_PARAMS], tags=t[:_MAX_TAGS])
            p, m, t = p[_MAX_PARAMS:], m[_MAX_METRICS:], t[_MAX_TAGS:]


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an HTTP store that does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"tracking server not reachable ({getattr(e, 'reason', e)})") from None


def _metric_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . / and spaces; eps values like 0.01 are fine.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
