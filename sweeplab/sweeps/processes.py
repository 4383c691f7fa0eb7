"""Which process runs a trial, and whether it still does.

Every trial records the process running it (:func:`worker_attrs`: host name, pid, and on Linux
the boot, pid namespace and start time). A RUNNING trial of a process this process can see (same
host, boot and pid namespace) is dead when that process is gone, is a zombie, or is a new process
that reuses the pid (another start time): this finds a kill at once. Processes of other machines
and containers, whose pids mean nothing here, are judged by their heartbeats instead
(:mod:`sweeplab.sweeps.heartbeats`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["alive", "dead_here", "process_ended", "process_of", "this_machine", "worker_attrs"]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None (no such
    process here, or not Linux). The name may hold spaces and parentheses, hence the rpartition."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def this_machine() -> str:
    """This boot of this machine and this pid namespace (``BOOT-ID pid:[4026531836]``): the pid
    namespace's number alone repeats across machines (every host's own is the same). '' parts
    where there is nothing to read (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot} {namespace}"


def worker_attrs() -> dict[str, str]:
    """What a trial records about the process running it: ``worker`` (``host:pid``, for people)
    and ``worker_process`` (boot, pid namespace and start time in clock ticks since boot, so that
    a process of another machine or container, or a new process that got the same pid, is not
    taken for it)."""
    fields = _stat("self")
    started = fields[19] if fields and len(fields) > 19 else ""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_process": f"{this_machine()} {started}"}


def alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` of this pid namespace still runs, and is the one that started at
    ``started`` (when given). A zombie (killed, not yet reaped by its parent) counts as dead: it
    will never finish its trial. A process this one may not inspect counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # Linux: it ended just now; elsewhere: kill said it runs
    if fields[0] in ("Z", "X"):
        return False
    return not started or len(fields) <= 19 or fields[19] == started


def process_of(attrs: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(host, pid, machine, start time) a trial or a study recorded (:func:`worker_attrs`); ''
    where absent."""
    host, _, pid = str(attrs.get("worker", "")).rpartition(":")
    machine, _, started = str(attrs.get("worker_process", "")).rpartition(" ")
    return host, pid, machine, started


def process_ended(attrs: Mapping[str, Any] | None) -> bool:
    """Whether the process ``attrs`` describes (:func:`worker_attrs`) is known to have ended: it
    ran on this machine and runs no more. False when that cannot be told (another machine,
    nothing recorded) and for this process."""
    if not attrs or process_of(attrs)[1] == str(os.getpid()):
        return False
    return dead_here(attrs, socket.gethostname(), this_machine()) is True


def dead_here(attrs: Mapping[str, Any], host: str, machine: str) -> bool | None:
    """True or False when this process can tell whether the process that recorded ``attrs`` (a
    trial's user attributes) runs (same host, boot and pid namespace); None when it cannot
    (another machine or container)."""
    worker_host, pid, recorded_machine, started = process_of(attrs)
    if worker_host != host or not pid.isdigit() or recorded_machine != machine:
        return None
    # Between trials this process runs none, so a trial that names it is left from an earlier
    # life of its pid (a restarted container's pid 1).
    return int(pid) == os.getpid() or not alive(int(pid), started)
