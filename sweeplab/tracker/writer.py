"""Ordered background writes: a trial's curve points reach MLflow without stopping its training.

A write to the tracking store takes milliseconds on an embedded SQLite store and tens of
milliseconds behind a server, and during an outage it waits (:mod:`sweeplab.tracker.reconnect`).
Made on the training thread, every evaluation would wait for it. :class:`OrderedWriter` runs the
writes one at a time, in the order they were handed over, on a thread of its own, and gives the
owner the same outcome a synchronous write would have:

- an error of a background write is kept and raised on the owner's thread by its next call to
  :meth:`~OrderedWriter.raise_error` or :meth:`~OrderedWriter.drain` (the same exception object,
  so ``Unreachable`` stays ``Unreachable``); the writes queued after it are held, not run, until
  the owner hands over or drains again (as the rest of a buffer after a failed synchronous write)
  or discards them;
- :meth:`~OrderedWriter.drain` returns once everything handed over is written;
- :meth:`~OrderedWriter.discard` drops what is not written yet.

The thread is started when there is something to write and ends as soon as the queue is empty,
so that no thread waits idle between evaluations, none outlives the writes of a finished trial
and none holds a finished trial's data. It is not a daemon: a process that exits while writes are
queued (a path that never drained) finishes them first instead of losing them; each write is
bounded by the outage limit. A forked child (a DataLoader worker) drops the writes it inherited:
they belong to its parent, which writes them.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["OrderedWriter"]

#: Every writer of this process, so that a forked child can reset them (see the module docstring).
_writers: weakref.WeakSet[OrderedWriter] = weakref.WeakSet()


class OrderedWriter:
    """Runs write jobs (callables without arguments) one at a time, in order, off the caller's
    thread; see the module docstring for how errors, draining and discarding behave.

    One owner thread calls :meth:`submit`, :meth:`drain`, :meth:`raise_error` and :meth:`discard`;
    the writer's own thread only runs jobs."""

    def __init__(self, name: str = "sweeplab-writer") -> None:
        self.name = name
        self._lock = threading.Condition()
        self._jobs: deque[Callable[[], Any]] = deque()
        self._thread: threading.Thread | None = None
        self._running = False  # a job has been taken off the queue and is being written
        self._error: BaseException | None = None  # what the last failed job raised, until the owner hears it
        self._held = False  # a job failed: the ones after it wait for the owner's next hand-over or drain
        _writers.add(self)

    @property
    def idle(self) -> bool:
        """Whether nothing is being written and nothing queued would run now (a queue held after
        an error counts as idle: it runs again on the next :meth:`submit` or :meth:`drain`)."""
        with self._lock:
            return not self._running and (not self._jobs or self._held)

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job`` after every job handed over before it; returns at once. Releases a queue
        held after an error (the owner has heard the error by then, or hears it at its next
        :meth:`raise_error`)."""
        with self._lock:
            self._jobs.append(job)
            self._held = False
            started = self._start()
        if not started:
            self._work()

    def raise_error(self) -> None:
        """Raise the error of a background write that failed since the last call, once."""
        with self._lock:
            self._raise_kept()

    def drain(self) -> None:
        """Wait until every job handed over is written; raise the first error met meanwhile (or
        kept since the last call). Jobs held after an earlier error are run again first."""
        with self._lock:
            self._raise_kept()
            self._held = False
            started = self._start()
        if not started:
            self._work()
        with self._lock:
            while (self._jobs or self._running) and self._error is None:
                self._lock.wait()
            self._raise_kept()

    def discard(self) -> int:
        """Drop the jobs not yet started and any error not yet raised; wait for a job being
        written to end, so that nothing of this writer lands after the call. Returns the number
        of jobs dropped."""
        with self._lock:
            dropped = len(self._jobs)
            self._jobs.clear()
            while self._running:
                self._lock.wait()
            self._error, self._held = None, False
        return dropped

    def _raise_kept(self) -> None:
        """Under the lock: raise the kept error, once."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _start(self) -> bool:
        """Under the lock: start the writing thread if there is work for it and none runs.
        ``False`` when no thread can be started (interpreter shutdown): the caller then writes
        the queue itself."""
        if self._thread is not None or not self._jobs or self._held:
            return True
        # Set before it starts: an interruption after the start cannot leave a running thread
        # unaccounted for (a second one would write out of order); one before it (Ctrl-C inside
        # start()) leaves no thread, and then none is recorded (a drain would wait for it forever).
        thread = threading.Thread(target=self._work, name=self.name, daemon=False)
        self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            self._thread = None
            return False
        except BaseException:
            if thread.ident is None:  # interrupted before the thread existed
                self._thread = None
            raise
        return True

    def _work(self) -> None:
        """Run queued jobs in order until the queue is empty or a job fails; then end."""
        while True:
            with self._lock:
                if not self._jobs or self._held:
                    if self._thread is threading.current_thread():
                        self._thread = None
                    self._lock.notify_all()
                    return
                job = self._jobs.popleft()
                self._running = True
            try:
                job()
            except BaseException as exc:  # kept for the owner's thread, whatever it is
                with self._lock:
                    self._error, self._held = exc, True
            finally:
                del job  # its data (a batch of points) is not kept while the thread waits for the lock
                with self._lock:
                    self._running = False
                    self._lock.notify_all()

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, no thread, and none of the parent's jobs."""
        self._lock = threading.Condition()
        self._jobs.clear()
        self._thread, self._running, self._error, self._held = None, False, None, False


def _reset_in_child() -> None:
    for writer in list(_writers):
        writer._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
