"""A Hugging Face ``Trainer`` swept through ``ReportCallback``: its evaluations are the trial's curve
at its global steps, its best weights the trial's checkpoint, a pruned trial stops the Trainer, a
Trainer sweeplab cannot sweep fails its trial with one line saying what to change, and a retried
trial goes on from the Trainer's checkpoint the callback handed over."""

from __future__ import annotations

import importlib
import math
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import torch
from mlflow import MlflowClient

pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate: pip install \".[transformers]\"")
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import sweeplab
from sweeplab.core import Resumed, Resumption, stopping
from sweeplab.errors import UsageError
from sweeplab.integrations.transformers import ReportCallback, sweep_metrics
from sweeplab.trainers.loop import Progress
from tests.checks import MemoryStore
from tests.integrations.resuming import Heard, interrupted_and_retried

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainer_news"


@pytest.fixture()
def news(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example's module (its data, model and metric), as the sweep imports it from its folder."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("trainer_news")


def _trial_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], filter_string="tags.`sweeplab.role` = 'trial'")


def test_the_trainer_news_example_is_swept_with_the_trainers_steps_and_its_best_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, news: ModuleType) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = sweeplab.run(f"{EXAMPLE / 'trainer_news.py'}:fit", trials=3, overrides={"epochs": 3}, pruner="none",
                           plots=False, checkpoints="all")
    assert outcome.task == "trainer-news" and outcome.counts["complete"] == 3
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    runs = _trial_runs(client, outcome.experiment)
    assert len(runs) == 3
    # transformers' own MLflow logging opened no run of its own, here or in another experiment
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 4  # + the sweep's
    train, _, _ = news.data()
    for run in runs:
        per_epoch = math.ceil(len(train) / int(run.data.params["batch_size"]))  # the Trainer's optimizer steps
        curve = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
        assert [m.step for m in curve] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
        losses = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in losses) == [m.step for m in curve]
        assert "val_loss" in run.data.metrics and "val_runtime" not in run.data.metrics and "epoch" not in run.data.metrics
        best = max(curve, key=lambda m: (m.value, -m.step))  # ties to the earliest
        assert run.data.metrics["best_step"] == best.step  # the Trainer's global step, declared as the x axis
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(best.value)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    (row,) = sweeplab.best("trainer-news")
    assert row.value > 0.1  # ten classes: chance is 0.1
    folder = client.download_artifacts(row.run_id, "checkpoint", str(tmp_path / "ckpt"))
    saved = torch.load(Path(folder) / "model.pt", weights_only=False)
    _, val, vocab_size = news.data()
    model = news.model(saved["config"], vocab_size)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.stack([v["input_ids"] for v in val]),
                       attention_mask=torch.stack([v["attention_mask"] for v in val])).logits
    accuracy = (logits.argmax(-1) == torch.stack([v["labels"] for v in val])).float().mean().item()
    assert accuracy == pytest.approx(row.value, abs=1e-6)  # the checkpoint is the best evaluation's model


class _PruneAtSecondReport(optuna.pruners.BasePruner):
    """Prunes every trial at its second evaluation: a trial far behind, without other trials."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return len(trial.intermediate_values) >= 2


def _trainer(news: ModuleType, report: Any, output_dir: Path, **settings: Any) -> Trainer:
    """The example's model and data in a Trainer evaluating every 5 optimizer steps (``settings`` over that)."""
    train, val, vocab_size = news.data()
    args = TrainingArguments(**{"output_dir": str(output_dir), "eval_strategy": "steps", "eval_steps": 5,
                                "logging_steps": 5, "max_steps": 60, "save_strategy": "no", "report_to": "none",
                                "learning_rate": 5e-3, "per_device_train_batch_size": 32, "disable_tqdm": True,
                                "use_cpu": True, **settings})
    config = {"hidden": 32, "dropout": 0.0}
    trainer = Trainer(model=news.model(config, vocab_size), args=args, train_dataset=train, eval_dataset=val[:64],
                      compute_metrics=news.accuracy, callbacks=[ReportCallback(report)])
    trainer.remove_callback(PrinterCallback)
    return trainer


def test_a_pruned_trial_stops_the_trainer_by_its_own_control_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  news: ModuleType) -> None:
    monkeypatch.chdir(tmp_path)
    ran: list[int] = []  # the Trainer's global step when train() returned

    @sweeplab.trainer(name="trainer-pruned", metric="val_accuracy")
    def fit(config: dict[str, Any], report: Any) -> None:
        trainer = _trainer(news, report, tmp_path / "out", learning_rate=config["lr"])
        trainer.train()
        trainer.evaluate()  # after train(): the same step, not reported again
        ran.append(trainer.state.global_step)

    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.005]\n", encoding="utf-8")
    outcome = sweeplab.run(fit, space=tmp_path / "space.toml", trials=1, pruner=_PruneAtSecondReport(), plots=False)
    assert outcome.counts["pruned"] == 1
    assert ran == [10]  # pruned at its second evaluation, of 60 planned steps
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    (run,) = _trial_runs(client, outcome.experiment)
    assert run.data.tags["sweeplab.state"] == "pruned"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [5, 10]


