"""sweeplab.integrations.lightning: a Lightning Trainer swept with ReportCallback, its curves,
stops, checkpoint, refusals and resumes read back (skipped where the ``lightning`` extra is not
installed)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

lightning = pytest.importorskip("lightning")

import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import sweeplab  # noqa: E402
from sweeplab.core import Resumed, Resumption, stopping  # noqa: E402
from sweeplab.core.curves import OnsetRule  # noqa: E402
from sweeplab.core.stopping import StoppedAtStep  # noqa: E402
from sweeplab.errors import UsageError  # noqa: E402
from sweeplab.integrations.lightning import ReportCallback  # noqa: E402
from sweeplab.sweeps import signals  # noqa: E402
from sweeplab.trainers.loop import Progress  # noqa: E402
from tests.checks import MemoryStore  # noqa: E402
from tests.integrations.resuming import Heard, interrupted_and_retried  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_digits"


def test_the_lightning_example_is_swept_and_its_checkpoint_is_the_best_epochs_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = sweeplab.run(f"{EXAMPLE / 'lightning_digits.py'}:fit", trials=3, overrides={"epochs": 4}, pruner="none",
                           plots=False)
    assert outcome.task == "digits-lightning" and outcome.counts["complete"] == 3
    assert not (tmp_path / "lightning_logs").exists()  # the Trainer kept no logs or checkpoints of its own
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    experiment = client.get_experiment_by_name(outcome.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeplab.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        curves = {name: client.get_metric_history(run.info.run_id, name)
                  for name in ("train_loss", "val_loss", "val_accuracy")}
        epochs = len(curves["val_accuracy"])  # 4, or fewer for a trial stopped at its overfitting onset
        assert epochs == 4 or (1 <= epochs < 4 and run.data.tags["sweeplab.stopped"] == "overfit")
        for name, curve in curves.items():
            assert [m.step for m in curve] == list(range(1, epochs + 1)), name  # a point per epoch, the epoch its step
        values = [m.value for m in curves["val_accuracy"]]
        assert run.data.metrics["best_epoch"] == values.index(max(values)) + 1  # the argmax, ties to the earliest
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(max(values))
    (row,) = sweeplab.best("digits-lightning")
    assert row.metric == "best_val_accuracy" and row.value > 0.5  # ten classes: chance is 0.1
    folder = client.download_artifacts(row.run_id, "checkpoint", str(tmp_path / "ckpt"))
    saved = torch.load(Path(folder) / "model.pt", weights_only=False)
    from lightning_digits import DigitsModule, _data  # the example's module, imported by the sweep from its folder

    module = DigitsModule(saved["config"])
    module.load_state_dict(saved["state_dict"])
    module.eval()
    _, _, x_val, y_val = _data()
    with torch.no_grad():
        accuracy = (module(x_val).argmax(1) == y_val).float().mean().item()
    assert accuracy == pytest.approx(row.value, abs=1e-6)  # the checkpoint is the best epoch's module


class Scripted(lightning.LightningModule):
    """A linear layer fit to 32 random rows (4 batches an epoch) whose n-th validation logs the
    n-th of the ``val_loss`` and ``val_accuracy`` given (the last one again past their end); it
    keeps each epoch's mean training loss, and may ``send`` itself a signal in a step."""

    def __init__(self, val_loss: list[float], val_accuracy: list[float], accuracy_name: str = "val_accuracy",
                 send: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.val_loss, self.val_accuracy, self.accuracy_name = val_loss, val_accuracy, accuracy_name
        self.send = send
        self.validations = 0
        self.epoch_losses: dict[int, list[float]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.send is not None and self.send[0] == "training_step" and self.global_step == 5:
            os.kill(os.getpid(), self.send[1])
        loss = ((self.layer(batch[0]).squeeze(1) - batch[1]) ** 2).mean()
        self.epoch_losses.setdefault(self.current_epoch + 1, []).append(loss.item())
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.send is not None and self.send[0] == "validation_step" and self.current_epoch == 1 \
                and not self.trainer.sanity_checking:
            os.kill(os.getpid(), self.send[1])
        if batch_idx == 0:
            n = min(self.validations, len(self.val_loss) - 1)
            self.log("val_loss", self.val_loss[n])
            self.log(self.accuracy_name, self.val_accuracy[n])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 4, generator=generator), torch.randn(32, generator=generator)),
                      batch_size=8)


