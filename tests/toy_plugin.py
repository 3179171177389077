"""A tiny but real task for testing the core: classify 2-d points with a linear layer.

Registered in tests as a plugin object, exactly as an entry point would register it; trains in
well under a second, so trainer behaviour (early stopping, resume, logging) is cheap to test.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from taskzoo import DataError, Finding, MetricSpec, Option, TaskSpec, hookimpl
from taskzoo.task import Task
from taskzoo.helpers.tables import read_table

TASK = "toy"


class ToyModel(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, classes)

    def forward(self, batch):
        logits = self.layer(batch["x"])
        loss = torch.nn.functional.cross_entropy(logits, batch["y"]) if "y" in batch else None
        return {"loss": loss, "output": logits}


class ToyTask(Task):
    _labels: list[str] | None = None

    def read(self, path: Path, *, role: str, labels=None):
        frame = read_table(Path(path))
        if set(frame.columns) < {"x1", "x2"}:
            raise DataError(f"{path}: expected columns x1, x2 and label")
        x = torch.tensor(frame[["x1", "x2"]].astype(float).values, dtype=torch.float32)
        y = frame["label"].tolist() if "label" in frame else None
        return {"path": path, "x": x, "y": y}

    def size(self, data) -> int:
        return len(data["x"])

    def labels(self, data) -> list[str]:
        return sorted(set(data["y"]))

    def split(self, data, *, val_fraction, seed):
        n = len(data["x"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        cut = int(n * val_fraction)
        pick = lambda idx: {"path": data["path"], "x": data["x"][idx], "y": [data["y"][i] for i in idx]}  # noqa: E731
        return pick(order[cut:]), pick(order[:cut])

    def build_model(self, backbone, labels):
        self._labels = list(labels)
        return ToyModel(len(labels))

    @property
    def labels_of_model(self) -> list[str]:
        return self._labels

    def dataloader(self, data, *, batch_size, train, seed):
        ids = {label: i for i, label in enumerate(self._labels)}
        items = [
            {"x": data["x"][i], "index": i, **({"y": ids[data["y"][i]]} if data["y"] else {})}
            for i in range(len(data["x"]))
        ]
        collate = lambda batch: {key: torch.stack([torch.as_tensor(b[key]) for b in batch]) for key in batch[0]}  # noqa: E731
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=train, generator=generator, collate_fn=collate)

    def predictions(self, batch, output):
        return [{"index": int(i), "label": int(p)} for i, p in zip(batch["index"], output.argmax(-1))]

    def references(self, batch):
        return batch["y"].tolist()

    def save(self, model, folder: Path) -> None:
        from safetensors.torch import save_model

        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, str(folder / "model.safetensors"))
        (folder / "labels.json").write_text(json.dumps(self._labels))

    def load(self, folder: Path):
        from safetensors.torch import load_model

        self._labels = json.loads((folder / "labels.json").read_text())
        model = ToyModel(len(self._labels))
        load_model(model, str(folder / "model.safetensors"))
        return model

    def export_graph(self, model):
        from taskzoo.export import Graph

        return Graph(network=model.layer, input_names=("x",))

    def write_predictions(self, data, predictions, output) -> str:
        ordered = sorted(predictions, key=lambda p: p["index"])
        return "\n".join(self._labels[p["label"]] for p in ordered)


def _accuracy(predictions, references, context) -> float:
    return sum(p["label"] == r for p, r in zip(predictions, references)) / max(len(references), 1)


class ToyPlugin:
    """The plugin object: hook implementations only."""

    @hookimpl
    def taskzoo_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(
            name=TASK, description="Toy points", data_formats=("csv",), task_class="toy_plugin:ToyTask",
            main_metric="accuracy", options=(Option("flavour", "A toy option.", commands=("run", "predict")),),
            defaults={"epochs": 2, "lr": 0.1, "batch_size": 8},
        )]

    @hookimpl
    def taskzoo_backbone_sources(self):
        from taskzoo import BackboneSource

        # A source the core has never heard of: the toy's weights are made on the spot.
        return [BackboneSource("toy-init", "Freshly initialised toy weights")]

    @hookimpl
    def taskzoo_backbones(self):
        from taskzoo import BackboneSpec

        return [BackboneSpec(name="linear", task=TASK, source="toy-init", location="linear", licence="MIT",
                             default=True, offline=True)]

    @hookimpl
    def taskzoo_metrics(self):
        return [MetricSpec("accuracy", (TASK,), _accuracy)]

    @hookimpl
    def taskzoo_check_data(self, task, data):
        if task != TASK:
            return None
        findings = [Finding("info", f"{data['path']}: {len(data['x'])} points")]
        if data["y"] is not None and any(label == "bad" for label in data["y"]):
            findings.append(Finding("error", f"{data['path']}: label 'bad' is not allowed"))
        return findings


def toy_points(path: Path, n: int = 200, seed: int = 0, noise: float = 0.0) -> Path:
    """Two well-separated classes: label is 'right' when x1 > 0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=generator)
    rows = ["x1,x2,label"]
    for a, b in x.tolist():
        rows.append(f"{a:.4f},{b:.4f},{'right' if a > 0 else 'left'}")
    path.write_text("\n".join(rows) + "\n")
    return path