def _sweep_a_trainer(tmp_path: Path, news: ModuleType, name: str, **settings: Any) -> tuple[str, str]:
    """Sweep a Trainer built with ``settings``, whose refusal the function tries to swallow: the
    one line the sweep stops with (the user's input, as a bad flag's) and its trial's fail reason."""

    @sweeplab.trainer(name=name, metric="val_accuracy")
    def fit(config: dict[str, Any], report: Any) -> None:
        try:
            _trainer(news, report, tmp_path / "out", **settings).train()
        except Exception:
            report(1, {"val_accuracy": 0.5})  # caught and went on: the trial still fails with the refusal

    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.005]\n", encoding="utf-8")
    with pytest.raises(UsageError) as stopped:
        sweeplab.run(fit, space=tmp_path / "space.toml", trials=3, pruner="none", plots=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = _trial_runs(client, f"sweeplab-{name}")
    assert run.data.tags["sweeplab.state"] == "failed"
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 2  # the sweep's and the trial's
    return str(stopped.value), run.data.tags["sweeplab.fail_reason"]


@pytest.mark.parametrize(("settings", "expected"), [
    ({"eval_strategy": "no"}, "the Trainer never evaluates (eval_strategy='no'), so there is nothing to "
                              "report: pass TrainingArguments(eval_strategy='epoch')"),
    ({"report_to": "mlflow"}, "TrainingArguments.report_to is ['mlflow']: transformers would open a second MLflow "
                              "run beside the trial's; pass report_to='none'"),
], ids=["never-evaluates", "reports-to-mlflow"])
def test_a_trainer_sweeplab_cannot_sweep_fails_its_trial_with_what_to_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, news: ModuleType, settings: dict[str, Any], expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    stopped, reason = _sweep_a_trainer(tmp_path, news, f"trainer-{'-'.join(settings)}", **settings)
    assert reason.startswith(f"UsageError: {expected}"), reason
    assert stopped.startswith(expected) and "\n" not in stopped, stopped


def test_the_trainers_metrics_are_named_as_the_sweep_reads_them() -> None:
    metrics = {"eval_loss": 0.5, "eval_accuracy": torch.tensor(0.75), "eval_runtime": 0.1,
               "eval_samples_per_second": 100.0, "eval_steps_per_second": 10.0, "epoch": 2.0, "eval_report": "0.9",
               "eval_confusion": torch.ones(2, 2), "eval_news_f1": 0.25, "eval_flag": True}
    assert sweep_metrics(metrics) == {"val_loss": 0.5, "val_accuracy": 0.75, "val_news_f1": 0.25}


def test_a_stop_signal_ends_the_trainer_after_its_next_optimizer_step(tmp_path: Path, news: ModuleType) -> None:
    reported: list[int] = []
    trainer = _trainer(news, lambda step, metrics, **kept: reported.append(step) or False, tmp_path / "out")
    stopping.request_stop(signal.SIGTERM)
    try:
        with pytest.raises(stopping.StoppedAtStep):  # through the Trainer's code, to the sweep
            trainer.train()
    finally:
        stopping.clear()
    assert trainer.state.global_step == 1 and reported == []


class _Attempt(TrainerCallback):
    """Notes the first optimizer step an attempt trains (in ``firsts``), and stops it before step
    ``stop[1] + 1``: as Ctrl-C does (``"ctrl-c"``), or as a stop signal to the sweep does
    (``"signal"``: asked for there, answered at that step's end)."""

    def __init__(self, firsts: list[int], stop: tuple[str, int] | None = None) -> None:
        self.firsts, self.stop, self.started = firsts, stop, False

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not self.started:
            self.started = True
            self.firsts.append(state.global_step)
        if self.stop is not None and state.global_step == self.stop[1]:
            if self.stop[0] == "ctrl-c":
                raise KeyboardInterrupt
            stopping.request_stop(signal.SIGTERM)


def _resumable(news: ModuleType, report: Any, output_dir: Path, attempt: _Attempt | None = None) -> None:
    """A fit as the README's resumable one: 12 optimizer steps of 32 titles (8 an epoch) with
    dropout, evaluated and logged every 4, resumed from ``callback.resume_from``. Its model is
    seeded here, so that a fit outside the sweep (whose trials have their own seeds) is the same."""
    train, val, vocab_size = news.data()
    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(output_dir), eval_strategy="steps", eval_steps=4, logging_steps=4,
                             max_steps=12, save_strategy="no", report_to="none", learning_rate=5e-3,
                             per_device_train_batch_size=32, disable_tqdm=True, use_cpu=True)
    callback = ReportCallback(report)
    trainer = Trainer(model=news.model({"hidden": 32, "dropout": 0.2}, vocab_size), args=args, train_dataset=train[:256],
                      eval_dataset=val[:64], compute_metrics=news.accuracy,
                      callbacks=[callback] + ([attempt] if attempt is not None else []))
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=callback.resume_from)