def _trainer(callback: ReportCallback, **kwargs: Any) -> Any:
    return lightning.Trainer(callbacks=[callback], accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, **kwargs)


class Pruner:
    """Stands in for Optuna's pruner behind sweeplab's ``report`` (a :class:`Progress`): hears each
    evaluation and prunes at ``prune_at``."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at = prune_at
        self.points: dict[int, dict[str, float]] = {}

    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.points[step] = dict(metrics)
        return step == self.prune_at


@pytest.mark.parametrize("stop", ["pruned", "overfit"])
def test_pruning_and_the_overfitting_onset_stop_a_lightning_run_early(stop: str) -> None:
    """20 epochs planned; pruned at the 2nd validation, or past the onset of a val_loss that rises
    from the 2nd (three successive rises: at the 5th), the Trainer stops there by should_stop and
    the best epoch's state is kept."""
    pruner = Pruner(prune_at=2 if stop == "pruned" else None)
    progress = Progress(pruner, "val_accuracy", "maximize", early_stop=OnsetRule(s=3, alpha=None))
    module = Scripted(val_loss=[1.0, 0.8, 0.9, 1.0, 1.1, 1.2], val_accuracy=[0.5, 0.7, 0.6, 0.6, 0.6, 0.6])
    trainer = _trainer(ReportCallback(progress, monitor="val_accuracy"), max_epochs=20)
    trainer.fit(module, _loader(), _loader())
    epochs = 2 if stop == "pruned" else 5
    assert progress.result.stopped == stop
    assert [p["step"] for p in progress.result.history] == list(range(1, epochs + 1))
    assert trainer.current_epoch == epochs and trainer.global_step == 4 * epochs  # no epoch trained past the stop
    assert progress.result.best == 1 and set(progress.result.state) == set(module.state_dict())
    assert progress.result.history[1]["val_accuracy"] == pytest.approx(0.7)


@pytest.mark.parametrize("interval", [1.0, 0.5])
def test_each_epoch_is_one_point_with_its_own_training_loss_and_validations_within_epochs_are_at_optimizer_steps(
        interval: float) -> None:
    pruner = Pruner()
    module = Scripted(val_loss=[1.0, 0.9, 0.8, 0.7], val_accuracy=[0.1, 0.2, 0.3, 0.4])
    trainer = _trainer(ReportCallback(Progress(pruner, "val_accuracy")), max_epochs=2, val_check_interval=interval)
    trainer.fit(module, _loader(), _loader())  # with Lightning's sanity check (two validation batches), not reported
    if interval == 1.0:
        assert list(pruner.points) == [1, 2]
        for epoch, point in pruner.points.items():  # that epoch's mean, not the previous epoch's
            assert point["train_loss"] == pytest.approx(sum(module.epoch_losses[epoch]) / 4, rel=1e-5)
    else:
        assert list(pruner.points) == [2, 4, 6, 8]  # the optimizer steps, four batches an epoch
    assert [p["val_accuracy"] for p in pruner.points.values()] == pytest.approx([0.1, 0.2, 0.3, 0.4][:len(pruner.points)])


def test_a_monitor_metric_the_module_never_logs_fails_the_trial_with_one_line_naming_what_it_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    @sweeplab.trainer(name="lightning-monitor", metric="val_accuracy")
    def fit(config: dict[str, Any], report: Any) -> None:
        module = Scripted(val_loss=[1.0], val_accuracy=[0.5], accuracy_name="val_acc")
        _trainer(ReportCallback(report, monitor="val_accuracy"), max_epochs=3).fit(module, _loader(), _loader())

    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.1]\n", encoding="utf-8")
    with pytest.raises(UsageError, match="monitor='val_accuracy'") as refused:
        sweeplab.run(fit, space="space.toml", trials=2, plots=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-lightning-monitor")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeplab.role` = 'trial'")
    reason = run.data.tags["sweeplab.fail_reason"]
    assert reason == f"UsageError: {refused.value}" and "\n" not in reason
    assert "it logged train_loss, val_acc, val_loss" in reason and "self.log('val_accuracy', ...)" in reason


