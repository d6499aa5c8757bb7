"""Where independent tasks run: in this process, in local worker processes, or as Ray tasks.

A task is a pure function call: arguments in, a result out. Only the driver writes files, one result
at a time as it arrives (``on_result``), so every executor leaves the same outputs, an interruption
keeps every result already handed over, and nothing half-written is ever read.

* ``local``: ``workers == 1`` runs the tasks in this process, in order; more workers use a pool of
  spawned processes (``concurrent.futures``). Ctrl-C cancels the queued tasks and stops the workers.
  `start_tasks` submits them ahead, so that the workers start while the driver opens its tracker.
* ``ray``: each task is a Ray task on the cluster at ``address`` (or ``RAY_ADDRESS``; with neither, a
  local Ray instance), asking for ``cpus`` cores and, where the cluster has GPUs, ``gpus`` of one.
  Ray retries a task whose worker died (``retries``); one that still fails is reported by name.

Each task is told how many threads to use, the same number under both executors: CPU reductions
are split across threads, so a different count could change float rounding, and the models would
no longer be bit-identical between ``local`` and ``ray``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import EXECUTORS, UserError  # noqa: F401 (EXECUTORS re-exported)


class TaskError(UserError, RuntimeError):
    """A task could not finish (its worker died, or the cluster failed); the message names it."""


@dataclass(frozen=True)
class Task:
    name: str  # shown in progress and errors, e.g. "merge hierarchical/p0-d3-g1-s0-second"
    args: tuple  # the task's own arguments; ``common`` arguments follow them


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"  # local | ray
    workers: int = 1  # local: processes (1: in this process)
    address: str | None = None  # ray: cluster address; None: RAY_ADDRESS, else a local instance
    cpus: float = 1  # ray: cores per task (also the task's torch threads, rounded down)
    gpus: float = 0  # ray: GPU fraction per task (0 where the cluster has none)
    retries: int = 2  # ray: re-runs of a task whose worker died


def run_tasks(fn: Callable, tasks: Sequence[Task], on_result: Callable[[Task, object], None], *,
              config: ExecutorConfig, common: tuple = (), desc: str = "", unit: str = "task",
              progress: bool = True) -> None:
    """Call ``fn(*task.args, *common)`` for every task and hand each result to ``on_result`` in the
    driver as soon as it arrives (completion order, not submission order)."""
    if not tasks:
        return
    # disable=None: a bar on a terminal, none in logs and pipes.
    with tqdm(total=len(tasks), desc=desc, unit=unit, disable=None if progress else True) as bar:
        def done(task, result):
            on_result(task, result)
            bar.update()

        if config.kind == "ray":
            _run_ray(fn, tasks, done, config, common)
        elif config.workers <= 1 or len(tasks) == 1:
            for task in tasks:
                done(task, fn(*task.args, *common))
        else:
            _run_processes(fn, tasks, done, min(config.workers, len(tasks)), common)


@dataclass
class _Started:
    """Tasks submitted ahead of their `run_tasks` (`start_tasks`)."""

    fn: Callable
    tasks: Sequence[Task]
    common: tuple
    pool: ProcessPoolExecutor
    futures: dict = field(default_factory=dict)  # future -> its task


_STARTED: _Started | None = None


@contextmanager
def start_tasks(fn: Callable, tasks: Sequence[Task], *, config: ExecutorConfig, common: tuple = ()):
    """Submit the tasks to local worker processes now; the `run_tasks` call inside this context
    with the same ``fn``, ``tasks`` and ``common`` (the same objects) then only collects the
    results. The workers start (each imports the tasks' module: torch and the rest, ~2.5 s) and
    compute while the driver does what comes first (a stage's MLflow tracker takes ~1.7 s to
    open, mostly imports). An error or Ctrl-C before the results are collected stops the
    workers. Ray and in-process runs start in `run_tasks` as before."""
    global _STARTED
    _drop_started()
    workers = min(config.workers, len(tasks))
    try:
        if config.kind == "local" and workers > 1:
            _quiet_dropped_handshakes()
            pool = _new_pool(workers)
            _STARTED = _Started(fn, tasks, common, pool)
            for t in tasks:
                _STARTED.futures[pool.submit(fn, *t.args, *common)] = t
        yield
    finally:
        _drop_started()


def _drop_started() -> None:
    """Stop the workers of tasks started for a `run_tasks` call that did not come."""
    global _STARTED
    if _STARTED is not None:
        _stop(_STARTED.pool)
        _STARTED = None


def _stop(pool: ProcessPoolExecutor) -> None:
    """Drop the queue and stop the workers now rather than letting them finish it."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public terminate before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # spawn, not fork: the driver may hold torch threads and open MLflow connections.
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))


