"""One trial's program while it runs (:mod:`sweeplab.trainers.command`): its processes, its output
as lines, the socket it reports on, and its end.

* **Its processes.** The program runs in a process group of its own; a launcher's children that
  leave it (``torchrun`` starts each rank in a session of its own) are found by walking the
  process table every :data:`SCAN_SECONDS` and remembered, so that ending the program ends them
  too, even after the launcher is gone. On Linux the program is also bound to this process
  (``PR_SET_PDEATHSIG``): a sweep killed outright (``kill -9``, the machine's out-of-memory
  killer) leaves no program training on unseen.
* **Its output** (stdout and stderr, each in its own pipe, so that a progress bar on stderr
  never shares a line with a report on stdout) goes to ``output.log`` as it comes and back as
  lines, split at ``\\n`` and at ``\\r`` (a progress bar's redraws), the last one even without its
  end of line; the last :data:`TAIL_LINES` are kept for a failure's reason.
* **Its socket**, where :func:`sweeplab.trial.report` connects: in Linux's abstract namespace
  (no file, no length limit from a long ``TMPDIR``), else a file in the trial's folder.
* **Its end.** :meth:`Program.signal` sends a signal to all of it and remembers that it did, so
  that an exit status the sweep caused is told from the program's own failure; :meth:`close`
  ends what still runs (``SIGTERM``, then ``SIGKILL`` after :data:`GRACE_SECONDS`, the kill
  sent however the wait ends).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GRACE_SECONDS", "Program", "SCAN_SECONDS", "TAIL_LINES", "ended_with_this_process"]

#: Seconds a program is given to end on its own after it was told to stop, and after ``SIGTERM``.
GRACE_SECONDS = 10.0
#: Lines of output kept for the reason of a failed trial, and the characters kept of each.
TAIL_LINES = 3
TAIL_WIDTH = 300
#: Seconds between two walks of the process table for the program's descendants.
SCAN_SECONDS = 1.0
#: Seconds the program's output may stay open after it ended (its children still writing).
DRAIN_SECONDS = 5.0

_LINE_END = re.compile(rb"\r\n|\r|\n")
#: Run before the program, in the process that becomes it: ask Linux for SIGTERM when this
#: process (the sweep's) ends, leave if it has already ended, then become the program.
_BOUND = ("import ctypes, os, signal, sys\n"
          "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
          "if os.getppid() != int(sys.argv[1]): os._exit(143)\n"
          "os.execvp(sys.argv[2], sys.argv[2:])\n")


def ended_with_this_process(command: Sequence[str]) -> list[str]:
    """``command``, on Linux started so that it ends with this process (see the module docstring)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-S", "-c", _BOUND, str(os.getpid()), *command]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (which may hold spaces and
    parentheses): ``[0]`` the state, ``[1]`` the parent's pid, ``[19]`` the start time. ``None``
    when the process is gone or cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid``: a pid with another start time is another process."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` in the process table, with its start time (Linux's ``/proc``;
    nothing elsewhere)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is None:
            continue
        children[int(fields[1])].append(int(entry.name))
        started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = started[pid]
            todo.extend(children.get(pid, ()))
    return found


@dataclass
class _Stream:
    """One of the program's output streams (``output``: stdout, ``errors``: stderr) and the
    line it has begun."""

    name: str
    partial: bytearray = field(default_factory=bytearray)


