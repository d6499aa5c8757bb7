"""The local executor: every result reaches the driver once, task errors keep their type, and a
worker that dies is reported by the task's name."""

import os

import pytest

from audit.executor import ExecutorConfig, Task, TaskError, run_tasks
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


def test_a_dead_worker_is_reported_by_the_tasks_name():
    done = []
    with pytest.raises(TaskError, match="task crash: its worker process died"):
        run_tasks(square, [Task("crash", (99,))] + [Task(f"t{i}", (i,)) for i in range(3)],
                  lambda t, r: done.append(t.name), config=ExecutorConfig("local", 2), common=(0,), progress=False)
