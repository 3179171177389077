"""Samplers for variable-length inputs (text): batches of similar length pad less."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler

__all__ = ["SeededLengthGroupedSampler", "LongestFirstSampler"]


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped shuffling, reseeded each epoch (``set_epoch``) so every process
    of a data-parallel run draws the same order, and a resumed run the same order again."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.seed = seed
        super().__init__(batch_size=batch_size, lengths=list(lengths), generator=torch.Generator())
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class LongestFirstSampler(Sampler[int]):
    """A fixed order, longest input first: evaluation and prediction batches pad least."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
