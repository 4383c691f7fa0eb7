"""What the ``news`` task (:mod:`sweeplab.trainers.news`) accepts: its defaults and limits,
torch-free (see :mod:`sweeplab.trainers.settings`)."""

from __future__ import annotations

from typing import Any

from sweeplab.core import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Limit  # what each parameter accepts
from sweeplab.trainers.settings import CLASSIFICATION_METRICS

__all__ = ["DEFAULTS", "METRICS", "LAYOUT_NAMES", "LIMITS", "USED_WHEN"]

#: The keys of :data:`sweeplab.datasets.news.LAYOUTS`, named here without importing that reader
#: (it imports scikit-learn, a second); a test holds the two equal.
LAYOUT_NAMES = ("cnews", "thucnews", "ccf")

#: Every parameter and its default value; a ``--set`` value is read as its default's type.
DEFAULTS: dict[str, Any] = {
    "model": "scratch",        # tokens.SCRATCH: a randomly initialised BERT
    "hidden_size": 256,
    "layers": 2,
    "heads": 4,
    "dropout": 0.1,
    "lr": 5e-4,
    "batch_size": 64,
    "max_length": 32,
    "epochs": 3,
    "eval_every": 0,
    "warmup_ratio": 0.06,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "eval_batch_size": 256,
    "layout": "auto",
    "embedding_dim": 128,      # textcnn, fasttext
    "filters": 128,            # textcnn: channels per kernel width
    "kernel_sizes": "2,3,4",   # textcnn
    "ngrams": 2,               # fasttext: characters and their n-grams up to this n
    "buckets": 200_000,        # fasttext: hashed n-gram embeddings
}
#: What each parameter accepts (checked before the first trial). ``model`` has none: any
#: transformers name or local directory is a model, besides the families.
LIMITS: dict[str, Limit] = {
    "hidden_size": POSITIVE_INT,
    "layers": POSITIVE_INT,
    "heads": POSITIVE_INT,
    "dropout": FRACTION,
    "lr": POSITIVE,
    "batch_size": POSITIVE_INT,
    "max_length": Limit(low=3, integer=True),  # [CLS], one token, [SEP]
    "epochs": POSITIVE_INT,
    "eval_every": NON_NEGATIVE_INT,            # 0: once per epoch
    "warmup_ratio": FRACTION,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,             # 0: no clipping
    "eval_batch_size": POSITIVE_INT,
    "layout": Limit.one_of("auto", *LAYOUT_NAMES),
    "embedding_dim": POSITIVE_INT,
    "filters": POSITIVE_INT,
    "kernel_sizes": Limit(low=1, integer=True, listed=True),
    "ngrams": POSITIVE_INT,
    "buckets": POSITIVE_INT,
}
#: The parameters one model family only uses, and the ``model`` values it uses them for (as in
#: ``_build_model`` and :func:`~sweeplab.trainers.text_models.build_text_model`): a trial of another
#: family, or of a pretrained checkpoint, does not record them (:meth:`sweeplab.sweeps.space.Space.inactive`).
USED_WHEN: dict[str, dict[str, tuple[str, ...]]] = {
    "hidden_size": {"model": ("scratch",)},   # the random BERT's width, depth and attention heads
    "layers": {"model": ("scratch",)},
    "heads": {"model": ("scratch",)},
    "embedding_dim": {"model": ("textcnn", "fasttext")},
    "filters": {"model": ("textcnn",)},
    "kernel_sizes": {"model": ("textcnn",)},
    "ngrams": {"model": ("fasttext",)},
    "buckets": {"model": ("fasttext",)},
}


#: The validation metrics each evaluation reports: ``--metric`` names one of them.
METRICS = CLASSIFICATION_METRICS
