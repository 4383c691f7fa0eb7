"""A sweep whose workers log to an MLflow tracking server started on 127.0.0.1 by the test, and
the resume state that reaches every machine through it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.sweeps.resume_states import SharedResume
from sweeplab.tracker.resume_artifacts import ArtifactVersions
from sweeplab.trainers.resume_file import ResumeFile
from tests.conftest import TINY

runner = CliRunner()


def test_two_workers_log_to_one_parent_on_the_server(mlflow_server: Callable[..., str], tmp_path: Path,
                                                     sentiment_dir: Path) -> None:
    server = mlflow_server()
    result = runner.invoke(app, ["run", "sentiment", "--trials", "4", "--workers", "2", "--sampler", "random",
                                 "--pruner", "none", "--data-dir", str(sentiment_dir), "--tracking-uri", server,
                                 "--store-dir", str(tmp_path / "local"), "--set", "epochs=3", *TINY])
    assert result.exit_code == 0, result.output
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("sweeplab-sentiment").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags["sweeplab.role"] == "sweep"]
    children = [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert 4 <= len(children) <= 5 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    best = runner.invoke(app, ["best", "--task", "sentiment", "--json", "--tracking-uri", server])
    assert best.exit_code == 0, best.output
    run_id = json.loads(best.stdout)[0]["run_id"]
    checkpoint = client.download_artifacts(run_id, "checkpoint/model.pt", str(tmp_path / "dl"))
    assert Path(checkpoint).stat().st_size > 0  # artifacts go through the server
    assert not (tmp_path / "local" / "mlflow.db").exists()  # nothing tracked locally


def _status_for_host(server: str, host: str) -> int:
    """The HTTP status of an API call to ``server`` that names it ``host`` in its Host header."""
    request = urllib.request.Request(f"{server}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_answers_workers_that_name_it_by_this_machines_name_and_no_others(
    mlflow_server: Callable[..., str]
) -> None:
    server = mlflow_server()
    port = server.rpartition(":")[2]
    assert _status_for_host(server, f"{socket.gethostname()}:{port}") == 200  # MLflow's default alone refuses this
    assert _status_for_host(server, f"10.1.2.3:{port}") == 200  # a private address, as MLflow allows
    assert _status_for_host(server, f"attacker.example.com:{port}") != 200  # DNS-rebinding protection stays


def test_a_resume_state_reaches_another_machine_through_the_server_and_a_cut_upload_loses_nothing(
        mlflow_server: Callable[..., str], tmp_path: Path) -> None:
    client = MlflowClient(mlflow_server())
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    versions = ArtifactVersions(client, run_id, "resume/trial-0")
    here = SharedResume(ResumeFile(tmp_path / "here" / "trial-0.pt"), versions)
    here.save({"step": 1})
    here.save({"step": 2})
    assert len(versions.newest_first()) == 1  # the older version removed once the newer was stored
    elsewhere = SharedResume(ResumeFile(tmp_path / "elsewhere" / "trial-0.pt"), versions)  # no local file there
    assert elsewhere.load() == {"step": 2}

    cut = tmp_path / "state-99999999999999999999.pt"  # the newest name: an upload a kill cut short
    cut.write_bytes(b"PK\x03\x04 half a zip")
    client.log_artifact(run_id, str(cut), "resume/trial-0")
    assert elsewhere.load() == {"step": 2}

    here.delete()
    assert versions.newest_first() == [] and not (tmp_path / "here" / "trial-0.pt").exists()
    assert elsewhere.load() is None
