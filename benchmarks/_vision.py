"""What the vision benchmarks share: taskzoo's shared trainer against the plain PyTorch loop a user
would write for the same network and recipe (``segmentation_trainer.py``, ``detection_trainer.py``).

A script supplies its task's name, data options and evaluation (the plain arm's per-epoch metric);
this module holds the rest, so both arms are prepared, timed and reported the same way:

- `prepare`: the task, its seeded split and a freshly built model, identical in both arms;
- `fit_taskzoo`: the timed `Trainer.fit()`; `plain_optimizer`: the same AdamW and schedule by hand;
- `compare`: one subprocess per arm and repeat, alternating order, medians, and the ratio of
  training images/s (train images x epochs / wall seconds of the whole fit, evaluation included);
  `run` does that and prints the report, the whole ``main`` of a script after its arguments.
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def add_common_arguments(parser: argparse.ArgumentParser, *, task: str, epochs: int, batch_size: int, image_size: int,
                         lr: float, weight_decay: float = 1e-4) -> None:
    parser.set_defaults(task=task)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"],
                        help="taskzoo's --mixed-precision; the plain loop autocasts to what it resolves to")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--arm", choices=["taskzoo", "plain"], help=argparse.SUPPRESS)


def prepare(task_name: str, opts: argparse.Namespace, options: Mapping[str, Any]) -> Any:
    """The run pipeline's own preparation (task, data read and split, a freshly initialised model):
    the same in both arms."""
    import torch

    from taskzoo import options as schema
    from taskzoo import pipeline
    from taskzoo.plugins import get_host

    if opts.threads:
        torch.set_num_threads(opts.threads)
    spec = get_host().task(task_name)
    recipe = {"data": opts.data, "epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr,
              "weight_decay": opts.weight_decay, "warmup_ratio": 0.1, "scheduler": "linear", "seed": opts.seed,
              "mixed_precision": opts.mixed_precision, **options}  # the plain loop's schedule: warmup, then linear decay
    return pipeline.prepare(spec, schema.resolve(spec, "run", [("benchmark", recipe)]))


def fit_taskzoo(prepared: Any, opts: argparse.Namespace, quality: Callable[[Mapping[str, Any]], list[float]]) -> dict[str, Any]:
    """The shared trainer's fit, built as ``tasks run`` builds it; ``quality`` picks the reported
    figures from an epoch's metrics."""
    from taskzoo import pipeline

    with tempfile.TemporaryDirectory(prefix="taskzoo-bench-") as run_dir:
        trainer = pipeline.make_trainer(prepared, Path(run_dir))
        start = time.perf_counter()
        summary = trainer.fit()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_images": len(prepared.train),
            "quality_by_epoch": [quality(h["val"]) for h in summary["history"]]}


def plain_optimizer(model: Any, opts: argparse.Namespace, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW (fused, no decay on 1-d tensors, frozen parameters left out) with warmup + linear decay,
    written as a PyTorch user would: the shared trainer's recipe."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
    total = steps_per_epoch * opts.epochs
    warmup = int(total * 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, 1 - (step - warmup) / max(1, total - warmup))
    )
    return optimizer, scheduler


def autocast(opts: argparse.Namespace) -> Any:
    """The plain loop's forward passes in the precision taskzoo's arm trains in (`--mixed-precision`).
    fp16, which would need a gradient scaler, is not mirrored: on a GPU without bf16, taskzoo's
    ``auto`` trains in fp16 and the plain loop in fp32 (pass ``--mixed-precision no`` there)."""
    import torch

    from _common import taskzoo_precision

    bf16 = taskzoo_precision(opts.task, opts.mixed_precision) == "bf16"  # resolved once, then cached
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=bf16)


def plain_train_epoch(model: Any, loader: Any, optimizer: Any, scheduler: Any, opts: argparse.Namespace) -> None:
    import torch

    model.train()
    for batch in loader:
        with autocast(opts):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def save_plain_checkpoint(model: Any, optimizer: Any, scheduler: Any, folder: str) -> None:
    import torch

    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               Path(folder) / "checkpoint.pt")


def _arm_result(result: dict[str, Any], epochs: int) -> dict[str, Any]:
    import torch

    result["images_per_second"] = result["train_images"] * epochs / result["seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return result


def compare(opts: argparse.Namespace, script: str, arms: Mapping[str, Callable[[], dict[str, Any]]],
            quality_names: list[str]) -> dict[str, Any] | None:
    """In a child (``--arm``): run that arm and print its JSON line. In the parent: run both arms
    ``--repeats`` times in alternating order and return medians and the images/s ratio."""
    if opts.arm:
        print(json.dumps(_arm_result(arms[opts.arm](), opts.epochs)))
        return None
    runs: dict[str, list[dict[str, Any]]] = {"taskzoo": [], "plain": []}
    for repeat in range(opts.repeats):
        for arm in (("taskzoo", "plain") if repeat % 2 == 0 else ("plain", "taskzoo")):
            command = [sys.executable, script, "--arm", arm] + [a for a in sys.argv[1:] if a != "--json"]
            env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            finished = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if finished.returncode:
                sys.exit(f"{arm} arm failed:\n{finished.stderr[-3000:]}")
            runs[arm].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {}
    for arm, results in runs.items():
        summary[arm] = {
            "images_per_second": statistics.median(r["images_per_second"] for r in results),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
            "peak_cuda_mib": statistics.median(r.get("peak_cuda_mib") or 0 for r in results) or None,
            "per_repeat_images_per_second": [r["images_per_second"] for r in results],
            "train_images": results[0]["train_images"],
            **{f"final_{name}": statistics.median(r["quality_by_epoch"][-1][i] for r in results)
               for i, name in enumerate(quality_names)},
        }
    summary["ratio"] = summary["taskzoo"]["images_per_second"] / summary["plain"]["images_per_second"]
    return summary


def print_report(summary: dict[str, Any], opts: argparse.Namespace, title: str, quality_names: list[str]) -> None:
    if opts.json:
        print(json.dumps(summary, indent=2))
        return
    t, p = summary["taskzoo"], summary["plain"]
    print(f"{title}, {t['train_images']} train images, {opts.epochs} epochs, batch {opts.batch_size}, "
          f"{opts.image_size}px, repeats {opts.repeats} (medians)")
    print(f"{'':24}{'taskzoo':>12}{'plain loop':>12}")
    print(f"{'images/s':24}{t['images_per_second']:>12.2f}{p['images_per_second']:>12.2f}")
    print(f"{'peak RSS MiB':24}{t['peak_rss_mib']:>12.0f}{p['peak_rss_mib']:>12.0f}")
    for name in quality_names:
        print(f"{'final val ' + name:24}{t['final_' + name]:>12.4f}{p['final_' + name]:>12.4f}")
    print(f"images/s  taskzoo {t['images_per_second']:.2f}  plain {p['images_per_second']:.2f}  ratio {summary['ratio']:.2f}")


def run(opts: argparse.Namespace, script: str, title: str, quality_names: list[str],
        prepare_task: Callable[[argparse.Namespace], Any], quality: Callable[[Mapping[str, Any]], list[float]],
        fit_plain: Callable[[argparse.Namespace], dict[str, Any]]) -> None:
    """Run the arm named by ``--arm`` (in a child), or both arms and the report (in the parent)."""
    summary = compare(opts, script, {
        "taskzoo": lambda: fit_taskzoo(prepare_task(opts), opts, quality),
        "plain": lambda: fit_plain(opts),
    }, quality_names)
    if summary is None:
        return
    print_report(summary, opts, title, quality_names)
    if math.isnan(summary["ratio"]):
        sys.exit(1)
