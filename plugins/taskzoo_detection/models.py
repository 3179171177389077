"""The two detector families behind the detection task, each wrapped so that ``forward(batch)``
returns ``{"loss", "output"}`` for the shared trainer.

- torchvision detectors (Faster R-CNN, FCOS, RetinaNet) on a timm ImageNet backbone with a feature
  pyramid, for training from ImageNet weights (the offline default);
- transformers ``AutoModelForObjectDetection`` checkpoints (DETR, RT-DETR, YOLOS...) with
  detection-pretrained weights and a new class head, for users with the hub.

Both report detections as ``{"boxes": x1 y1 x2 y2 in the image's pixels, "scores", "labels"}``
with labels counted from 0 over the task's categories.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("fasterrcnn", "fcos", "retinanet")
PYRAMID_CHANNELS = 128
# Detections kept per image for evaluation; COCO's maxDets is 100.
MAX_DETECTIONS = 100
EVAL_SCORE_FLOOR = 0.05


class TimmFeaturePyramid(torch.nn.Module):
    """A timm ``features_only`` network's last three stages (strides 8, 16, 32) under a feature
    pyramid, in the shape torchvision's detectors expect (``out_channels``, dict of maps)."""

    def __init__(self, body: torch.nn.Module, extra: str) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        super().__init__()
        self.body = body
        channels = body.feature_info.channels()[-3:]
        blocks = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(PYRAMID_CHANNELS, PYRAMID_CHANNELS)
        self.fpn = FeaturePyramidNetwork(channels, PYRAMID_CHANNELS, extra_blocks=blocks)
        self.out_channels = PYRAMID_CHANNELS

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)[-3:]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def timm_body(encoder: str, *, timm_weights: bool) -> torch.nn.Module:
    import timm

    return timm.create_model(encoder, pretrained=timm_weights, features_only=True)


def freeze_stem(body: torch.nn.Module) -> None:
    """Freeze batch norm statistics (detection batches are too small to estimate them) and the
    layers before the stride-4 stage, as torchvision does for its own pretrained backbones."""
    from timm.layers import freeze_batch_norm_2d

    freeze_batch_norm_2d(body)
    boundary = body.feature_info.module_name(1) + "."
    for name, parameter in body.named_parameters():
        if name.startswith(boundary):
            break
        parameter.requires_grad_(False)


