"""DVC queue queries in `audit.experiments` are bounded in time: a status query that does not
answer is given up, named in one line, and the poll asks again (a fake dvc that never answers)."""

import stat
import time

import pytest

from audit import experiments as ex


@pytest.fixture
def silent_dvc(tmp_path, monkeypatch):
    """A dvc on PATH that never answers (sleeps far past every limit used here)."""
    exe = tmp_path / "bin" / "dvc"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexec sleep 600\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(ex.shutil, "which", lambda name, path=None: str(exe) if name == "dvc" else None)
    monkeypatch.setattr(ex, "STATUS_TIMEOUT_S", 0.5)
    return exe


def test_a_query_past_its_limit_is_killed_and_named_in_one_line(silent_dvc, tmp_path):
    t = time.monotonic()
    with pytest.raises(ex.NoAnswer) as e:
        ex.dvc(tmp_path, "exp", "show", "--json", timeout=0.5)
    assert time.monotonic() - t < 5
    assert str(e.value) == "dvc exp show: no answer in 0.5 s"
    assert isinstance(e.value, ex.ExperimentError)  # reported like any other dvc failure


def test_a_queue_status_without_an_answer_counts_as_a_live_worker(silent_dvc, tmp_path):
    """Not as a dead one: three such polls would otherwise start a second worker beside a busy one."""
    t = time.monotonic()
    assert ex.workers_active(tmp_path) is True
    assert time.monotonic() - t < 5


def test_experiments_asks_again_and_then_gives_up_in_one_line(silent_dvc, tmp_path, monkeypatch):
    calls = []
    real = ex.dvc
    monkeypatch.setattr(ex, "dvc", lambda *a, **kw: calls.append(kw.get("timeout")) or real(*a, **kw))
    monkeypatch.setattr(ex.time, "sleep", lambda s: None)
    with pytest.raises(ex.NoAnswer, match=r"^dvc exp show: no answer in 0.5 s$"):
        ex.experiments(tmp_path)
    assert calls == [0.5] * 5  # asked five times, each bounded


def test_an_answering_dvc_is_read_as_before(tmp_path, monkeypatch):
    exe = tmp_path / "dvc"
    exe.write_text("#!/bin/sh\necho 'Worker status: 1 active, 0 idle'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(ex.shutil, "which", lambda name, path=None: str(exe))
    assert ex.workers_active(tmp_path) is True
    exe.write_text("#!/bin/sh\necho 'Worker status: 0 active, 0 idle'\n")
    assert ex.workers_active(tmp_path) is False
