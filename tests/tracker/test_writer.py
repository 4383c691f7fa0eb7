"""Curve points written off the training thread (sweeplab.tracker.writer, TrialRecorder): in order,
without waiting for the store, errors raised on the trial's thread at its next call, every point
written before the run is closed, unwritten points dropped on request. The store is a scripted
client: what is tested is the order and the timing of the calls, not MLflow."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from sweeplab.errors import Unreachable
from sweeplab.tracker.reconnect import Patience, reconnecting_client
from sweeplab.tracker.runs import TrialRecorder
from sweeplab.tracker.writer import OrderedWriter

#: Seconds a held write waits at most, so that a broken implementation fails instead of hanging.
_PATIENCE = 5.0


class _Store:
    """A client that records what reaches it, in order; ``gate`` (when given) holds every
    metrics write until it is set; ``fail`` raises instead of writing the batch of that step."""

    def __init__(self, gate: threading.Event | None = None, fail: Callable[[], Exception] | None = None, fail_step: int = 1) -> None:
        self.gate, self.fail, self.fail_step = gate, fail, fail_step
        self.events: list[tuple[str, Any]] = []
        self.writing = threading.Event()  # a metrics write has begun
        self.threads: list[threading.Thread] = []  # the threads writes ran on

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), synchronous: bool = True) -> None:
        self.threads.append(threading.current_thread())
        if metrics:
            self.writing.set()
            if self.gate is not None:
                self.gate.wait(_PATIENCE)
            if self.fail is not None and any(m.step == self.fail_step for m in metrics):
                raise self.fail()
            self.events.append(("metrics", [(m.key, m.step) for m in metrics]))
        if tags:
            self.events.append(("tags", {t.key: t.value for t in tags}))

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        self.events.append(("terminated", status))

    def steps(self) -> list[int]:
        return [step for kind, points in self.events if kind == "metrics" for _, step in points]

    def finish_writes(self) -> list[threading.Thread]:
        """Wait until a metrics write has begun and every thread a write ran on, other than this
        one, has ended; returns those threads."""
        assert self.writing.wait(_PATIENCE)
        others = [thread for thread in self.threads if thread is not threading.current_thread()]
        for thread in others:
            thread.join(_PATIENCE)
        return others


def _recorder(store: Any) -> TrialRecorder:
    return TrialRecorder(store, "0123456789abcdef", "file:///nowhere", flush_seconds=0.0)  # one write per evaluation


def _held_write() -> tuple[threading.Event, _Store, TrialRecorder]:
    """A recorder whose first point (step 1) is being written, held at the store until the gate is set."""
    gate = threading.Event()
    store = _Store(gate)
    run = _recorder(store)
    run.log_point(1, {"val_loss": 0.5})
    assert store.writing.wait(_PATIENCE)
    return gate, store, run


def _refused() -> Exception:
    return MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                           "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url")


def test_points_reach_the_store_in_order_and_before_the_final_state() -> None:
    store = _Store()
    run = _recorder(store)
    for step in range(1, 41):
        run.log_point(step, {"val_loss": 1.0 / step, "val_accuracy": step / 40})
    run.log_summary({"best_epoch": 40}, {"sweeplab.best": "40"})
    run.close("complete")
    assert store.steps()[:80] == [step for step in range(1, 41) for _ in range(2)]
    assert store.steps()[80:] == [0]  # the summary metric, after every point
    assert [kind for kind, _ in store.events][-2:] == ["tags", "terminated"]
    assert store.events[-2][1] == {"sweeplab.state": "complete"}
    assert all(thread is not threading.current_thread() for thread in store.threads[:-1])  # written off this thread


def test_log_point_returns_while_the_write_is_held() -> None:
    gate, store, run = _held_write()  # log_point(1) returned while its write is held
    try:
        run.log_point(2, {"val_loss": 0.4})  # while the first write is still held: joins the next one
        assert not gate.is_set() and store.steps() == []  # returned before anything was written
    finally:
        gate.set()
    run.close("complete")
    assert store.steps() == [1, 2]


@pytest.mark.parametrize("call", ["log_point", "flush", "log_summary", "close"])
def test_a_background_write_error_is_raised_by_the_next_call_of_the_trial(call: str) -> None:
    store = _Store(fail=_refused)
    run = _recorder(reconnecting_client(store, Patience("the test store", limit=0.0)))  # the driver's client: outage -> Unreachable
    run.log_point(1, {"val_loss": 0.5})
    store.finish_writes()  # the write has failed in the background
    next_call = {
        "log_point": lambda: run.log_point(2, {"val_loss": 0.4}),
        "flush": run.flush,
        "log_summary": lambda: run.log_summary({"best_epoch": 1}, {}),
        "close": lambda: run.close("killed", "interrupted"),
    }[call]
    with pytest.raises(Unreachable, match="the test store stayed unreachable"):
        next_call()
    run.close("killed", "interrupted")  # the driver's next step: the run is still closed
    assert store.events[-1] == ("terminated", "KILLED")


def test_an_error_is_raised_once_and_the_points_after_it_are_written_at_the_next_flush() -> None:
    store = _Store(fail=lambda: MlflowException("bad value"))
    run = _recorder(store)
    run.log_point(1, {"val_loss": 0.5})
    store.finish_writes()
    with pytest.raises(MlflowException, match="bad value"):
        run.log_point(2, {"val_loss": 0.4})
    run.flush()  # as after a failed synchronous write: the failed batch is gone, the rest is written
    assert store.steps() == [2]


def test_close_writes_every_point_before_the_run_is_terminated() -> None:
    gate, store, run = _held_write()
    for step in range(2, 6):
        run.log_point(step, {"val_loss": 1.0 / step})
    releaser = threading.Timer(0.2, gate.set)  # the store answers only after close() has begun
    releaser.start()
    try:
        run.close("killed", "interrupted")
    finally:
        releaser.cancel()
        gate.set()
    assert store.steps() == [1, 2, 3, 4, 5]
    assert [kind for kind, _ in store.events] == ["metrics", "metrics", "tags", "terminated"]
    writers = store.finish_writes()
    assert writers and not any(thread.is_alive() for thread in writers)  # no writer thread outlives the trial


def test_discard_points_drops_what_is_not_written() -> None:
    gate, store, run = _held_write()
    run.log_point(2, {"val_loss": 0.4})  # buffered behind the write under way
    gate.set()
    run.discard_points()
    run.close("failed", "ValueError: boom")
    assert store.steps() == [1]  # the write under way could not be recalled; the rest was dropped
    assert store.events[-1] == ("terminated", "FAILED")


def test_the_writer_runs_jobs_in_order_and_discard_drops_the_queued_ones() -> None:
    gate, started = threading.Event(), threading.Event()
    ran: list[int] = []

    def job(n: int) -> Callable[[], None]:
        def write() -> None:
            if n == 1:
                started.set()
                gate.wait(_PATIENCE)
            ran.append(n)
        return write

    writer = OrderedWriter("test-writer")
    for n in (1, 2, 3):
        writer.submit(job(n))
    assert started.wait(_PATIENCE) and not writer.idle
    releaser = threading.Timer(0.1, gate.set)
    releaser.start()
    try:
        assert writer.discard() == 2  # 2 and 3 were queued; 1 was under way and ends first
    finally:
        releaser.cancel()
        gate.set()
    assert ran == [1] and writer.idle
    for n in (4, 5, 6):
        writer.submit(job(n))
    writer.drain()
    assert ran == [1, 4, 5, 6]
