"""``sweep ui`` and ``sweep server`` refuse, in one line and before printing any address, what
MLflow would get wrong quietly: a port another program holds (MLflow logs it among its start-up
lines and exits 0, and the printed addresses open that program), and a folder with no store
(MLflow would make an empty one there)."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.errors import UsageError
from sweeplab.tracker.server import check_port

runner = CliRunner()


class Started(list):
    """The command lines started, and the environment of each (:attr:`environments`)."""

    def __init__(self) -> None:
        super().__init__()
        self.environments: list[dict[str, str]] = []


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch) -> Started:
    """The command lines the CLI would hand its process over to (MLflow's UI or server),
    recorded instead of run; the command then ends with exit 0."""
    commands = Started()

    def record(path: str, command: list[str], env: dict[str, str] | None = None) -> None:
        commands.append(list(command))
        commands.environments.append(dict(env if env is not None else os.environ))
        raise typer.Exit(0)

    monkeypatch.setattr(os, "execv", record)
    monkeypatch.setattr(os, "execve", record)
    return commands


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket of this test holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _store(root: Path) -> Path:
    """An embedded store as a sweep leaves it (a complete, empty MLflow database)."""
    from sweeplab.tracker.embedded import ensure_tracking_db

    ensure_tracking_db(root / "mlflow.db")
    return root


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_ui_without_a_store_is_refused_and_creates_nothing(tmp_path: Path, started: list[list[str]]) -> None:
    for store_dir in (tmp_path / "none", tmp_path):  # a folder that does not exist, an empty one
        result = runner.invoke(app, ["ui", "--store-dir", str(store_dir)])
        assert result.exit_code == 2, result.output
        assert "no tracking store here (run a sweep first, or pass --store-dir)" in _one_error_line(result.output)
    assert not started and list(tmp_path.iterdir()) == []


def test_ui_on_a_taken_port_names_it_and_a_free_one(tmp_path: Path, started: list[list[str]], taken_port: int) -> None:
    result = runner.invoke(app, ["ui", "--store-dir", str(_store(tmp_path / "mlruns")), "--port", str(taken_port)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)  # and no address printed before it
    assert f"port {taken_port} on 127.0.0.1 is in use" in line and "--port" in line, line
    assert not started


def test_ui_on_a_free_port_prints_its_address_and_starts_mlflow_there(tmp_path: Path, started: list[list[str]]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["ui", "--store-dir", str(_store(tmp_path / "mlruns")), "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert f"MLflow UI on http://127.0.0.1:{port}/" in result.output
    # The first address is a page of the model-training view (the UI's own root is a GenAI welcome page).
    assert re.search(rf"^    http://127\.0\.0\.1:{port}/#/experiments\S*workflowType=machine_learning", result.output, re.M)
    [command] = started
    assert command[command.index("--port") + 1] == str(port)
    assert command[-2:] == ["--app-name", "sweeplab"]  # the UI starts in the model-training view


def test_the_ui_sweep_ui_starts_stores_the_model_training_view_before_mlflows_scripts_run(tmp_path: Path) -> None:
    """``mlflow ui --app-name sweeplab`` (what ``sweep ui`` starts without a login) serves MLflow's
    start page with the model-training view stored first, also to a browser that cached MLflow's
    plain page (its ETag and date are no "not modified"), and everything else as MLflow does: its
    API, and an HTML artifact byte for byte. This also fails when MLflow moves the private names
    :mod:`sweeplab.tracker.ui_app` uses."""
    import importlib.util
    import subprocess
    import sys
    import time
    import urllib.request

    from mlflow import MlflowClient
    from werkzeug.test import EnvironBuilder
    from werkzeug.utils import send_from_directory

    from sweeplab.tracker.ui_app import MODEL_TRAINING_SCRIPT

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = _store(tmp_path / "mlruns")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("reports", artifact_location=(store / "artifacts").as_uri())).info.run_id
    report = "<html><head><title>report</title></head><body>\u00e9t\u00e9</body></html>\n"
    client.log_text(run_id, report, "report.html")
    # What MLflow's plain `mlflow ui` sends for its index.html, so what a browser that opened it revalidates with.
    mlflow_index = send_from_directory(Path(importlib.util.find_spec("mlflow.server").origin).parent / "js" / "build",
                                       "index.html", EnvironBuilder().get_environ())
    plain_validators = {"If-None-Match": mlflow_index.headers["ETag"], "If-Modified-Since": mlflow_index.headers["Last-Modified"]}
    mlflow_index.close()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--app-name", "sweeplab"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, ui.stderr.read()[-3000:] if ui.poll() is not None else "no answer"
                time.sleep(0.5)
        assert page.index(MODEL_TRAINING_SCRIPT) < page.index("<script defer")  # before MLflow's own scripts
        revalidated = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=plain_validators)
        with urllib.request.urlopen(revalidated) as response:  # a 304 raises HTTPError
            assert response.status == 200 and MODEL_TRAINING_SCRIPT in response.read().decode()
            assert response.headers["ETag"] is None and response.headers["Last-Modified"] is None
            assert response.headers["Cache-Control"] == "no-cache"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?path=report.html&run_uuid={run_id}") as artifact:
            assert artifact.read() == report.encode()  # the downloaded file as logged, no script in it
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=5") as api:
            assert b'"experiments"' in api.read()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def test_server_on_a_taken_port_is_refused_before_making_its_folder(tmp_path: Path, started: list[list[str]],
                                                                     taken_port: int) -> None:
    result = runner.invoke(app, ["server", "--store-dir", str(tmp_path / "srv"), "--port", str(taken_port)])
    assert result.exit_code == 2, result.output
    assert f"port {taken_port} on 127.0.0.1 is in use" in _one_error_line(result.output)
    assert not started and not (tmp_path / "srv").exists()


def test_the_free_port_suggested_is_free(taken_port: int) -> None:
    with pytest.raises(UsageError, match=r"such as --port (\d+)") as refused:
        check_port("127.0.0.1", taken_port)
    suggested = int(str(refused.value).rsplit("--port ", 1)[1])
    assert suggested != taken_port
    check_port("127.0.0.1", suggested)  # no error: a server could listen there


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 0, "--port 0: expected a port number from 1 to 65535"),
        ("127.0.0.1", 70000, "--port 70000: expected a port number from 1 to 65535"),
        ("no-such-host.invalid", 5000, "--host no-such-host.invalid: not an address of this machine"),
    ],
)
def test_a_port_or_host_no_server_could_use_is_one_line(host: str, port: int, expected: str) -> None:
    with pytest.raises(UsageError, match="^" + expected.replace(".", r"\.")):
        check_port(host, port)


def test_a_ui_with_credentials_starts_mlflows_login_with_that_one_user(tmp_path: Path, started: Started) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("alice:correct-horse-battery\n")
    credentials.chmod(0o600)
    store = _store(tmp_path / "mlruns")
    result = runner.invoke(app, ["ui", "--store-dir", str(store), "--credentials", str(credentials), "--port", "5987"])
    assert result.exit_code == 0, result.output
    (command,), (env,) = started, started.environments
    assert command[-2:] == ["--app-name", "basic-auth"]
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "alice" and env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "correct-horse-battery"
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "default_permission = NO_PERMISSIONS" in config and "correct-horse-battery" not in config
