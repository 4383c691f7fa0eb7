"""Optuna's gRPC storage proxy behind a token: how the nodes of a Ray cluster reach the head's study.

Optuna's proxy (``optuna.storages.run_grpc_proxy_server`` and ``GrpcStorageProxy``) has no login:
whoever reaches its port may read, change or delete every study of the storage behind it. The
head's proxy (:mod:`sweeplab.sweeps.head_stores`) therefore asks each call for a token made for
the sweep, which the nodes are handed through Ray (never on a command line): :func:`serve` is
Optuna's server with one interceptor more, which refuses a call without the token
(``UNAUTHENTICATED``), and :func:`connect` Optuna's client whose calls carry it. Both are built
from Optuna's private gRPC modules (its servicer, generated stubs and client cache; the public
functions take no interceptor): this module is the one place that uses them, and
``tests/sweeps/test_head_stores.py`` fails when Optuna moves them.

The server listens on one address only, never sharing its port (``grpc.so_reuseport`` off: two
proxies on one port would split a sweep's calls between two journals).
"""

from __future__ import annotations

import collections
import hmac
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, GrpcStorageProxy

__all__ = ["TOKEN_ENV", "connect", "serve"]

#: The environment variable that holds the sweep's token, in the proxy's process and the nodes' workers.
TOKEN_ENV = "SWEEPLAB_GRPC_TOKEN"
_HEADER = "x-sweeplab-token"


def target(host: str, port: int) -> str:
    """gRPC's ``HOST:PORT``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(storage: BaseStorage, host: str, port: int, token: str) -> grpc.Server:
    """Optuna's gRPC proxy of ``storage`` on ``host:port``, answering only calls that carry
    ``token``; started, not waited on."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    server = grpc.server(ThreadPoolExecutor(max_workers=10), interceptors=[_RequireToken(token)],
                         options=[("grpc.so_reuseport", 0)])
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    if server.add_insecure_port(target(host, port)) == 0:
        raise OSError(f"cannot listen on {target(host, port)}")
    server.start()
    return server


def connect(host: str, port: int, token: str | None) -> BaseStorage:
    """Optuna's ``GrpcStorageProxy`` of the proxy at ``host:port``, each call carrying ``token``
    (none: a proxy of Optuna's own, which asks for none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # the proxy: experimental since Optuna 4.2
        return GrpcStorageProxy(host=_bracketed(host), port=port) if token is None else _TokenProxy(_bracketed(host), port, token)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _TokenProxy(GrpcStorageProxy):
    """``GrpcStorageProxy`` whose channel adds the token to each call (made again after unpickling)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self._token = token
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        super()._setup()
        self._stub = api_pb2_grpc.StorageServiceStub(grpc.intercept_channel(self._channel, _AddToken(self._token)))
        self._cache = GrpcClientCache(self._stub)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                  "compression")), grpc.ClientCallDetails):
    """A call's details with the token among its metadata."""


class _AddToken(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = ((_HEADER, token),)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        with_token = _Details(details.method, details.timeout, (*(details.metadata or ()), *self.metadata),
                              details.credentials, getattr(details, "wait_for_ready", None),
                              getattr(details, "compression", None))
        return continuation(with_token, request)


class _RequireToken(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token.encode()

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        given = dict(details.invocation_metadata or ()).get(_HEADER, "")
        if hmac.compare_digest(str(given).encode(), self.token):
            return continuation(details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


def _refuse(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "this Optuna storage proxy asks for the sweep's token")
