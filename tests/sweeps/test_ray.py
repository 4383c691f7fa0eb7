"""``sweep run --ray ADDRESS``: the trials run on the nodes of a Ray cluster.

The cluster is two nodes on 127.0.0.1, one CPU each and no dashboard, each a ``ray start
--block`` in a session of its own (so that one node's processes can be killed, and the cluster
stopped, without ``ray stop``, which would stop every Ray on the machine). Nothing else is
started by hand: ``sweep run --ray`` places its workers on the nodes. The trainer is a user's
training function whose trials take well under a second (a few seconds while ``slow`` exists
beside it), so that the whole file takes about a minute and a half on two cores.
"""

from __future__ import annotations

import inspect
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from mlflow import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sweeplab.cli import app  # noqa: E402
from sweeplab.errors import UsageError  # noqa: E402
from sweeplab.sweeps.options import SweepOptions  # noqa: E402
from sweeplab.sweeps.ray_cluster import trials_held  # noqa: E402
from tests.checks import running_trials, wait_for, worker_pid  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.storages import SweepStorage  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a node's processes are found in /proc")

RAY = Path(sys.executable).with_name("ray")

TRAINER = textwrap.dedent('''\
    import pathlib, time

    def fit(config, report):
        here = pathlib.Path(__file__).parent
        start = 1 if report.resumed is None else report.resumed.state["epoch"] + 1
        for epoch in range(start, 13):
            time.sleep(0.3 if (here / "slow").exists() else 0.02)
            report(epoch, {"val_loss": 1 / epoch, "val_accuracy": config["lr"] * epoch / 12}, resume={"epoch": epoch})
''')
STUDY = "space-random"
EXPERIMENT = "sweeplab-fit.py:fit"


def _family(root: int) -> list[int]:
    """``root`` and every process below it, as /proc shows them now."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children[int(stat.read_text().rpartition(")")[2].split()[1])].append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    family, todo = [], [root]
    while todo:
        pid = todo.pop()
        family.append(pid)
        todo += children[pid]
    return family


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # ended meanwhile
        return ""


class Cluster:
    """A Ray cluster of one-CPU nodes on this machine, under a short temporary folder (Ray's
    socket paths are limited in length), every port its own, so that two raylets share the
    machine and nothing collides with another Ray here."""

    def __init__(self, temp: Path) -> None:
        self.temp, self.port = temp, free_port()
        self.address = f"127.0.0.1:{self.port}"
        #: What the nodes, ``ray status`` and the sweeps run with: a token of the cluster's own (Ray
        #: 2.5x asks for one once ~/.ray/auth_token exists, which a ``ray.init()`` makes), and
        #: temporary files (a worker's folder on its node) under the cluster's folder, removed with it.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "TMPDIR": str(temp)}
        self.nodes: list[subprocess.Popen] = []
        self._ports = iter(range(random.randrange(20000, 50000, 1000), 65000, 100))

    def start_node(self) -> subprocess.Popen:
        """Start one more node (the head first) and wait until the cluster has them all."""
        head = not self.nodes
        workers = next(self._ports)
        where = (["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                  f"--temp-dir={self.temp}"] if head else [f"--address={self.address}"])
        ports = {name: free_port() for name in ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                                                 "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")}
        command = [str(RAY), "start", "--block", *where, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                   "--disable-usage-stats", f"--object-store-memory={100 * 2**20}", f"--min-worker-port={workers}",
                   f"--max-worker-port={workers + 99}", *(f"--{name}={port}" for name, port in ports.items())]
        with (self.temp / f"node-{len(self.nodes)}.log").open("a") as log:
            node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        self.nodes.append(node)
        wait_for(f"{len(self.nodes)} Ray nodes", lambda: True if len(self.node_ids()) == len(self.alive()) else None,
                 seconds=90, every=1.0, alive=node, detail=lambda: log.name + ": " + Path(log.name).read_text()[-3000:])
        return node

    def alive(self) -> list[subprocess.Popen]:
        return [node for node in self.nodes if node.poll() is None]

    def node_ids(self) -> set[str]:
        """The ids of the cluster's live nodes, as ``ray status`` lists them."""
        status = subprocess.run([str(RAY), "status", f"--address={self.address}"], capture_output=True, text=True,
                                timeout=60, env=self.env)
        active = status.stdout.partition("Active:")[2].partition("Pending:")[0]
        return {word.removeprefix("node_") for word in active.split() if word.startswith("node_")}

    def kill(self, node: subprocess.Popen) -> None:
        """SIGKILL a node and every process below it (raylet, Ray workers, the sweep's worker
        there), as when its machine dies."""
        for pid in _family(node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait(timeout=30)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                self.kill(node)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not RAY.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="slr", dir="/tmp"))
    made = Cluster(temp)
    try:
        made.start_node()
        made.start_node()
        yield made
    finally:
        made.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def two_nodes(cluster: Cluster) -> Cluster:
    """The cluster with both its nodes (the second started again if a test killed it)."""
    while len(cluster.alive()) < 2:
        cluster.start_node()
    return cluster


