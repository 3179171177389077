"""Low-rank adapters (LoRA) through peft for the transformers classifiers of a task's model
(``--lora R``): only the adapters and the classification head train; `merged_copy` gives the
plain checkpoint a run saves, and the adapter itself is kept beside it."""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

import torch

from taskzoo.errors import UserError

__all__ = ["apply_lora", "is_lora", "merged_copy"]


def _classifier(model: torch.nn.Module) -> tuple[Any, str]:
    """The transformers classifier inside a task's model and peft's task type for it."""
    from transformers import PreTrainedModel

    network = getattr(model, "network", None)
    name = type(network).__name__
    if isinstance(network, PreTrainedModel):
        if name.endswith("ForSequenceClassification"):
            return network, "SEQ_CLS"
        if name.endswith("ForTokenClassification"):
            return network, "TOKEN_CLS"
    raise UserError(f"--lora: this task's model ({type(model).__name__}) is not a transformers text classifier; "
                    "LoRA adapters are available for sentiment and NER")


def apply_lora(model: torch.nn.Module, *, rank: int, alpha: float | None = None, dropout: float = 0.05,
               targets: Sequence[str] | None = None) -> str:
    """Wrap the model's classifier in LoRA adapters of ``rank`` (alpha default 2 x rank); peft's
    own choice of layers per architecture (attention query and value for BERT-like encoders)
    unless ``targets`` names them. Returns a line saying what trains."""
    from peft import LoraConfig, get_peft_model

    network, task_type = _classifier(model)
    # Besides the head (peft keeps it trainable for classifiers), BERT-like encoders' pooler: it feeds
    # the head, and a sentence encoder's checkpoint never trained it (adapters alone then learn slowly).
    pooler = ["pooler"] if any(name.endswith(".pooler") or name == "pooler" for name, _ in network.named_modules()) else None
    config = LoraConfig(task_type=task_type, r=rank, lora_alpha=alpha if alpha is not None else 2 * rank,
                        lora_dropout=dropout, target_modules=list(targets) if targets else None,
                        modules_to_save=pooler)
    try:
        wrapped = get_peft_model(network, config)
    except ValueError as error:  # no such layers in this architecture, or none known for it
        first = " ".join(str(error).split())
        raise UserError(f"--lora-targets: {first}; name the layers to adapt (e.g. --lora-targets query,value)") from None
    model.network = wrapped
    trainable, total = wrapped.get_nb_trainable_parameters()
    layers = ", ".join(sorted(wrapped.peft_config["default"].target_modules))
    head = "the classification head and pooler" if pooler else "the classification head"
    return (f"LoRA rank {rank} on {layers}: {trainable:,} of {total:,} parameters train "
            f"({trainable / total:.2%}; {head} included)")


def is_lora(network: Any) -> bool:
    # A model can only be peft's once peft is imported: saving a plain model need not import it (0.4 s).
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(network, peft.PeftModel)


def merged_copy(network: Any) -> Any:
    """A plain transformers model with the adapters merged into its weights (the training model keeps them)."""
    return copy.deepcopy(network).merge_and_unload()
