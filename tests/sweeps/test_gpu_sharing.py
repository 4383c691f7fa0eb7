"""Several trials per GPU (``--workers K --gpus 0``): workers round robin on the cards named, the
device each trial ran on, and the one retry, alone on the card, of a trial that ran out of GPU
memory beside others. On the CPU: the card is a name and a lock, the out-of-memory error a fake."""

from __future__ import annotations

import collections
import fcntl
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeplab.core import FitResult, Loaded, Reporter, TrialEnv
from sweeplab.errors import SweepFailed
from sweeplab.sweeps.options import Runtime
from sweeplab.sweeps.sharing import CARD_ENV, CARD_WORKERS_ENV, Card, worker_environment
from sweeplab.trainers.device import device_label
from sweeplab.trainers.loop import fit
from tests.fake_tasks import Replay, make_task, sweep_task
from tests.storages import SweepStorage


def test_workers_go_round_robin_on_the_cards_named_and_know_who_shares_theirs() -> None:
    cards = [worker_environment(("0", "0", "1", "1"), 4, i) for i in range(4)]
    assert [(c["CUDA_VISIBLE_DEVICES"], c[CARD_ENV], c[CARD_WORKERS_ENV]) for c in cards] == [("0", "0", "2")] * 2 + [("1", "1", "2")] * 2
    assert {worker_environment(("0",), 3, i)[CARD_WORKERS_ENV] for i in range(3)} == {"3"}
    assert worker_environment(("0", "1"), 3, 2)[CARD_WORKERS_ENV] == "2"  # workers 0 and 2 on card 0, worker 1 alone on 1
    assert worker_environment((), 2, 1) == {}


def test_gpus_per_trial_gives_each_worker_its_cards_together() -> None:
    runtime = Runtime(gpus=tuple("01234567"), gpus_per_trial=2, workers=4)
    assert runtime.cards == ("0,1", "2,3", "4,5", "6,7")
    assert [worker_environment(runtime.cards, 4, i)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    assert Runtime(gpus=("0", "1")).cards == ("0", "1")


def test_the_device_tag_names_the_card_as_the_machine_numbers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert device_label(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_label(torch.device("cuda:1")) == "cuda:5"  # the process's cuda:1 is the machine's card 5
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_label(torch.device("cuda:1")) == "cuda:1"


def _try_lock(path: Path, mode: int) -> bool:
    """Whether ``path`` can be locked in ``mode`` now, without waiting."""
    with path.open("ab") as handle:
        try:
            fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_a_retry_runs_alone_on_the_card_and_no_trial_starts_beside_it(tmp_path: Path) -> None:
    card = Card("0", 2, tmp_path / "locks")
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{socket.gethostname()}-0")  # this machine's card 0
    lock, gate = tmp_path / "locks" / f"card-{name}.lock", tmp_path / "locks" / f"card-{name}.gate"
    with card.beside_others():  # a trial running: a retry cannot have the card, a second trial can
        assert not _try_lock(lock, fcntl.LOCK_EX) and _try_lock(lock, fcntl.LOCK_SH)
        assert _try_lock(gate, fcntl.LOCK_SH)  # the gate is held only while passing through
    with card.alone():  # a retry running: no trial passes the gate, none holds the card
        assert not _try_lock(gate, fcntl.LOCK_SH) and not _try_lock(lock, fcntl.LOCK_SH)
    assert _try_lock(gate, fcntl.LOCK_EX) and _try_lock(lock, fcntl.LOCK_EX)  # all given back
    assert not Card("0", 1, tmp_path / "locks").shared and not Card(None, 4, tmp_path / "locks").shared


_ATTEMPTS: collections.Counter = collections.Counter()


def _out_of_memory(times: int) -> Any:
    """A fit that raises CUDA's out-of-memory error in the first ``times`` attempts of each trial."""

    def fit_fn(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        key = (env.trial_seed, times)
        _ATTEMPTS[key] += 1
        if _ATTEMPTS[key] <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (a fake)")
        return fit(Replay(2), 2, reporter, "val_accuracy")

    return fit_fn


def _runs(store: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]


def _on_a_shared_card(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CARD_ENV, "0")
    monkeypatch.setenv(CARD_WORKERS_ENV, "2")


def test_a_trial_out_of_gpu_memory_on_a_shared_card_runs_once_more_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _on_a_shared_card(monkeypatch)
    outcome = sweep_task(make_task("oom-once", _out_of_memory(1)), tmp_path, 1, sampler="random", device="cpu")
    assert outcome.counts["complete"] == 1 and outcome.counts["failed"] == 0
    first, retry = _runs(tmp_path / "store", "oom-once")
    assert first.info.status == "KILLED" and first.data.tags["sweeplab.state"] == "killed"
    assert "out of memory: OutOfMemoryError: CUDA out of memory" in first.data.tags["sweeplab.fail_reason"]
    assert "beside 1 other worker; run again alone" in first.data.tags["sweeplab.fail_reason"]
    assert retry.data.tags["sweeplab.state"] == "complete" and retry.data.tags["sweeplab.retry_of"] == first.info.run_id
    assert retry.data.tags["sweeplab.trial"] == first.data.tags["sweeplab.trial"] == "0"
    assert retry.data.tags["sweeplab.device"] == "cpu" and retry.data.tags["sweeplab.compile"] == "false"
    assert retry.data.metrics["best_val_accuracy"] == pytest.approx(0.2)


@pytest.mark.parametrize("shared", [True, False])
def test_out_of_gpu_memory_again_fails_the_trial_and_alone_on_the_card_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    if shared:
        _on_a_shared_card(monkeypatch)
    task = make_task(f"oom-always-{shared}", _out_of_memory(1000))
    with pytest.raises(SweepFailed, match="out of memory: OutOfMemoryError"):
        sweep_task(task, tmp_path, 1, sampler="random", device="cpu")
    trials = SweepStorage.of_store(tmp_path / "store").study("space-random").trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_reason"].startswith("out of memory: OutOfMemoryError") for t in trials)
    attempts = [n for (_, times), n in _ATTEMPTS.items() if times == 1000]
    _ATTEMPTS.clear()
    assert attempts and set(attempts) == {2 if shared else 1}  # once more when shared, never twice more
    states = [r.data.tags["sweeplab.state"] for r in _runs(tmp_path / "store", task.name)]
    assert states == (["killed", "failed"] if shared else ["failed"]) * len(trials)


#: A user's trainer whose trials wait for each other (a barrier on files): a sweep finishes only if
#: two trials run at once, one per worker.
BARRIER_TRAINER = '''\
import os, time
from pathlib import Path

def fit(config, report):
    here = Path(config["barrier"])
    card = os.environ.get("SWEEPLAB_CARD"), os.environ.get("CUDA_VISIBLE_DEVICES")
    (here / str(os.getpid())).write_text(",".join(map(str, card)))
    deadline = time.monotonic() + 120
    while len(list(here.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("no other worker ran a trial beside this one")
        time.sleep(0.05)
    for epoch in (1, 2):
        report(epoch, {"val_loss": 1.0 / epoch, "val_accuracy": config["x"] * epoch})
'''


def test_two_workers_given_the_same_device_both_run_trials(tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    (tmp_path / "barrier_trainer.py").write_text(BARRIER_TRAINER, encoding="utf-8")
    (tmp_path / "space.toml").write_text(f'[search.x]\nlow = 0.0\nhigh = 1.0\n\n[fixed]\nbarrier = "{barrier}"\n', encoding="utf-8")
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "sweeplab", "run", f"{tmp_path / 'barrier_trainer.py'}:fit", "--space",
                           str(tmp_path / "space.toml"), "--trials", "2", "--workers", "2", "--gpus", "0", "--device", "cpu",
                           "--sampler", "random", "--metric", "val_accuracy", "--store-dir", str(store), "--no-plots"],
                          capture_output=True, text=True, timeout=300)
    logs = {p.name: p.read_text()[-1500:] for p in (store / "workers").glob("*.log")}
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], logs)
    assert sorted(p.read_text() for p in barrier.iterdir()) == ["0,0", "0,0"]  # two processes, both on card 0
    runs = _runs(store, "sweeplab-barrier_trainer.py:fit")
    assert len(runs) == 2 and {r.data.tags["sweeplab.state"] for r in runs} == {"complete"}
    assert {r.data.tags["sweeplab.device"] for r in runs} == {"cpu"} and {r.data.tags["sweeplab.gpus"] for r in runs} == {"0"}


