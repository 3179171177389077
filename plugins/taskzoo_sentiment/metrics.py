"""Classification metrics over the predictions `SentimentTask.predictions` returns.

All four come from one confusion matrix counted with numpy, with scikit-learn's definitions
(macro F1 over every label the model knows, 0 where a label was neither predicted nor present):
importing ``sklearn.metrics`` costs about a second, paid by every run's first evaluation and by
every trial of a search.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
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


# -- multi-label: each prediction has "labels" (ids), each reference is a list of ids --------------


def _multi(predictions: Sequence[dict[str, Any]]) -> bool:
    return bool(predictions) and "labels" in predictions[0]


def _hot(sets: Sequence[Sequence[int]], classes: int) -> np.ndarray:
    hot = np.zeros((len(sets), classes), dtype=bool)
    for row, ids in enumerate(sets):
        hot[row, list(ids)] = True
    return hot


def _multi_counts(predictions: Sequence[dict[str, Any]], references: Sequence[Sequence[int]],
                  classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted, present) per label."""
    predicted = _hot([p["labels"] for p in predictions], classes)
    truth = _hot(references, classes)
    return (predicted & truth).sum(0), predicted.sum(0), truth.sum(0)


def _f1(hits: np.ndarray, predicted: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=np.float64)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=np.asarray(predicted) > 0)
    recall = np.divide(hits, present, out=np.zeros_like(hits), where=np.asarray(present) > 0)
    both = precision + recall
    return precision, recall, np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)


def best_thresholds(probabilities: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per label, the threshold with the best F1 on the validation probabilities, placed halfway
    between the lowest score it keeps and the next score below (a margin on both sides); 0.5 for
    a label the validation data never shows."""
    chosen = []
    for label in range(probabilities.shape[1]):
        scores, present = probabilities[:, label], truth[:, label].astype(bool)
        if not present.any():
            chosen.append(0.5)
            continue
        candidates = np.unique(scores)
        hits = np.array([(present & (scores >= c)).sum() for c in candidates])
        predicted = np.array([(scores >= c).sum() for c in candidates])
        f1 = _f1(hits, predicted, np.full(len(candidates), present.sum()))[2]
        best = int(np.flatnonzero(f1 == f1.max())[0])
        threshold = (candidates[best] + candidates[best - 1]) / 2 if best > 0 else candidates[best]
        chosen.append(round(float(threshold), 6))
    return chosen


def micro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float | None:
    if not _multi(predictions):
        return None  # one label per text: micro F1 is the accuracy
    hits, predicted, present = _multi_counts(predictions, references, len(context.labels))
    return float(_f1(np.array([hits.sum()]), np.array([predicted.sum()]), np.array([present.sum()]))[2][0])


def most_common_set_micro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[Any],
                             context: MetricContext) -> float | None:
    if not _multi(predictions) or not references:
        return None
    common = list(Counter(tuple(sorted(r)) for r in references).most_common(1)[0][0])
    return micro_f1([{"labels": common}] * len(references), references, context)


def plot_per_label(metrics: Mapping[str, Any], thresholds: Sequence[float] | None, output: Any) -> Any:
    """Precision, recall and F1 of each label (multi-label runs), with its threshold and support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from taskzoo.helpers.plots import save_figure

    per = metrics["per_class"]
    names = list(per)
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    width = 0.27
    for offset, key, colour in ((-width, "precision", "#2b6cb0"), (0, "recall", "#d69e2e"), (width, "f1", "#2f855a")):
        bars = axis.bar(positions + offset, [per[n][key] for n in names], width, label=key, color=colour)
        axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    labels = [f"{n}\n{per[n]['support']} texts" + (f", t={thresholds[i]:.2f}" if thresholds else "")
              for i, n in enumerate(names)]
    axis.set_xticks(positions, labels=labels, fontsize=8)
    axis.set_ylim(0, 1.1)
    title = "Per label"
    if isinstance(metrics.get("micro_f1"), float):
        title += f": micro F1 {metrics['micro_f1']:.3f}, macro F1 {metrics.get('macro_f1', 0):.3f}"
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)


def accuracy(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float:
    """The share of texts labelled correctly (multi-label: with exactly their set of labels, as
    scikit-learn's accuracy_score counts it)."""
    if not references:
        return 0.0
    if _multi(predictions):
        return float(np.mean([sorted(p["labels"]) == sorted(r) for p, r in zip(predictions, references)]))
    return float(np.mean(np.asarray(_ids(predictions)) == np.asarray(references)))


def macro_f1(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> float:
    if not references:
        return 0.0
    if _multi(predictions):
        return float(_f1(*_multi_counts(predictions, references, len(context.labels)))[2].mean())
    return float(_per_label(_matrix(predictions, references, len(context.labels)))[2].mean())


def per_class(predictions: Sequence[dict[str, Any]], references: Sequence[Any], context: MetricContext) -> dict[str, dict[str, float]]:
    if _multi(predictions):
        hits, predicted, present = _multi_counts(predictions, references, len(context.labels))
        precision, recall, f1 = _f1(hits, predicted, present)
        return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(present[i])} for i, name in enumerate(context.labels)}
    precision, recall, f1, support = _per_label(_matrix(predictions, references, len(context.labels)))
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(context.labels)
    }


def confusion_matrix(predictions: Sequence[dict[str, Any]], references: Sequence[int], context: MetricContext) -> list[list[int]] | None:
    if _multi(predictions):
        return None  # several labels per text: per_class and per_label.png say it
    return _matrix(predictions, references, len(context.labels)).tolist()
