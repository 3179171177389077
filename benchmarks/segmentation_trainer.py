"""Benchmark: taskzoo's shared trainer against a plain PyTorch loop on the segmentation task.

One command runs both arms, each in its own subprocess, on the same network (Unet on the offline
EfficientNet-Lite0 encoder, identical initial weights), data split, data loaders and augmentation,
optimizer (AdamW, fused where available, no decay on 1-d tensors), warmup + linear decay, gradient
clipping, per-epoch evaluation and per-epoch checkpoint (weights + optimizer), then prints:
training images/s of both (train images x epochs / wall seconds of the whole fit, evaluation
included), the ratio taskzoo / plain, peak memory, and the final validation mean IoU::

    python benchmarks/segmentation_trainer.py                  # 4 epochs on examples/segmentation/coins
    python benchmarks/segmentation_trainer.py --repeats 3 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import _vision

TASK = "segmentation"
QUALITY = ["mean_iou"]


def prepare(opts: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    return _vision.prepare(TASK, opts, {"image_size": opts.image_size})


def quality(metrics: Mapping[str, Any]) -> list[float]:
    return [float(metrics["mean_iou"])]


def fit_plain(opts: argparse.Namespace) -> dict[str, Any]:
    """The reference: the loop a PyTorch user writes by hand for the same recipe."""
    import torch

    prepared = prepare(opts)
    task, train, val, model = prepared.task, prepared.train, prepared.val, prepared.model
    train_loader = task.dataloader(train, batch_size=opts.batch_size, train=True, seed=opts.seed)
    val_loader = task.dataloader(val, batch_size=opts.batch_size * 2, train=False, seed=opts.seed)
    optimizer, scheduler = _vision.plain_optimizer(model, opts, len(train_loader))
    classes = len(task.labels_of_model)
    history = []
    with tempfile.TemporaryDirectory(prefix="plain-bench-") as run_dir:
        start = time.perf_counter()
        for _ in range(opts.epochs):
            _vision.plain_train_epoch(model, train_loader, optimizer, scheduler, opts)
            model.eval()
            confusion = torch.zeros(classes, classes, dtype=torch.long)
            with torch.no_grad(), _vision.autocast(opts):
                for batch in val_loader:
                    predicted = model(batch)["output"].argmax(1)
                    valid = batch["mask"] < classes
                    pairs = batch["mask"][valid] * classes + predicted[valid]
                    confusion += torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
            intersection = confusion.diag().double()
            union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
            history.append([float((intersection[union > 0] / union[union > 0]).mean())])
            _vision.save_plain_checkpoint(model, optimizer, scheduler, run_dir)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_images": len(train), "quality_by_epoch": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(_vision.ROOT / "examples" / "segmentation" / "coins"))
    _vision.add_common_arguments(parser, task=TASK, epochs=4, batch_size=8, image_size=128, lr=1e-3)
    opts = parser.parse_args()
    _vision.run(opts, __file__, "segmentation: unet + efficientnet_lite0 (offline ImageNet)", QUALITY,
                prepare, quality, fit_plain)


if __name__ == "__main__":
    main()
