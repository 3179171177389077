"""--data-workers: vision batches decoded and augmented in worker processes give exactly the batches
of the training thread (per-item seeds, the epoch reaching the workers), and the default follows
the core count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from taskzoo.cli import cli
from taskzoo.task import TaskContext, default_workers

SAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "taskzoo_segmentation" / "sample"


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 0), (4, 3), (8, 4), (64, 4)])
def test_the_default_leaves_a_core_to_training(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers() == workers
    assert TaskContext().loader_options(train=True)["num_workers"] == workers
    assert TaskContext(workers=2).loader_options(train=False)["num_workers"] == 2


@pytest.mark.slow
def test_workers_train_exactly_as_the_training_thread_does(runner, tmp_path):
    histories = {}
    for workers in ("0", "2"):
        result = runner.invoke(cli, ["run", "segmentation", "--data", str(SAMPLE / "train"), "--epochs", "2",
                                     "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--data-workers", workers,
                                     "--output", str(tmp_path / workers)])
        assert result.exit_code == 0, result.output
        histories[workers] = json.loads((tmp_path / workers / "metrics.json").read_text())["history"]
    # Augmentation is seeded per item and epoch: the same random crops and flips either way, and
    # epoch 2's differ from epoch 1's (the epoch reaches the workers).
    for zero, two in zip(histories["0"], histories["2"]):
        assert two["train_loss"] == pytest.approx(zero["train_loss"], rel=1e-5)
        assert two["val"]["mean_iou"] == pytest.approx(zero["val"]["mean_iou"], rel=1e-5)


def test_every_shared_option_is_declared_once():
    from collections import Counter

    from taskzoo.options import SHARED_OPTIONS

    twice = [name for name, count in Counter(option.name for option in SHARED_OPTIONS).items() if count > 1]
    assert not twice, f"declared more than once: {twice}"  # serve's --workers and --data-workers once clashed
