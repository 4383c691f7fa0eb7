"""What the head of a Ray cluster serves its nodes: the embedded store through MLflow's tracking
server (behind a login made for the sweep) and Optuna's gRPC storage proxy, and a node's
artifacts written into the head's folder through that server.

``sweep run --ray ADDRESS`` uses all of it (``tests/sweeps/test_ray.py``); here the pieces are
checked without Ray: a request without the sweep's credentials is refused, a "node" (a process
that routes its artifacts through the server) logs a run with an artifact and an Optuna trial
that land in the head's files, and both servers end with the ``with`` block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeplab.errors import UsageError
from sweeplab.sweeps.grpc_storage import TOKEN_ENV, connect
from sweeplab.sweeps.storage import open_optuna_storage
from sweeplab.tracker.embedded import ensure_tracking_db
from sweeplab.tracker.preflight import check_store
from sweeplab.tracker.store import resolve_store
from tests.checks import wait_for
from tests.conftest import free_port

NODE = textwrap.dedent('''\
    import sys
    import optuna
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from sweeplab.sweeps.storage import open_optuna_storage
    from sweeplab.tracker.artifact_proxy import route_through_server

    tracking_uri, storage, artifacts, experiment = sys.argv[1:]
    route_through_server(artifacts, tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment)
    print(type(get_artifact_repository(run.info.artifact_uri)).__name__)
    client.log_text(run.info.run_id, "from the node", "notes/hello.txt")
    print(sorted(f.path for f in client.list_artifacts(run.info.run_id, "notes")))
    study = optuna.load_study(study_name="s", storage=open_optuna_storage(storage))
    trial = study.ask()
    study.tell(trial, 0.5)
    print(run.info.run_id)
''')


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_text(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


#: The head: serves a store until it is killed, after printing where (and the nodes' credentials).
HEAD = textwrap.dedent('''\
    import json, sys, time
    from pathlib import Path
    from sweeplab.sweeps.head_stores import serving_stores
    from sweeplab.tracker.store import resolve_store

    with serving_stores(resolve_store(Path(sys.argv[1])), "127.0.0.1", Path(sys.argv[2])) as served:
        print(json.dumps({"tracking_uri": served.tracking_uri, "storage": served.storage, "artifacts": served.artifacts,
                          "env": served.env, "shown": repr(served)}), flush=True)
        time.sleep(600)
''')


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="servers are found in /proc")
def test_a_node_writes_through_the_heads_servers_and_no_one_else_gets_in_and_they_end_with_the_head(tmp_path: Path) -> None:
    store = resolve_store(tmp_path / "mlruns")
    ensure_tracking_db(store.root / "mlflow.db", store.artifact_root)
    experiment = MlflowClient(store.tracking_uri).create_experiment("exp", artifact_location=f"{store.artifact_root}/exp")
    optuna.create_study(study_name="s", storage=open_optuna_storage(store.optuna_storage))

    head = subprocess.Popen([sys.executable, "-c", HEAD, str(store.root), str(tmp_path / "logs")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        served = json.loads(head.stdout.readline() or "null") or pytest.fail(head.stderr.read()[-3000:])
        password, token = served["env"]["MLFLOW_TRACKING_PASSWORD"], served["env"][TOKEN_ENV]
        assert password not in served["shown"] and token not in served["shown"]
        assert not [pid for pid in _processes_naming(password) + _processes_naming(token)]  # on no command line
        with pytest.raises(urllib.error.HTTPError) as refused:  # no login: 401
            urllib.request.urlopen(f"{served['tracking_uri']}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401
        host, port = served["storage"].removeprefix("grpc://").rsplit(":", 1)
        with pytest.raises(Exception, match="UNAUTHENTICATED"):  # no token: refused
            connect(host, int(port), None).get_all_studies()
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            connect(host, int(port), "not-the-token").get_all_studies()
        node = subprocess.run([sys.executable, "-c", NODE, served["tracking_uri"], served["storage"], served["artifacts"],
                               experiment], capture_output=True, text=True, timeout=120, env={**os.environ, **served["env"]})
        assert node.returncode == 0, node.stderr[-3000:]
        repository, listed, run_id = node.stdout.split("\n")[:3]
        assert repository == "MlflowArtifactsRepository" and listed == "['notes/hello.txt']"
        assert _processes_naming(str(store.root / "mlflow.db"))
    finally:
        head.kill()  # as the machine's out-of-memory killer would: no clean-up in the head
        head.wait(timeout=30)

    log = (tmp_path / "logs" / "head-mlflow.log").read_text()
    assert f"PUT /api/2.0/mlflow-artifacts/artifacts/exp/{run_id}/artifacts/notes/hello.txt" in log  # through the server
    assert (store.root / "artifacts" / "exp" / run_id / "artifacts" / "notes" / "hello.txt").read_text() == "from the node"
    assert [t.value for t in optuna.load_study(study_name="s", storage=open_optuna_storage(store.optuna_storage)).trials] == [0.5]
    wait_for("the head's servers gone with it", lambda: not _processes_naming(str(store.root / "mlflow.db"))
             and not _processes_naming("sweeplab.sweeps.head_stores") or None, seconds=60)


@pytest.mark.parametrize(("storage", "said"), [
    ("grpc://127.0.0.1:{port}", "--storage grpc://127.0.0.1:{port}: no Optuna gRPC storage proxy answers (connection refused)"),
    ("grpc://somewhere", "--storage grpc://somewhere: expected grpc://HOST:PORT (Optuna's gRPC storage proxy)"),
])
def test_a_grpc_storage_nothing_answers_at_is_one_line(storage: str, said: str, tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(UsageError) as refused:
        check_store(resolve_store(tmp_path / "store", storage=storage.format(port=port)), timeout=2)
    assert str(refused.value) == said.format(port=port)


def test_mlflows_registry_of_artifact_repositories_is_where_artifact_proxy_reaches_it() -> None:
    """:mod:`sweeplab.tracker.artifact_proxy` registers its repository in MLflow's private
    registry object; this fails when MLflow moves or renames it."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    assert callable(registry.register) and registry._registry.get("file") is LocalArtifactRepository


@pytest.mark.parametrize("host", ["192.0.2.7", "fd12::5"])
def test_the_heads_server_accepts_the_address_the_nodes_name_it_by_with_any_port(host: str) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    from sweeplab.sweeps.head_stores import allowed_hosts_with

    allowed = (allowed_hosts_with(host) or "").split(",")
    shown = f"[{host}]" if ":" in host else host
    assert is_allowed_host_header(allowed, f"{shown}:5000") and is_allowed_host_header(allowed, shown)
    assert not is_allowed_host_header(allowed, "evil.example:5000")
