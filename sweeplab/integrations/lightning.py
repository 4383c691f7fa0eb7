"""A Lightning ``Trainer`` swept by sweeplab: :class:`ReportCallback` hands each validation to ``report``.

Inside a training function (:mod:`sweeplab.trainers.function`) the Trainer is built as usual,
with one callback more, and fits from the checkpoint the callback restores for a retried trial::

    from sweeplab.integrations.lightning import ReportCallback

    def fit(config, report):
        callback = ReportCallback(report, monitor="val_accuracy")
        trainer = lightning.Trainer(max_epochs=config["epochs"], devices=1, logger=False, enable_checkpointing=False,
                                    callbacks=[callback])
        trainer.fit(module, train_loader, val_loader, ckpt_path=callback.resume_from)  # None on a first attempt

What the callback does at each of the Trainer's validations while it fits (the sanity check,
``trainer.validate()`` and ``trainer.test()`` are not reported):

* **Metrics.** Everything in ``trainer.callback_metrics`` (what the module logged with
  ``self.log``), under the names it was logged with: they are the names of the curves in MLflow
  and the names ``--metric`` and the overfitting onset read, so log ``val_loss`` (the onset reads
  it), the sweep's metric (``val_accuracy``...) and ``train_loss``.
* **Step and when.** A Trainer that validates at the end of epochs (``val_check_interval=1.0``,
  Lightning's default, with any ``check_val_every_n_epoch``) is reported at the end of each
  training epoch that validated, at step ``current_epoch + 1`` (epochs count from 1): then a
  ``train_loss`` logged with ``on_epoch=True`` is that epoch's mean, not the previous epoch's as
  at the validation's end. A Trainer that validates within epochs (``val_check_interval`` below
  1.0, a number of batches, or a time) is reported at the end of each validation, at step
  ``trainer.global_step`` (the optimizer steps); its epoch-level training metrics are then those
  of the last finished epoch. Either way, a metric the module logs in its own
  ``on_train_epoch_end`` is reported one evaluation late (callbacks run before the module there):
  log it in ``training_step`` with ``on_epoch=True``. One ``trainer.fit`` per trial: a step not
  past the last one reported (a second ``fit``) is not reported again.
* **monitor.** As ``ModelCheckpoint(monitor=...)`` and ``EarlyStopping(monitor=...)`` name it,
  the metric the callback expects at every validation: one the module never logged is refused
  (below). It does not pick the checkpoint: the sweep's metric (``--metric``, or the one the
  trainer declares) picks the best evaluation, its state and what the pruner hears. ``None``
  (the default) checks nothing beyond sweeplab's own check that the sweep's metric is reported.
* **Stop.** When ``report`` answers "stop" (pruned, past the overfitting onset read from
  ``val_loss``, out of the sweep's time, or a non-finite loss) the callback sets
  ``trainer.should_stop``, as ``EarlyStopping`` does: Lightning ends training by its own control
  flow (after ``min_epochs``/``min_steps``, if given; later validations are not reported) and
  the code after ``trainer.fit`` runs as usual.
* **Checkpoint.** The module's ``state_dict()`` at the best evaluation (by the sweep's metric)
  becomes the trial's checkpoint (``checkpoint/model.pt``), copied to the CPU when an evaluation
  is a new best. Lightning's own ``ModelCheckpoint`` is not needed for it:
  ``enable_checkpointing=False`` saves its disk, and ``logger=False`` the ``lightning_logs/``
  folder (the trial's MLflow run holds every curve). An ``MLFlowLogger`` would open an MLflow
  run of its own beside the trial's (a warning says so).
* **Resume.** The trial's resume state is Lightning's own checkpoint of the fit
  (``trainer.save_checkpoint``: module, optimizers, schedulers, the loops' progress, the
  callbacks' states), as bytes, built when sweeplab saves: every ``--checkpoint-minutes``, at the
  first evaluation after that is due (where it is reported, as ``ModelCheckpoint`` saves), and
  at a stop signal. Lightning's checkpoint holds no random generators, so the callback adds
  Python's, NumPy's and torch's to its own state (``state_dict``, put back by
  ``load_state_dict``), in every checkpoint the Trainer writes. A retried attempt finds the
  checkpoint written back to a temporary file, :attr:`ReportCallback.resume_from` (``None`` on
  a first attempt), and ``trainer.fit(..., ckpt_path=callback.resume_from)`` goes on from it as
  Lightning resumes. From a save at the end of an epoch (epoch-end validation, the default) the
  rest of the curve is the uninterrupted one on the CPU. From a save within an epoch (at a
  validation with ``val_check_interval`` below 1.0, or at a stop signal mid-epoch) Lightning,
  unless the training DataLoader is stateful (``state_dict``/``load_state_dict``, as torchdata's
  ``StatefulDataLoader``), trains the batches that epoch has left from a fresh pass over the
  loader (it warns so): other batches than an unstopped run, and that epoch's ``on_epoch``
  metrics average only those; with ``val_check_interval``, the epoch-level ``train_loss`` is
  then absent until an epoch ends. The run's ``sweeplab.resumed_from`` is the epoch saved (with
  the share of the next one done, at a stop within it), or the optimizer step with
  ``val_check_interval``.
* **Interruptions.** A stop signal to the sweep is answered after the next training batch (of
  an epoch's last batch: at the epoch's end, once its validation is reported), after the
  checkpoint there is handed over; the trial ends as interrupted. Lightning turns a ``KeyboardInterrupt``
  into ``sys.exit(1)`` after ignoring Ctrl-C for the rest of the process, and a ``SIGTERM``
  into its ``SIGTERMException``; the callback hands an interruption on as itself (Ctrl-C's
  handler put back; a ``SIGTERM`` the sweep asked to stop for as sweeplab's stop), so that the
  sweep ends, or retries the trial, as with its built-in trainers. Lightning's teardown after
  an interruption is then skipped (the trial's process is ending).

What sweeplab refuses, as the trial's one-line reason:

* a Trainer that never validates (no ``val_dataloaders``, no ``validation_step``, or
  ``limit_val_batches=0``), when ``fit`` starts: there would be nothing to report;
* a ``monitor`` metric the module did not log by a validation, naming what it logged.

Give the Trainer ``devices=1``: a trial is one process, and Lightning's default
(``devices="auto"``) would start a distributed run on every GPU it sees. The module built before
``fit`` is seeded with the trial's seed, as every training function is.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "lightning":
        raise
    raise ImportError('sweeplab.integrations.lightning needs Lightning, an optional extra: '
                      'pip install "sweeplab[lightning]"') from exc
try:  # what Lightning raises after a SIGTERM (a SystemExit); older versions have none
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    _SIGTERM: tuple[type[BaseException], ...] = (SIGTERMException,)
except ImportError:
    _SIGTERM = ()

from sweeplab.boundary import refuse
from sweeplab.core import stopping
from sweeplab.errors import UsageError
from sweeplab.integrations.restoring import restore
from sweeplab.trainers.loop import random_states, set_random_states

__all__ = ["ReportCallback", "logged_metrics"]

#: The key of the Lightning checkpoint's bytes in the resume state the callback hands over.
CHECKPOINT = "lightning_checkpoint"


def logged_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats, under their logged names (a value that is not one
    number is left out)."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if hasattr(value, "numel"):  # a tensor: self.log keeps scalars, but a callback may add anything
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, bool):
            continue
        try:
            values[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return values


def _validates_at_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` validates once an epoch, at its end (``val_check_interval=1.0``, the
    default; an int is a number of batches and a time leaves it unset)."""
    interval = getattr(trainer, "val_check_interval", None)
    return isinstance(interval, float) and interval == 1.0 and trainer.check_val_every_n_epoch is not None


