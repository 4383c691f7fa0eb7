"""Metrics per evaluation: classification (computed by scikit-learn) and retrieval recall@K."""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, classification_report, f1_score, log_loss, roc_auc_score

__all__ = ["classification_metrics", "per_class_report", "recall_at_k"]


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """Loss, accuracy, macro F1 and one-vs-rest macro ROC-AUC of class probabilities.

    * ``loss`` -- mean cross-entropy (scikit-learn ``log_loss`` over all classes);
    * ``accuracy`` -- share of argmax predictions equal to the label;
    * ``f1_macro`` -- unweighted mean of the per-class F1 scores;
    * ``roc_auc`` -- unweighted mean over classes of the one-vs-rest ROC-AUC; ``nan`` when a class
      is absent from ``y_true`` (the AUC is then undefined).
    """
    n_classes = y_prob.shape[1]
    labels = list(range(n_classes))
    y_pred = y_prob.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        try:
            if n_classes == 2:
                auc = float(roc_auc_score(y_true, y_prob[:, 1]))
            else:
                auc = float(roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro", labels=labels))
        except ValueError:
            auc = math.nan
        f1 = float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))
    return {
        f"{prefix}loss": float(log_loss(y_true, np.clip(y_prob, 1e-12, 1.0), labels=labels)),
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}f1_macro": f1,
        f"{prefix}roc_auc": auc,
    }


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]) -> tuple[dict, str]:
    """scikit-learn's per-class precision, recall, F1 and support, as a dict and as the usual
    text table."""
    args = {"labels": list(range(len(class_names))), "target_names": list(class_names), "zero_division": 0, "digits": 4}
    return classification_report(y_true, y_pred, output_dict=True, **args), classification_report(y_true, y_pred, **args)


def recall_at_k(similarity: np.ndarray, targets: list[list[int]], ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K of a retrieval: the share of queries (rows of ``similarity``) for which at least
    one of their targets (column indices) is among the K highest-scoring columns.

    A query's rank is the number of other columns scoring at least as high as its best target:
    ties count against the query, so a collapsed model that scores everything alike gets chance,
    not perfect, recall. Queries without targets are left out; a similarity that is not finite
    gives ``nan``."""
    similarity = np.asarray(similarity, dtype=np.float64)
    rows = [i for i, t in enumerate(targets) if t]
    if not rows or not np.isfinite(similarity).all():
        return {k: math.nan for k in ks}
    mask = np.zeros_like(similarity, dtype=bool)
    for i in rows:
        mask[i, targets[i]] = True
    best = np.where(mask, similarity, -np.inf).max(axis=1)
    rank = ((similarity > best[:, None]) | ((similarity == best[:, None]) & ~mask)).sum(axis=1)[rows]
    return {k: float((rank < k).mean()) for k in ks}
