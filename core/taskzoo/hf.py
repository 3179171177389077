"""Helpers for tasks built on Hugging Face transformers: loading a backbone from wherever its
`BackboneSpec` says, quietly, and the token limit to truncate or window at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from taskzoo.backbones import load_from_hub, locate
from taskzoo.errors import UserError
from taskzoo.plugins import get_host
from taskzoo.specs import BackboneSpec

T = TypeVar("T")

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
        return load_from_hub(get_host(), backbone, load)
    location = locate(backbone)
    try:
        return load(location, True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"backbone '{backbone.name}': {location} does not hold a transformers model and tokenizer ({first_line})"
        ) from None


def token_limit(tokenizer: Any, requested: int | None) -> int:
    """``requested`` (``--max-length``) capped at what the backbone takes."""
    limit = min(tokenizer.model_max_length, LONGEST_SUPPORTED)
    return min(requested or limit, limit)
