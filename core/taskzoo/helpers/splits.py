"""Seeded train/validation splits shared by tasks (taskzoo's own and third parties')."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

from taskzoo.errors import DataError

__all__ = ["random_split", "stratified_split"]


def _check_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction {val_fraction}: expected a number between 0 and 1")


def random_split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices for train and validation; at least one validation item when there are two or more."""
    _check_fraction(val_fraction)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cut = max(1, round(count * val_fraction)) if count > 1 else 0
    return sorted(order[cut:]), sorted(order[:cut])


def stratified_split(labels: Sequence[Hashable], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices for train and validation with each class's share kept; classes of one item stay in train."""
    _check_fraction(val_fraction)
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class, key=str):
        indices = by_class[label]
        rng.shuffle(indices)
        take = min(len(indices) - 1, max(1, round(len(indices) * val_fraction))) if len(indices) > 1 else 0
        val.extend(indices[:take])
        train.extend(indices[take:])
    return sorted(train), sorted(val)
