"""A trial whose process died and that was retried is one trial, not two: Optuna keeps the killed
attempt (FAIL) beside its retry (``system_attrs["retry_history"]``), and MLflow a run for each
(the earlier tagged ``sweeplab.retried_by``). The counts, the pruners and the read commands see
the trial once."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from sweeplab.sweeps.outcomes import count_outcomes, retried_numbers
from sweeplab.sweeps.pruners import RetryAwarePruner
from sweeplab.tracker import query
from sweeplab.tracker.client_reader import ClientReader
from sweeplab.tracker.sql_reader import SqlReader
from sweeplab.tracker.tags import PARENT, RETRIED_BY, ROLE, STATE, TASK, TRIAL
from tests.tracker import test_readers

store_uri = test_readers.store_uri  # the fixture: a fresh MLflow store on SQLite, and on PostgreSQL when there is a server

KILLED = "killed: no heartbeat from its worker for 10 s"


def _killed_and_retried(study: optuna.Study, value: float) -> None:
    """Add a killed attempt that reached the first rung with ``value``, and its queued retry, which
    inherits its intermediate values and rung (as :class:`sweeplab.sweeps.recovery.KilledTrials` makes it)."""
    attempt = create_trial(state=TrialState.FAIL, intermediate_values={1: value}, system_attrs={"completed_rung_0": value},
                           user_attrs={"fail_reason": KILLED})
    study.add_trial(attempt)
    number = len(study.trials) - 1
    study.add_trial(create_trial(state=TrialState.WAITING, intermediate_values={1: value},
                                 system_attrs={**attempt.system_attrs, "failed_trial": number, "retry_history": [number]}))


def test_a_killed_attempt_and_its_retry_count_as_one_trial() -> None:
    study = optuna.create_study()
    study.add_trial(create_trial(value=1.0))
    _killed_and_retried(study, 0.5)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": KILLED}))  # killed, not (yet) retried
    assert retried_numbers(study.trials) == {1}
    assert count_outcomes(study) == {"complete": 1, "pruned": 0, "failed": 0, "killed": 1, "running": 0, "queued": 1}


def test_retried_numbers_are_every_earlier_attempt_of_every_retry() -> None:
    retries = [create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 0, "retry_history": [0, 2]}),
               create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 5, "retry_history": [5]}),
               create_trial(value=1.0)]
    assert retried_numbers(retries) == {0, 2, 5}


@pytest.mark.parametrize("make", [
    lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=1, reduction_factor=2),  # one bracket
], ids=["successive-halving", "hyperband"])
def test_a_pruner_ranks_a_killed_attempt_and_its_retry_as_one_trial(make: Callable[[], optuna.pruners.BasePruner]) -> None:
    """At the first rung (reduction factor 2: of 3 values the best goes on, of 4 the best 2), a
    trial at 0.5 beside one at 0.9 and one at 0.1 is stopped; were the trial at 0.1 counted twice
    (its killed attempt and its retry), 0.5 would be second of 4 and go on."""

    def judged(pruner: optuna.pruners.BasePruner) -> bool:
        study = optuna.create_study(direction="maximize")  # a study each: the pruner records the trial's rung value
        trial = study.ask()
        trial.report(0.5, 1)
        study.add_trial(create_trial(value=0.9, intermediate_values={1: 0.9}, system_attrs={"completed_rung_0": 0.9}))
        _killed_and_retried(study, 0.1)
        return pruner.prune(study, study.trials[trial.number])

    assert judged(RetryAwarePruner(make())) and not judged(make())


def _retried_in_store(uri: str) -> tuple[str, str]:
    """The store of ``tests/tracker/test_readers.py`` (its newest sweep: five trials complete,
    one pruned, one running), plus a trial killed while running and retried: the killed attempt's
    run, left running and tagged ``sweeplab.retried_by``, and its retry's run, complete. The
    attempt's own tag is what counts: the retry's run here does not name it. Returns the sweep's
    parent run id and the killed attempt's run id."""
    parent = test_readers._fill(uri)["new"]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kept").experiment_id
    retry = client.create_run(experiment, start_time=5001, run_name="trial-10",
                              tags={ROLE: "trial", TASK: "t", PARENT: parent, TRIAL: "10", STATE: "complete"})
    attempt = client.create_run(experiment, start_time=5000, run_name="trial-9",
                                tags={ROLE: "trial", TASK: "t", PARENT: parent, TRIAL: "9", STATE: "running",
                                      RETRIED_BY: retry.info.run_id})
    return parent, attempt.info.run_id


@pytest.mark.parametrize("reader", [SqlReader, ClientReader])
def test_status_and_report_count_a_retried_attempts_run_out(store_uri: str, reader: type, monkeypatch: pytest.MonkeyPatch) -> None:
    parent, attempt = _retried_in_store(store_uri)
    monkeypatch.setattr(query, "reader_for", reader)
    row = next(r for r in query.sweeps(store_uri, {}, "t") if r.run_id == parent)
    assert row.counts == {"complete": 6, "pruned": 1, "failed": 0, "killed": 0, "running": 1}
    assert 9 not in row.running  # the attempt that died is not shown running
    report = query.sweep_trials(store_uri, parent_run_id=parent)
    assert report is not None and [t.number for t in report.trials] == [0, 1, 2, 3, 4, 5, 8, 10]
    assert attempt not in {t.run_id for t in report.trials}


def test_a_pruner_sees_a_retry_under_its_first_attempts_number() -> None:
    """Hyperband picks a trial's bracket from its number: the retry is shown to the pruner as its
    first attempt, so it goes on in that bracket."""
    seen: list[tuple[int, list[int]]] = []

    class Recording(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            seen.append((trial.number, [t.number for t in study.get_trials(deepcopy=False)]))
            return False

    study = optuna.create_study(pruner=RetryAwarePruner(Recording()))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, intermediate_values={1: 0.5}))
    _killed_and_retried(study, 0.9)  # trial 1 killed, trial 2 its retry
    retry = study.ask()
    assert retry.number == 2
    retry.report(0.9, 2)
    retry.should_prune()
    assert seen == [(1, [0, 1])]  # as trial 1, and trial 1's killed attempt left out
