"""Multi-fidelity pruners (``--pruner asha`` / ``hyperband``) on a scripted task: a clearly worse
trial is stopped at an early rung, keeps its curve and is recorded as pruned. A time budget
(``--timeout``) starts no trial once spent and stops a running one at its next evaluation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.errors import UsageError
from sweeplab.sweeps import loops as loops_module
from sweeplab.sweeps import reporter as reporter_module
from sweeplab.sweeps.pruners import make_pruner, most_evaluations, pruner_name
from sweeplab.sweeps.study import PRUNER
from sweeplab.tasks import get_task
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.space import load_space
from sweeplab.trainers.loop import fit
from sweeplab.trainers.news import DEFAULTS as NEWS_DEFAULTS
from sweeplab.trainers.sentiment import DEFAULTS as SENTIMENT_DEFAULTS
from tests.fake_tasks import Replay, make_task, sweep_task
from tests.storages import SweepStorage

EPOCHS = 9


class _Scaled(Replay):
    """Accuracy ``scale * epoch / 10``: the same shape for every trial, a different height."""

    def __init__(self, scale: float) -> None:
        super().__init__(EPOCHS)
        self.scale = scale

    def evaluate(self) -> Evaluation:
        return Evaluation({"val_loss": 1.0 / self.epoch, "val_accuracy": self.scale * self.epoch / 10})


def _task(name: str) -> Task:
    """Trials 0-3 climb to 0.9; trials 4-9 stay ten times lower."""

    def fit_scaled(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        return fit(_Scaled(1.0 if env.trial_seed < 4 else 0.1), EPOCHS, reporter, "val_accuracy")

    return make_task(name, fit_scaled)


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_a_clearly_worse_trial_is_stopped_at_an_early_rung(tmp_path: Path, pruner: str) -> None:
    outcome = sweep_task(_task(f"scaled-{pruner}"), tmp_path, 10, pruner=pruner)
    client = MlflowClient(outcome.tracking_uri)
    experiment = client.get_experiment_by_name(f"scaled-{pruner}").experiment_id
    runs = {int(r.data.tags["sweeplab.trial"]): r for r in client.search_runs([experiment], "tags.`sweeplab.role` = 'trial'")}
    evaluations = {n: len(client.get_metric_history(r.info.run_id, "val_accuracy")) for n, r in runs.items()}
    worse_pruned = [n for n in range(4, 10) if runs[n].data.tags["sweeplab.state"] == "pruned"]
    assert worse_pruned, f"no worse trial was pruned: {evaluations}"
    for n in worse_pruned:
        assert evaluations[n] < EPOCHS  # stopped at a rung, with the curve up to there
        assert runs[n].data.tags["sweeplab.stopped"] == "pruned" and runs[n].info.status == "FINISHED"
    assert sum(evaluations.values()) < 10 * EPOCHS
    assert outcome.best_value == pytest.approx(0.9)


def test_hyperband_is_sized_by_the_most_evaluations_the_task_counts_for_the_space() -> None:
    sentiment_task, news_task = get_task("sentiment"), get_task("news")
    sentiment = load_space("sentiment", SENTIMENT_DEFAULTS, "sentiment")
    assert most_evaluations(sentiment, sentiment_task) == 12
    assert most_evaluations(sentiment.with_overrides({"epochs": 5}), sentiment_task) == 5
    news = load_space("news", NEWS_DEFAULTS, "news")
    assert most_evaluations(news, news_task) == 10
    assert most_evaluations(news.with_overrides({"eval_every": 100}), news_task) is None  # steps, not epochs
    pruner = make_pruner(SweepOptions.of("sentiment", pruner="hyperband"), sentiment, sentiment_task)
    assert isinstance(pruner.wrapped, optuna.pruners.HyperbandPruner)


def test_a_spent_time_budget_starts_no_trial_and_the_same_command_resumes(tmp_path: Path) -> None:
    task = _task("budget")
    spent = sweep_task(task, tmp_path, 3, pruner="none", timeout=1e-9)
    assert spent.counts["complete"] == 0 and spent.counts["failed"] == 0
    resumed = sweep_task(task, tmp_path, 3, pruner="none")
    assert resumed.counts["complete"] == 3


def test_the_default_pruner_is_none_for_a_grid_hyperband_otherwise_and_a_resumed_sweeps_own() -> None:
    assert pruner_name(SweepOptions.of("t", sampler="grid"), None) == "none"
    assert pruner_name(SweepOptions.of("t", sampler="tpe"), None) == "hyperband"
    assert pruner_name(SweepOptions.of("t", sampler="tpe"), "median") == "median"
    assert pruner_name(SweepOptions.of("t", sampler="grid", pruner="asha"), "median") == "asha"


def test_a_resumed_sweep_keeps_the_pruner_it_was_started_with(tmp_path: Path) -> None:
    task = _task("keeps-pruner")
    sweep_task(task, tmp_path, 2, pruner="median")
    sweep_task(task, tmp_path, 3)
    assert _study(tmp_path, "space-tpe").user_attrs[PRUNER] == "median"


def _study(tmp_path: Path, name: str) -> optuna.Study:
    """The study ``name`` of the sweeps ``sweep_task`` ran in ``tmp_path``, from their store's journal."""
    return SweepStorage.of_store(tmp_path / "store").study(name)


