"""The detection task: torchvision detectors on timm backbones, or transformers detection
checkpoints, trained by the shared trainer. Boxes move with their images through
torchvision.transforms.v2."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from taskzoo import BackboneSpec, DataError, UserError
from taskzoo.weights import available_offline, hub_reachable, locate
from taskzoo.helpers.augmentation import ItemSeeded
from taskzoo.helpers.splits import random_split
from taskzoo.task import Labels, Task, label_details
from taskzoo.helpers.timm_weights import load_matching, positional_state_dict
from taskzoo_detection.data import DetectionData, read_dataset, read_rgb
from taskzoo_detection.models import (
    ARCHITECTURES,
    TorchvisionDetector,
    TransformersDetector,
    export_graph,
    freeze_stem,
    timm_body,
    torchvision_detector,
)

CONFIG = "taskzoo_detection.json"
PREVIEW_IMAGES = 6


def augmentation(train: bool) -> Any:
    """Flip, zoom out, crop and colour changes that move the boxes with the pixels; boxes clipped
    to the crop and boxes that (nearly) vanish are removed with their labels."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if not train:
        return None
    return v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: (124, 116, 104), "others": 0}, side_range=(1.0, 2.0), p=0.3),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2),
    ])


class ImagesAndBoxes(ItemSeeded, Dataset):
    """One item: ``image`` (uint8 tensor C x H x W) and, for annotated data, ``boxes`` (x1 y1 x2 y2),
    ``labels`` and ``crowd``. Crowd regions are dropped when training, as torchvision's references
    do; evaluation keeps them so that COCO's rules ignore detections inside them."""

    def __init__(self, data: DetectionData, train: bool, seed: int = 0) -> None:
        self.data, self.train, self.seed = data, train, seed
        self.transform = augmentation(train)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision import tv_tensors

        pixels = torch.from_numpy(read_rgb(self.data.images[index]).copy()).permute(2, 0, 1)
        item: dict[str, Any] = {"index": index}
        if not self.data.annotated:
            item["image"] = pixels
            return item
        boxes = torch.from_numpy(self.data.boxes[index]).float()
        labels = torch.from_numpy(self.data.labels[index])
        crowd = torch.from_numpy(self.data.crowd[index])
        if self.train:
            keep = ~crowd
            boxes, labels, crowd = boxes[keep], labels[keep], crowd[keep]
        if self.transform is not None:
            image = tv_tensors.Image(pixels)
            target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(pixels.shape[-2:])),
                      "labels": labels}
            with self.random_for(index):
                if len(boxes):
                    image, target = self.transform(image, target)
                else:
                    # RandomIoUCrop needs boxes to aim at; a negative image only flips and changes colour.
                    image, target = self._negative_transform(image, target)
            pixels, boxes, labels = image.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), target["labels"]
            crowd = torch.zeros(len(boxes), dtype=torch.bool)
        item.update(image=pixels, boxes=boxes.float(), labels=labels.long(), crowd=crowd)
        return item

    @staticmethod
    def _negative_transform(image: Any, target: dict[str, Any]) -> Any:
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomPhotometricDistort(p=0.5), v2.RandomHorizontalFlip()])(image, target)


