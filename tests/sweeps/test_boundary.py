"""The one boundary: a fault of sweeplab's own at any point of a trial stops the sweep (exit 70,
the traceback in STORE/logs/errors.log, the trial failed in Optuna and MLflow); what the
trainer's or the task's code raises fails that trial only, and the sweep goes on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
import contextlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from mlflow import MlflowClient

from sweeplab.boundary import Boundary, engine_code, refuse, task_code
from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.errors import InternalError, TrainerError, Unreachable, UsageError
from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.sharing import Card
from sweeplab.sweeps.space import Space
from sweeplab.sweeps.storage import open_optuna_storage
from sweeplab.tasks import register, task_names
from sweeplab.tracker.runs import SweepRecorder, TrialRecorder
from sweeplab.trainers import loop
from tests.fake_tasks import make_task

INJECTED = "injected fault"


def _fitting(state: Callable[[], Any]) -> Callable[..., FitResult]:
    """A trainer of two evaluations, each through the data cache, keeping ``state`` and test
    predictions; one that swallows every error of its epochs when ``config["swallow"]``."""

    def fit(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        progress = loop.Progress(reporter, env.metric, env.direction, env.early_stop, env.keep_state)
        reporter.on_start(2)
        for epoch in (1, 2):
            try:
                env.cache.get("features", {"epoch": epoch}, lambda: [float(epoch)])
                progress.report(epoch, {"val_loss": 1.0 / epoch, "val_accuracy": config["x"] * epoch / 2},
                                state=state, predictions=[epoch])
            except Exception:
                if not config.get("swallow"):
                    raise
        return progress.result

    return fit


_fit = _fitting(lambda: {"w": 1.0})


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise ZeroDivisionError(INJECTED)


class _FailingConsole:
    """An observer whose every call is fine but the start of a trial's training."""

    def sweep_started(self, study: str, total: int, done: int) -> None:
        pass

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        _boom()

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        pass


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for this module's sweeps (each its own study and experiment): making a store
    costs more than a sweep of these trainers."""
    return tmp_path_factory.mktemp("boundary") / "store"


def _sweep(task: Task, store: Path, tmp_path: Path, trials: int, observer: Any = None, **options: Any) -> Any:
    """Sweep ``task`` as its own study in ``store``, with a data cache of its own (``tmp_path``)."""
    if task.name not in task_names():
        register(task)
    space = tmp_path / "space.toml"
    space.write_text("[search.x]\nlow = 0.1\nhigh = 1.0\n", encoding="utf-8")
    return run_sweep(SweepOptions.of(task.name, trials=trials, space=str(space), store_dir=store, plots=False, study=task.name,
                                      experiment=task.name, cache_dir=tmp_path / "cache", pruner="none", **options), observer)


def _trial_runs(store: Path, experiment: str) -> list[Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], "tags.`sweeplab.role` = 'trial'")


#: Where sweeplab's own code can fail in a trial, and how the fault is put there.
ENGINE_POINTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "suggesting the config": lambda mp: mp.setattr(Space, "suggest", _boom),
    "starting the run": lambda mp: mp.setattr(SweepRecorder, "start_trial", _boom),
    "logging a curve point": lambda mp: mp.setattr(TrialRecorder, "log_point", _boom),
    "taking the card": lambda mp: mp.setattr(Card, "beside_others", _boom),
    "tracking the best": lambda mp: mp.setattr(loop, "best_index", _boom),
    "writing the data cache": lambda mp: mp.setattr(torch, "save", _boom),
    "the console": lambda mp: None,  # the observer below
}


#: Each point, and those met inside the trainer's call once more with a trainer that swallows the error.
FAULTS = [pytest.param(point, False, id=point) for point in ENGINE_POINTS] + [
    pytest.param(point, True, id=f"{point}, swallowed by the trainer")
    for point in ("tracking the best", "writing the data cache", "logging a curve point")]


@pytest.mark.parametrize(("point", "swallow"), FAULTS)
def test_a_fault_of_sweeplabs_own_stops_the_sweep_with_its_traceback_logged(store: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            point: str, swallow: bool) -> None:
    name = f"engine-{point.replace(' ', '-')}-{swallow}"
    task = make_task(name, _fit)
    task = replace(task, defaults={**task.defaults, "swallow": swallow})
    ENGINE_POINTS[point](monkeypatch)
    with pytest.raises(InternalError) as caught:
        _sweep(task, store, tmp_path, 3, _FailingConsole() if point == "the console" else None)
    monkeypatch.undo()

    error = caught.value
    assert error.exit_code == 70 and error.trial == 0 and INJECTED in str(error.error)
    assert error.log == store / "logs" / "errors.log" and str(error.log) in str(error)
    logged = error.log.read_text(encoding="utf-8").split(f" study {name} trial 0\n")[1].split("\n--- ")[0]
    assert logged.startswith("Traceback") and f"ZeroDivisionError: {INJECTED}" in logged
    storage = open_optuna_storage(str(store / "optuna.journal"))
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials  # the sweep stopped at its first trial
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == f"internal error: ZeroDivisionError: {INJECTED}"
    runs = _trial_runs(store, name)
    assert len(runs) == (0 if point in ("suggesting the config", "starting the run", "taking the card") else 1)
    for run in runs:
        assert run.info.status == "FAILED" and run.data.tags["sweeplab.fail_reason"] == trial.user_attrs["fail_reason"]


def _first_call_fails(fn: Callable[..., Any]) -> Callable[..., Any]:
    calls = []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError(INJECTED)
        return fn(*args, **kwargs)

    return once


def _save(loaded: Loaded, config: Mapping[str, Any], state: Mapping[str, Any], folder: Path) -> None:
    (folder / "state.txt").write_text(repr(dict(state)), encoding="utf-8")


def _score(loaded: Loaded, config: Mapping[str, Any], folder: Path, env: TrialEnv) -> Evaluation:
    return Evaluation({"test_accuracy": 0.5})


def _uncopyable_once() -> Callable[[], Any]:
    """A state that cannot be copied (it holds a generator) the first time, a plain one after."""
    calls = []

    def state() -> Any:
        calls.append(1)
        return {"batches": (i for i in range(3))} if len(calls) == 1 else {"w": 1.0}

    return state


#: The task's own code, each given a first call that fails, and the reason its trial fails with.
TASK_CALLS: dict[str, tuple[Callable[[Task], Task], str]] = {
    "fit": (lambda task: replace(task, fit=_first_call_fails(_fit)), f"ValueError: {INJECTED}"),
    "save_checkpoint": (lambda task: replace(task, save_checkpoint=_first_call_fails(_save)), f"ValueError: {INJECTED}"),
    "format_predictions": (lambda task: replace(task, format_predictions=_first_call_fails(repr)), f"ValueError: {INJECTED}"),
    "the state kept at a new best": (lambda task: replace(task, fit=_fitting(_first_call_fails(lambda: {"w": 1.0}))),
                                     f"ValueError: {INJECTED}"),
    "a state that cannot be copied": (lambda task: replace(task, fit=_fitting(_uncopyable_once())),
                                      "TypeError: cannot pickle 'generator' object"),
}


@pytest.mark.parametrize("call", list(TASK_CALLS))
def test_what_the_tasks_own_code_raises_fails_that_trial_and_the_sweep_goes_on(store: Path, tmp_path: Path, call: str) -> None:
    base = replace(make_task(f"task-{call.replace(' ', '-')}", _fit), save_checkpoint=_save, format_predictions=repr,
                   evaluate_test=_score)
    make, reason = TASK_CALLS[call]
    task = make(base)
    outcome = _sweep(task, store, tmp_path, 2, checkpoints="all")
    assert outcome.counts["failed"] == 1 and outcome.counts["complete"] == 2
    failed = [r for r in _trial_runs(store, task.name) if r.data.tags["sweeplab.state"] == "failed"]
    assert [r.data.tags["sweeplab.fail_reason"] for r in failed] == [reason]
    log = store / "logs" / "errors.log"
    assert not log.exists() or f" study {task.name} " not in log.read_text(encoding="utf-8")


def test_a_test_split_the_task_cannot_score_is_a_note_and_the_trials_stay(store: Path, tmp_path: Path) -> None:
    task = replace(make_task("task-evaluate-test", _fit), save_checkpoint=_save, evaluate_test=_boom)
    outcome = _sweep(task, store, tmp_path, 2)
    assert outcome.counts["complete"] == 2 and outcome.test is None
    assert outcome.notes == [f"the test split was not scored: ZeroDivisionError: {INJECTED}"]


def test_the_boundary_reads_who_failed_rather_than_the_exception_type() -> None:
    boundary = Boundary()

    def trainer_that_hides_engine_errors() -> str:
        try:
            with engine_code():
                raise KeyError("sweeplab's own")
        except BaseException:  # a trainer that catches everything, even the fault's own type
            raise RuntimeError("the trainer's wrapping") from None

    with pytest.raises(KeyError, match="sweeplab's own"):
        boundary.call("fit", trainer_that_hides_engine_errors)

    def trainer_whose_callback_fails() -> None:
        with engine_code():
            task_code(_boom)  # the trainer's code called back from sweeplab's

    with pytest.raises(TrainerError) as caught:
        Boundary().call("fit", trainer_whose_callback_fails)
    assert isinstance(caught.value.error, ZeroDivisionError) and caught.value.where == "_boom"
    with pytest.raises(TrainerError, match="SystemExit: 3"):  # sys.exit() in a trainer ends its trial, not the sweep
        Boundary().call("fit", sys.exit, 3)
    with engine_code():  # outside a trial it changes nothing
        assert task_code(lambda: 7) == 7


def test_after_a_swallowed_fault_sweeplabs_code_stops_the_trainer_at_its_next_call() -> None:
    ran = []

    def trainer_that_goes_on() -> None:
        for _ in range(3):
            try:
                with engine_code():
                    ran.append(1)
                    raise KeyError("sweeplab's own")
            except Exception:
                continue

    with pytest.raises(KeyError):
        Boundary().call("fit", trainer_that_goes_on)
    assert ran == [1]  # the second and third sections never ran


def test_a_fault_in_a_thread_the_trainer_started_is_still_sweeplabs() -> None:
    def trainer_with_a_thread() -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(_engine_boom).result()

    with pytest.raises(ZeroDivisionError, match=INJECTED):
        Boundary().call("fit", trainer_with_a_thread)


def _engine_boom() -> None:
    with engine_code():
        _boom()


def test_refused_input_fails_the_trial_even_when_the_trainer_swallows_it() -> None:
    def trainer_that_swallows() -> None:
        with contextlib.suppress(UsageError):
            refuse(UsageError("reported metric 'a b': expected letters"))

    with pytest.raises(TrainerError) as caught:
        Boundary().call("fit", trainer_that_swallows)
    assert isinstance(caught.value.error, UsageError)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), Unreachable("the store stayed unreachable")],
                         ids=["an interruption", "an outage"])
def test_an_interruption_or_an_outage_passes_through_as_itself(error: BaseException) -> None:
    def trainer() -> None:
        with engine_code():
            raise error

    with pytest.raises(type(error)):
        Boundary().call("fit", trainer)

    def swallowing() -> None:
        with contextlib.suppress(Exception):
            trainer()

    if isinstance(error, Unreachable):  # recorded: the trial's store is away, whatever the trainer did
        with pytest.raises(Unreachable):
            Boundary().call("fit", swallowing)
