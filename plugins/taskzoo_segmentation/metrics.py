"""Segmentation metrics from per-image confusion matrices (rows true class, columns predicted)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taskzoo.specs import MetricContext


def confusion(predictions: Sequence[dict[str, Any]], context: MetricContext) -> np.ndarray:
    classes = len(context.labels)
    total = np.zeros((classes, classes), dtype=np.int64)
    for item in predictions:
        total += np.asarray(item["confusion"], dtype=np.int64)
    return total


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true_positive = np.diag(matrix).astype(float)
    false_positive = matrix.sum(axis=0) - true_positive
    false_negative = matrix.sum(axis=1) - true_positive
    union = true_positive + false_positive + false_negative
    iou = np.divide(true_positive, union, out=np.full_like(true_positive, np.nan), where=union > 0)
    dice = np.divide(2 * true_positive, union + true_positive, out=np.full_like(true_positive, np.nan), where=union > 0)
    return iou, dice, matrix.sum(axis=1)


def mean_iou(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float:
    """IoU averaged over the classes that occur in the truth or the predictions."""
    iou, _, _ = _per_class(confusion(predictions, context))
    return float(np.nanmean(iou)) if not np.isnan(iou).all() else 0.0


def mean_dice(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float:
    _, dice, _ = _per_class(confusion(predictions, context))
    return float(np.nanmean(dice)) if not np.isnan(dice).all() else 0.0


def pixel_accuracy(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float:
    matrix = confusion(predictions, context)
    return float(np.trace(matrix) / max(matrix.sum(), 1))


def per_class(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> dict[str, dict[str, float]]:
    iou, dice, pixels = _per_class(confusion(predictions, context))
    return {
        name: {"iou": float(np.nan_to_num(iou[i])), "dice": float(np.nan_to_num(dice[i])), "pixels": int(pixels[i])}
        for i, name in enumerate(context.labels)
    }


def confusion_matrix(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> list[list[int]]:
    return confusion(predictions, context).tolist()
