"""Helpers for tasks built on Hugging Face transformers: loading a backbone from wherever its
`BackboneSpec` says, quietly, and the token limit to truncate or window at."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from taskzoo.weights import load_from_hub, locate
from taskzoo.errors import UserError
from taskzoo.specs import BackboneSpec

__all__ = [
    "TOKEN_FIELDS",
    "TransformersAdapter",
    "build_classifier",
    "classifier_graph",
    "load_classifier",
    "load_pretrained",
    "quiet_transformers",
    "save_classifier",
    "token_limit",
]

T = TypeVar("T")

TOKEN_FIELDS = ("input_ids", "attention_mask", "token_type_ids")

# Tokenizers without a recorded limit report a huge model_max_length; no encoder we list takes more.
LONGEST_SUPPORTED = 512


def quiet_transformers() -> None:
    """Keep transformers' load reports and progress bars out of taskzoo's output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_pretrained(backbone: BackboneSpec, load: Callable[[str, bool], T]) -> T:
    """Call ``load(location, local_files_only)`` for a hub, package or local backbone.

    Hub ids go through `load_from_hub` (cache first, one clear line without network); folders
    that hold no transformers model give a `UserError` naming the folder.
    """
    quiet_transformers()
    if backbone.source == "hub":
        return load_from_hub(backbone, load)
    location = locate(backbone)
    try:
        return load(location, True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"backbone '{backbone.name}': {location} does not hold a transformers model and tokenizer ({first_line})"
        ) from None


def token_limit(tokenizer: Any, requested: int | None, backbone: str = "the backbone") -> int:
    """``requested`` (``--max-length``), or the longest input the backbone takes when not given; a
    request beyond what the backbone takes (its position embeddings end there) is a `UserError`."""
    # Tokenizers that do not know their model's limit report a huge number.
    known = tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None
    if requested is not None and known is not None and requested > known:
        raise UserError(f"--max-length {requested}: {backbone} takes at most {known} tokens")
    return requested or min(known or LONGEST_SUPPORTED, LONGEST_SUPPORTED)


class TransformersAdapter(torch.nn.Module):
    """Adapts a transformers model with a classification head (sequence or token) to the trainer's
    contract: ``forward(batch) -> {"loss", "output"}`` with the logits as output."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        inputs = {key: batch[key] for key in TOKEN_FIELDS if key in batch}
        out = self.network(**inputs, labels=batch.get("labels"))
        return {"loss": out.loss, "output": out.logits}


def build_classifier(auto_class: Any, backbone: BackboneSpec, labels: Sequence[str]) -> tuple[Any, Any]:
    """Tokenizer and ``auto_class`` model (e.g. AutoModelForTokenClassification) with a fresh head for ``labels``."""
    from transformers import AutoTokenizer

    labels = list(labels)

    def load(location: str, local_files_only: bool) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
        network = auto_class.from_pretrained(
            location, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True,
            local_files_only=local_files_only,
        )
        return tokenizer, network

    return load_pretrained(backbone, load)


def save_classifier(model: TransformersAdapter, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer: the folder loads in a transformers
    pipeline. A LoRA model (``--lora``) is saved with its adapters merged, and the adapter itself
    (peft's layout) in ``adapter/`` beside the folder."""
    from taskzoo.helpers.lora import is_lora, merged_copy

    folder.mkdir(parents=True, exist_ok=True)
    network = model.network
    if is_lora(network):
        network.save_pretrained(folder.parent / "adapter", safe_serialization=True)
        network = merged_copy(network)
    network.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_classifier(auto_class: Any, folder: Path) -> tuple[Any, TransformersAdapter, list[str]]:
    """What `save_classifier` wrote: tokenizer, adapted model, and label names in id order."""
    from transformers import AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    network = auto_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    labels = [network.config.id2label[i] for i in range(len(network.config.id2label))]
    return tokenizer, TransformersAdapter(network), labels


class _Logits(torch.nn.Module):
    """The network with tensors in and logits out, as an ONNX graph takes them."""

    def __init__(self, network: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.network, self.names = network, tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.network(**dict(zip(self.names, tensors))).logits


def classifier_graph(model: TransformersAdapter, tokenizer: Any) -> Any:
    """The ONNX export of a sequence or token classifier: the tokenizer's inputs (batch and
    sequence length dynamic) to logits, with the tokenizer saved beside the graph."""
    from taskzoo.export import Graph

    config = model.network.config
    # Traced with eager attention: the graph ONNX Runtime's transformer optimizer recognises and fuses
    # (its Attention and EmbedLayerNormalization kernels); torch.export's graph of SDPA attention
    # gets no attention fusion. Same weights, same numbers.
    if hasattr(model.network, "set_attn_implementation"):
        try:
            model.network.set_attn_implementation("eager")
        except (ValueError, ImportError):  # an architecture with one attention implementation only
            pass
    names = tuple(name for name in TOKEN_FIELDS if name in tokenizer.model_input_names)
    logits_axes = {0: "batch", 1: "sequence"} if "TokenClassification" in type(model.network).__name__ else {0: "batch"}
    return Graph(
        network=_Logits(model.network, names), input_names=names, output_names=("logits",),
        dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": logits_axes},
        files=tokenizer.save_pretrained,
        preprocessing={"tokenizer": "the tokenizer files beside the graph (transformers AutoTokenizer)",
                       "max_length": tokenizer.model_max_length, "truncation": True, "padding": "longest in batch",
                       "inputs": list(names)},
        transformer={"model_type": config.model_type, "num_heads": getattr(config, "num_attention_heads", 0),
                     "hidden_size": getattr(config, "hidden_size", 0)},
        tracing=True,
    )
