"""What the ``retrieval`` task (:mod:`sweeplab.trainers.retrieval`) accepts: its defaults and
limits, torch-free (see :mod:`sweeplab.trainers.settings`)."""

from __future__ import annotations

from typing import Any

from sweeplab.core import BOOLEAN, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Limit  # what each parameter accepts

__all__ = ["DEFAULTS", "METRICS", "LIMITS", "USED_WHEN"]

#: Every parameter and its default value; a ``--set`` value is read as its default's type.
DEFAULTS: dict[str, Any] = {
    "model": "scratch",  # tokens.SCRATCH: randomly initialised ChineseCLIP towers
    "hidden_size": 128,
    "text_layers": 2,
    "vision_layers": 2,
    "heads": 4,
    "projection_dim": 64,
    "patch_size": 8,
    "image_size": 64,
    "lr": 5e-5,
    "batch_size": 64,
    "eval_batch_size": 64,
    "warmup_steps": 100,
    "weight_decay": 0.001,
    "epochs": 3,
    "max_length": 52,
    "max_grad_norm": 1.0,
    "freeze_text": False,
    "freeze_vision": False,
}
#: What each parameter accepts (checked before the first trial). ``model`` has none: any
#: ChineseCLIP name or local directory, or ``scratch``.
LIMITS: dict[str, Limit] = {
    "hidden_size": POSITIVE_INT,
    "text_layers": POSITIVE_INT,
    "vision_layers": POSITIVE_INT,
    "heads": POSITIVE_INT,
    "projection_dim": POSITIVE_INT,
    "patch_size": POSITIVE_INT,
    "image_size": Limit(low=32, integer=True),
    "lr": POSITIVE,
    "batch_size": Limit(low=2, integer=True),  # a contrastive batch needs a negative
    "eval_batch_size": POSITIVE_INT,
    "warmup_steps": NON_NEGATIVE_INT,
    "weight_decay": NON_NEGATIVE,
    "epochs": POSITIVE_INT,
    "max_length": Limit(low=3, integer=True),  # [CLS], one token, [SEP]
    "max_grad_norm": NON_NEGATIVE,             # 0: no clipping
    "freeze_text": BOOLEAN,
    "freeze_vision": BOOLEAN,
}
#: The parameters only the ``scratch`` model uses (its towers' shape, as ``_build_model`` reads
#: them; a pretrained checkpoint brings its own, image size included): a trial of a checkpoint
#: does not record them (:meth:`sweeplab.sweeps.space.Space.inactive`).
USED_WHEN: dict[str, dict[str, tuple[str, ...]]] = {
    name: {"model": ("scratch",)}
    for name in ("hidden_size", "text_layers", "vision_layers", "heads", "projection_dim", "patch_size", "image_size")
}


#: The validation metrics each evaluation reports (:func:`sweeplab.trainers.retrieval.retrieval_metrics`
#: and the contrastive loss): ``--metric`` names one of them.
METRICS = ("val_recall_mean", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_i2t_mean", "val_i2t_r1", "val_i2t_r5", "val_i2t_r10",
           "val_loss")