def _sweep(folder: Path, *flags: str, store: str = "mlruns") -> list[str]:
    (folder / "fit.py").write_text(TRAINER, encoding="utf-8")
    (folder / "space.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 1.0\n", encoding="utf-8")
    return [sys.executable, "-m", "sweeplab", "run", "fit.py:fit", "--space", "space.toml", "--sampler", "random",
            "--pruner", "none", "--metric", "val_accuracy", "--store-dir", store, *flags]


def _records(store: Path) -> dict[str, object]:
    """What a sweep left in its store, as names (which values are the runs' own): the trials'
    states and attributes in Optuna, the parent's and the children's tags, params, metrics and
    artifacts in MLflow, ``sweeplab.node`` aside."""
    study = SweepStorage.of_store(store).study(STUDY)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=100)

    def artifacts(run_id: str, path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(run_id, path):
            found |= artifacts(run_id, item.path) if item.is_dir else {item.path.rpartition("/")[2]}
        return found

    def names(role: str) -> dict[str, object]:
        chosen = [r for r in runs if r.data.tags.get("sweeplab.role") == role]
        return {"status": {r.info.status for r in chosen},
                "tags": set().union(*(r.data.tags for r in chosen)) - {"sweeplab.node"},
                "params": set().union(*(r.data.params for r in chosen)),
                "metrics": set().union(*(r.data.metrics for r in chosen)),
                "artifacts": set().union(*(artifacts(r.info.run_id) for r in chosen))}

    return {"trials": {t.state.name for t in study.trials}, "user_attrs": set().union(*(t.user_attrs for t in study.trials)),
            "study_attrs": set(study.user_attrs), "sweep": names("sweep"), "trial": names("trial")}


def test_the_trials_run_on_both_nodes_and_the_store_holds_what_local_workers_leave(two_nodes: Cluster, tmp_path: Path) -> None:
    """4 trials with ``--ray ADDRESS`` and no ``--workers`` (the cluster holds 2 at once): each
    trial's run names the node it ran on, both nodes ran trials, no worker is left behind, and
    the store holds what ``--workers 2`` on this machine leaves, curves, summaries and pictures
    alike. The workers reached the store through the servers the sweep started (their requests
    are in the MLflow server's log, the artifacts among them) and kept their own store folders
    on their node, and the servers are gone with the sweep."""
    started = time.monotonic()
    sweep = subprocess.run(_sweep(tmp_path, "--trials", "4", "--ray", two_nodes.address), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=two_nodes.env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    took = time.monotonic() - started
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    trials = [r for r in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
              if r.data.tags["sweeplab.role"] == "trial"]
    assert {r.data.tags["sweeplab.node"] for r in trials} == two_nodes.node_ids()  # both nodes, nothing but them
    assert not [pid for node in two_nodes.alive() for pid in _family(node.pid) if "sweeplab.sweeps.worker" in _command(pid)]
    served = (tmp_path / "mlruns" / "workers" / "head-mlflow.log").read_text()
    assert served.count("POST /api/2.0/mlflow/runs/create") >= 4 and "PUT /api/2.0/mlflow-artifacts/artifacts/" in served
    assert list(two_nodes.temp.glob("sweeplab-*-node-*/staging"))  # each worker kept a store folder on its node
    assert not [pid for pid in _family(1) if str(tmp_path / "mlruns") in _command(pid)]  # the servers ended with the sweep

    local = subprocess.run(_sweep(tmp_path, "--trials", "4", "--workers", "2", store="local"), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray, on_this_machine = _records(tmp_path / "mlruns"), _records(tmp_path / "local")
    assert on_ray == on_this_machine, f"--ray sweep took {took:.0f} s; it said: {sweep.stderr[-2000:]}"
    assert on_ray["trials"] == {"COMPLETE"} and on_ray["sweep"]["status"] == on_ray["trial"]["status"] == {"FINISHED"}
    # 4 trials, one run each (5 only if both workers asked for the last trial at once).
    assert len(trials) == len(SweepStorage.of_store(tmp_path / "mlruns").study(STUDY).trials) in (4, 5)
    assert len(SweepStorage.of_store(tmp_path / "local").study(STUDY).trials) in (4, 5)


def test_a_killed_node_s_trial_is_resumed_on_the_other_node(two_nodes: Cluster, tmp_path: Path) -> None:
    """SIGKILL the second node (its raylet, its Ray workers and the sweep's worker there) while it
    runs a trial that has saved its resume state: the sweep completes, the lost trial's retry runs
    on the head node and goes on from where it was (``sweeplab.resumed_from``), the main process
    says that it lost a worker (and starts a replacement when the study still needs trials by
    the time Ray reports the loss), and nothing is left running."""
    (tmp_path / "slow").touch()
    store = tmp_path / "mlruns"
    storage = SweepStorage.of_store(store)
    second = two_nodes.nodes[-1]
    sweep = subprocess.Popen(_sweep(tmp_path, "--trials", "4", "--checkpoint-minutes", "0.001", "--ray", two_nodes.address),
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=two_nodes.env)
    try:
        def on_the_second_node_with_a_resume_state() -> object:
            for trial in running_trials(storage, STUDY):
                saved = store.glob(f"artifacts/*/*/artifacts/resume/trial-{trial.number}/state-*.pt")  # through the head
                if worker_pid(trial) in _family(second.pid) and list(saved):
                    return trial
            return None

        victim = wait_for("a trial on the second node that saved its resume state",
                          on_the_second_node_with_a_resume_state, seconds=180, alive=sweep)
        two_nodes.kill(second)
        (tmp_path / "slow").unlink()
        out, err = sweep.communicate(timeout=240)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    said = " ".join(out.split())
    assert "note: worker 1 was lost with its Ray actor" in said or "note: worker 0 was lost with its Ray actor" in said, said

    study = storage.study(STUDY)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == "killed: its process ended"
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) in (4, 5)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    lost, again = client.get_run(killed.user_attrs["mlflow_run_id"]), client.get_run(retry.user_attrs["mlflow_run_id"])
    assert lost.info.status == "KILLED" and again.data.tags["sweeplab.retry_of"] == lost.info.run_id
    assert float(again.data.tags["sweeplab.resumed_from"]) >= 1  # it went on from the saved state, not from the start
    assert again.data.tags["sweeplab.node"] != lost.data.tags["sweeplab.node"]
    assert not client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "attributes.status = 'RUNNING'")


def test_what_a_cluster_cannot_do_is_one_line_before_any_work(cluster: Cluster, tmp_path: Path) -> None:
    """No cluster at the address, a GPU share on a cluster without GPUs, a misspelt resource:
    each one line and exit 2, with no store made."""
    refused = {
        ("--ray", f"127.0.0.1:{free_port()}"): "no Ray cluster answers at 127.0.0.1:",
        ("--ray", cluster.address, "--trial-resources", "gpu=0.5"): "--trial-resources gpu=0.5: the Ray cluster has no GPU",
        ("--ray", cluster.address, "--trial-resources", "cpus=1"):
            "offers no resource cpus (expected cpu, gpu); did you mean cpu?",
    }
    runs = {flags: subprocess.Popen(_sweep(tmp_path, "--trials", "2", *flags, store=f"store-{i}"), cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)
            for i, flags in enumerate(refused)}
    for i, (flags, process) in enumerate(runs.items()):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, (flags, err[-2000:])
        assert len(err.strip().splitlines()) == 1 and refused[flags] in err, (flags, err)
        assert not (tmp_path / f"store-{i}").exists()


@pytest.mark.parametrize(("flags", "said"), [
    (["--trial-resources", "cpu=2"], "--trial-resources cpu=2: only with --ray"),
    (["--ray", "local", "--gpus", "0"], "--gpus 0 with --ray: Ray gives each trial its cards"),
    (["--ray", "local", "--trial-resources", "gpu=1.5"], "gpu=1.5: expected a share of one card"),
    (["--ray", "local", "--trial-resources", "cpu"], "expected NAME=AMOUNT pairs"),
    (["--ray", "nowhere"], "--ray nowhere: expected a Ray cluster's HOST:PORT"),
])
def test_flags_that_make_no_sense_with_or_without_ray_are_refused_before_ray_is_asked(
        flags: list[str], said: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "sentiment", "--store-dir", str(tmp_path / "store"), *flags])
    assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    assert not (tmp_path / "store").exists()


