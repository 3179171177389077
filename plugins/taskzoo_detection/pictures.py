"""Pictures of detections: boxes drawn on images, a grid of validation images with true and
predicted boxes, and precision-recall curves per category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from taskzoo_detection.data import DetectionData, read_rgb
from taskzoo.helpers.plots import save_figure

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#000075"]
# Predictions below this score are not drawn in the validation grid (they are still scored).
PREVIEW_SCORE = 0.3


def draw_detections(image: Path, detections: list[tuple[list[float], float, str]], names: list[str], output: Path) -> Path:
    """``image`` with each (box, score, name) drawn and labelled, saved as ``output``."""
    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    pixels = torch.from_numpy(read_rgb(image).copy()).permute(2, 0, 1)
    if detections:
        boxes = torch.tensor([d[0] for d in detections], dtype=torch.float32)
        labels = [f"{name} {score:.2f}" for _, score, name in detections]
        colours = [COLOURS[names.index(name) % len(COLOURS)] for _, _, name in detections]
        width = max(2, round(max(pixels.shape[-2:]) / 300))
        pixels = draw_bounding_boxes(pixels, boxes, labels=labels, colors=colours, width=width)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(output, quality=92)
    return output


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preview_grid(data: DetectionData, previews: dict[int, dict[str, Any]], names: list[str], output: Path) -> Path:
    """Up to six validation images: true boxes dashed white, predictions coloured by category."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    chosen = sorted(previews)[:6]
    columns = min(3, len(chosen))
    rows = (len(chosen) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, index in zip(axes.ravel(), chosen):
        axis.imshow(read_rgb(data.images[index]))
        for x1, y1, x2, y2 in data.boxes[index].tolist():
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linestyle="--", linewidth=1.5))
        found = previews[index]
        for (x1, y1, x2, y2), score, label in zip(found["boxes"], found["scores"], found["labels"]):
            if score < PREVIEW_SCORE:
                continue
            colour = COLOURS[label % len(COLOURS)]
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
            axis.text(x1, y1, f"{names[label]} {score:.2f}", color="white", fontsize=7, va="bottom",
                      bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        axis.set_title(data.images[index].name, fontsize=9)
    figure.suptitle(f"validation: true boxes dashed, predictions (score >= {PREVIEW_SCORE}) coloured", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, output, dpi=90)


def plot_precision_recall(curves: dict[str, list[float]], output: Path, map_50: float | None) -> Path:
    """Precision against recall at IoU 0.5, one line per category (COCO's 101 recall points)."""
    plt = _pyplot()
    recall = np.linspace(0, 1, 101)
    figure, axis = plt.subplots(figsize=(6, 5))
    for number, (name, precision) in enumerate(curves.items()):
        values = np.asarray(precision, dtype=float)
        if (values < 0).all():
            continue
        axis.plot(recall, np.where(values < 0, np.nan, values), color=COLOURS[number % len(COLOURS)],
                  label=f"{name} (AP@.5 {np.clip(values, 0, None).mean():.3f})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    axis.set_title("Precision-recall at IoU 0.5" + (f" (mAP@.5 {map_50:.3f})" if map_50 is not None else ""))
    figure.tight_layout()
    return save_figure(figure, output, dpi=100)