class DetectionTask(Task):
    input_images = True
    channels_last = True
    cpu_bf16 = False  # Faster R-CNN gains only 4-7% in bf16 autocast on AMX CPUs, within its mAP noise (benchmarks/README.md)
    _config: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A few evaluated images and the data they came from, for the pictures report() draws.
        self._previews: dict[int, Any] = {}
        self._last_data: DetectionData | None = None

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size") or 512)

    # -- data ------------------------------------------------------------------------------------

    def _images_dir(self, role: str) -> Path | None:
        chosen = self.options.get("val_images") if role == "val" else None
        chosen = chosen or self.options.get("images")
        return Path(chosen) if chosen else None

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> DetectionData:
        known = list(labels) if labels and role != "train" else None
        return read_dataset(path, role=role, images_dir=self._images_dir(role), known=known)

    def labels(self, data: DetectionData) -> Labels:
        # The data set's own category ids travel with the names, to build_model (and predictions).
        return Labels(data.categories, category_ids=list(data.category_ids))

    def parts(self, data: DetectionData, size: int) -> Iterator[DetectionData]:
        for start in range(0, len(data), size):
            yield data.subset(list(range(start, min(start + size, len(data)))))

    def split(self, data: DetectionData, *, val_fraction: float, seed: int) -> tuple[DetectionData, DetectionData]:
        if data.val is not None:
            return data.subset(list(range(len(data)))), data.val
        train, val = random_split(len(data), val_fraction, seed)
        if not train or not val:
            raise DataError(f"{data.root}: too few images to split off a validation set; give --val")
        return data.subset(train), data.subset(val)

    # -- model -----------------------------------------------------------------------------------

    def _family(self, backbone: BackboneSpec) -> str:
        if backbone.source in ("package", "timm"):
            return "torchvision"
        if backbone.source == "hub" and "/" not in backbone.location:
            import timm

            if timm.is_model(backbone.location):
                return "torchvision"
        return "transformers"

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        category_ids = label_details(labels).get("category_ids") or list(range(len(labels)))
        pretrained = not self.options.get("no_pretrained")
        if self._family(backbone) == "transformers":
            if not pretrained:
                raise UserError(f"--no-pretrained applies to timm backbones; '{backbone.name}' is a transformers checkpoint")
            model = self._remember(self._transformers_model(backbone, labels))
            self._config = {"family": "transformers", "categories": list(labels), "category_ids": category_ids,
                            "backbone": backbone.name}
            return model
        architecture = self.options.get("arch") or "fasterrcnn"
        if architecture not in ARCHITECTURES:
            raise UserError(f"--arch {architecture}: expected one of {', '.join(ARCHITECTURES)}")
        encoder = backbone.location.removeprefix("timm/") if backbone.source in ("timm", "hub") else backbone.name
        timm_weights = pretrained and backbone.source != "package"
        if timm_weights and not (available_offline(backbone) or hub_reachable()):
            raise UserError(f"backbone '{backbone.name}': its timm weights are not cached and the hub cannot be "
                            f"reached (no network?); backbones that work offline: {', '.join(self.context.offline_backbones)}")
        body = timm_body(encoder, timm_weights=timm_weights)
        if pretrained and backbone.source == "package":
            load_matching(body, positional_state_dict(Path(locate(backbone)), backbone.name))
        if pretrained:
            freeze_stem(body)
        self._config = {"family": "torchvision", "architecture": architecture, "encoder": encoder,
                        "frozen_stem": pretrained, "categories": list(labels), "category_ids": category_ids,
                        "image_size": self.image_size, "backbone": backbone.name}
        return TorchvisionDetector(torchvision_detector(architecture, body, len(labels), self.image_size))

    def _transformers_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        from taskzoo.helpers.hf import load_pretrained

        id2label = dict(enumerate(labels))

        def load(location: str, local_files_only: bool) -> TransformersDetector:
            processor = AutoImageProcessor.from_pretrained(location, local_files_only=local_files_only)
            # A new class head for the user's categories; the rest keeps its detection training.
            model = AutoModelForObjectDetection.from_pretrained(
                location, local_files_only=local_files_only, num_labels=len(labels), id2label=id2label,
                label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True,
            )
            return TransformersDetector(model, processor)

        if backbone.source == "local" and not (Path(locate(backbone)) / "config.json").is_file():
            raise UserError(f"--backbone {backbone.location}: not a transformers model folder (no config.json), "
                            "and timm backbones are given by name")
        return load_pretrained(backbone, load)

    @property
    def labels_of_model(self) -> list[str]:
        if self._config is None:
            raise RuntimeError("build or load the model first")
        return list(self._config["categories"])

    # -- batches ---------------------------------------------------------------------------------

    def dataloader(self, data: DetectionData, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        if not train:  # previews picture the last data scored (one part of a large evaluation)
            self._last_data, self._previews = data, {}
        dataset = ImagesAndBoxes(data, train, seed)
        collate = self._collate_transformers if self._config["family"] == "transformers" else self._collate_torchvision
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator, collate_fn=collate,
                          **self.context.loader_options(train))

    @staticmethod
    def _references(items: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": i["boxes"], "labels": i["labels"], "crowd": i["crowd"]} for i in items]

    def _collate_torchvision(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"index": torch.tensor([i["index"] for i in items]),
                                 "images": [i["image"].float() / 255 for i in items]}
        if "boxes" in items[0]:
            batch["targets"] = self._references(items)
        return batch

    def _collate_transformers(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        processor = self._processor
        images = [i["image"].permute(1, 2, 0).numpy() for i in items]
        batch: dict[str, Any] = {"index": torch.tensor([i["index"] for i in items]),
                                 "sizes": torch.tensor([list(i["image"].shape[-2:]) for i in items])}
        if "boxes" in items[0]:
            annotations = []
            for item in items:
                boxes = item["boxes"].tolist()
                objects = [{"bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": int(label), "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": int(crowd)} for (x1, y1, x2, y2), label, crowd in
                           zip(boxes, item["labels"].tolist(), item["crowd"].tolist())]
                annotations.append({"image_id": int(item["index"]), "annotations": objects})
            encoded = processor(images=images, annotations=annotations, return_tensors="pt")
            batch["labels"] = list(encoded["labels"])
            batch["targets"] = self._references(items)
        else:
            encoded = processor(images=images, return_tensors="pt")
        batch["pixel_values"] = encoded["pixel_values"]
        if "pixel_mask" in encoded:
            batch["pixel_mask"] = encoded["pixel_mask"]
        return batch

    @property
    def _processor(self) -> Any:
        return self._model_ref.processor

    def predictions(self, batch: Mapping[str, Any], output: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        results = []
        for index, found in zip(batch["index"].tolist(), output):
            result = {"index": index, "boxes": found["boxes"].float().cpu().numpy().round(2).tolist(),
                      "scores": found["scores"].float().cpu().numpy().round(5).tolist(),
                      "labels": found["labels"].cpu().tolist()}
            results.append(result)
            previews = self._previews
            if "targets" in batch and (len(previews) < PREVIEW_IMAGES or index in previews):
                previews[index] = result
        return results

    def references(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "targets" not in batch:
            return [None] * len(batch["index"])
        return [{"boxes": t["boxes"].cpu().tolist(), "labels": t["labels"].cpu().tolist(),
                 "crowd": t["crowd"].cpu().tolist()} for t in batch["targets"]]

    # -- saving ----------------------------------------------------------------------------------

    def _remember(self, model: torch.nn.Module) -> torch.nn.Module:
        self._model_ref = model
        return model

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        from safetensors.torch import save_model

        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(model, TransformersDetector):
            model.model.save_pretrained(folder / "transformers")
            model.processor.save_pretrained(folder / "transformers")
        else:
            save_model(model.network, str(folder / "model.safetensors"))
        (folder / CONFIG).write_text(json.dumps(self._config, indent=2) + "\n", encoding="utf-8")

    def load(self, folder: Path) -> torch.nn.Module:
        from safetensors.torch import load_model

        self._config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if self._config["family"] == "transformers":
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            location = folder / "transformers"
            model = TransformersDetector(AutoModelForObjectDetection.from_pretrained(location),
                                         AutoImageProcessor.from_pretrained(location))
            return self._remember(model)
        self.options["image_size"] = self._config["image_size"]
        body = timm_body(self._config["encoder"], timm_weights=False)
        if self._config["frozen_stem"]:
            freeze_stem(body)
        network = torchvision_detector(self._config["architecture"], body, len(self._config["categories"]),
                                       self._config["image_size"])
        load_model(network, str(folder / "model.safetensors"))
        return self._remember(TorchvisionDetector(network))

    def export_graph(self, model: torch.nn.Module) -> Any:
        return export_graph(model, {"categories": self._config["categories"],
                                    "category_ids": self._config["category_ids"],
                                    "image_size": self._config.get("image_size")})

    def answer(self, prediction: Mapping[str, Any]) -> Any:
        # The same objects found: labels, and boxes to the pixel, of what scores at least 0.5.
        return [(label, [round(v) for v in box]) for box, score, label in
                zip(prediction["boxes"], prediction["scores"], prediction["labels"]) if score >= 0.5]

    # -- outputs ---------------------------------------------------------------------------------

    def records(self, data: DetectionData, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One COCO-style result per box at or above --score-threshold: image, category, bbox
        ``[x, y, width, height]`` in pixels and score."""
        threshold = float(self.options.get("score_threshold") or 0.0)
        names, category_ids = self._config["categories"], self._config["category_ids"]
        results = []
        for item in sorted(predictions, key=lambda p: p["index"]):
            path = data.images[item["index"]]
            for (x1, y1, x2, y2), score, label in zip(item["boxes"], item["scores"], item["labels"]):
                if score >= threshold:
                    results.append({"image_id": data.image_ids[item["index"]], "file_name": str(path),
                                    "category_id": category_ids[label], "category": names[label],
                                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                    "score": round(score, 4)})
        return results

    def write_predictions(self, data: DetectionData, predictions: list[dict[str, Any]], output: Path | None) -> str:
        from taskzoo_detection.pictures import draw_detections

        threshold = float(self.options.get("score_threshold") or 0.0)
        names = self._config["categories"]
        results, lines = self.records(data, predictions), []
        for item in sorted(predictions, key=lambda p: p["index"]):
            path = data.images[item["index"]]
            kept = [(box, score, label) for box, score, label in zip(item["boxes"], item["scores"], item["labels"])
                    if score >= threshold]
            summary = ", ".join(f"{names[label]} {score:.2f}" for _, score, label in kept) or "nothing"
            lines.append(f"{path.name}: {summary}")
        if output is None:
            return "\n".join(lines)
        if output.suffix.lower() != ".json":
            output.mkdir(parents=True, exist_ok=True)
            output = output / "detections.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        drawn = output.with_suffix("") if output.name != "detections.json" else output.parent / "drawn"
        drawn.mkdir(parents=True, exist_ok=True)
        for item in predictions:
            path = data.images[item["index"]]
            kept = [(b, s, names[lab]) for b, s, lab in zip(item["boxes"], item["scores"], item["labels"]) if s >= threshold]
            draw_detections(path, kept, names, drawn / f"{path.stem}.jpg")
        return f"{len(results)} detections (score >= {threshold:g}) in {len(predictions)} images; boxes drawn in {drawn}"

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        from taskzoo_detection.pictures import plot_precision_recall, preview_grid

        pictures = []
        per_class = metrics.get("per_class")
        if per_class:
            rows = ["| category | AP@[.5:.95] | AP@.5 | recall@100 | true boxes |", "|---|---|---|---|---|"]
            cell = (lambda value: "-" if value is None else f"{value:.4f}")  # noqa: E731
            rows += [f"| {name} | {cell(v['ap'])} | {cell(v['ap50'])} | {cell(v['recall'])} | {v['boxes']} |"
                     for name, v in per_class.items()]
            (folder / "per_class.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
        if metrics.get("pr_curve"):
            pictures.append(plot_precision_recall(metrics["pr_curve"], folder / "precision_recall.png",
                                                  metrics.get("map_50")))
        previews = self._previews
        data = self._last_data
        if previews and data is not None and data.annotated:
            pictures.append(preview_grid(data, previews, self.labels_of_model, folder / "predictions.png"))
        return pictures

    def model_card_usage(self, run_folder: Path) -> str:
        if self._config and self._config["family"] == "transformers":
            return ("The model folder's `transformers/` loads with "
                    "`AutoModelForObjectDetection.from_pretrained(...)` and `AutoImageProcessor.from_pretrained(...)`.")
        return ("`model/model.safetensors` holds a torchvision "
                f"{self._config['architecture'] if self._config else ''} detector on a timm "
                f"{self._config['encoder'] if self._config else ''} feature pyramid; "
                "`model/taskzoo_detection.json` its categories and settings.")
