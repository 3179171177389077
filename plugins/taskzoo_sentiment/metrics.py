"""Classification metrics over the predictions `SentimentTask.predictions` returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskzoo.specs import MetricContext


def _ids(predictions: Sequence[dict[str, Any]]) -> list[int]:
    return [p["label"] for p in predictions]


def accuracy(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, _ids(predictions))) if references else 0.0


def macro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    from sklearn.metrics import f1_score

    labels = list(range(len(context.labels)))
    return float(f1_score(references, _ids(predictions), labels=labels, average="macro", zero_division=0))


def per_class(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(context.labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        references, _ids(predictions), labels=labels, zero_division=0
    )
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(context.labels)
    }


def confusion_matrix(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    labels = list(range(len(context.labels)))
    return sk_confusion_matrix(references, _ids(predictions), labels=labels).tolist()
