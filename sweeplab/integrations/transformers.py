"""A Hugging Face ``Trainer`` swept by sweeplab: :class:`ReportCallback` hands each evaluation to ``report``.

Inside a training function (:mod:`sweeplab.trainers.function`) the Trainer is built as usual,
with one callback more, and trains from the checkpoint the callback restores for a retried trial::

    from sweeplab.integrations.transformers import ReportCallback

    def fit(config, report):
        args = TrainingArguments(output_dir=..., eval_strategy="epoch", report_to="none", ...)
        callback = ReportCallback(report)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          compute_metrics=accuracy, callbacks=[callback])
        trainer.train(resume_from_checkpoint=callback.resume_from)  # None on a first attempt

What the callback does at each of the Trainer's evaluations:

* **Metrics.** The Trainer's ``eval_X`` become ``val_X`` (``eval_loss`` -> ``val_loss``,
  ``eval_accuracy`` -> ``val_accuracy``: the names the sweep's ``--metric`` and the overfitting
  onset read, and the names the curves have in MLflow); a key without the ``eval_`` prefix keeps
  its name. The Trainer's timings (``eval_runtime``, ``eval_samples_per_second``,
  ``eval_steps_per_second``, ``eval_tokens_per_second``, ``eval_model_preparation_time``,
  ``eval_jit_compilation_time``) and ``epoch`` are dropped, and so is any value that is not a
  number. ``train_loss`` is the training loss the Trainer logged since the previous evaluation
  (its ``loss`` in ``state.log_history``; absent when it logged none: set ``logging_strategy``
  like ``eval_strategy``, or ``logging_steps`` to ``eval_steps``, for one at every evaluation).
* **Step.** The step of each point is ``state.global_step``, the optimizer steps the Trainer
  counts. An evaluation at a step already reported (``trainer.evaluate()`` after ``train()``)
  or after the trial was told to stop is not reported again; so, with several evaluation sets
  (a dict ``eval_dataset``), only the first set's metrics (``val_NAME_X``) are reported.
* **Stop.** When ``report`` answers "stop" (pruned, past the overfitting onset read from
  ``val_loss``, out of the sweep's time, or a non-finite loss) the callback sets
  ``control.should_training_stop``: the Trainer ends training by its own control flow, and the
  code after ``trainer.train()`` runs as usual. A stop signal to the sweep is answered at the
  end of the next optimizer step (of an epoch's last step: after the epoch's evaluation), once
  the Trainer's checkpoint there is handed over (below); the trial ends as interrupted.
* **Checkpoint.** The model's weights at the best evaluation (by the sweep's metric) become the
  trial's checkpoint (``checkpoint/model.pt``), copied to the CPU when an evaluation is a new
  best. It is the model the Trainer's ``load_best_model_at_end`` would load when its
  ``metric_for_best_model`` is the sweep's metric without ``val_`` (``accuracy`` for
  ``val_accuracy``); the Trainer's own checkpoint folders (``save_strategy``) are not needed
  for it, and ``save_strategy="no"`` saves their disk.
* **Resume.** The trial's resume state is the Trainer's own checkpoint folder (``checkpoint-STEP``:
  weights, optimizer, scheduler, scaler, ``rng_state.pth`` with the random generators, and
  ``trainer_state.json``), each file's bytes by its path, handed to ``report`` when sweeplab
  saves: every ``--checkpoint-minutes``, at the first evaluation after that is due, and at a
  stop signal. The Trainer writes its checkpoint after the evaluation (``on_evaluate`` comes
  before ``on_save`` in the same step), so at an evaluation where a save is due (or where the
  Trainer saves by its own ``save_strategy``) the callback sets ``control.should_save`` and
  reports the evaluation from ``on_save``, once the folder is written; the Trainer writes one at
  no other evaluation for sweeplab. A folder only the callback asked for is deleted once handed
  over under ``save_strategy="no"``; under ``"steps"`` or ``"epoch"`` it is one more of the
  Trainer's, rotated by ``save_total_limit``. A retried attempt finds the folder written back to
  a temporary one, :attr:`ReportCallback.resume_from` (``None`` on a first attempt), and
  ``trainer.train(resume_from_checkpoint=callback.resume_from)`` goes on as transformers
  resumes: from the saved global step, the batches trained in that epoch skipped, the
  generators restored, so that on the CPU the curve is the uninterrupted one, but for the
  ``train_loss`` of the first evaluation after a stop between evaluations, which averages only
  the steps trained after the resume (a checkpoint holds no loss summed since the last log). The
  run's ``sweeplab.resumed_from`` is the global step of the checkpoint. Nothing is handed over
  (a retry starts again) with ``save_only_model=True`` (a checkpoint without optimizer or
  generators), with ``save_strategy="best"`` (the Trainer overrules a save asked for), or to a
  ``report`` that is not sweeplab's.

What sweeplab refuses, as the trial's one-line reason, when the Trainer is built (or trains):

* a Trainer that never evaluates (``eval_strategy="no"``, transformers' default): there would
  be nothing to report;
* ``report_to`` naming ``"mlflow"`` or ``"all"`` (transformers 4's default, with MLflow
  installed): transformers' own ``MLflowCallback`` would open a second MLflow run beside the
  trial's. Pass ``report_to="none"``: the trial's run already holds every evaluation.

The Trainer seeds itself with ``args.seed`` (42 unless given) when it is built; the model built
before it is seeded with the trial's seed, as every training function is.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sweeplab.boundary import refuse
from sweeplab.core import stopping
from sweeplab.errors import UsageError
from sweeplab.integrations.restoring import restore

__all__ = ["ReportCallback", "sweep_metrics"]

#: The key of the Trainer checkpoint's files in the resume state the callback hands over.
CHECKPOINT = "transformers_checkpoint"

#: The endings of the Trainer's timing keys (``eval_runtime``...): how fast, not how good.
TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second", "_tokens_per_second",
           "_model_preparation_time", "_jit_compilation_time")


def sweep_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The Trainer's evaluation ``metrics`` under the names sweeplab reports (see the module
    docstring): ``eval_X`` -> ``val_X``, timings, ``epoch`` and non-numbers dropped."""
    named: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "epoch" or key.endswith(TIMINGS):
            continue
        number = _number(value)
        if number is not None:
            named["val_" + key.removeprefix("eval_") if key.startswith("eval_") else key] = number
    return named


