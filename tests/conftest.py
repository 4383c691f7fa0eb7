"""Shared fixtures: offline Hugging Face, one torch thread, small sentiment data sets, fresh
PostgreSQL databases, an MLflow tracking server, and each Optuna storage a sweep can use."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sweeplab.trainers.sentiment import TASK  # noqa: E402
from tests.checks import wait_for  # noqa: E402
from tests.storages import STORAGE_KINDS, SweepStorage, make_storage  # noqa: E402

torch.set_num_threads(1)

SAMPLE = TASK.sample_data


def make_sentiment_dir(root: Path, train_rows: int = 60, test_rows: int = 8) -> Path:
    """A small copy of the packaged sample: the first rows of each list with their files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    for name, n in (("train.txt", train_rows), ("test_without_label.txt", test_rows)):
        lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines()
        kept = lines[1 : n + 1]
        (root / name).write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
        for line in kept:
            guid = line.split(",")[0]
            for ext in (".txt", ".jpg"):
                shutil.copyfile(SAMPLE / "data" / f"{guid}{ext}", root / "data" / f"{guid}{ext}")
    return root


@pytest.fixture()
def sentiment_dir(tmp_path: Path) -> Path:
    return make_sentiment_dir(tmp_path / "sentiment")


#: --set flags that make a trial take well under a second on a CPU.
TINY = ["--set", "text_model=tiny", "--set", "image_model=tiny", "--set", "image_size=32", "--set", "max_length=32"]


#: Set by .ci/run to a PostgreSQL server it started: a role that may create databases.
POSTGRES_ENV = "SWEEPLAB_TEST_POSTGRES"


@contextlib.contextmanager
def postgres_databases() -> Iterator[Callable[..., str]]:
    """A factory of fresh PostgreSQL databases on the server named by ``SWEEPLAB_TEST_POSTGRES``,
    each empty or (``make(template)``) a copy of the database ``template``, by URI; all dropped
    when the block ends. Skips the test, saying why, when there is no server to reach."""
    admin_uri = os.environ.get(POSTGRES_ENV)
    if not admin_uri:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against (.ci/run starts one)")
    psycopg = pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -e '.[postgres]'")
    try:
        admin = psycopg.connect(admin_uri, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.skip(f"{POSTGRES_ENV}={admin_uri} cannot be reached: {str(exc).strip().splitlines()[0]}")
    made: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"sweeplab_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {urlsplit(template).path.lstrip('/')}" if template else ""))
        made.append(name)
        return urlunsplit(urlsplit(admin_uri)._replace(path=f"/{name}"))

    try:
        yield make
    finally:
        admin.close()
        with psycopg.connect(admin_uri, autocommit=True, connect_timeout=10) as again:  # a test may restart the server
            for name in made:
                again.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def postgres_db() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty PostgreSQL databases for one test (see :func:`postgres_databases`)."""
    with postgres_databases() as make:
        yield make


def answers(uri: str) -> bool:
    """Whether the MLflow tracking server at ``uri`` answers its health check now."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``sweep server`` on 127.0.0.1 (SQLite under tmp_path, or ``backend``; with a login
    when given a ``credentials`` file) and return its tracking URI once it answers; it is stopped
    after the test."""
    processes: list[subprocess.Popen] = []

    def start(backend: str | None = None, credentials: Path | None = None) -> str:
        port = free_port()
        command = [sys.executable, "-m", "sweeplab", "server", "--store-dir", str(tmp_path / "server"), "--port", str(port),
                   *(["--credentials", str(credentials)] if credentials else [])]
        log = (tmp_path / f"server-{port}.log").open("w")
        processes.append(subprocess.Popen([*command, *(["--backend-store-uri", backend] if backend else [])],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        uri = f"http://127.0.0.1:{port}"
        wait_for("the MLflow server to answer", lambda: uri if answers(uri) else None, 120, every=0.5,
                 alive=processes[-1], detail=lambda: (tmp_path / f"server-{port}.log").read_text()[-2000:])
        return uri

    try:
        yield start
    finally:
        for process in processes:  # the server and the workers it forked: their own process group
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(params=STORAGE_KINDS)
def sweep_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SweepStorage]:
    """A fresh Optuna storage of each kind a sweep can use, the test run once per kind (narrow it
    with ``tests.storages.storages(...)``): the journal at ``tmp_path/store/optuna.journal``,
    SQLite, and PostgreSQL (skipping, saying why, without a server). Its database connections are
    closed, and a PostgreSQL database dropped, after the test."""
    storage = make_storage(request.param, tmp_path, lambda: request.getfixturevalue("postgres_db"))
    try:
        yield storage
    finally:
        storage.close()
