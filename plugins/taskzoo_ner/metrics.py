"""Entity-level metrics with seqeval (conlleval rules) over whole sentences."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from taskzoo.specs import MetricContext


def sentences(items: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[list[str]]:
    """Stitch per-window tag ids back into whole sentences of tag names, in sentence order."""
    windows: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for item in items:
        windows[item["sentence"]].append((item["start"], item["tags"]))
    return [
        [labels[tag] for _, tags in sorted(windows[sentence]) for tag in tags]
        for sentence in sorted(windows)
    ]


def _pair(predictions, references, context) -> tuple[list[list[str]], list[list[str]]]:
    return sentences(references, context.labels), sentences(predictions, context.labels)


def f1(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(*_pair(predictions, references, context), zero_division=0))


def precision(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> float:
    from seqeval.metrics import precision_score

    return float(precision_score(*_pair(predictions, references, context), zero_division=0))


def recall(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> float:
    from seqeval.metrics import recall_score

    return float(recall_score(*_pair(predictions, references, context), zero_division=0))


def macro_f1(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(*_pair(predictions, references, context), average="macro", zero_division=0))


def per_type(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> dict[str, dict[str, float]]:
    from seqeval.metrics import classification_report

    report = classification_report(*_pair(predictions, references, context), output_dict=True, zero_division=0)
    return {
        kind: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
               "support": int(v["support"])}
        for kind, v in report.items()
        if not kind.endswith(" avg")
    }


def type_confusion(predictions: Sequence[dict], references: Sequence[dict], context: MetricContext) -> dict[str, Any]:
    """Word-level confusion of entity types (B-/I- merged, 'O' for outside): rows true, columns predicted."""
    truth, guess = _pair(predictions, references, context)
    kinds = ["O"] + sorted({label[2:] for label in context.labels if label != "O"})
    index = {kind: i for i, kind in enumerate(kinds)}
    matrix = [[0] * len(kinds) for _ in kinds]
    for true_tags, predicted_tags in zip(truth, guess):
        for t, p in zip(true_tags, predicted_tags):
            matrix[index[t[2:] if t != "O" else "O"]][index[p[2:] if p != "O" else "O"]] += 1
    return {"labels": kinds, "matrix": matrix}