class ReportCallback(pl.Callback):
    """Report each of a Lightning ``Trainer``'s validations to sweeplab's ``report`` and stop
    training when it answers "stop" (see the module docstring); ``monitor`` names the metric
    every validation must have logged."""

    def __init__(self, report: Callable[..., bool], monitor: str | None = None) -> None:
        self.report = report
        self.monitor = monitor
        self.stopped = False  # report answered "stop": later validations are not reported
        self.reported_step: int | None = None  # the step of the last evaluation reported
        self._fitting = False
        self._at_epoch_end = True  # reported at the end of training epochs (else: of validations)
        self._validated = False  # a validation ran in this training epoch (reported at its end)
        self._sigint: Any = None  # Ctrl-C's handler when fit started, put back after an interruption
        self._restored: tempfile.TemporaryDirectory[str] | None = None  # holds resume_from's checkpoint

    @property
    def resume_from(self) -> str | None:
        """The checkpoint a retried trial goes on from, for ``trainer.fit(..., ckpt_path=callback.resume_from)``:
        the one the callback handed over (:meth:`_checkpoint`), written to a temporary file kept
        as long as the callback; ``None`` on a first attempt. A saved state that is not one is
        :class:`~sweeplab.StaleResumeState` (the trial runs again from its start)."""
        if self._restored is None:
            restored = restore(self.report, CHECKPOINT, "Lightning", "resume.ckpt")
            if restored is None:
                return None
            self._restored, self.reported_step = restored  # reported by the earlier attempt (its curve is restored)
        return str(Path(self._restored.name) / "resume.ckpt")

    def state_dict(self) -> dict[str, Any]:
        """What the callback adds to each checkpoint the Trainer writes: the states of Python's,
        NumPy's and torch's generators, which Lightning's checkpoint leaves out, so that a fit
        resumed from it draws the shuffles and dropout masks of one never stopped."""
        states = random_states()
        if "numpy" in states:  # its key array as a list: Lightning loads checkpoints with torch.load(weights_only=True)
            states["numpy"] = (states["numpy"][0], states["numpy"][1].tolist(), *states["numpy"][2:])
        return {"random_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "random_states" in state_dict:
            set_random_states(state_dict["random_states"])

    # --- the Trainer's hooks -------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sigint = signal.getsignal(signal.SIGINT)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:
            refuse(UsageError("the Lightning Trainer never validates (no val_dataloaders given to fit, no "
                              "validation_step, or limit_val_batches=0), so there is nothing to report: pass "
                              "val_dataloaders (or a datamodule with val_dataloader) and self.log the metrics "
                              "in validation_step"))
        if any(isinstance(logger, MLFlowLogger) for logger in trainer.loggers):
            logging.getLogger(__name__).warning(
                "the Trainer's MLFlowLogger opens an MLflow run of its own beside the trial's, which already records "
                "every validation: pass logger=False unless both are wanted")
        self._fitting, self._validated = True, False
        self._at_epoch_end = _validates_at_epoch_end(trainer)
        if self.stopped:  # a second fit after report said stop
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fitting = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if stopping.requested() is None:
            return
        if self._at_epoch_end and batch_idx + 1 >= trainer.num_training_batches and not self.stopped:
            return  # the epoch's last batch: the trial stops at the epoch's end, once its validation is reported
        at = trainer.current_epoch + (batch_idx + 1) / trainer.num_training_batches if self._at_epoch_end \
            else trainer.global_step  # epochs done and the share of this one, or the optimizer steps
        self._stop_here(trainer, at)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._fitting or trainer.sanity_checking:
            return
        if self._at_epoch_end:
            self._validated = True  # reported with the epoch's training metrics, at its end
        else:
            self._report(trainer, pl_module, int(trainer.global_step))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting and self._at_epoch_end and self._validated:
            self._validated = False
            self._report(trainer, pl_module, int(trainer.current_epoch) + 1)  # at a stop signal: saves, then raises
        if self._fitting and not self.stopped and stopping.requested() is not None:  # an epoch that did not validate
            self._stop_here(trainer, trainer.current_epoch + 1 if self._at_epoch_end else trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Hand an interruption on as itself (see the module docstring): raised from here, it
        leaves ``trainer.fit`` before Lightning turns it into ``sys.exit(1)``."""
        if isinstance(exception, _SIGTERM) and stopping.requested() is not None:
            self._put_back_sigint()
            stopping.check()  # the sweep's stop, at a step: raises StoppedAtStep
        if isinstance(exception, KeyboardInterrupt):  # Ctrl-C, or a stop signal's StoppedAtStep
            self._put_back_sigint()
            raise exception

    # --- what they do --------------------------------------------------------------------------

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if self.stopped:
            trainer.should_stop = True  # min_epochs or min_steps kept it training
            return
        if self.reported_step is not None and step <= self.reported_step:
            return
        metrics = logged_metrics(trainer.callback_metrics)
        if self.monitor is not None and self.monitor not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing"
            refuse(UsageError(f"ReportCallback(monitor={self.monitor!r}): the module logged no {self.monitor!r} by "
                              f"step {step} (it logged {logged}): self.log({self.monitor!r}, ...) in validation_step, "
                              "or name one of those"))
        self.reported_step = step
        if self.report(step, metrics, state=pl_module.state_dict, resume=lambda: self._checkpoint(trainer)):
            self.stopped = True
            trainer.should_stop = True

    def _stop_here(self, trainer: pl.Trainer, at: float) -> None:
        """Answer a stop signal to the sweep between two batches: save the resume state here, at
        ``at`` (where sweeplab's ``report`` can), and raise sweeplab's stop."""
        save = getattr(self.report, "save_resume_state", None)
        if save is not None and not self.stopped:
            stopping.answer()  # stopping here: the save is not cut short
            save(lambda: self._checkpoint(trainer), at=at)
        stopping.check()

    def _checkpoint(self, trainer: pl.Trainer) -> dict[str, bytes]:
        """The resume state, built when a save is due: Lightning's own checkpoint of where the
        fit stands (``trainer.save_checkpoint``: module, optimizers, schedulers, the loops'
        progress, the callbacks' states with this one's generators), as bytes the sweep's store
        keeps and a retry on any machine reads."""
        with tempfile.TemporaryDirectory(prefix="sweeplab-") as folder:
            path = Path(folder) / "resume.ckpt"
            trainer.save_checkpoint(path)
            return {CHECKPOINT: path.read_bytes()}

    def _put_back_sigint(self) -> None:
        """Put back Ctrl-C's handler, which Lightning sets to "ignore" on a ``KeyboardInterrupt``."""
        if self._sigint is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is not self._sigint:
            signal.signal(signal.SIGINT, self._sigint)
