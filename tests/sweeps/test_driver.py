"""The driver's study opening (one process creates a study, and only it makes the parent run), its
samplers' seeds, and how it reports a sweep whose every trial failed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

from sweeplab.core import FitResult, Loaded, Reporter, TrialEnv
from sweeplab.errors import SweepFailed, UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.study import CREATOR, PARENT_RUN, open_study, recorded_parent
from sweeplab.trainers.loop import fit
from tests.conftest import TINY
from tests.fake_tasks import Replay, make_task, sweep_task
from tests.storages import SweepStorage


def test_of_two_processes_opening_one_study_exactly_one_is_its_creator() -> None:
    storage = optuna.storages.InMemoryStorage()
    args = (optuna.pruners.NopPruner(), "maximize")
    first, created_first = open_study(storage, "s", *args)
    second, created_second = open_study(storage, "s", *args)
    assert (created_first, created_second) == (True, False)
    assert optuna_private.study_id(first) == optuna_private.study_id(second) and second.direction == optuna.study.StudyDirection.MAXIMIZE


def test_a_joining_process_waits_for_the_creator_to_record_the_parent_run() -> None:
    storage = optuna.storages.InMemoryStorage()
    study, _ = open_study(storage, "s", optuna.pruners.NopPruner(), "minimize")
    assert recorded_parent(study, 0.2) is None  # never recorded: the caller finds or makes the run itself
    threading.Timer(0.5, lambda: study.set_user_attr(PARENT_RUN, "run-of-the-creator")).start()
    start = time.monotonic()
    assert recorded_parent(study, 30) == "run-of-the-creator"
    assert time.monotonic() - start < 10


def _replay(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    return fit(Replay(2), 2, reporter, "val_accuracy")


def test_one_process_from_scratch_proposes_the_same_configurations_for_the_same_seed(tmp_path: Path) -> None:
    task = make_task("seeded", _replay)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = sweep_task(task, tmp_path / "a", 3, sampler="random", seed=7)
    second = sweep_task(task, tmp_path / "b", 3, sampler="random", seed=7)
    params = [[t.params for t in SweepStorage.of_store(tmp_path / d / "store").study(o.study).trials]
              for o, d in ((first, "a"), (second, "b"))]
    assert params[0] == params[1]


def test_a_rerun_does_not_propose_the_first_runs_configurations_again(tmp_path: Path) -> None:
    task = make_task("reseeded", _replay)
    sweep_task(task, tmp_path, 2, sampler="random")
    outcome = sweep_task(task, tmp_path, 4, sampler="random")
    trials = SweepStorage.of_store(tmp_path / "store").study(outcome.study).trials
    assert trials[2].params != trials[0].params and trials[3].params != trials[1].params


def test_two_identical_commands_started_together_do_not_start_with_the_same_configuration(
        tmp_path: Path, sentiment_dir: Path) -> None:
    """The README's many-machine recipe: the same command on every machine. Here two on one store,
    same seed, same moment: each process's first trial has parameters of its own."""
    command = [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", "4", "--sampler", "random",
               "--data-dir", str(sentiment_dir), "--store-dir", str(tmp_path / "store"), "--no-plots",
               "--set", "epochs=2", *TINY]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    trials = SweepStorage.of_store(tmp_path / "store").study("sentiment-random").trials
    first_of = {}
    for trial in sorted(trials, key=lambda t: t.number):
        first_of.setdefault(trial.user_attrs["worker"], trial.params)
    assert len(first_of) == 2, "both processes ran a trial"
    assert list(first_of.values())[0] != list(first_of.values())[1]


def test_a_sweep_whose_every_trial_failed_is_a_failed_sweep(tmp_path: Path) -> None:
    def broken(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        raise ValueError("shapes do not match")

    with pytest.raises(SweepFailed, match="every trial failed; last reason: ValueError: shapes do not match"):
        sweep_task(make_task("all-failed", broken), tmp_path, 2)
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all-failed").experiment_id
    parent = client.search_runs([experiment], "tags.`sweeplab.role` = 'sweep'")[0]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["trials_failed"] == 5 and parent.data.metrics["trials_complete"] == 0


def test_a_creator_that_died_on_this_machine_is_not_waited_for() -> None:
    """A first start killed before it recorded the parent run: the next start goes on at once."""
    storage = optuna.storages.InMemoryStorage()
    study, _ = open_study(storage, "s", optuna.pruners.NopPruner(), "minimize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    attrs = {"worker": f"{socket.gethostname()}:{dead.pid}",
             "worker_process": study.user_attrs[CREATOR]["worker_process"].rsplit(" ", 1)[0] + " 1"}
    study.set_user_attr(CREATOR, attrs)
    start = time.monotonic()
    assert recorded_parent(study, 60) is None
    assert time.monotonic() - start < 30  # not the whole wait


def test_a_learning_rate_is_logged_beside_its_log10_for_a_readable_chart() -> None:
    import math

    from sweeplab.sweeps.reporter import with_log_lr

    assert with_log_lr({"lr": 5e-5, "val_loss": 1.0}) == {"lr": 5e-5, "val_loss": 1.0, "lr_log10": math.log10(5e-5)}
    assert with_log_lr({"val_loss": 1.0}) == {"val_loss": 1.0}
    assert with_log_lr({"lr": 0.0}) == {"lr": 0.0}  # no log of zero


def test_optuna_sampler_and_pruner_objects_from_python_run_the_sweep_and_are_asked_for_again(tmp_path: Path) -> None:
    task = make_task("objects", _replay)
    outcome = sweep_task(task, tmp_path, 2, sampler=optuna.samplers.RandomSampler(seed=3), pruner=optuna.pruners.NopPruner())
    assert outcome.study == "space-RandomSampler" and outcome.counts["complete"] == 2
    parent = MlflowClient(tracking_uri=outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert (parent.data.params["sampler"], parent.data.params["pruner"]) == ("RandomSampler", "NopPruner")
    with pytest.raises(UsageError, match="ran with the pruner NopPruner, given from Python: pass it again"):
        sweep_task(task, tmp_path, 3, sampler=optuna.samplers.RandomSampler(seed=3))
    with pytest.raises(UsageError, match="cannot be handed to worker processes"):
        SweepOptions.of("objects", sampler=optuna.samplers.RandomSampler(), workers=2)
