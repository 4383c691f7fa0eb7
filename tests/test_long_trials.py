"""Long trials that survive: a trial killed part-way is retried from its saved resume state, and
ends as one never killed; a user's function hands its state over and gets it back; ``--max-retries
0`` leaves a killed trial killed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

import sweeplab
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.driver import run_sweep
from tests.storages import SweepStorage

#: One news TextCNN trial of 3 epochs of 32 steps, evaluated every 4 steps (24 evaluations), with
#: its resume state saved at every evaluation.
NEWS = [sys.executable, "-m", "sweeplab", "run", "news", "--sampler", "grid", "--trials", "1", "--pruner", "none",
        "--no-early-stop", "--no-plots", "--checkpoint-minutes", "0.0001", "--set", "model=textcnn",
        "--set", "embedding_dim=16", "--set", "filters=8", "--set", "kernel_sizes=2,3", "--set", "epochs=3",
        "--set", "batch_size=64", "--set", "eval_every=4", "--set", "dropout=0.3"]


#: The sweep command, killed (SIGKILL, nothing runs after it) as soon as its third resume state is
#: written: at the third evaluation or a later one, however fast the machine trains.
KILLED_AT_THIRD_SAVE = [sys.executable, "-c", """
import os, signal, sys
from sweeplab.trainers.resume_file import ResumeFile
from sweeplab.cli import main
save, saves = ResumeFile.save, []
def save_then_die(self, state):
    save(self, state)
    saves.append(state)
    if len(saves) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
ResumeFile.save = save_then_die
sys.argv[0] = "sweep"
main()
""", *NEWS[3:]]


def _trial_runs(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-news").experiment_id
    return client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'", order_by=["attributes.start_time"])


def test_a_trial_killed_after_its_third_evaluation_resumes_and_ends_as_one_never_killed(tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text("[search.lr]\nchoices = [0.002]\n", encoding="utf-8")
    whole = subprocess.run([*NEWS, "--space", str(space), "--store-dir", str(tmp_path / "whole")],
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    store = tmp_path / "killed"
    command = [*NEWS, "--space", str(space), "--store-dir", str(store)]
    first = subprocess.run([*KILLED_AT_THIRD_SAVE, "--space", str(space), "--store-dir", str(store)],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]

    killed, resumed = _trial_runs(store)
    assert killed.info.status == "KILLED" and killed.data.tags["sweeplab.retried_by"] == resumed.info.run_id
    assert resumed.data.tags["sweeplab.retry_of"] == killed.info.run_id
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    saved_step = float(resumed.data.tags["sweeplab.resumed_from"])
    assert saved_step >= 12  # the state of the third evaluation (step 12) or a later one
    curve = client.get_metric_history(resumed.info.run_id, "val_accuracy")
    (reference,) = _trial_runs(tmp_path / "whole")
    want = MlflowClient(f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}").get_metric_history(reference.info.run_id,
                                                                                          "val_accuracy")
    assert [m.step for m in curve] == [m.step for m in want] == list(range(4, 97, 4))  # each step once
    assert [m.value for m in curve] == pytest.approx([m.value for m in want], abs=1e-6)
    assert resumed.data.metrics["best_val_accuracy"] == pytest.approx(reference.data.metrics["best_val_accuracy"], abs=1e-6)

    study = SweepStorage.of_store(store).study("space-grid")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].value == pytest.approx(reference.data.metrics["best_val_accuracy"], abs=1e-6)
    assert not list((store / "resume").rglob("*.pt"))  # deleted once the trial ended


#: What each call of :func:`_fit` was handed to resume from.
CALLS: list[float | None] = []


def _fit(config: Mapping[str, Any], report: Any) -> None:
    """A training function of 6 epochs, interrupted (as Ctrl-C) in its 4th on its first call; it
    hands over its resume state when ``config["hand_over"]``."""
    calls = CALLS
    calls.append(None if report.resumed is None else report.resumed.step)
    start, weight = 1, 0.0
    if report.resumed is not None and config["hand_over"] != "ignores":
        if config["hand_over"] == "stale":  # the model was edited since the save
            raise sweeplab.StaleResumeState("the saved weight has another shape")
        start, weight = int(report.resumed.step) + 1, report.resumed.state["weight"]
    for epoch in range(start, 7):
        if epoch == 4 and len(calls) == 1:
            raise KeyboardInterrupt
        weight += 0.1
        resume = {"weight": weight} if config["hand_over"] != "no" else None
        report(epoch, {"val_loss": 1 - weight, "val_accuracy": weight}, resume=resume)


@pytest.mark.parametrize(("hand_over", "calls"),
                         [("yes", [None, 3]), ("no", [None, None]), ("stale", [None, 3, None]), ("ignores", [None, 3])],
                         ids=["hands-over-state", "hands-over-nothing", "finds-its-state-stale", "ignores-its-state"])
def test_a_function_that_hands_over_its_state_resumes_and_one_that_does_not_reruns(
        tmp_path: Path, hand_over: str, calls: list) -> None:
    CALLS.clear()
    space = tmp_path / "space.toml"
    space.write_text(f'[fixed]\nhand_over = "{hand_over}"\n[search.lr]\nchoices = [0.1]\n', encoding="utf-8")
    options = SweepOptions.of("tests.test_long_trials:_fit", trials=1, space=str(space), store_dir=tmp_path / "store",
                              sampler="grid", plots=False, pruner="none", early_stop=False, checkpoint_minutes=1e-12)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(options)
    outcome = run_sweep(options)
    assert outcome.counts["complete"] == 1
    assert CALLS == calls
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeplab-tests.test_long_trials:_fit").experiment_id],
                              "tags.`sweeplab.role` = 'trial'", order_by=["attributes.start_time"])
    interrupted, *_, retry = runs
    assert interrupted.data.tags["sweeplab.fail_reason"] == "interrupted"
    assert ("sweeplab.resumed_from" in retry.data.tags) == (hand_over in ("yes", "ignores"))
    assert len(runs) == (3 if hand_over == "stale" else 2)  # a stale state: a run that stopped there, and one from the start
    assert [m.step for m in client.get_metric_history(retry.info.run_id, "val_accuracy")] == [1, 2, 3, 4, 5, 6]
    assert retry.data.metrics["best_val_accuracy"] == pytest.approx(0.6)
