"""The picture a person looks at first: the model's ranking metrics beside the most-popular baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskzoo.helpers.plots import save_figure


def metrics_against_baseline(metrics: Mapping[str, Any], baseline: Mapping[str, float], names: Sequence[str],
                             k: Any, model_name: str, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(7.5, 4))
    width = 0.38
    for offset, label, values, colour in ((-width / 2, model_name, [metrics[n] for n in names], "#2b6cb0"),
                                          (width / 2, "most popular", [baseline[n] for n in names], "#a0aec0")):
        bars = axis.bar(positions + offset, values, width, label=label, color=colour)
        axis.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    axis.set_xticks(positions, labels=[n.replace("_at_k", f"@{k}") for n in names])
    axis.set_ylim(0, min(1.05, max(max(metrics[n] for n in names), max(baseline.values())) * 1.2 + 0.02))
    users = metrics.get("evaluated_users")
    axis.set_title(f"Ranking quality at k={k}" + (f" on {users} held-out users" if users else ""))
    axis.legend()
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)


def warm_and_cold(metrics: Mapping[str, Any], k: Any, model_name: str, output: Path) -> Path:
    """Warm items (with training interactions) and cold items (ranked from content) side by side,
    each arm beside its baselines, and how much of the catalogue the model recommends at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ("precision", "recall", "ndcg", "map")
    panels = [("warm items", "warm", [("warm", model_name, "#2b6cb0"), ("warm_popular", "most popular", "#a0aec0")]),
              ("cold items", "cold", [("cold", model_name + " (content)", "#2f855a"),
                                      ("cold_content", "content similarity", "#d69e2e"),
                                      ("cold_random", "random", "#a0aec0")])]
    panels = [panel for panel in panels if f"{panel[1]}_users" in metrics]
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * len(panels) + 2.4, 4),
                                gridspec_kw={"width_ratios": [5] * len(panels) + [1.4]})
    positions = np.arange(len(names))
    top = 0.0
    for axis, (title, group, arms) in zip(axes, panels):
        width = 0.8 / len(arms)
        for index, (prefix, label, colour) in enumerate(arms):
            values = [metrics[f"{prefix}_{name}_at_k"] for name in names]
            top = max(top, *values)
            bars = axis.bar(positions + (index - (len(arms) - 1) / 2) * width, values, width, label=label, color=colour)
            axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        axis.set_xticks(positions, labels=[f"{name}@{k}" for name in names])
        axis.set_title(f"{title}: {metrics[f'{group}_users']} users with held-out {group} items", fontsize=10)
        axis.legend(fontsize=8)
    for axis in axes[:-1]:
        axis.set_ylim(0, min(1.08, top * 1.2 + 0.03))
    coverage = axes[-1]
    value = metrics.get("coverage_at_k", 0.0)
    coverage.bar([0], [value], color="#805ad5", width=0.6)
    coverage.bar_label(coverage.containers[0], fmt="%.2f", fontsize=8)
    coverage.set_ylim(0, 1.05)
    coverage.set_xticks([0], labels=[f"coverage@{k}"])
    coverage.set_title("catalogue\nrecommended", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)


CURVES = {"model": ("all items", "#2b6cb0", "-"), "popular": ("all items, most popular", "#a0aec0", "-"),
          "warm": ("warm items", "#2b6cb0", "--"), "warm_popular": ("warm items, most popular", "#a0aec0", "--"),
          "cold": ("cold items", "#2f855a", "-"), "cold_content": ("cold items, content similarity", "#d69e2e", "-"),
          "cold_random": ("cold items, random", "#718096", ":")}


def recall_curves(curves: Mapping[str, Any], model_name: str, output: Path) -> Path:
    """Recall at every k up to the evaluation's: how far down the list the held-out items sit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, (label, colour, style) in CURVES.items():
        if name in curves:
            axis.plot(curves["k"], curves[name], style, color=colour, marker="o", markersize=3,
                      label=label.replace("all items", model_name) if name == "model" else label)
    axis.set_xlabel("k (recommendations shown)")
    axis.set_ylabel("recall at k")
    axis.set_xticks(curves["k"])
    axis.set_ylim(0, None)
    axis.grid(alpha=0.3)
    axis.set_title("Share of each user's held-out items in their top k")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)
