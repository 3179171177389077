"""Resolving a ``--backbone`` name to a `BackboneSpec`, finding its weights through its source, and
loading from the hub without hanging when there is no network."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from taskzoo.errors import UserError
from taskzoo.plugins import PluginHost, get_host
from taskzoo.specs import BackboneSpec

T = TypeVar("T")


def resolve_backbone(host: PluginHost, task: str, name: str | None, role: str = "",
                     option: str = "--backbone") -> BackboneSpec:
    """Turn what the user typed into a backbone record.

    ``None`` is the task's default; a catalog name or its upstream hub id is that entry; an
    existing folder is a local model; anything else is taken as a hub id (a Hugging Face model,
    or a timm name). ``role`` picks among a task's other models (recommendation's ``text
    encoder``), named by ``option``.
    """
    if not name:
        return host.default_backbone(task, role)
    known = host.backbones(task, role)
    for backbone in known:
        if name == backbone.name:
            return backbone
    for backbone in known:
        if name == backbone.upstream and available_offline(backbone):
            return backbone
    if Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser().resolve())
        return BackboneSpec(name=name, task=task, source="local", location=folder, licence="unknown", role=role)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{option} {name}: no such folder, and not a hub id; {_known_line(host, task, role=role)}")
    return BackboneSpec(name=name, task=task, source="hub", location=name, licence="see its model card", role=role)


def locate(backbone: BackboneSpec) -> str:
    """The folder, file or hub id the backbone's files are read from, as its source says."""
    source = get_host().source(backbone)
    return source.locate(backbone) if source.locate is not None else backbone.location


def available_offline(backbone: BackboneSpec) -> bool:
    """Whether the backbone can be loaded right now with no network."""
    try:
        source = get_host().source(backbone)
    except UserError:
        return False
    if source.available_offline is not None:
        return bool(source.available_offline(backbone))
    if source.downloads:
        return _in_hub_cache(backbone.location)
    return backbone.offline


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("config.json", "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return True
    return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so a missing network costs seconds, not minutes.

    The check runs in a daemon thread and is given up after ``timeout`` seconds in all: a socket
    timeout covers the connection but not the name lookup, which a broken resolver can hang.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    answered: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((endpoint.hostname, port), timeout=timeout):
                answered.append(True)
        except Exception:  # noqa: BLE001 - any failure of the probe means "not reachable"
            answered.append(False)

    thread = threading.Thread(target=probe, name="taskzoo-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered) and answered[0]


def load_from_hub(backbone: BackboneSpec, load: Callable[..., T]) -> T:
    """Call ``load(location, local_files_only=...)`` for a hub backbone, failing in one clear line.

    Cached files are used first; the network is tried only when the hub answers.
    """
    host = get_host()
    try:
        return load(backbone.location, local_files_only=True)
    except (OSError, ValueError):
        pass
    # An ad-hoc hub id (not from the catalog) may just as well be a typo of a catalog name.
    what = f"backbone '{backbone.name}'" if backbone.plugin else (
        f"'{backbone.name}' is not a {backbone.task} backbone in the catalog ('tasks backbones {backbone.task}') and, as a hub id, it"
    )
    if not hub_reachable():
        raise UserError(
            f"{what} is not in the local Hugging Face cache and the hub cannot "
            f"be reached (no network?); {_known_line(host, backbone.task, offline_only=True, role=backbone.role)}"
        )
    try:
        return load(backbone.location, local_files_only=False)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"backbone '{backbone.name}' could not be loaded from the hub: {first_line}; "
            f"{_known_line(host, backbone.task, role=backbone.role)}"
        ) from None


def _known_line(host: PluginHost, task: str, offline_only: bool = False, role: str = "") -> str:
    backbones = host.backbones(task, role)
    what = f"{role}s" if role else "backbones"
    if offline_only:
        backbones = [b for b in backbones if available_offline(b)]
        return f"{what} for {task} that work offline: {', '.join(b.name for b in backbones) or 'none'}"
    return f"known {what} for {task}: {', '.join(b.name for b in backbones) or 'none'}"
