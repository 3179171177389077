"""Benchmark: taskzoo's shared trainer against a plain PyTorch loop on the detection task.

One command runs both arms, each in its own subprocess, on the same detector (Faster R-CNN on a
feature pyramid over the offline EfficientNet-Lite0 backbone, identical initial weights), data
split, data loaders and box-aware augmentation, optimizer (AdamW, fused where available, no decay
on 1-d tensors), warmup + linear decay, gradient clipping, per-epoch COCO evaluation (torchmetrics'
MeanAveragePrecision on pycocotools) and per-epoch checkpoint (weights + optimizer), then prints:
training images/s of both (train images x epochs / wall seconds of the whole fit, evaluation
included), the ratio taskzoo / plain, peak memory, and the final validation mAP and mAP@.5::

    python benchmarks/detection_trainer.py                  # 3 epochs on examples/detection/shapes
    python benchmarks/detection_trainer.py --repeats 2 --epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import _vision

TASK = "detection"
SHAPES = _vision.ROOT / "examples" / "detection" / "shapes"
QUALITY = ["map", "map_50"]


def prepare(opts: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    return _vision.prepare(TASK, opts, {"image_size": opts.image_size, "images": opts.images})


def quality(metrics: Mapping[str, Any]) -> list[float]:
    return [float(metrics[name]) for name in QUALITY]


def fit_plain(opts: argparse.Namespace) -> dict[str, Any]:
    """The reference: the loop a PyTorch user writes by hand, scoring with torchmetrics directly."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    prepared = prepare(opts)
    task, train, val, model = prepared.task, prepared.train, prepared.val, prepared.model
    train_loader = task.dataloader(train, batch_size=opts.batch_size, train=True, seed=opts.seed)
    val_loader = task.dataloader(val, batch_size=opts.batch_size * 2, train=False, seed=opts.seed)
    optimizer, scheduler = _vision.plain_optimizer(model, opts, len(train_loader))
    history = []
    with tempfile.TemporaryDirectory(prefix="plain-bench-") as run_dir:
        start = time.perf_counter()
        for _ in range(opts.epochs):
            _vision.plain_train_epoch(model, train_loader, optimizer, scheduler, opts)
            model.eval()
            metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
            with torch.no_grad(), _vision.autocast(opts):
                for batch in val_loader:
                    metric.update(model(batch)["output"], [
                        {"boxes": t["boxes"], "labels": t["labels"], "iscrowd": t["crowd"].long()} for t in batch["targets"]
                    ])
            result = metric.compute()
            history.append([float(result["map"]), float(result["map_50"])])
            _vision.save_plain_checkpoint(model, optimizer, scheduler, run_dir)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_images": len(train), "quality_by_epoch": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHAPES / "train.json"))
    parser.add_argument("--images", default=str(SHAPES / "images" / "train"))
    _vision.add_common_arguments(parser, task=TASK, epochs=3, batch_size=4, image_size=320, lr=5e-4)
    opts = parser.parse_args()
    _vision.run(opts, __file__, "detection: faster r-cnn + efficientnet_lite0 (offline ImageNet)", QUALITY,
                prepare, quality, fit_plain)


if __name__ == "__main__":
    main()
