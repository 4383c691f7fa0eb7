"""Reaching the Ray cluster of ``sweep run --ray ADDRESS`` (:mod:`sweeplab.sweeps.ray_workers` runs
the workers on it): the connection, made only once the address answers, with the signal handlers
``ray.init`` replaces put back, and the trials' resources checked against the live nodes, each
refusal one line before any work.

Ray's lookup of ``--ray auto`` (``ray._private.services.get_ray_address_from_environment``) is
private API, used here alone; ``tests/sweeps/test_ray.py`` fails when Ray moves it.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import signal
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sweeplab.errors import UsageError
from sweeplab.sweeps.options import SweepOptions

__all__ = ["RAY_NAMES", "on_cluster", "ray_module", "trials_held"]

#: Ray's names of the resources of ``--trial-resources`` that are not a cluster's own (custom) ones.
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}
#: Resources a cluster lists that a trial does not ask for by name.
_NOT_BY_NAME = ("CPU", "GPU", "memory", "object_store_memory")
_ANSWER_SECONDS = 3.0  # how long a cluster's address may take to answer (ray.init waits minutes)
_LOCAL_OBJECT_STORE = 128 * 2**20  # bytes: a sweep passes almost nothing through Ray's object store


def ray_module() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray: Ray is not installed; pip install 'sweeplab[ray]'") from None
    return ray


@contextlib.contextmanager
def on_cluster(options: SweepOptions) -> Iterator[SweepOptions]:
    """``options`` connected to their Ray cluster for the block (``--ray``, in the main process;
    as they are otherwise), with the trials' resources checked against the cluster's live nodes
    and ``--workers`` 0 resolved to the trials they hold at once. Each refusal is one line
    (:class:`~sweeplab.errors.UsageError`) before anything is written. The connection (and the
    runtime of ``--ray local``) is closed after the block; one the host process had made is left
    as it was."""
    runtime = options.runtime
    if runtime.ray is None or options.role != "main":
        yield options
        return
    ray = ray_module()
    connected_before = ray.is_initialized()
    if not connected_before:
        _connect(ray, runtime.ray)
    try:
        held = trials_held(runtime.resources, runtime.trial_resources, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        yield options.with_(workers=runtime.workers or held)
    finally:
        if not connected_before:
            ray.shutdown()


def _connect(ray: Any, address: str) -> None:
    """``ray.init`` for ``--ray address``, quietly (no worker output on this terminal), once the
    address answers; the signal handlers it replaces (its own SIGTERM) are put back, so that a
    stop signal still stops the sweep as without Ray."""
    settings: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address == "local":
        settings.update(address="local", include_dashboard=False, object_store_memory=_LOCAL_OBJECT_STORE)
    else:
        settings["address"] = _answering(address)
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        ray.init(**settings)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
        hint = "" if address == "local" else ("; a cluster that asks for a token needs RAY_AUTH_MODE=token and its "
                                              "token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)")
        raise UsageError(f"--ray {address}: could not {'start' if address == 'local' else 'connect to'} the Ray cluster "
                         f"({_first_line(exc)}){hint}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)


#: The signals whose handlers ``ray.init`` may replace.
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))


def _answering(address: str) -> str:
    """The address to connect to once a process answers there within seconds (``ray.init`` would
    wait minutes for one nothing answers at); ``auto`` as Ray finds it (``RAY_ADDRESS``, else the
    cluster ``ray start`` made on this machine)."""
    given = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment  # Ray's own lookup for "auto"
        except ImportError:  # moved in another Ray version: ray.init looks it up
            return address
        try:
            address = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise UsageError("--ray auto: no Ray cluster found on this machine (RAY_ADDRESS is unset and "
                             "`ray start` made none here); give its address, or --ray local") from None
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not (sep and host and port.isdigit()):
        raise UsageError(f"--ray {given}: expected a Ray cluster's HOST:PORT (or ray://HOST:PORT), auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_ANSWER_SECONDS).close()
    except OSError as exc:
        why = "" if isinstance(exc, (ConnectionRefusedError, TimeoutError)) else f" ({exc})"
        raise UsageError(f"--ray {given}: no Ray cluster answers at {host}:{port}{why}; start one with "
                         "`ray start --head`, or use --ray local") from None
    return address


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


def trials_held(wanted: Mapping[str, float], given: str | None, nodes: Sequence[Mapping[str, float]]) -> int:
    """How many trials asking ``wanted`` (:attr:`~sweeplab.sweeps.options.Runtime.resources`,
    from ``--trial-resources given``) the nodes (each a mapping of Ray's resource names to
    amounts) hold at once. A resource no node offers (a GPU on a cluster without, a misspelt
    name) or a trial no node can hold whole is one line."""
    offered = set().union(*nodes) if nodes else set()
    own = sorted(name for name in offered if name not in _NOT_BY_NAME and not name.startswith("node:"))
    for name, amount in wanted.items():
        if name in _NOT_BY_NAME or RAY_NAMES.get(name, name) not in offered:
            if name == "gpu":
                raise UsageError(f"--trial-resources gpu={amount:g}: the Ray cluster has no GPU")
            guess = difflib.get_close_matches(name.lower(), ["cpu", "gpu", *own], n=1)
            raise UsageError(f"--trial-resources {name}={amount:g}: the Ray cluster offers no resource {name} "
                             f"(expected cpu, gpu{''.join(f', {n}' for n in own)})"
                             + (f"; did you mean {guess[0]}?" if guess else ""))
    each = [min(math.floor(node.get(RAY_NAMES.get(n, n), 0.0) / a + 1e-9) for n, a in wanted.items()) for node in nodes]
    if not sum(each):
        short = [f"{n}={a:g}, and a node has at most {most:g}" for n, a in wanted.items()
                 if (most := max(node.get(RAY_NAMES.get(n, n), 0.0) for node in nodes)) < a]
        asked = ",".join(f"{n}={a:g}" for n, a in wanted.items())
        raise UsageError(f"--trial-resources {given or asked}: no node of the Ray cluster can hold one trial ("
                         + ("; ".join(short) or f"none has {asked} at once") + ")")
    return sum(each)
