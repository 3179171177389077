"""The segmentation task: segmentation-models-pytorch networks on timm encoders, trained by the
shared trainer. Images and masks move together through torchvision.transforms.v2."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from taskzoo import BackboneSpec, DataError, UserError
from taskzoo.weights import available_offline, hub_reachable, locate
from taskzoo.helpers.augmentation import ItemSeeded
from taskzoo.helpers.plots import plot_confusion_matrix, save_figure
from taskzoo.helpers.splits import random_split
from taskzoo.task import Labels, Task, label_details
from taskzoo.helpers.timm_weights import load_matching, positional_state_dict
from taskzoo_segmentation.data import DEFAULT_COLOURS, Classes, SegmentationData, image_array, mask_array, read_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "fpn": "FPN", "deeplabv3plus": "DeepLabV3Plus",
                 "linknet": "Linknet", "manet": "MAnet", "pspnet": "PSPNet", "segformer": "Segformer"}
CONFIG = "taskzoo_segmentation.json"


class Segmenter(torch.nn.Module):
    """An smp network with its loss: ``forward(batch) -> {"loss", "output"}`` (logits B x C x H x W)."""

    def __init__(self, network: torch.nn.Module, loss: str, ignore_index: int | None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.network = network
        ignore = -100 if ignore_index is None else ignore_index
        self.cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=ignore) if "ce" in loss else None
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index) if "dice" in loss else None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        logits = self.network(batch["image"])
        loss = None
        if "mask" in batch:
            target = batch["mask"]
            parts = [f(logits, target) for f in (self.cross_entropy, self.dice) if f is not None]
            loss = sum(parts)
        return {"loss": loss, "output": logits}


class ImagesAndMasks(ItemSeeded, Dataset):
    def __init__(self, data: SegmentationData, transform: Any, classes: Classes | None, seed: int = 0,
                 full_masks: bool = False) -> None:
        self.data, self.transform, self.classes, self.seed = data, transform, classes, seed
        self.full_masks = full_masks  # scoring: also each mask at its image's own size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision import tv_tensors

        image = tv_tensors.Image(torch.from_numpy(image_array(self.data.images[index]).copy()).permute(2, 0, 1))
        item: dict[str, Any] = {"index": index}
        with self.random_for(index):
            if self.data.masks is not None:
                mask = torch.from_numpy(mask_array(self.data.masks[index], self.classes, self.data.binary_255))
                if self.full_masks:
                    item["full_mask"] = mask.long()
                image, mask = self.transform(image, tv_tensors.Mask(mask))
                item["mask"] = mask.as_subclass(torch.Tensor).long()
            else:
                image = self.transform(image)
        item["image"] = image.as_subclass(torch.Tensor)
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked images and masks; the masks at their images' own sizes as a list, sizes may differ."""
    from torch.utils.data import default_collate

    full = [item.pop("full_mask") for item in items if "full_mask" in item]
    batch = default_collate(items)
    if full:
        batch["full_mask"] = full
    return batch