def test_the_trials_a_cluster_holds_at_once() -> None:
    nodes = [{"CPU": 8.0, "GPU": 2.0, "memory": 1e10, "node:10.0.0.1": 1.0}, {"CPU": 4.0, "accel": 1.0}]
    assert trials_held({"cpu": 1.0}, None, nodes) == 12
    assert trials_held({"cpu": 1.0, "gpu": 0.5}, "gpu=0.5", nodes) == 4  # two trials a card, on the node with cards
    assert trials_held({"cpu": 3.0, "accel": 1.0}, "cpu=3,accel=1", nodes) == 1
    with pytest.raises(UsageError, match=r"offers no resource acel \(expected cpu, gpu, accel\); did you mean accel\?"):
        trials_held({"cpu": 1.0, "acel": 1.0}, "acel=1", nodes)
    with pytest.raises(UsageError, match="offers no resource memory"):
        trials_held({"cpu": 1.0, "memory": 1.0}, "memory=1", nodes)
    with pytest.raises(UsageError, match=r"no node of the Ray cluster can hold one trial \(none has cpu=5,accel=1 at once\)"):
        trials_held({"cpu": 5.0, "accel": 1.0}, "cpu=5,accel=1", nodes)
    with pytest.raises(UsageError, match=r"cpu=16, and a node has at most 8"):
        trials_held({"cpu": 16.0}, "cpu=16", nodes)


