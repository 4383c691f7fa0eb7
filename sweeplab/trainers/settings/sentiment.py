"""What the ``sentiment`` task (:mod:`sweeplab.trainers.sentiment`) accepts: its defaults and
limits, torch-free (see :mod:`sweeplab.trainers.settings`)."""

from __future__ import annotations

from typing import Any

from sweeplab.core import BOOLEAN, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Limit  # what each parameter accepts
from sweeplab.trainers.settings import CLASSIFICATION_METRICS

__all__ = ["DEFAULTS", "METRICS", "LIMITS", "MODALITIES", "USED_WHEN"]

#: Every parameter and its default value; a ``--set`` value is read as its default's type.
DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "lr": 1e-5,
    "complexity": "high",
    "epochs": 10,
    "modality": "fusion",
    "dropout": 0.3,
    "weight_decay": 1e-4,
    "text_model": "minilm",
    "text_pooling": "auto",
    "image_model": "efficientnet-lite0",
    "image_weights": "",
    "freeze_backbones": True,
    "max_length": 128,
    "image_size": 224,
    "augment": True,
    "rotation_degrees": 10.0,
    "plateau_factor": 0.5,
    "plateau_patience": 1,
}
#: The inputs a model may use: both, the text alone, the image alone.
MODALITIES = ("fusion", "text", "image")
#: What each parameter accepts (checked before the first trial). ``text_model``,
#: ``image_model`` and ``image_weights`` have none: a preset, a model name or a local path.
LIMITS: dict[str, Limit] = {
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE,
    "complexity": Limit.one_of("high", "low"),
    "epochs": POSITIVE_INT,
    "modality": Limit.one_of(*MODALITIES),
    "dropout": FRACTION,
    "weight_decay": NON_NEGATIVE,
    "text_pooling": Limit.one_of("auto", "cls", "mean"),
    "freeze_backbones": BOOLEAN,
    "max_length": Limit(low=3, integer=True),             # [CLS], one token, [SEP]
    "image_size": Limit(low=32, integer=True),
    "augment": BOOLEAN,
    "rotation_degrees": NON_NEGATIVE,                     # rotations within +- this angle
    "plateau_factor": Limit(low=0, high=1, low_open=True, high_open=True),
    "plateau_patience": NON_NEGATIVE_INT,
}
#: The parameters of one input only, and the ``modality`` values that read it: a text-only trial
#: does not record the image backbone, an image-only one the text backbone
#: (:meth:`sweeplab.sweeps.space.Space.inactive`). ``image_size`` is not here: every trial decodes
#: the images, to drop the rows whose image does not decode.
USED_WHEN: dict[str, dict[str, tuple[str, ...]]] = {
    "text_model": {"modality": ("fusion", "text")},
    "text_pooling": {"modality": ("fusion", "text")},
    "max_length": {"modality": ("fusion", "text")},
    "image_model": {"modality": ("fusion", "image")},
    "image_weights": {"modality": ("fusion", "image")},
}


#: The validation metrics each evaluation reports: ``--metric`` names one of them.
METRICS = CLASSIFICATION_METRICS