class SegmentationTask(Task):
    input_images = True
    channels_last = True
    cpu_bf16 = True  # the Unet: faster on AMX CPUs at the same mean IoU over 3 seeds (benchmarks/README.md)
    _classes: Classes | None = None
    _architecture: str = "unet"
    _encoder: str = "efficientnet_lite0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A few evaluated images and the data they came from, for the pictures report() draws.
        self._previews: dict[int, Any] = {}
        self._last_data: SegmentationData | None = None

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size") or 256)

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> SegmentationData:
        images = self.options.get("images")
        data = read_dataset(path, role=role, known_classes=list(labels) if labels and role in ("val", "test") else None,
                            images_dir=Path(images) if images and role in ("train", "test") else None)
        if labels and role in ("val", "test") and data.classes.from_file and list(data.classes.names) != list(labels):
            raise DataError(f"{path}/classes.yaml: classes {data.classes.names} differ from the model's {list(labels)}")
        return data

    def labels(self, data: SegmentationData) -> Labels:
        # Colours and the ignore index travel with the names, to build_model.
        return Labels(data.classes.names, colours=data.classes.colours, ignore_index=data.classes.ignore_index)

    def parts(self, data: SegmentationData, size: int) -> Iterator[SegmentationData]:
        for start in range(0, len(data), size):
            yield data.subset(list(range(start, min(start + size, len(data)))))

    def split(self, data: SegmentationData, *, val_fraction: float, seed: int) -> tuple[SegmentationData, SegmentationData]:
        if data.val is not None:
            return data.subset(list(range(len(data)))), data.val
        train, val = random_split(len(data), val_fraction, seed)
        if not train or not val:
            raise DataError(f"{data.root}: too few images to split off a validation set; give --val or a val/ folder")
        return data.subset(train), data.subset(val)

    # -- model -----------------------------------------------------------------------------------

    def _network(self, architecture: str, encoder: str, classes: int, timm_weights: bool) -> torch.nn.Module:
        import segmentation_models_pytorch as smp

        if architecture not in ARCHITECTURES:
            raise UserError(f"--arch {architecture}: expected one of {', '.join(ARCHITECTURES)}")
        return smp.create_model(ARCHITECTURES[architecture], encoder_name=f"tu-{encoder}",
                                encoder_weights="imagenet" if timm_weights else None, classes=classes)

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        self._architecture = self.options.get("arch") or "unet"
        if backbone.source == "hub":  # a name not in the catalog: take it as a timm model name
            backbone = BackboneSpec(name=backbone.name, task=self.name, source="timm", location=backbone.location,
                                    licence=backbone.licence)
        self._encoder = backbone.location.removeprefix("timm/") if backbone.source == "timm" else backbone.name
        pretrained = not self.options.get("no_pretrained")
        if backbone.source == "timm" and pretrained and not (available_offline(backbone) or hub_reachable()):
            raise UserError(f"backbone '{backbone.name}': its timm weights are not cached and the hub cannot be "
                            f"reached (no network?); backbones that work offline: {', '.join(self.context.offline_backbones)}")
        if backbone.source not in ("timm", "package"):
            raise UserError(f"backbone '{backbone.name}': segmentation takes timm encoders; see 'tasks backbones segmentation'")
        network = self._network(self._architecture, self._encoder, len(labels), pretrained and backbone.source == "timm")
        stride = network.encoder.output_stride if getattr(network, "requires_divisible_input_shape", False) else 1
        if self.image_size % stride:
            up = (self.image_size // stride + 1) * stride
            raise UserError(f"--image-size {self.image_size}: the {self._architecture} network on {self._encoder} "
                            f"takes sides divisible by {stride}; use {up - stride if up > stride else up} or {up}")
        if pretrained and backbone.source == "package":
            load_matching(network.encoder.model, positional_state_dict(Path(locate(backbone)), backbone.name))
        details = label_details(labels)
        colours = details.get("colours") or [tuple(c) for c in DEFAULT_COLOURS[: len(labels)]]
        self._classes = Classes(list(labels), colours, details.get("ignore_index"), True)
        return Segmenter(network, self.options.get("loss") or "ce+dice", self._classes.ignore_index)

    @property
    def labels_of_model(self) -> list[str]:
        if self._classes is None:
            raise RuntimeError("build or load the model first")
        return self._classes.names

    def _transform(self, train: bool) -> Any:
        from torchvision.transforms import v2

        size = self.image_size
        resize = v2.Resize((size, size), antialias=True)
        augment = self.options.get("augment") or "crop"
        if not train or augment == "none":
            steps = [resize]
        elif augment == "flip":
            steps = [resize, v2.RandomHorizontalFlip()]
        else:  # crop: scale and aspect change, flips, colour
            steps = [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                     v2.ColorJitter(0.2, 0.2, 0.2, 0.02)]
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def dataloader(self, data: SegmentationData, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        dataset = ImagesAndMasks(data, self._transform(train), data.classes if data.classes.from_file else None, seed,
                                 full_masks=not train)
        if not train:  # previews picture the last data scored (one part of a large evaluation)
            self._last_data, self._previews = data, {}
        # BatchNorm cannot train on a batch of one: drop a last batch that small.
        drop_last = train and len(dataset) % batch_size == 1
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator, drop_last=drop_last,
                          collate_fn=_collate, **self.context.loader_options(train))

    def predictions(self, batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> list[dict[str, Any]]:
        predicted = output.argmax(dim=1)
        indices = batch["index"].tolist()
        if "mask" in batch:
            # Scored at each image's own size: the logits are resized to its mask, as the masks a
            # user draws are compared with what the model predicts for their images.
            classes = output.shape[1]
            results = []
            for row, index in enumerate(indices):
                target = batch["full_mask"][row] if "full_mask" in batch else batch["mask"][row]
                mine = predicted[row]
                if tuple(target.shape) != tuple(mine.shape):
                    mine = torch.nn.functional.interpolate(output[row:row + 1].float(), size=tuple(target.shape),
                                                           mode="bilinear", align_corners=False)[0].argmax(0)
                valid = (target >= 0) & (target < classes)
                pairs = target[valid] * classes + mine[valid]
                confusion = torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
                results.append({"index": index, "confusion": confusion.cpu().tolist()})
                self._keep_preview(index, predicted[row])
            return results
        return [{"index": index, "logits": output[row].float().cpu()} for row, index in enumerate(indices)]

    def _keep_preview(self, index: int, mask: torch.Tensor) -> None:
        previews = self._previews
        if len(previews) < 6 or index in previews:
            previews[index] = mask.to(torch.uint8).cpu().numpy()

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        return batch["index"].tolist()

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        from safetensors.torch import save_model

        folder.mkdir(parents=True, exist_ok=True)
        save_model(model.network, str(folder / "model.safetensors"))
        config = {"architecture": self._architecture, "encoder": self._encoder, "classes": self._classes.names,
                  "colours": [list(c) for c in self._classes.colours], "ignore_index": self._classes.ignore_index,
                  "image_size": self.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def load(self, folder: Path) -> torch.nn.Module:
        from safetensors.torch import load_model

        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        self._architecture, self._encoder = config["architecture"], config["encoder"]
        self._classes = Classes(config["classes"], [tuple(c) for c in config["colours"]], config["ignore_index"], True)
        self.options["image_size"] = config["image_size"]
        network = self._network(self._architecture, self._encoder, len(self._classes.names), False)
        load_model(network, str(folder / "model.safetensors"))
        return Segmenter(network, "ce", self._classes.ignore_index)

    def export_graph(self, model: torch.nn.Module) -> Any:
        from taskzoo.export import Graph

        # The network takes any side its encoder's stride divides, as it trained on image_size.
        sides = {0: "batch", 2: "height", 3: "width"}
        return Graph(network=model.network, input_names=("image",), output_names=("logits",),
                     dynamic_axes={"image": sides, "logits": sides},
                     preprocessing={"image": "RGB, resized to image_size x image_size (bilinear, antialiased), "
                                             "scaled to 0..1, then (x - mean) / std per channel, NCHW float32",
                                    "image_size": self.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                                    "output": "class logits per pixel; argmax over axis 1, resized back to the image",
                                    "classes": self._classes.names, "colours": [list(c) for c in self._classes.colours]})

    def answer(self, prediction: Mapping[str, Any]) -> Any:
        return prediction.get("confusion", prediction.get("index"))

    # -- outputs ---------------------------------------------------------------------------------

    def records(self, data: SegmentationData, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per image: the class-id mask at the image's own size, each class's share of the pixels, and
        the mean probability of the chosen class (how sure the model is of the mask)."""
        records = []
        for item in sorted(predictions, key=lambda p: p["index"]):
            path = data.images[item["index"]]
            width, height = data.sizes[item["index"]]
            logits = torch.nn.functional.interpolate(item["logits"][None], size=(height, width), mode="bilinear",
                                                     align_corners=False)[0]
            confidence, mask = logits.softmax(0).max(0)
            mask = mask.to(torch.uint8).numpy()
            shares = np.bincount(mask.ravel(), minlength=len(self._classes.names)) / mask.size
            records.append({"image": str(path), "mask": mask, "score": round(float(confidence.mean()), 4),
                            "classes": {n: round(float(v), 6) for n, v in zip(self._classes.names, shares) if v > 0}})
        return records

    def write_predictions(self, data: SegmentationData, predictions: list[dict[str, Any]], output: Path | None) -> str:
        from PIL import Image

        if output is None:
            raise UserError("--output FOLDER is needed: segmentation writes a mask and an overlay per image")
        output.mkdir(parents=True, exist_ok=True)
        palette = np.array(self._classes.colours + [(0, 0, 0)] * (256 - len(self._classes.colours)), dtype=np.uint8)
        lines = []
        for record in self.records(data, predictions):
            path, mask = Path(record["image"]), record["mask"]
            indexed = Image.fromarray(mask, mode="L").convert("P")
            indexed.putpalette(palette.ravel().tolist())
            indexed.save(output / f"{path.stem}.png")
            photo = image_array(path).astype(np.float32)
            coloured = palette[mask].astype(np.float32)
            blend = np.where(mask[..., None] > 0, 0.55 * photo + 0.45 * coloured, photo)
            Image.fromarray(blend.clip(0, 255).astype(np.uint8)).save(output / f"{path.stem}_overlay.png")
            lines.append(f"{path.name}: " + ", ".join(f"{n} {s:.1%}" for n, s in record["classes"].items())
                         + f" (confidence {record['score']:.2f})")
        return "\n".join(lines)

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        pictures = []
        per_class = metrics.get("per_class")
        if per_class:
            rows = ["| class | IoU | Dice | pixels |", "|---|---|---|---|"]
            rows += [f"| {name} | {v['iou']:.4f} | {v['dice']:.4f} | {v['pixels']} |" for name, v in per_class.items()]
            (folder / "per_class.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
        if metrics.get("confusion_matrix"):
            title = "Pixels" + (f" (mean IoU {metrics['mean_iou']:.3f})" if "mean_iou" in metrics else "")
            pictures.append(plot_confusion_matrix(metrics["confusion_matrix"], self.labels_of_model,
                                                  folder / "confusion_matrix.png", title))
        previews = self._previews
        data = self._last_data
        if previews and data is not None and data.masks is not None:
            pictures.append(self._preview_grid(data, previews, folder / "predictions.png"))
        return pictures

    def _preview_grid(self, data: SegmentationData, previews: dict[int, np.ndarray], output: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image

        palette = np.array(self._classes.colours + [(255, 255, 255)] * 256, dtype=np.uint8)
        chosen = sorted(previews)[:6]
        figure, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
        for row, index in enumerate(chosen):
            size = self.image_size
            photo = Image.fromarray(image_array(data.images[index])).resize((size, size))
            truth = mask_array(data.masks[index], data.classes if data.classes.from_file else None, data.binary_255)
            truth = np.asarray(Image.fromarray(truth.astype(np.uint8)).resize((size, size), Image.NEAREST))
            for column, (picture, title) in enumerate(
                ((photo, data.images[index].name), (palette[truth], "true mask"), (palette[previews[index]], "predicted"))
            ):
                axes[row][column].imshow(picture)
                axes[row][column].set_title(title, fontsize=9)
                axes[row][column].axis("off")
        figure.tight_layout()
        return save_figure(figure, output, dpi=90)