#: A command whose first attempt dies as PyTorch does when its card is full (the traceback's last
#: line on stderr, exit 1); the second, alone on the card, reports.
OOM_ONCE_PROGRAM = '''\
import sys
from pathlib import Path

marker = Path(sys.argv[1])
if not marker.exists():
    marker.touch()
    print("Traceback (most recent call last):", file=sys.stderr)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
print("epoch=1 val_loss=0.5 val_accuracy=0.25")
'''


def test_a_commands_trial_out_of_gpu_memory_on_a_shared_card_runs_once_more_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's program out of GPU memory is told apart by what it printed, as a function's
    error is by its type: on a shared card its trial is run once more, alone."""
    import sweeplab

    _on_a_shared_card(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "oom_once.py").write_text(OOM_ONCE_PROGRAM, encoding="utf-8")
    (tmp_path / "space.toml").write_text("[search.x]\nlow = 0.0\nhigh = 1.0\n", encoding="utf-8")
    outcome = sweeplab.run([sys.executable, "oom_once.py", str(tmp_path / "marker")], trials=1, space="space.toml",
                           metric="val_accuracy", plots=False, store_dir=tmp_path / "store")
    assert outcome.counts["complete"] == 1 and outcome.counts["failed"] == 0
    first, retry = _runs(tmp_path / "store", outcome.experiment)
    assert first.data.tags["sweeplab.state"] == "killed" and "CUDA out of memory" in first.data.tags["sweeplab.fail_reason"]
    assert "run again alone" in first.data.tags["sweeplab.fail_reason"]
    assert retry.data.tags["sweeplab.state"] == "complete" and retry.data.tags["sweeplab.retry_of"] == first.info.run_id
