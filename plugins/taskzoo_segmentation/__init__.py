"""Segmentation: fine-tune a segmentation-models-pytorch network with a pretrained timm encoder on
images and pixel masks (trees in a forest, cells, defects).

This module is what the ``taskzoo`` entry point loads: it only declares records, so listing tasks
never imports torch. The work happens in `taskzoo_segmentation.task` (networks, augmentation,
outputs), `taskzoo_segmentation.data` (folders, masks, classes.yaml) and `.metrics` (IoU, Dice).
"""

from __future__ import annotations

from typing import Any

from taskzoo import (BackboneSource, Finding, MetricSpec, Option, SampleData, SearchParam, TaskSpec, hookimpl,
                     training_space)
from taskzoo.sources import TIMM

TASK = "segmentation"
# A constant learning rate after warmup: on short runs of few images, decaying it to zero cost
# mean IoU (benchmarks/segmentation_recipe.py: 0.524 constant against 0.489 linear over two seeds).
DEFAULTS = {"epochs": 15, "lr": 1e-3, "batch_size": 8, "weight_decay": 1e-4, "scheduler": "constant"}


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Image segmentation: a class for every pixel (smp networks on timm encoders)",
            data_formats=("folder: images/ + masks/ (+ classes.yaml, train/ val/)",
                          "COCO JSON: polygons or RLE (+ --images FOLDER)"),
            task_class="taskzoo_segmentation.task:SegmentationTask",
            main_metric="mean_iou",
            defaults=DEFAULTS,
            # Sides divisible by 32, which every architecture on the default encoder takes.
            search_space=(*training_space(DEFAULTS), SearchParam("image-size", choices=(192, 256, 320)),
                          SearchParam("arch", choices=("unet", "fpn", "deeplabv3plus"))),
            options=(
                Option("arch", "Network architecture.", choices=("unet", "unetplusplus", "fpn", "deeplabv3plus",
                       "linknet", "manet", "pspnet", "segformer"), default="unet", commands=("run",)),
                Option("image-size", "Side of the square the images are resized and cropped to (detection's "
                       "--image-size is the longest side instead).", type=int, default=256, minimum=32,
                       commands=("run",)),
                Option("loss", "Training loss.", choices=("ce", "dice", "ce+dice"), default="ce+dice", commands=("run",)),
                Option("augment", "Training augmentation: flip (resize, horizontal flips), crop (also random scale "
                       "and aspect crops and colour jitter), none.", choices=("flip", "crop", "none"), default="crop",
                       commands=("run",)),
                Option("no-pretrained", "Start the encoder from random weights (to see what pretraining buys).",
                       type=bool, default=False, commands=("run",)),
                Option("images", "Folder that a COCO file's file_name entries are relative to (default: beside the "
                       "file, or its images/); --val's COCO file finds its images beside itself.",
                       commands=("run", "check", "evaluate"), remember=False, path=True),
            ),
            # 12 + 4 of the coins images (examples/segmentation), shrunk to 64 x 64.
            sample=SampleData(
                train="taskzoo_segmentation/sample/train",
                test="taskzoo_segmentation/sample/test",
                predict="taskzoo_segmentation/sample/test/images",
                predict_output="masks",
                bad=("taskzoo_segmentation/sample/mask_without_image",),
                options={"image-size": 64, "batch-size": 4},
            ),
        )
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_segmentation import metrics

    return [
        MetricSpec("mean_iou", (TASK,), metrics.mean_iou, description="Intersection over union, averaged over classes."),
        MetricSpec("mean_dice", (TASK,), metrics.mean_dice, description="Dice (pixel F1), averaged over classes."),
        MetricSpec("pixel_accuracy", (TASK,), metrics.pixel_accuracy, description="Share of pixels labelled correctly."),
        MetricSpec("per_class", (TASK,), metrics.per_class, description="IoU, Dice and pixel count per class."),
        MetricSpec("confusion_matrix", (TASK,), metrics.confusion_matrix, description="Pixel counts: rows true, columns predicted."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_segmentation.data import check

    return check(data)


@hookimpl
def taskzoo_backbone_sources() -> list[BackboneSource]:
    return [TIMM]
