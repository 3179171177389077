"""COCO detection metrics through torchmetrics' MeanAveragePrecision (pycocotools underneath):
mAP@[.5:.95], mAP@.5, mAP@.75, recall at 100 detections, per-category figures and the
precision-recall curve at IoU 0.5. Crowd regions are passed as COCO's iscrowd."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taskzoo.specs import MetricContext

# The metric hooks are called one after another with the same lists: compute COCO's evaluation
# once per list. The lists themselves are kept, so an identity match cannot be a recycled id.
_last: dict[str, Any] = {}


def coco_summary(predictions: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]],
                 context: MetricContext) -> dict[str, Any]:
    if _last.get("predictions") is predictions and _last.get("references") is references:
        return _last["summary"]
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    # Per-category figures are read off the one evaluation's precision and recall arrays, as COCO's
    # summary averages them; class_metrics=True would run the whole evaluation again per category.
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True, backend="pycocotools")
    preds = [{"boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
              "scores": torch.tensor(p["scores"], dtype=torch.float32),
              "labels": torch.tensor(p["labels"], dtype=torch.long)} for p in predictions]
    target = [{"boxes": torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4),
               "labels": torch.tensor(r["labels"], dtype=torch.long),
               "iscrowd": torch.tensor(r["crowd"], dtype=torch.long)} for r in references]
    metric.update(preds, target)
    result = metric.compute()
    names = list(context.labels)
    classes = result["classes"].reshape(-1).tolist()
    precision = result["precision"].numpy()  # IoU thresholds x 101 recall points x classes x areas x max dets
    recall = result["recall"].numpy()  # IoU thresholds x classes x areas x max dets
    counts = np.bincount(np.concatenate([np.asarray(r["labels"], dtype=np.int64)[~np.asarray(r["crowd"], dtype=bool)]
                                         for r in references] or [np.zeros(0, np.int64)]), minlength=len(names))
    per_class, curves = {}, {}
    for column, label in enumerate(classes):
        if not 0 <= label < len(names):
            continue
        at_50 = precision[0, :, column, 0, -1]
        if counts[label] == 0:  # no true boxes: AP is undefined, as in COCO's own summary
            continue
        per_class[names[label]] = {"ap": _mean_defined(precision[:, :, column, 0, -1]),
                                   "ap50": _mean_defined(at_50),
                                   "recall": _mean_defined(recall[:, column, 0, -1]), "boxes": int(counts[label])}
        curves[names[label]] = [round(float(v), 4) for v in at_50]
    summary = {
        "map": max(float(result["map"]), 0.0),
        "map_50": max(float(result["map_50"]), 0.0),
        "map_75": max(float(result["map_75"]), 0.0),
        "recall": max(float(result["mar_100"]), 0.0),
        "per_class": {name: per_class.get(name, {"ap": None, "ap50": None, "recall": None, "boxes": int(counts[i])})
                      for i, name in enumerate(names)},
        "pr_curve": curves,
    }
    _last.update(predictions=predictions, references=references, summary=summary)
    return summary


def _mean_defined(values: np.ndarray) -> float:
    """COCO's average: -1 marks 'undefined' (no true boxes) and is left out."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else 0.0


def _field(name: str, doc: str) -> Any:
    def compute(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> Any:
        return coco_summary(predictions, references, context)[name]

    compute.__name__, compute.__doc__ = name, doc
    return compute


map_50_95 = _field("map", "COCO mAP averaged over IoU 0.5 to 0.95.")
map_50 = _field("map_50", "mAP at IoU 0.5 (PASCAL VOC's measure).")
map_75 = _field("map_75", "mAP at IoU 0.75.")
recall = _field("recall", "Recall at 100 detections per image, averaged over IoU 0.5 to 0.95 and categories.")
per_class = _field("per_class", "AP, AP@.5, recall and number of true boxes per category.")
pr_curve = _field("pr_curve", "Precision at COCO's 101 recall points at IoU 0.5, per category.")