def _run_processes(fn, tasks, done, workers: int, common: tuple) -> None:
    global _STARTED
    _quiet_dropped_handshakes()
    started = _STARTED
    if started is not None and started.fn is fn and started.tasks is tasks and started.common is common:
        pool, futures = started.pool, started.futures
        _STARTED = None
    else:
        _drop_started()
        pool = _new_pool(workers)
        futures = {}
        try:
            for t in tasks:
                futures[pool.submit(fn, *t.args, *common)] = t
        except BaseException:  # Ctrl-C while submitting
            _stop(pool)
            raise
    try:
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                result = fut.result()
            except BrokenProcessPool as e:
                raise TaskError(f"task {task.name}: its worker process died ({e}); finished results are "
                                "kept, rerun to do the rest") from None
            done(task, result)
    except BaseException:  # Ctrl-C or an error
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _quiet_dropped_handshakes() -> None:
    """Tensors reach the workers through shared memory whose file descriptors a background thread
    of the driver hands out (multiprocessing's resource sharer). A worker stopped by Ctrl-C in
    the middle of that handshake leaves the thread a ConnectionError (reset, broken pipe) or an
    EOFError, which it prints as a traceback through ``sys.excepthook`` although nothing is wrong
    (a worker that truly died is reported as a TaskError, through BrokenProcessPool). This drops
    those errors when a thread other than the main one reports them (threads' own uncaught errors
    go through ``threading.excepthook``, untouched); everything else reaches the previous hook.
    It stays installed: the thread can report one after the pool is gone, until the process exits."""
    import sys
    import threading

    previous = sys.excepthook
    if getattr(previous, "_drops_handshakes", False):
        return

    def hook(exc_type, exc, tb):
        dropped = issubclass(exc_type, (ConnectionError, EOFError))
        if dropped and threading.current_thread() is not threading.main_thread():
            return
        previous(exc_type, exc, tb)

    hook._drops_handshakes = True
    sys.excepthook = hook


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a worker: exit once the driver is gone (killed with SIGKILL, say) instead of lingering as
    an orphan that holds the terminal and cores. Polls the parent pid every ``every`` seconds."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _ray_without_uv_workers():
    """Import ray with its `uv run` worker propagation off (see `ray_init`)."""
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False  # read at import: also if ray came in before
    return ray


def ray_init(address: str | None):
    """Connect to the cluster (``address``, else ``RAY_ADDRESS``) or start a local instance."""
    # Ray (>= 2.43) notices a driver started under `uv run` (any ancestor process, e.g. `uv run
    # pytest` or `make test`) and makes every worker re-run that `uv run` command in the driver's
    # working directory. In a directory that is not this project (a DVC experiment, a scratch
    # copy) uv then builds a fresh environment without ray, and the workers die at start
    # ("No module named 'ray'", RaySystemError) until uv's cache happens to be warm. Workers must
    # use the cluster's own Python environment; the package itself travels as py_modules.
    ray = _ray_without_uv_workers()
    if ray.is_initialized():
        return ray
    import audit

    address = address or os.environ.get("RAY_ADDRESS") or None
    # The package travels with the job, so cluster nodes need its dependencies, not a checkout.
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"py_modules": [str(Path(audit.__file__).parent)]})
    return ray


def _run_ray(fn, tasks, done, config: ExecutorConfig, common: tuple) -> None:
    ray = ray_init(config.address)
    from ray.exceptions import RayTaskError, RayError

    gpus = config.gpus if config.gpus and ray.cluster_resources().get("GPU", 0) > 0 else 0
    remote = ray.remote(fn).options(num_cpus=config.cpus, num_gpus=gpus, max_retries=config.retries,
                                    retry_exceptions=False, name=getattr(fn, "__name__", "task"))
    shared = [ray.put(a) for a in common]  # big arguments (data, tensors) are stored once
    pending = {remote.remote(*t.args, *shared): t for t in tasks}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the function raised: re-raise its own error, as local would
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise TaskError(f"task {task.name}: {str(e).splitlines()[0]}") from None
                except RayError as e:
                    raise TaskError(f"task {task.name}: failed on the Ray cluster after {config.retries} "
                                    f"retries ({type(e).__name__}); finished results are kept, rerun to do "
                                    "the rest") from None
                done(task, result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
