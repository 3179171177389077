"""Object detection: fine-tune a detector on boxes drawn on your own images (cars in a parking lot
feed, defects on a line), from COCO JSON or the YOLO layout.

This module is what the ``taskzoo`` entry point loads: it only declares records, so listing tasks
never imports torch. The work happens in `taskzoo_detection.task` (models, augmentation, outputs),
`.data` (COCO and YOLO readers), `.models` (torchvision and transformers detectors), `.metrics`
(COCO mAP via torchmetrics) and `.pictures`.
"""

from __future__ import annotations

from typing import Any

from taskzoo import (BackboneSource, Finding, MetricSpec, Option, SampleData, SearchParam, TaskSpec, hookimpl,
                     training_space)
from taskzoo.sources import TIMM

TASK = "detection"
DEFAULTS = {"epochs": 12, "lr": 5e-4, "batch_size": 4, "weight_decay": 1e-4}


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Object detection: boxes and categories (torchvision detectors on timm backbones, or DETR-style transformers)",
            data_formats=("COCO JSON (+ --images FOLDER)", "YOLO: dataset.yaml, or images/ + labels/ + classes.txt",
                          "Pascal VOC: images/ + annotations/*.xml, or VOCdevkit"),
            task_class="taskzoo_detection.task:DetectionTask",
            main_metric="map",
            defaults=DEFAULTS,
            search_space=(*training_space(DEFAULTS), SearchParam("image-size", choices=(384, 512, 640)),
                          SearchParam("arch", choices=("fasterrcnn", "fcos", "retinanet"))),
            options=(
                Option("images", "Folder that a COCO file's file_name entries are relative to (default: beside the file, "
                       "or its images/).", commands=("run", "check", "evaluate", "predict"), remember=False, path=True),
                Option("val-images", "Image folder for --val when it differs from --images.", remember=False),
                Option("arch", "Detector for timm backbones (transformers checkpoints bring their own).",
                       choices=("fasterrcnn", "fcos", "retinanet"), default="fasterrcnn", commands=("run",)),
                Option("image-size", "Longest image side the detector works at (timm backbones); images keep their "
                       "shape (segmentation's --image-size is a square side instead).", type=int, default=512,
                       minimum=32, commands=("run",)),
                Option("no-pretrained", "Start the backbone from random weights (to see what pretraining buys).",
                       type=bool, default=False, commands=("run",)),
                Option("score-threshold", "Keep detections scoring at least this in the output and pictures.",
                       type=float, default=0.3, commands=("predict",)),
            ),
            # Coloured squares on noise in the YOLO layout (images/, labels/, classes.txt).
            sample=SampleData(
                train="taskzoo_detection/sample/train",
                test="taskzoo_detection/sample/test",
                predict="taskzoo_detection/sample/test/images",
                predict_output="detections.json",
                bad=("taskzoo_detection/sample/class_outside_names",),
                options={"image-size": 128, "batch-size": 4},
            ),
        )
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_detection import metrics

    return [
        MetricSpec("map", (TASK,), metrics.map_50_95, description="COCO mAP@[.5:.95] (torchmetrics + pycocotools)."),
        MetricSpec("map_50", (TASK,), metrics.map_50, description="mAP at IoU 0.5."),
        MetricSpec("map_75", (TASK,), metrics.map_75, description="mAP at IoU 0.75."),
        MetricSpec("recall", (TASK,), metrics.recall, description="COCO recall at 100 detections per image."),
        MetricSpec("per_class", (TASK,), metrics.per_class, description="AP, AP@.5, recall and true boxes per category."),
        MetricSpec("pr_curve", (TASK,), metrics.pr_curve, description="Precision-recall curve at IoU 0.5 per category."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_detection.data import check

    return check(data)


@hookimpl
def taskzoo_backbone_sources() -> list[BackboneSource]:
    return [TIMM]