class Program:
    """One trial's program (see the module docstring): ``command``, its output logged to
    ``log_path``, its socket listening (:attr:`address`) before it is started (:meth:`start`)."""

    def __init__(self, command: Sequence[str], log_path: Path, folder: Path) -> None:
        self.command, self.log_path = list(command), log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if sys.platform.startswith("linux"):
            name = f"sweeplab-{os.getpid()}-{secrets.token_hex(8)}"
            self.listener.bind("\0" + name)
            self.address = "@" + name  # how sweeplab.trial writes an abstract name (an environment holds no NUL)
        else:
            self.listener.bind(str(folder / "trial.sock"))
            self.address = str(folder / "trial.sock")
        self.listener.listen()
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.open_streams = 0
        self.signalled = False  # the sweep sent the program a signal while it ran: its exit status is the sweep's doing
        self.known: dict[int, str] = {}  # its descendants seen so far, with their start times
        self._scanned = 0.0

    def start(self, env: Mapping[str, str]) -> None:
        """Start the program with ``env`` added to this process's environment."""
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(ended_with_this_process(self.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env={**os.environ, **env}, start_new_session=True)
        self.selector.register(self.process.stdout, selectors.EVENT_READ, _Stream("output"))  # type: ignore[arg-type]
        self.selector.register(self.process.stderr, selectors.EVENT_READ, _Stream("errors"))  # type: ignore[arg-type]
        self.open_streams = 2

    @property
    def output_open(self) -> bool:
        """Whether the program's stdout or stderr may still bring something."""
        return self.open_streams > 0

    def lines(self, timeout: float) -> Iterator[tuple[str, Any, str]]:
        """What arrived within ``timeout`` seconds: ``("output", None, line)`` for a line of
        stdout, ``("errors", None, line)`` for one of stderr (both logged), ``("report",
        connection, line)`` for a line on a reporting connection."""
        self._scan()
        for key, _ in self.selector.select(timeout):
            if key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    connection, _ = self.listener.accept()
                    self.selector.register(connection, selectors.EVENT_READ, [bytearray()])
            elif isinstance(key.data, _Stream):
                yield from ((key.data.name, None, line) for line in self._stream(key, key.data))
            else:
                yield from (("report", key.fileobj, line) for line in self._reports(key))

    def _stream(self, key: selectors.SelectorKey, stream: _Stream) -> list[str]:
        chunk = os.read(key.fd, 65536)
        if not chunk:  # its end: the last line, even without its end of line
            self.selector.unregister(key.fileobj)
            self.open_streams -= 1
            rest, stream.partial = bytes(stream.partial), bytearray()
            return self._kept([rest] if rest.strip() else [])
        self.log.write(chunk)
        if not _LINE_END.search(chunk):
            stream.partial.extend(chunk)  # a long line in pieces: joined once, at its end
            return []
        *complete, rest = _LINE_END.split(bytes(stream.partial) + chunk)
        stream.partial = bytearray(rest)
        return self._kept(complete)

    def _kept(self, raw_lines: list[bytes]) -> list[str]:
        lines = [raw.decode("utf-8", "replace") for raw in raw_lines]
        for line in lines:
            if line.strip():
                self.tail.append(line.strip()[:TAIL_WIDTH])
        return lines

    def _reports(self, key: selectors.SelectorKey) -> list[str]:
        connection = key.fileobj
        try:
            chunk = connection.recv(65536)  # type: ignore[union-attr]
        except OSError:  # the program was ended mid-report
            chunk = b""
        if not chunk:
            self.selector.unregister(connection)
            connection.close()  # type: ignore[union-attr]
            return []
        buffer: bytearray = key.data[0]
        buffer.extend(chunk)
        if b"\n" not in chunk:
            return []
        *complete, rest = bytes(buffer).split(b"\n")
        key.data[0] = bytearray(rest)
        return [raw.decode("utf-8") for raw in complete]

    def _scan(self) -> None:
        """Remember the program's descendants (every :data:`SCAN_SECONDS`)."""
        now = time.monotonic()
        if now - self._scanned >= SCAN_SECONDS and self.process.poll() is None:
            self._scanned = now
            self.known.update(_descendants(self.process.pid))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the program's process group and to every descendant seen that
        still runs (a rank in a session of its own)."""
        self.signalled = self.signalled or self.process.poll() is None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)
        for pid, started in list(self.known.items()):
            if _start_time(pid) != started:
                del self.known[pid]  # gone, or its pid taken by another process
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def alive(self) -> bool:
        """Whether the program, or a descendant seen, still runs."""
        return self.process.poll() is None or any(_start_time(pid) == started for pid, started in self.known.items())

    def finished(self) -> bool:
        """Whether the program has ended and its output is read to its end."""
        return self.process.poll() is not None and not self.output_open

    def close(self) -> None:
        """End whatever of the program still runs (``SIGTERM``, then ``SIGKILL`` after the grace
        period, sent however the wait ends) and release the socket and the log."""
        try:
            self._scan()
            if self.alive():
                self.signal(signal.SIGTERM)
                deadline = time.monotonic() + GRACE_SECONDS
                while self.alive() and time.monotonic() < deadline:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(0.1)
        finally:
            if self.alive():
                self.signal(signal.SIGKILL)
            self.process.wait()
            drained_by = time.monotonic() + DRAIN_SECONDS
            while self.output_open and time.monotonic() < drained_by:  # its last words, into the log
                for _ in self.lines(0.2):
                    pass
            for key in list(self.selector.get_map().values()):
                if isinstance(key.data, list):  # a reporting connection
                    key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()
            self.listener.close()
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self.log.close()
