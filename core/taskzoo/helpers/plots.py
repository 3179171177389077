"""Pictures for run folders: training curves and confusion matrices, as PNG files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_confusion_matrix", "plot_training_curves", "save_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, output: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure and close it. Written beside ``output`` and renamed over it, so a
    picture in a run folder is never half drawn, whenever the run is stopped."""
    import os

    output = Path(output)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    figure.savefig(partial, dpi=dpi)
    os.replace(partial, output)
    _pyplot().close(figure)
    return output


def plot_training_curves(metrics_jsonl: Path, output: Path, main_metric: str) -> Path | None:
    """Loss per logged step and per epoch, and the main validation metric per epoch. None (no
    picture) for a run without gradient steps, such as a recommender fitted in closed form only:
    one point on an epoch axis says nothing a task's own report does not say better."""
    if not metrics_jsonl.exists():
        return None
    records = [json.loads(line) for line in metrics_jsonl.read_text(encoding="utf-8").splitlines() if line]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    if not epochs or not (steps or any(r.get("train_loss") is not None for r in epochs)):
        return None
    plt = _pyplot()
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        loss_axis.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss (steps)", alpha=0.6)
    # Epoch 0 (a task's fit before training, `Task.fit_before_training`) has no train loss.
    trained = [r for r in epochs if r.get("train_loss") is not None]
    if trained:
        loss_axis.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], "o-", label="train loss (epoch)")
    if "val_loss" in epochs[0]:
        loss_axis.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "s-", label="validation loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss")
    if loss_axis.lines:
        loss_axis.legend()
    loss_axis.set_title("Loss")
    key = f"val_{main_metric}"
    metric_axis.plot([r["epoch"] for r in epochs], [r.get(key) for r in epochs], "o-")
    metric_axis.set_xlabel("epoch")
    metric_axis.set_ylabel(main_metric)
    metric_axis.set_title(f"Validation {main_metric}")
    metric_axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], output: Path, title: str) -> Path:
    """Counts with row-normalised shading: rows are true labels, columns predicted."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels=labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            axis.text(j, i, int(counts[i, j]), ha="center", va="center",
                      color="white" if shares[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of true label")
    axis.set_title(title)
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)