def _number(value: Any) -> float | None:
    """``value`` as a float (a Python, NumPy or one-element torch number), ``None`` when it is not one."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # torch raises RuntimeError for a tensor of several numbers
        return None


def _strategy(args: TrainingArguments, *names: str) -> str:
    """The first of ``names`` that ``args`` has (a setting renamed between transformers versions),
    as its string (``"no"``, ``"steps"``, ``"epoch"``, ``"best"``)."""
    strategy = next((getattr(args, name) for name in names if hasattr(args, name)), None)
    return str(getattr(strategy, "value", strategy))


def _refuse_what_cannot_be_swept(args: TrainingArguments) -> None:
    """Refuse a Trainer that never evaluates, or that logs to MLflow itself (see the module docstring)."""
    if _strategy(args, "eval_strategy", "evaluation_strategy") == "no":
        refuse(UsageError("the Trainer never evaluates (eval_strategy='no'), so there is nothing to report: pass "
                          "TrainingArguments(eval_strategy='epoch') (or 'steps' with eval_steps) and an eval_dataset"))
    targets = args.report_to
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if "mlflow" in targets or "all" in targets:
        refuse(UsageError(f"TrainingArguments.report_to is {targets!r}: transformers would open a second MLflow run "
                          "beside the trial's; pass report_to='none' (transformers 4's default, 'all', includes mlflow)"))


class ReportCallback(TrainerCallback):
    """Report each of a ``transformers.Trainer``'s evaluations to sweeplab's ``report``, stop
    training when it answers "stop", and hand over the Trainer's checkpoint as the trial's resume
    state (see the module docstring)."""

    def __init__(self, report: Callable[..., bool]) -> None:
        self.report = report
        self.reported_step: int | None = None  # the global step of the last evaluation reported
        self.stopped = False  # report answered "stop": later evaluations are not reported
        self._training = False  # within trainer.train(): a checkpoint can follow an evaluation
        self._pending: tuple[int, dict[str, float], Any] | None = None  # reported once its checkpoint is written
        self._asked = False  # the callback asked for the checkpoint being written (not save_strategy)
        self._stopping = False  # a stop signal is answered once the checkpoint being written is handed over
        self._restored: tempfile.TemporaryDirectory[str] | None = None  # holds resume_from's folder

    @property
    def resume_from(self) -> str | None:
        """The checkpoint folder a retried trial goes on from, for
        ``trainer.train(resume_from_checkpoint=callback.resume_from)``: the one the callback
        handed over, written to a temporary folder kept as long as the callback; ``None`` on a
        first attempt. A saved state that is not one is :class:`~sweeplab.StaleResumeState` (the
        trial runs again from its start)."""
        if self._restored is None:
            restored = restore(self.report, CHECKPOINT, "Trainer", "")
            if restored is None:
                return None
            self._restored, self.reported_step = restored  # reported by the earlier attempt (its curve is restored)
        return self._restored.name

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _refuse_what_cannot_be_swept(args)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _refuse_what_cannot_be_swept(args)  # for a callback added after the Trainer was built
        self._training, self._stopping = True, False

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._training = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if stopping.requested() is None or self._stopping:
            return
        if self.stopped or not self._saves_now(args):
            stopping.check()  # a stop signal to the sweep ends the trial here, between two optimizer steps
        if float(state.epoch or 0).is_integer():
            return  # the epoch's last step: the trial stops at the epoch's end, after its evaluation (on_epoch_end)
        self._stop_at_checkpoint(control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if stopping.requested() is not None and not (self._stopping or self.stopped) and self._saves_now(args):
            self._stop_at_checkpoint(control)  # after the epoch's evaluation, if it has one

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        step = int(state.global_step)
        if self.stopped or (self.reported_step is not None and step <= self.reported_step):
            return
        values = sweep_metrics(metrics or {})
        train_loss = self._train_loss(state)
        if train_loss is not None:
            values = {"train_loss": train_loss, **values}
        model = kwargs.get("model")
        self.reported_step = step
        kept = model.state_dict if model is not None else None
        if self._training and self._hands_over(args) and (control.should_save or self._due()):
            self._asked = self._asked or not control.should_save
            control.should_save = True  # the Trainer writes its checkpoint after this evaluation: reported then
            self._pending = (step, values, kept)
            return
        self._hear(control, step, values, kept, None)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        pending, self._pending = self._pending, None
        asked, self._asked = self._asked, False
        try:
            if pending is not None:  # at a stop signal, report saves the state and raises sweeplab's stop
                self._hear(control, *pending, lambda: _checkpoint(folder))
            if self._stopping and not self.stopped:  # stopped between two evaluations
                save = self.report.save_resume_state  # type: ignore[attr-defined]
                save(lambda: _checkpoint(folder), at=state.global_step)
                stopping.check()
        finally:
            if asked and _strategy(args, "save_strategy") == "no":  # a checkpoint only the callback wanted
                shutil.rmtree(folder, ignore_errors=True)

    def _hands_over(self, args: TrainingArguments) -> bool:
        """Whether the callback can hand over the Trainer's checkpoints: ``report`` saves resume
        states (sweeplab's does), and the Trainer writes whole ones when it is asked to (not
        with ``save_only_model``, nor with ``save_strategy="best"``, which overrules the ask)."""
        return (hasattr(self.report, "resume_due") and hasattr(self.report, "save_resume_state")
                and not args.save_only_model and _strategy(args, "save_strategy") != "best")

    def _due(self) -> bool:
        """Whether ``report`` would save a resume state now: a save is due, or a stop signal came."""
        return bool(self.report.resume_due())  # type: ignore[attr-defined]

    def _saves_now(self, args: TrainingArguments) -> bool:
        """Whether ``report`` would save a resume state now, and the callback can hand over the
        Trainer's checkpoint for it."""
        return self._hands_over(args) and self._due()

    def _stop_at_checkpoint(self, control: TrainerControl) -> None:
        """Answer a stop signal to the sweep at this step: the Trainer writes its checkpoint,
        which is handed over before the trial stops (:meth:`on_save`)."""
        stopping.answer()  # stopping here: the save is not cut short
        self._stopping = True
        self._asked = self._asked or not control.should_save
        control.should_save = True

    def _hear(self, control: TrainerControl, step: int, values: dict[str, float], kept: Any, resume: Any) -> None:
        if self.report(step, values, state=kept, resume=resume):
            self.stopped = True
            control.should_training_stop = True

    def _train_loss(self, state: TrainerState) -> float | None:
        """The training loss the Trainer logged last, if it logged one since the previous evaluation."""
        since = -math.inf if self.reported_step is None else self.reported_step
        for entry in reversed(state.log_history):
            if entry.get("step", -math.inf) <= since:
                return None
            if "loss" in entry:
                return _number(entry["loss"])
        return None


def _checkpoint(folder: Path) -> dict[str, dict[str, bytes]]:
    """The resume state, built when a save is due: the checkpoint folder the Trainer just wrote
    (model, optimizer, scheduler, scaler, random generators, ``trainer_state.json``), each file's
    bytes by its path in the folder, which the sweep's store keeps and a retry on any machine reads."""
    return {CHECKPOINT: {path.relative_to(folder).as_posix(): path.read_bytes()
                         for path in sorted(folder.rglob("*")) if path.is_file()}}
