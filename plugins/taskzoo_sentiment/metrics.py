"""Classification metrics over the predictions `SentimentTask.predictions` returns.

All four come from one confusion matrix counted with numpy, with scikit-learn's definitions
(macro F1 over every label the model knows, 0 where a label was neither predicted nor present):
importing ``sklearn.metrics`` costs about a second, paid by every run's first evaluation and by
every trial of a search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taskzoo.specs import MetricContext


def _ids(predictions: Sequence[dict[str, Any]]) -> list[int]:
    return [p["label"] for p in predictions]


def _matrix(predictions: Sequence[dict[str, Any]], references: Sequence[int], classes: int) -> np.ndarray:
    """Rows: the true label; columns: the predicted one."""
    truth = np.asarray(references, dtype=np.int64)
    predicted = np.asarray(_ids(predictions), dtype=np.int64)
    return np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def _per_label(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1, support) of each label; 0 where a ratio has nothing to divide by."""
    hits = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return precision, recall, f1, support


def accuracy(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    if not references:
        return 0.0
    return float(np.mean(np.asarray(_ids(predictions)) == np.asarray(references)))


def macro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    if not references:
        return 0.0
    return float(_per_label(_matrix(predictions, references, len(context.labels)))[2].mean())


def per_class(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = _per_label(_matrix(predictions, references, len(context.labels)))
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(context.labels)
    }


def confusion_matrix(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> list[list[int]]:
    return _matrix(predictions, references, len(context.labels)).tolist()