def test_ray_options_reach_a_worker_as_json_and_sweeplab_imports_no_ray() -> None:
    options = SweepOptions.of("sentiment", ray="local", workers=0, trial_resources="cpu=2,gpu=0.5")
    assert SweepOptions.from_json(options.as_json()) == options
    assert options.runtime.resources == {"cpu": 2.0, "gpu": 0.5}
    code = "import sys, sweeplab.cli, sweeplab.sweeps.driver; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"  # the single-machine default never loads Ray


def test_rays_lookup_of_auto_is_where_ray_cluster_reads_it() -> None:
    """``--ray auto`` reads Ray's private ``get_ray_address_from_environment``
    (:mod:`sweeplab.sweeps.ray_cluster`): this fails when Ray moves or renames it."""
    from ray._private.services import get_ray_address_from_environment

    assert list(inspect.signature(get_ray_address_from_environment).parameters)[:2] == ["addr", "temp_dir"]


def test_a_worker_on_a_share_of_a_card_knows_who_shares_it_as_on_one_machine() -> None:
    """With ``gpu=0.5`` Ray puts two workers on a card; each is told so as ``--gpus 0,0`` tells it
    on one machine, so that a trial out of GPU memory there runs once more alone on the card."""
    from sweeplab.sweeps.ray_workers import card_environment
    from sweeplab.sweeps.sharing import CARD_ENV, CARD_WORKERS_ENV

    assert card_environment([3], 0.5) == {CARD_ENV: "3", CARD_WORKERS_ENV: "2"}
    assert card_environment(["1"], 0.3)[CARD_WORKERS_ENV] == "3" and card_environment([0], 0.25)[CARD_WORKERS_ENV] == "4"
    assert card_environment([0], 1.0) == card_environment([0, 1], 2.0) == card_environment([], 0.5) == {}


def test_a_nodes_store_folder_is_its_users_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resume states are unpickled from it and its data cache is read: a folder there that others
    may write to is refused in one line, not used."""
    from sweeplab.sweeps.ray_workers import node_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = node_folder("abc")
    assert isinstance(made, Path) and made.parent == tmp_path and oct(made.stat().st_mode & 0o777) == "0o700"
    assert node_folder("abc") == made  # the node's later workers share it
    made.chmod(0o777)
    refused = node_folder("abc")
    assert isinstance(refused, str) and "not a folder of this user's alone (mode 777" in refused
