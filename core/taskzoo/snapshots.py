"""Checkpoints written while training goes on.

Writing a checkpoint (the weights and twice their size of optimizer state) is disk work: seconds
per epoch for a small text model, during which the training thread would wait. When training on a
GPU the trainer instead takes a snapshot (CPU copies of the tensors, a memory copy that takes a
fraction of that time) and hands the files to one background thread, the way PyTorch's
``torch.distributed.checkpoint.async_save`` and Lightning's ``AsyncCheckpointIO`` do. Writes
happen one at a time, in order; the next checkpoint, and whatever reads one, waits for the last.
(On the CPU the cores are busy with the training itself and the trainer writes in place.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# A snapshot is copied only when this fraction of the memory the machine has free holds it;
# above it (a model near the machine's memory) the checkpoint is written in place, as before.
_SNAPSHOT_SHARE_OF_FREE_MEMORY = 0.5


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    """The same for two tensors that are one tensor's memory under two names (tied weights)."""
    return (tensor.untyped_storage().data_ptr(), tensor.device, tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype)


def cpu_copy(state: Any, _copies: dict[tuple[Any, ...], torch.Tensor] | None = None) -> Any:
    """``state`` (nested dicts, lists and tuples of tensors and plain values) with every tensor
    copied to the CPU in PyTorch's default layout, so that training may change the originals.
    Tensors that are one tensor under two names (tied weights) stay one tensor."""
    copies = {} if _copies is None else _copies
    if isinstance(state, torch.Tensor):
        key = _storage_key(state)
        if key not in copies:
            copies[key] = torch.empty(state.shape, dtype=state.dtype).copy_(state.detach())
        return copies[key]
    if isinstance(state, Mapping):
        return {key: cpu_copy(value, copies) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(value, copies) for value in state)
    return state


def tensor_bytes(state: Any) -> int:
    """How many bytes of tensors ``state`` holds (nested as for `cpu_copy`)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def fits_in_memory(size: int) -> bool:
    """Whether a snapshot of ``size`` bytes leaves the machine comfortable memory."""
    import psutil

    return size <= _SNAPSHOT_SHARE_OF_FREE_MEMORY * psutil.virtual_memory().available


def save_weights(weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors, each tensor once: a name for a tensor already written (tied
    weights) is recorded in the metadata instead, as ``safetensors.torch.save_model`` does, so
    ``load_model`` reads the file into the model either way."""
    kept: dict[str, torch.Tensor] = {}
    first_name: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in weights.items():
        key = _storage_key(tensor)
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
            kept[name] = tensor
    save_file(kept, str(path), metadata=aliases or None)


class BackgroundWriter:
    """Runs writes one at a time on a thread of its own. `wait` finishes the last one and raises
    what it raised (a full disk fails the run at the next checkpoint, or at its end)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def write(self, write: Callable[[], None], *, background: bool) -> None:
        self.wait()
        if not background:
            write()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskzoo-checkpoint")
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the last write and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