def test_a_trainer_that_never_validates_is_refused_before_it_trains() -> None:
    module = Scripted(val_loss=[1.0], val_accuracy=[0.5])
    trainer = _trainer(ReportCallback(Progress(Pruner(), "val_accuracy")), max_epochs=3)
    with pytest.raises(UsageError, match="never validates.*pass val_dataloaders"):
        trainer.fit(module, _loader())  # no validation data
    assert trainer.global_step == 0


@pytest.mark.parametrize(("where", "signum"), [pytest.param("training_step", signal.SIGHUP, id="SIGHUP-in-training"),
                                               pytest.param("validation_step", signal.SIGTERM, id="SIGTERM-in-validation")])
def test_a_stop_signal_leaves_fit_as_sweeplabs_stop_and_ctrl_c_still_works(where: str, signum: int) -> None:
    """A stop signal to the sweep is answered at the next training batch's end (SIGHUP: Lightning
    does not watch it) or, in a validation, by Lightning's SIGTERMException (SIGTERM), and leaves
    ``fit`` as :class:`StoppedAtStep`, not as the ``sys.exit`` Lightning makes of a
    KeyboardInterrupt or a SIGTERM; Ctrl-C's handler is put back."""
    sigint = signal.getsignal(signal.SIGINT)
    module = Scripted(val_loss=[1.0], val_accuracy=[0.5], send=(where, signum))
    trainer = _trainer(ReportCallback(Progress(Pruner(), "val_accuracy")), max_epochs=5)
    with signals.stop_on_signals(), signals.stop_at_next_step():
        with pytest.raises(StoppedAtStep):
            trainer.fit(module, _loader(), _loader())
    assert signal.getsignal(signal.SIGINT) is sigint
    assert trainer.global_step == (6 if where == "training_step" else 8)  # the batch it came in was finished


def test_without_lightning_the_import_names_the_extra_and_import_sweeplab_needs_no_lightning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sweeplab.integrations.lightning")
    monkeypatch.setitem(sys.modules, "lightning", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "sweeplab\[lightning\]"'):
        importlib.import_module("sweeplab.integrations.lightning")
    code = "import sys, sweeplab, sweeplab.api; assert 'lightning' not in sys.modules, 'imported lightning'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


class Regression(lightning.LightningModule):
    """A small MLP with dropout fit by Adam with a decaying learning rate to 32 random rows (4
    shuffled batches an epoch); it notes the first optimizer step of each fit in ``firsts``, and
    stops the first fit before step ``stop[1] + 1``: as Ctrl-C does (``"ctrl-c"``), or as a stop
    signal to the sweep does (``"signal"``: asked for there, answered at that batch's end)."""

    def __init__(self, firsts: list[int], stop: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))
        self.firsts, self.stop = firsts, stop

    def on_train_start(self) -> None:
        self.firsts.append(self.global_step)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.stop is not None and self.global_step == self.stop[1]:
            if self.stop[0] == "ctrl-c":
                raise KeyboardInterrupt
            stopping.request_stop(signal.SIGTERM)
        loss = ((self.net(batch[0]).squeeze(1) - batch[1]) ** 2).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", ((self.net(batch[0]).squeeze(1) - batch[1]) ** 2).mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.7)}


