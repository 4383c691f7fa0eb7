"""A Hugging Face ``Trainer`` swept by sweeplab: :class:`ReportCallback` hands each evaluation to ``report``.

Inside a training function (:mod:`sweeplab.trainers.function`) the Trainer is built as usual,
with one callback more::

    from sweeplab.integrations.transformers import ReportCallback

    def fit(config, report):
        args = TrainingArguments(output_dir=..., eval_strategy="epoch", report_to="none", ...)
        Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                compute_metrics=accuracy, callbacks=[ReportCallback(report)]).train()

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
  code after ``trainer.train()`` runs as usual. A stop signal to the sweep is answered after
  the next optimizer step (the trial ends as interrupted, and a retry starts it again).
* **Checkpoint.** The model's weights at the best evaluation (by the sweep's metric) become the
  trial's checkpoint (``checkpoint/model.pt``), copied to the CPU when an evaluation is a new
  best. It is the model the Trainer's ``load_best_model_at_end`` would load when its
  ``metric_for_best_model`` is the sweep's metric without ``val_`` (``accuracy`` for
  ``val_accuracy``); the Trainer's own checkpoint folders (``save_strategy``) are not needed
  for it, and ``save_strategy="no"`` saves their disk.

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
from collections.abc import Callable, Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sweeplab.boundary import refuse
from sweeplab.core import stopping
from sweeplab.errors import UsageError

__all__ = ["ReportCallback", "sweep_metrics"]

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


def _setting(args: TrainingArguments, *names: str) -> Any:
    """The first of ``names`` that ``args`` has (a setting renamed between transformers versions)."""
    return next((getattr(args, name) for name in names if hasattr(args, name)), None)


def _refuse_what_cannot_be_swept(args: TrainingArguments) -> None:
    """Refuse a Trainer that never evaluates, or that logs to MLflow itself (see the module docstring)."""
    strategy = _setting(args, "eval_strategy", "evaluation_strategy")
    if str(getattr(strategy, "value", strategy)) == "no":
        refuse(UsageError("the Trainer never evaluates (eval_strategy='no'), so there is nothing to report: pass "
                          "TrainingArguments(eval_strategy='epoch') (or 'steps' with eval_steps) and an eval_dataset"))
    targets = args.report_to
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if "mlflow" in targets or "all" in targets:
        refuse(UsageError(f"TrainingArguments.report_to is {targets!r}: transformers would open a second MLflow run "
                          "beside the trial's; pass report_to='none' (transformers 4's default, 'all', includes mlflow)"))


class ReportCallback(TrainerCallback):
    """Report each of a ``transformers.Trainer``'s evaluations to sweeplab's ``report`` and stop
    training when it answers "stop" (see the module docstring)."""

    def __init__(self, report: Callable[..., bool]) -> None:
        self.report = report
        self.reported_step: int | None = None  # the global step of the last evaluation reported
        self.stopped = False  # report answered "stop": later evaluations are not reported

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _refuse_what_cannot_be_swept(args)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _refuse_what_cannot_be_swept(args)  # for a callback added after the Trainer was built

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        stopping.check()  # a stop signal to the sweep ends the trial here, between two optimizer steps

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
        if self.report(step, values, state=model.state_dict if model is not None else None):
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
