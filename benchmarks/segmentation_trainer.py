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
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASK = "segmentation"


def prepare(opts: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """Task, split data and a freshly initialised model: the same in both arms."""
    import torch
    from accelerate.utils import set_seed

    from taskzoo.backbones import resolve_backbone
    from taskzoo.plugins import get_host

    if opts.threads:
        torch.set_num_threads(opts.threads)
    host = get_host()
    spec = host.task(TASK)
    options = {option.key: option.default for option in spec.options}
    options["image_size"] = opts.image_size
    task = spec.load()(spec, options)
    data = task.read(Path(opts.data), role="train")
    labels = task.labels(data)
    train, val = task.split(data, val_fraction=0.2, seed=opts.seed)
    set_seed(opts.seed)
    model = task.build_model(resolve_backbone(host, TASK, None), labels)
    return host, spec, task, (train, val), model


def fit_taskzoo(opts: argparse.Namespace) -> dict[str, Any]:
    from taskzoo.trainer import Trainer, TrainingArgs, make_accelerator

    host, spec, task, (train, val), model = prepare(opts)
    args = TrainingArgs(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay,
                        warmup_ratio=0.1, scheduler="linear", max_grad_norm=1.0, seed=opts.seed, log_every=10)
    with tempfile.TemporaryDirectory(prefix="taskzoo-bench-") as run_dir:
        trainer = Trainer(task=task, model=model, train_data=train, val_data=val, metrics=host.metrics(TASK),
                          main_metric=spec.main_metric, args=args, accelerator=make_accelerator(seed=opts.seed),
                          run_dir=Path(run_dir))
        start = time.perf_counter()
        summary = trainer.fit()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_images": len(train),
            "mean_iou_by_epoch": [h["val"]["mean_iou"] for h in summary["history"]]}


def fit_plain(opts: argparse.Namespace) -> dict[str, Any]:
    """The reference: the loop a PyTorch user writes by hand for the same recipe."""
    import torch

    _, _, task, (train, val), model = prepare(opts)
    train_loader = task.dataloader(train, batch_size=opts.batch_size, train=True, seed=opts.seed)
    val_loader = task.dataloader(val, batch_size=opts.batch_size * 2, train=False, seed=opts.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
    total = len(train_loader) * opts.epochs
    warmup = int(total * 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, 1 - (step - warmup) / max(1, total - warmup))
    )
    classes = len(task.labels_of_model)
    history = []
    with tempfile.TemporaryDirectory(prefix="plain-bench-") as run_dir:
        start = time.perf_counter()
        for _ in range(opts.epochs):
            model.train()
            for batch in train_loader:
                loss = model(batch)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
            confusion = torch.zeros(classes, classes, dtype=torch.long)
            with torch.no_grad():
                for batch in val_loader:
                    predicted = model(batch)["output"].argmax(1)
                    valid = batch["mask"] < classes
                    pairs = batch["mask"][valid] * classes + predicted[valid]
                    confusion += torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
            intersection = confusion.diag().double()
            union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
            history.append(float((intersection[union > 0] / union[union > 0]).mean()))
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, Path(run_dir) / "checkpoint.pt")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_images": len(train), "mean_iou_by_epoch": history}


def run_arm(opts: argparse.Namespace) -> dict[str, Any]:
    result = fit_taskzoo(opts) if opts.arm == "taskzoo" else fit_plain(opts)
    result["images_per_second"] = result["train_images"] * opts.epochs / result["seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "examples" / "segmentation" / "coins"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--arm", choices=["taskzoo", "plain"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm:
        print(json.dumps(run_arm(opts)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"taskzoo": [], "plain": []}
    for repeat in range(opts.repeats):
        for arm in (("taskzoo", "plain") if repeat % 2 == 0 else ("plain", "taskzoo")):
            command = [sys.executable, __file__, "--arm", arm] + [a for a in sys.argv[1:] if a != "--json"]
            env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            finished = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if finished.returncode:
                sys.exit(f"{arm} arm failed:\n{finished.stderr[-3000:]}")
            runs[arm].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    median = lambda arm, key: statistics.median(r[key] for r in runs[arm])  # noqa: E731
    summary = {
        arm: {"images_per_second": median(arm, "images_per_second"), "peak_rss_mib": median(arm, "peak_rss_mib"),
              "final_mean_iou": statistics.median(r["mean_iou_by_epoch"][-1] for r in runs[arm]),
              "per_repeat_images_per_second": [r["images_per_second"] for r in runs[arm]]}
        for arm in runs
    }
    summary["ratio"] = summary["taskzoo"]["images_per_second"] / summary["plain"]["images_per_second"]
    if opts.json:
        print(json.dumps(summary, indent=2))
        return
    t, p = summary["taskzoo"], summary["plain"]
    print(f"segmentation: unet + efficientnet_lite0 (offline ImageNet), {runs['taskzoo'][0]['train_images']} train images, "
          f"{opts.epochs} epochs, batch {opts.batch_size}, {opts.image_size}px, repeats {opts.repeats} (medians)")
    print(f"{'':24}{'taskzoo':>12}{'plain loop':>12}")
    print(f"{'images/s':24}{t['images_per_second']:>12.2f}{p['images_per_second']:>12.2f}")
    print(f"{'peak RSS MiB':24}{t['peak_rss_mib']:>12.0f}{p['peak_rss_mib']:>12.0f}")
    print(f"{'final val mean IoU':24}{t['final_mean_iou']:>12.4f}{p['final_mean_iou']:>12.4f}")
    print(f"images/s  taskzoo {t['images_per_second']:.2f}  plain {p['images_per_second']:.2f}  ratio {summary['ratio']:.2f}")
    if math.isnan(summary["ratio"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