def torchvision_detector(architecture: str, body: torch.nn.Module, categories: int, image_size: int) -> torch.nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    common = {"min_size": image_size, "max_size": image_size, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    # Class 0 is background for Faster R-CNN; the dense detectors simply never predict it.
    classes = categories + 1
    if architecture == "fasterrcnn":
        anchors = AnchorGenerator(((16, 24), (32, 48), (64, 96), (128, 256)), ((0.5, 1.0, 2.0),) * 4)
        return FasterRCNN(
            TimmFeaturePyramid(body, "pool"), None, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(PYRAMID_CHANNELS * 7 * 7, 512), box_predictor=FastRCNNPredictor(512, classes),
            box_batch_size_per_image=256, box_score_thresh=EVAL_SCORE_FLOOR, box_detections_per_img=MAX_DETECTIONS,
            **common,
        )
    if architecture == "fcos":
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
        return FCOS(TimmFeaturePyramid(body, "p6p7"), classes, anchor_generator=anchors,
                    score_thresh=EVAL_SCORE_FLOOR, detections_per_img=MAX_DETECTIONS, **common)
    if architecture == "retinanet":
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        return RetinaNet(TimmFeaturePyramid(body, "p6p7"), classes, anchor_generator=anchors,
                         score_thresh=EVAL_SCORE_FLOOR, detections_per_img=MAX_DETECTIONS, **common)
    raise ValueError(architecture)


class TorchvisionDetector(torch.nn.Module):
    """``batch["images"]``: float images in [0, 1] at any size; ``batch["targets"]``: boxes and
    0-based labels. Training returns the summed detector losses; evaluation the detections."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        images = [image.float() for image in batch["images"]]
        if self.training:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in batch["targets"]]
            losses = self.network(images, targets)
            return {"loss": sum(losses.values()), "output": None}
        detections = self.network(images)
        return {"loss": None, "output": [
            {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in detections
        ]}


class TransformersDetector(torch.nn.Module):
    """A transformers object-detection model with its image processor. The processor resizes and
    normalises in the collate function; post-processing maps boxes back to each image's pixels."""

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        inputs = {"pixel_values": batch["pixel_values"]}
        if "pixel_mask" in batch:
            inputs["pixel_mask"] = batch["pixel_mask"]
        labels = batch.get("labels")
        outputs = self.model(**inputs, labels=labels) if labels is not None else self.model(**inputs)
        if self.training:
            return {"loss": outputs.loss, "output": None}
        sizes = batch["sizes"].tolist()
        detections = self.processor.post_process_object_detection(outputs, threshold=EVAL_SCORE_FLOOR, target_sizes=sizes)
        kept = []
        for found in detections:
            order = found["scores"].argsort(descending=True)[:MAX_DETECTIONS]
            kept.append({"boxes": found["boxes"][order], "scores": found["scores"][order], "labels": found["labels"][order]})
        return {"loss": getattr(outputs, "loss", None), "output": kept}


class _OneImage(torch.nn.Module):
    """A torchvision detector as an ONNX graph: one float image (3 x H x W, 0..1) in; boxes in the
    image's pixels, scores and 1-based labels out. Resizing, normalisation, NMS and the score floor
    are inside the graph, as torchvision's own exports do; torchvision's detectors export one image
    per call, so the batch is a loop over calls."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.network([image])[0]
        return found["boxes"], found["scores"], found["labels"]


class _DetectionLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(**dict(zip(self.names, tensors)))
        return outputs.logits, outputs.pred_boxes


def export_graph(model: torch.nn.Module, preprocessing: dict[str, Any]) -> Any:
    """The ONNX `Graph` of either detector family; the transformers family's post-processing (its
    image processor's ``post_process_object_detection``, the score floor and the top 100) is applied
    to the graph's logits and boxes exactly as to the PyTorch model's."""
    from types import SimpleNamespace

    from taskzoo.export import Graph

    if isinstance(model, TorchvisionDetector):
        def feeds(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
            return [{"image": image.float().cpu().numpy()} for image in batch["images"]]

        def detections(batch: Mapping[str, Any], results: list[list[Any]]) -> list[dict[str, torch.Tensor]]:
            return [{"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                     "labels": torch.from_numpy(labels) - 1} for boxes, scores, labels in results]

        return Graph(network=_OneImage(model.network), input_names=("image",), output_names=("boxes", "scores", "labels"),
                     dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "found"}, "scores": {0: "found"},
                                   "labels": {0: "found"}},
                     feeds=feeds, output=detections, tracing=True,
                     preprocessing={**preprocessing, "image": "one RGB image per call, 3 x H x W float32 in 0..1 "
                                    "(resizing and normalisation are in the graph)",
                                    "output": "boxes x1 y1 x2 y2 in the image's pixels, scores, labels counted from 1 "
                                              "(label - 1 indexes labels.json)"})
    names = ("pixel_values", "pixel_mask")

    def transformer_feeds(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        feeds = {"pixel_values": batch["pixel_values"].float().cpu().numpy()}
        mask = batch.get("pixel_mask")
        feeds["pixel_mask"] = (mask if mask is not None else torch.ones_like(batch["pixel_values"][:, 0])).long().cpu().numpy()
        return [feeds]

    def post_processed(batch: Mapping[str, Any], results: list[list[Any]]) -> list[dict[str, torch.Tensor]]:
        logits, boxes = results[0]
        outputs = SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
        found = model.processor.post_process_object_detection(outputs, threshold=EVAL_SCORE_FLOOR,
                                                              target_sizes=batch["sizes"].tolist())
        kept = []
        for one in found:
            order = one["scores"].argsort(descending=True)[:MAX_DETECTIONS]
            kept.append({"boxes": one["boxes"][order], "scores": one["scores"][order], "labels": one["labels"][order]})
        return kept

    sides = {0: "batch", 2: "height", 3: "width"}
    return Graph(network=_DetectionLogits(model.model, names), input_names=names, output_names=("logits", "pred_boxes"),
                 dynamic_axes={"pixel_values": sides, "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                               "logits": {0: "batch"}, "pred_boxes": {0: "batch"}},
                 feeds=transformer_feeds, output=post_processed, files=model.processor.save_pretrained,
                 preprocessing={**preprocessing, "image": "the image processor saved beside the graph",
                                "output": "logits and normalised boxes; post-process with the image processor's "
                                          "post_process_object_detection"})
