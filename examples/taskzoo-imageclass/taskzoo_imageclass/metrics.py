"""Accuracy and macro-F1 over the predictions `ImageClassTask.predictions` returns ({"label": id})."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskzoo.specs import MetricContext


def accuracy(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    if not references:
        return 0.0
    return sum(p["label"] == r for p, r in zip(predictions, references)) / len(references)


def macro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> float:
    # Every class the model knows counts, including one missing from this split (its F1 is 0).
    classes = range(len(context.labels)) if context.labels else sorted(set(references))
    scores = []
    for label in classes:
        true_positive = sum(p["label"] == label and r == label for p, r in zip(predictions, references))
        predicted = sum(p["label"] == label for p in predictions)
        actual = sum(r == label for r in references)
        scores.append(2 * true_positive / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores) if scores else 0.0