def _resumable(report: Any, firsts: list[int], stop: tuple[str, int] | None = None) -> None:
    """A fit as the README's resumable one: 4 epochs, resumed from ``callback.resume_from``. Its
    module is seeded here, so that a fit outside the sweep (whose trials have their own seeds) is
    the same."""
    torch.manual_seed(0)
    module = Regression(firsts, stop)
    train = DataLoader(_loader().dataset, batch_size=8, shuffle=True)
    callback = ReportCallback(report, monitor="val_loss")
    trainer = _trainer(callback, max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(module, train, _loader(), ckpt_path=callback.resume_from)


def _whole() -> list[dict[str, float]]:
    """The curve of the same fit never stopped."""
    whole = Progress(Heard(), "val_loss", "minimize")
    _resumable(whole, [])
    return whole.result.history


def test_a_retried_lightning_trial_goes_on_from_the_checkpoint_handed_over_and_ends_as_one_never_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted (Ctrl-C) in its 3rd epoch, the trial's retry goes on from Lightning's
    checkpoint at the end of its 2nd (saved there: --checkpoint-minutes is tiny), with the random
    states the callback added to it: the shuffles and dropout masks of an uninterrupted fit."""
    monkeypatch.chdir(tmp_path)
    firsts: list[int] = []

    @sweeplab.trainer(name="lightning-resumed")
    def fit(config: dict[str, Any], report: Any) -> None:
        _resumable(report, firsts, None if firsts else ("ctrl-c", 10))

    client, retry = interrupted_and_retried(fit, tmp_path)
    assert firsts == [0, 8]  # the retry trained from its 3rd epoch on, not from its start
    assert retry.data.tags["sweeplab.resumed_from"] == "2"
    whole = _whole()
    for name in ("val_loss", "train_loss"):
        curve = client.get_metric_history(retry.info.run_id, name)
        assert [m.step for m in curve] == [1, 2, 3, 4], name  # each epoch once
        assert [m.value for m in curve] == pytest.approx([p[name] for p in whole], abs=1e-6), name
    assert retry.data.metrics["best_val_loss"] == pytest.approx(min(p["val_loss"] for p in whole), abs=1e-6)


@pytest.mark.parametrize(("asked_at", "resumed_at"), [(7, 2.0), (9, 2.5)], ids=["last-batch", "mid-epoch"])
def test_a_stop_signal_hands_over_the_checkpoint_where_the_fit_stops(asked_at: int, resumed_at: float) -> None:
    """No save is due at the validations (an hour apart). A stop asked for in an epoch's last
    batch is answered at the epoch's end, after its validation is reported: the retry is the fit
    never stopped. One asked for within an epoch is answered at that batch's end (2 of the 3rd
    epoch's 4 batches done); Lightning then goes on with the 2 batches that epoch has left drawn
    from a fresh pass over the DataLoader, so only the epochs before match."""
    store, firsts = MemoryStore(), []
    first = Progress(Heard(), "val_loss", "minimize", resume=Resumption(store, every_seconds=3600))
    try:
        with pytest.raises(StoppedAtStep):
            _resumable(first, firsts, ("signal", asked_at))
    finally:
        stopping.clear()
    assert store.saves == 1
    retry = Progress(Heard(), "val_loss", "minimize", resume=Resumption(store, every_seconds=3600))
    retry.take_resume_state()
    assert retry.resumed is not None and retry.resumed.step == resumed_at
    _resumable(retry, firsts)
    assert firsts == [0, asked_at + 1]
    whole = _whole()
    assert [p["step"] for p in retry.result.history] == [p["step"] for p in whole] == [1, 2, 3, 4]
    same = len(whole) if resumed_at == 2.0 else 2
    assert retry.result.history[:same] == [pytest.approx(p, abs=1e-6) for p in whole[:same]]
    assert same == 4 or retry.result.history[2]["val_loss"] != pytest.approx(whole[2]["val_loss"], abs=1e-6)


def test_a_saved_state_that_is_not_a_lightning_checkpoint_is_stale() -> None:
    report = Progress(Pruner(), "val_accuracy")
    report.resumed = Resumed(step=3, state={"weight": 0.5})  # what a fit of its own handed over before
    assert ReportCallback(Progress(Pruner(), "val_accuracy")).resume_from is None  # a first attempt
    with pytest.raises(sweeplab.StaleResumeState, match="not the Lightning checkpoint"):
        ReportCallback(report).resume_from
