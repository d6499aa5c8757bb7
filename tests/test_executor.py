"""The local executor: every result reaches the driver once, task errors keep their type, a
worker that dies is reported by the task's name, and tasks started ahead are collected once."""

import os
import time

import pytest

import audit.executor as executor
from audit.executor import ExecutorConfig, Task, TaskError, run_tasks, start_tasks
from audit.storage import StorageError


def square(x: int, offset: int) -> int:
    if x < 0:
        raise StorageError(f"bad input {x}")
    if x == 99:
        os._exit(3)  # the worker process dies, as under the OOM killer
    return x * x + offset


@pytest.mark.parametrize("workers", [1, 2])
def test_every_result_reaches_the_driver_once(workers):
    got = {}
    run_tasks(square, [Task(f"t{i}", (i,)) for i in range(6)], lambda t, r: got.setdefault(t.name, r),
              config=ExecutorConfig("local", workers), common=(10,), progress=False)
    assert got == {f"t{i}": i * i + 10 for i in range(6)}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_error_keeps_its_type_and_message(workers):
    with pytest.raises(StorageError, match="bad input -1"):
        run_tasks(square, [Task("ok", (2,)), Task("bad", (-1,))], lambda t, r: None,
                  config=ExecutorConfig("local", workers), common=(0,), progress=False)


def worker_pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_tasks_started_ahead_are_collected_once_by_their_run(workers):
    """`start_tasks` submits to worker processes (workers > 1) that the matching `run_tasks`
    collects from: every result once, computed by the started workers, none left behind."""
    config = ExecutorConfig("local", workers)
    tasks = [Task(f"t{i}", (i,)) for i in range(6)]
    got = {}
    with start_tasks(worker_pid, tasks, config=config):
        started = executor._STARTED
        assert (started is not None) == (workers > 1)
        pids = {p.pid for p in started.pool._processes.values()} if started else {os.getpid()}
        run_tasks(worker_pid, tasks, lambda t, r: got.setdefault(t.name, r), config=config, progress=False)
        assert executor._STARTED is None
    assert {name: x for name, (x, _) in got.items()} == {f"t{i}": i for i in range(6)}
    assert {pid for _, pid in got.values()} <= pids


def gone(proc, timeout: float = 10.0) -> bool:
    """Whether the process has ended within ``timeout`` s. Asked of the OS by pid: the pool's own
    thread may reap it first, and then ``is_alive`` can still say True (a waitpid race)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.join(timeout=0.1)
        if proc.exitcode is not None:
            return True
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return True
    return False


def nap(marker: str, seconds: float) -> None:
    open(marker, "w").close()
    time.sleep(seconds)


def test_tasks_started_ahead_are_stopped_when_their_run_does_not_come(tmp_path):
    """An error (or Ctrl-C) between `start_tasks` and `run_tasks` stops the started workers at
    once, in the middle of their tasks (a minute each); a run of other tasks, or of the same
    tasks with other common arguments, does not collect them."""
    naps = [Task(f"nap{i}", (str(tmp_path / f"nap{i}"), 60.0)) for i in range(2)]
    with pytest.raises(RuntimeError, match="tracker failed"):
        with start_tasks(nap, naps, config=ExecutorConfig("local", 2)):
            procs = list(executor._STARTED.pool._processes.values())
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"nap{i}").exists() for i in range(2)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all((tmp_path / f"nap{i}").exists() for i in range(2))  # both are asleep in their task
            raise RuntimeError("tracker failed")
    assert executor._STARTED is None
    for proc in procs:
        assert gone(proc)
    tasks = [Task(f"t{i}", (i,)) for i in range(4)]
    got = []
    with start_tasks(worker_pid, tasks, config=ExecutorConfig("local", 2)):
        other = [Task("other", (7,)), Task("other2", (8,))]
        run_tasks(worker_pid, other, lambda t, r: got.append(r[0]), config=ExecutorConfig("local", 2), progress=False)
    assert sorted(got) == [7, 8] and executor._STARTED is None
    got = []  # the same tasks with other common arguments are computed afresh, with those
    with start_tasks(square, tasks, config=ExecutorConfig("local", 2), common=(10,)):
        run_tasks(square, tasks, lambda t, r: got.append(r), config=ExecutorConfig("local", 2), common=(20,),
                  progress=False)
    assert sorted(got) == [20, 21, 24, 29] and executor._STARTED is None


def test_a_dead_worker_is_reported_by_the_tasks_name():
    done = []
    with pytest.raises(TaskError, match="task crash: its worker process died"):
        run_tasks(square, [Task("crash", (99,))] + [Task(f"t{i}", (i,)) for i in range(3)],
                  lambda t, r: done.append(t.name), config=ExecutorConfig("local", 2), common=(0,), progress=False)


def test_ray_workers_use_the_clusters_python_even_under_uv_run(monkeypatch):
    """A driver started under `uv run` (make test, uv run dvc repro) must not make Ray re-run that
    command in each worker's directory: there uv builds an environment without ray and workers die
    at start (the RaySystemError of a first run on a fresh machine)."""
    from ray._private import worker
    from ray._private.runtime_env import uv_runtime_env_hook

    from audit.executor import _ray_without_uv_workers

    monkeypatch.setattr(uv_runtime_env_hook, "_get_uv_run_cmdline", lambda: ["uv", "run", "pytest"])
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "1")
    from ray._private import ray_constants
    monkeypatch.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)
    env = {"py_modules": ["/x/audit"]}
    assert "py_executable" in (worker._maybe_modify_runtime_env(dict(env), False) or {})  # what Ray would do
    _ray_without_uv_workers()
    assert worker._maybe_modify_runtime_env(dict(env), False) == env


def test_dropped_handshakes_of_stopped_workers_print_no_traceback(monkeypatch, capsys):
    """A worker stopped by Ctrl-C mid-handshake with the driver's fd-sharing thread leaves that
    thread a ConnectionResetError, which it reports through sys.excepthook: dropped there, in
    threads other than the main one only; any other error still reaches the previous hook."""
    import sys
    import threading

    from audit.executor import _quiet_dropped_handshakes

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: seen.append((t, threading.current_thread().name)))
    _quiet_dropped_handshakes()
    _quiet_dropped_handshakes()  # installed once, not stacked

    def report(exc):
        try:
            raise exc
        except BaseException:
            sys.excepthook(*sys.exc_info())

    for exc in (ConnectionResetError(104, "Connection reset by peer"), EOFError(), ValueError("a real bug")):
        t = threading.Thread(target=report, args=(exc,), name="sharer")
        t.start()
        t.join()
    report(ConnectionResetError(104, "in the main thread"))
    assert seen == [(ValueError, "sharer"), (ConnectionResetError, threading.main_thread().name)]
