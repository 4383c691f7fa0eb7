"""The run loop on its own, with scripted trials: what Optuna is told for each way a trial ends,
what stops the search, and how many trials it runs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweeplab.core import stopping
from sweeplab.errors import InternalError, UsageError
from sweeplab.sweeps.loops import search
from sweeplab.sweeps.observer import Silent
from sweeplab.sweeps.recovery import KilledTrials
from sweeplab.sweeps.trial import Abandoned, Failed, Finished


class _Run:
    """A trial's run as the loop sees it: closed once, with a state."""

    def __init__(self) -> None:
        self.closed: str | None = None

    def is_running(self) -> bool:
        return self.closed is None

    def close(self, state: str, reason: str | None = None) -> None:
        self.closed = state

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class _Scripted:
    """An objective whose n-th call does ``script(n, trial)``."""

    def __init__(self, script: Callable[[int, optuna.Trial], Any], errors_log: Path) -> None:
        self.script, self.errors_log = script, errors_log
        self.best: float | None = None
        self.calls = 0
        self.runs: list[_Run] = []

    def __call__(self, trial: optuna.Trial) -> Finished | Failed:
        self.calls += 1
        ended = self.script(self.calls, trial)
        if isinstance(ended, Finished):
            self.runs.append(ended.run)
        return ended


def _search(script: Callable[[int, optuna.Trial], Any], tmp_path: Path, target: int = 3,
            study: optuna.Study | None = None) -> tuple[optuna.Study, _Scripted]:
    study = study or optuna.create_study(direction="maximize")
    objective = _Scripted(script, tmp_path / "logs" / "errors.log")
    search(study, objective, Silent(), target, KilledTrials(60), heartbeat=60)
    return study, objective


def test_finished_trials_are_told_and_their_runs_closed_after_until_the_target(tmp_path: Path) -> None:
    study, objective = _search(lambda n, trial: Finished(n / 10, pruned=n == 2, run=_Run()), tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert [r.closed for r in objective.runs] == ["complete", "pruned", "complete"]
    assert study.best_value == pytest.approx(0.3)


def test_a_trial_its_trainer_failed_is_told_fail_and_replaced(tmp_path: Path) -> None:
    study, objective = _search(lambda n, trial: Failed("ValueError: x") if n == 1 else Finished(0.5, False, _Run()), tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 3]
    assert not (tmp_path / "logs" / "errors.log").exists()


def test_failed_trials_are_replaced_up_to_max_3_or_the_target_extra_attempts(tmp_path: Path) -> None:
    study, objective = _search(lambda n, trial: Failed("ValueError: x"), tmp_path, target=2)
    assert objective.calls == 2 + 3 and all(t.state == TrialState.FAIL for t in study.trials)


def test_the_users_bad_input_is_told_then_stops_the_search(tmp_path: Path) -> None:
    bad = UsageError("reported metric 'a b': expected letters")
    study = optuna.create_study()
    with pytest.raises(UsageError) as caught:
        _search(lambda n, trial: Failed("UsageError: reported metric", stop=bad), tmp_path, study=study)
    assert caught.value is bad
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL


@pytest.mark.parametrize("where", ["before the trial's run", "telling Optuna an invalid value"])
def test_sweeplabs_own_error_fails_the_trial_logs_it_and_stops_the_search(tmp_path: Path, where: str) -> None:
    def script(n: int, trial: optuna.Trial) -> Finished:
        if where == "before the trial's run":
            raise KeyError("a bug of sweeplab's")
        return Finished(float("nan"), False, run)  # Optuna fails a trial told NaN, with a warning only

    run = _Run()
    study = optuna.create_study(direction="maximize")
    objective = _Scripted(script, tmp_path / "logs" / "errors.log")
    with pytest.raises(InternalError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        search(study, objective, Silent(), 3, KilledTrials(60), heartbeat=60)
    assert caught.value.exit_code == 70 and caught.value.trial == 0
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].startswith("internal error: ")
    assert "Traceback" in objective.errors_log.read_text(encoding="utf-8")
    assert run.closed == ("failed" if where == "telling Optuna an invalid value" else None)


def test_an_interruption_fails_the_trial_as_interrupted_queues_it_again_and_stops_the_search(tmp_path: Path) -> None:
    def script(n: int, trial: optuna.Trial) -> Finished:
        raise KeyboardInterrupt

    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        search(study, _Scripted(script, tmp_path / "errors.log"), Silent(), 3, KilledTrials(60), heartbeat=60)
    trial, retry = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == trial.number  # the rerun goes on with it


@pytest.mark.parametrize("ending", ["finished", "dropped"], ids=["trial-finished", "trial-dropped-as-another-failed-it"])
def test_a_stop_signal_answered_as_a_trial_ended_starts_no_other(tmp_path: Path, ending: str) -> None:
    """A stop asked for while a trial trains, which the trial did not raise (it finished, or was
    let go because another process failed it), stops the search before the next trial."""
    def script(n: int, trial: optuna.Trial) -> Finished:
        stopping.request_stop(15)  # a SIGTERM during the trial, not answered by it
        if ending == "dropped":
            raise Abandoned()
        return Finished(0.5, pruned=False, run=_Run())

    try:
        with pytest.raises(stopping.Stopped) as caught:
            _search(script, tmp_path)
    finally:
        stopping.clear()
    assert caught.value.exit_code == 143