def test_a_refused_resume_leaves_the_recorded_pruner_alone(tmp_path: Path) -> None:
    task = _task("refused-resume")
    sweep_task(task, tmp_path, 1)
    with pytest.raises(UsageError, match="seed"):
        sweep_task(task, tmp_path, 2, seed=1, pruner="median")
    assert _study(tmp_path, "space-tpe").user_attrs[PRUNER] == "hyperband"


def test_a_study_from_before_pruners_were_recorded_resumes_with_the_median_pruner(tmp_path: Path) -> None:
    task = _task("old-study")
    sweep_task(task, tmp_path, 1)
    _study(tmp_path, "space-tpe").set_user_attr(PRUNER, None)  # as sweeplab left studies before
    sweep_task(task, tmp_path, 2)
    assert _study(tmp_path, "space-tpe").user_attrs[PRUNER] == "median"


def test_grid_cells_left_queued_by_a_time_budget_wait_for_a_larger_trials(tmp_path: Path) -> None:
    task = _task("grid-budget")
    grid = "[search.x]\nlow = 0.0\nhigh = 1.0\ngrid = [0.0, 0.25, 0.5, 0.75, 1]\n"
    sweep_task(task, tmp_path, 5, space_text=grid, sampler="grid", timeout=1e-9)
    assert sweep_task(task, tmp_path, 2, space_text=grid, sampler="grid").counts["complete"] == 2
    assert sweep_task(task, tmp_path, 5, space_text=grid, sampler="grid").counts["complete"] == 5


class _Clock:
    """The ``time`` module with a ``monotonic`` that a test moves forward."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_a_budget_spent_mid_trial_stops_it_at_its_next_evaluation_with_its_best_so_far(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(reporter_module, "time", clock)
    monkeypatch.setattr(loops_module, "time", clock)

    class Late(Replay):
        def train_round(self) -> tuple[int, float]:
            if self.epoch == 3:
                clock.ahead = 7200.0  # the hour's budget is spent while the fourth round trains
            return super().train_round()

    def fit_late(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
        return fit(Late(10), 10, reporter, "val_accuracy")

    outcome = sweep_task(make_task("late", fit_late), tmp_path, 3, pruner="none", timeout=3600)
    assert outcome.counts["complete"] == 1  # stopped, and kept; no trial started after
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("late").experiment_id], "tags.`sweeplab.role` = 'trial'")
    assert run.data.tags["sweeplab.stopped"] == "time budget" and run.data.tags["sweeplab.stop_reason"] == "stopped: time budget"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3, 4]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(0.4)  # its value: the best evaluation before the stop
