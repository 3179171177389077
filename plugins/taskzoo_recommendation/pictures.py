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
