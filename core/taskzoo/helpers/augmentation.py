"""Random augmentation that depends on the item, not on what ran before it.

A dataset whose ``__getitem__`` draws crops and flips from PyTorch's global random state gives an
image a different crop when the epoch is resumed from a checkpoint in its middle (the skipped
batches no longer draw), when loader workers split the work differently, or when the model's
dropout ran one step more. `ItemSeeded` draws each item's augmentation from (seed, epoch, index)
instead, leaving the global random state (dropout, the trainer's checkpoints) untouched.

    class Images(ItemSeeded, Dataset):
        def __getitem__(self, index):
            with self.random_for(index):
                image = self.transform(image)

The shared trainer calls ``set_epoch`` through the data loader at the start of every epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["ItemSeeded"]


class ItemSeeded:
    """Mixin for a map-style dataset: `random_for` seeds PyTorch's random state for one item."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @contextlib.contextmanager
    def random_for(self, index: int) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            # Distinct, reproducible streams per (seed, epoch, item): a fixed mix, not hash(), which
            # Python salts per process.
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 65_537 + index) % (2**63 - 1))
            yield
