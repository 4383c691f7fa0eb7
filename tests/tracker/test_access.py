"""No one in who does not belong: a store served beyond this machine asks for credentials, a
request without them is refused, a sweep with them succeeds, and a credentials file others may
read is refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.errors import UsageError
from sweeplab.tracker.access import CREDENTIALS_ENV, Credentials, check_exposure, loopback, read_credentials

runner = CliRunner()
PASSWORD = "correct-horse-battery"


def _credentials(tmp_path: Path, text: str = f"alice:{PASSWORD}\n", mode: int = 0o600) -> Path:
    path = tmp_path / "credentials"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_credentials_come_from_a_private_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_credentials(_credentials(tmp_path)) == Credentials("alice", PASSWORD)
    assert PASSWORD not in repr(read_credentials(_credentials(tmp_path)))
    with pytest.raises(UsageError, match=r"others may read it \(mode 644\); chmod 600"):
        read_credentials(_credentials(tmp_path, mode=0o644))
    with pytest.raises(UsageError, match="expected one line USER:PASSWORD"):
        read_credentials(_credentials(tmp_path, "alice\n"))
    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    assert read_credentials(None) is None
    monkeypatch.setenv(CREDENTIALS_ENV, "bob:pass:word")
    assert read_credentials(None) == Credentials("bob", "pass:word")


def test_serving_beyond_this_machine_needs_credentials_or_says_what_no_auth_exposes() -> None:
    assert loopback("127.0.0.1") and loopback("localhost") and not loopback("0.0.0.0")
    assert check_exposure("127.0.0.1", None, no_auth=False) is None
    with pytest.raises(UsageError, match="--host 0.0.0.0 serves the store beyond this machine: give credentials"):
        check_exposure("0.0.0.0", None, no_auth=False)
    assert "anyone who reaches 0.0.0.0" in (check_exposure("0.0.0.0", None, no_auth=True) or "")
    assert check_exposure("0.0.0.0", Credentials("alice", PASSWORD), no_auth=False) is None


@pytest.mark.parametrize(("command", "file", "mode", "expected"), [
    (["server", "--host", "0.0.0.0"], None, 0, "--host 0.0.0.0 serves the store beyond this machine"),
    (["server", "--host", "0.0.0.0"], f"alice:{PASSWORD}", 0o644, "others may read it (mode 644); chmod 600"),
    (["server"], "alice:short", 0o600, "password has 5 characters: MLflow's login asks for at least 12"),
    (["ui", "--host", "0.0.0.0"], None, 0, "--host 0.0.0.0 serves the store beyond this machine"),
], ids=["server-open", "server-readable-file", "server-short-password", "ui-open"])
def test_a_server_that_would_let_anyone_in_is_refused_with_one_line(tmp_path: Path, command: list[str], file: str | None,
                                                                    mode: int, expected: str) -> None:
    store = tmp_path / "store"
    if command[0] == "ui":  # a store to show
        from sweeplab.tracker.embedded import ensure_tracking_db

        store.mkdir()
        ensure_tracking_db(store / "mlflow.db", (store / "artifacts").as_uri())
    given = ["--credentials", str(_credentials(tmp_path, file, mode))] if file else []
    result = runner.invoke(app, [*command, *given, "--store-dir", str(store), "--port", "5987"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert expected in message and len(message.splitlines()) == 1, message
    assert not (store / "server.db").exists() and not (store / "server-auth").exists()


def _status(url: str, user: str | None = None, password: str = "") -> int:
    request = urllib.request.Request(url)
    if user:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


TRAINER = """
def fit(config, report):
    for epoch in range(1, 3):
        report(epoch, {"val_loss": config["lr"] / epoch})
"""


def test_a_server_with_credentials_refuses_requests_without_them_and_a_sweep_with_them_succeeds(
        mlflow_server: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = _credentials(tmp_path)
    server = mlflow_server(credentials=credentials)
    search = f"{server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401 and _status(search, "alice", "wrong-password-1") == 401
    assert _status(search, "alice", PASSWORD) == 200

    (tmp_path / "fit.py").write_text(TRAINER, encoding="utf-8")
    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.1, 0.2]\n", encoding="utf-8")
    sweep = [sys.executable, "-m", "sweeplab", "run", "fit.py:fit", "--space", "space.toml", "--trials", "2",
             "--sampler", "grid", "--no-plots", "--tracking-uri", server, "--store-dir", str(tmp_path / "local")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", CREDENTIALS_ENV))}
    refused = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "the tracking server asks for credentials (HTTP 401)" in refused.stderr
    done = subprocess.run([*sweep, "--credentials", str(credentials)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(server)
    trials = client.search_runs([client.get_experiment_by_name("sweeplab-fit.py:fit").experiment_id],
                                "tags.`sweeplab.role` = 'trial'")
    assert sorted(run.data.params["lr"] for run in trials) == ["0.1", "0.2"]
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-1")
    best = runner.invoke(app, ["best", "--task", "fit.py:fit", "--tracking-uri", server])
    assert best.exit_code == 2 and "the tracking server refuses the credentials given" in best.output
    assert len(best.output.strip().splitlines()) == 1, best.output
