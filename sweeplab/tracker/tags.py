"""The names of the tags sweeplab puts on MLflow runs and experiments: what the recorder writes and
the read commands filter on. Plain strings, so that reading a store needs no MLflow import."""

from __future__ import annotations

__all__ = ["DEVICE", "DIRECTION", "EXPERIMENT_KIND", "GPUS", "METRIC", "MODEL_TRAINING", "NODE", "OVERFIT", "PARENT", "RESUMED_FROM",
           "RETRIED_BY", "RETRY_OF", "ROLE", "SPEC", "STATE", "STUDY", "TARGET", "TASK", "TRIAL"]

ROLE = "sweeplab.role"  # "sweep" (parent) or "trial" (child)
#: The experiment tag MLflow's UI (3.x) reads to choose its view: model training (runs, metrics,
#: comparison) rather than GenAI (traces), which it guesses for an experiment without the tag.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
METRIC = "sweeplab.metric"  # the validation metric that picks each trial's best evaluation and the best trial
DIRECTION = "sweeplab.direction"  # maximize | minimize: how that metric is judged
STATE = "sweeplab.state"  # running | complete | pruned | failed | killed
TASK = "sweeplab.task"
STUDY = "sweeplab.study"
TRIAL = "sweeplab.trial"  # the Optuna trial number of a child run
OVERFIT = "sweeplab.overfit"  # none, or the half of the onset criterion that fired
NO_CHECKPOINT = "sweeplab.no_checkpoint"  # on a finished trial's run without a checkpoint: why (see sweeps.artifacts)
PARENT = "mlflow.parentRunId"  # MLflow's own tag: a child run's parent
DEVICE = "sweeplab.device"  # where a trial runs: cpu, cuda:0...
NODE = "sweeplab.node"  # the Ray node a trial ran on (sweep run --ray): its id, as `ray status` lists it (node_ID)
GPUS = "sweeplab.gpus"  # the cards of --gpus a trial had, as the machine numbers them: 0, or 0,1 with --gpus-per-trial 2
SPEC = "sweeplab.spec"  # FILE.py:FUNCTION or package.module:FUNCTION a sweep was started with (see tasks.spec_name)
#: On the run of a later attempt of a trial (retried alone on a shared GPU, or after its process
#: died): the run of the attempt it repeats.
RETRY_OF = "sweeplab.retry_of"
RETRIED_BY = "sweeplab.retried_by"  # on the run of an attempt that a later attempt replaced: the later one's run
RESUMED_FROM = "sweeplab.resumed_from"  # on the run of a resumed attempt: the step it continued from
TARGET = "sweeplab.target"  # the --trials of the sweep's latest start (a param cannot change when a resume asks for more)
