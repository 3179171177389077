"""The image classification task: a timm network with a fresh head, trained by taskzoo's shared
trainer. The default backbone's ImageNet weights come from a Python package, through the same
`taskzoo.helpers.timm_weights` helper the bundled vision tasks use, so nothing is downloaded."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from taskzoo import BackboneSpec, DataError, UserError
from taskzoo.weights import available_offline, hub_reachable, locate
from taskzoo.helpers.splits import stratified_split
from taskzoo.task import Task
from taskzoo.helpers.timm_weights import load_matching, positional_state_dict
from taskzoo_imageclass.data import ImageSet, read_labelled, read_unlabelled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG = "taskzoo_imageclass.json"


class Classifier(torch.nn.Module):
    """A timm feature extractor and a linear head: ``forward(batch) -> {"loss", "output"}`` (logits)."""

    def __init__(self, body: torch.nn.Module, classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(body.num_features, classes)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        logits = self.head(self.body(batch["image"]))
        loss = torch.nn.functional.cross_entropy(logits, batch["label"]) if "label" in batch else None
        return {"loss": loss, "output": logits}


class Images(Dataset):
    def __init__(self, data: ImageSet, transform: Any) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.data.images[index]) as image:
            item: dict[str, Any] = {"index": index, "image": self.transform(image.convert("RGB"))}
        if self.data.labels is not None:
            item["label"] = self.data.labels[index]
        return item


def _body(architecture: str, pretrained_from_hub: bool) -> torch.nn.Module:
    import timm

    # num_classes=0: timm drops its 1000-class head; the task puts a fresh one on top.
    return timm.create_model(architecture, pretrained=pretrained_from_hub, num_classes=0)


class ImageClassTask(Task):
    input_images = True  # tasks serve takes image uploads; predict reads them as a folder
    channels_last = True
    _classes: list[str] | None = None
    _architecture: str = "efficientnet_lite0"

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size") or 224)

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> ImageSet:
        if role == "predict":
            return read_unlabelled([Path(path)], labels or [])
        return read_labelled(Path(path), known=list(labels) if labels and role in ("val", "test") else None)

    def inputs_from_options(self) -> ImageSet | None:
        images = [Path(p) for p in self.options.get("image") or ()]
        return read_unlabelled(images, self.labels_of_model) if images else None

    def labels(self, data: ImageSet) -> list[str]:
        return list(data.classes)

    def split(self, data: ImageSet, *, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
        train, val = stratified_split(data.labels or (), val_fraction, seed)
        if not train or not val:
            raise DataError(f"{data.root}: too few images to split off a validation set; add images or give --val")
        return data.subset(train), data.subset(val)

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        if backbone.source == "hub":  # a name not in the catalog: take it as a timm model name
            backbone = BackboneSpec(name=backbone.name, task=self.name, source="timm", location=backbone.location,
                                    licence=backbone.licence)
        if backbone.source not in ("package", "timm"):
            raise UserError(f"backbone '{backbone.name}': imageclass takes timm models; see 'tasks backbones imageclass'")
        if backbone.source == "timm" and not (available_offline(backbone) or hub_reachable()):
            offline = self.context.offline_backbones
            raise UserError(f"backbone '{backbone.name}': its timm weights are not cached and the hub cannot be "
                            f"reached (no network?); backbones that work offline: {', '.join(offline)}")
        self._architecture = backbone.location.removeprefix("timm/") if backbone.source == "timm" else backbone.name
        body = _body(self._architecture, pretrained_from_hub=backbone.source == "timm")
        if backbone.source == "package":
            # The package's tensors are renamed to timm's names by position, and every one is checked.
            load_matching(body, positional_state_dict(Path(locate(backbone)), backbone.name))
        self._classes = list(labels)
        return Classifier(body, len(labels))

    @property
    def labels_of_model(self) -> list[str]:
        if self._classes is None:
            raise RuntimeError("build or load the model first")
        return self._classes

    def _transform(self, train: bool) -> Any:
        from torchvision.transforms import v2

        size = self.image_size
        steps = ([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()] if train
                 else [v2.Resize((size, size), antialias=True)])
        return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def dataloader(self, data: ImageSet, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        # BatchNorm cannot train on a batch of one: drop a last batch that small.
        drop_last = train and len(data) % batch_size == 1
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(Images(data, self._transform(train)), batch_size=batch_size, shuffle=train,
                          generator=generator, drop_last=drop_last, **self.context.loader_options(train))

    def predictions(self, batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = output.float().softmax(dim=1)
        scores, labels = probabilities.max(dim=1)
        return [{"index": int(i), "label": int(label), "score": float(score)}
                for i, label, score in zip(batch["index"].tolist(), labels.tolist(), scores.tolist())]

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        return batch["label"].tolist()

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        from safetensors.torch import save_model

        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, str(folder / "model.safetensors"))
        config = {"architecture": self._architecture, "classes": self.labels_of_model, "image_size": self.image_size,
                  "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def load(self, folder: Path) -> torch.nn.Module:
        from safetensors.torch import load_model

        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        self._architecture, self._classes = config["architecture"], list(config["classes"])
        self.options["image_size"] = config["image_size"]
        model = Classifier(_body(self._architecture, pretrained_from_hub=False), len(self._classes))
        load_model(model, str(folder / "model.safetensors"))
        return model

    def export_graph(self, model: torch.nn.Module) -> Any:
        """``tasks export``: the network from the normalised image to the logits; the core does the rest."""
        from taskzoo.export import Graph

        return Graph(network=torch.nn.Sequential(model.body, model.head), input_names=("image",),
                     preprocessing={"image_size": self.options["image_size"], "mean": "ImageNet", "std": "ImageNet"})

    # -- outputs ---------------------------------------------------------------------------------

    def write_predictions(self, data: ImageSet, predictions: list[dict[str, Any]], output: Path | None) -> str:
        rows = [{"image": str(data.images[p["index"]]), "label": self.labels_of_model[p["label"]],
                 "score": round(p["score"], 4)} for p in sorted(predictions, key=lambda p: p["index"])]
        if output is None:
            return "\n".join(f"{row['image']}: {row['label']} ({row['score']:.2f})" for row in rows)
        suffix = output.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise UserError(f"--output {output}: expected a .csv or .jsonl file name")
        output.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".jsonl":
            output.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["image", "label", "score"])
            writer.writeheader()
            writer.writerows(rows)
            output.write_text(buffer.getvalue(), encoding="utf-8")
        return ""

    def model_card_usage(self, run_folder: Path) -> str:
        return (
            "Load it without taskzoo: build `timm.create_model(architecture, num_classes=0)` plus a "
            "`torch.nn.Linear(num_features, classes)` head, then `safetensors.torch.load_model` the "
            f"weights from `model/model.safetensors`; `model/{CONFIG}` holds the architecture, the class "
            "names in id order, the image size and the normalisation."
        )