def _whole(news: ModuleType, output_dir: Path) -> list[dict[str, float]]:
    """The curve of the same fit never stopped."""
    whole = Progress(Heard(), "val_accuracy")
    _resumable(news, whole, output_dir)
    return whole.result.history


def test_a_retried_trainer_trial_goes_on_from_the_checkpoint_handed_over_and_ends_as_one_never_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, news: ModuleType) -> None:
    """Interrupted (Ctrl-C) in its 7th step, the trial's retry goes on from the Trainer's
    checkpoint of its evaluation at step 4 (saved there: --checkpoint-minutes is tiny), with the
    random states and data order of an uninterrupted fit."""
    monkeypatch.chdir(tmp_path)
    firsts: list[int] = []

    @sweeplab.trainer(name="trainer-resumed", metric="val_accuracy", x_axis="step")
    def fit(config: dict[str, Any], report: Any) -> None:
        _resumable(news, report, tmp_path / "out", _Attempt(firsts, None if firsts else ("ctrl-c", 6)))

    client, retry = interrupted_and_retried(fit, tmp_path)
    assert firsts == [0, 4]  # the retry trained from step 5 on, not from its start
    assert retry.data.tags["sweeplab.resumed_from"] == "4"
    whole = _whole(news, tmp_path / "whole")
    for name in ("val_accuracy", "val_loss", "train_loss"):
        curve = client.get_metric_history(retry.info.run_id, name)
        assert [m.step for m in curve] == [4, 8, 12], name  # each step once
        assert [m.value for m in curve] == pytest.approx([p[name] for p in whole], abs=1e-6), name
    assert retry.data.metrics["best_val_accuracy"] == pytest.approx(max(p["val_accuracy"] for p in whole), abs=1e-6)
    assert not list((tmp_path / "out").iterdir())  # the checkpoints it asked for (save_strategy="no") are gone


def test_a_stop_signal_between_evaluations_hands_over_the_checkpoint_of_that_step(tmp_path: Path,
                                                                                  news: ModuleType) -> None:
    """No save is due at the evaluations (an hour apart): the signal asked for in step 6 is
    answered at its end with the Trainer's checkpoint of step 6, and the retry goes on from step
    7 to the curve of a fit never stopped, but for the training loss at step 8, which averages
    steps 7 and 8 only (the checkpoint holds no loss summed since the last log)."""
    store, firsts = MemoryStore(), []
    first = Progress(Heard(), "val_accuracy", resume=Resumption(store, every_seconds=3600))
    try:
        with pytest.raises(stopping.StoppedAtStep):
            _resumable(news, first, tmp_path / "first", _Attempt(firsts, ("signal", 5)))
    finally:
        stopping.clear()
    assert store.saves == 1 and [p["step"] for p in first.result.history] == [4]
    retry = Progress(Heard(), "val_accuracy", resume=Resumption(store, every_seconds=3600))
    retry.take_resume_state()
    assert retry.resumed is not None and retry.resumed.step == 6
    _resumable(news, retry, tmp_path / "retry", _Attempt(firsts))
    assert firsts == [0, 6]
    whole = _whole(news, tmp_path / "whole")
    assert [p["step"] for p in retry.result.history] == [p["step"] for p in whole] == [4, 8, 12]
    for got, want in zip(retry.result.history, whole):
        for name in ("val_accuracy", "val_loss") + (("train_loss",) if got["step"] != 8 else ()):
            assert got[name] == pytest.approx(want[name], abs=1e-6), (got["step"], name)
    assert not list((tmp_path / "first").iterdir())


def test_a_saved_state_that_is_not_a_trainer_checkpoint_is_stale() -> None:
    report = Progress(Heard(), "val_accuracy")
    report.resumed = Resumed(step=3, state={"weight": 0.5})  # what a fit of its own handed over before
    assert ReportCallback(Progress(Heard(), "val_accuracy")).resume_from is None  # a first attempt
    with pytest.raises(sweeplab.StaleResumeState, match="not the Trainer checkpoint"):
        ReportCallback(report).resume_from
