"""Training FLOPs per example of each task's default model on the benchmarks' data, counted by
PyTorch's own `FlopCounterMode` over a forward and backward pass of real training batches (length
grouped text, augmented images), for model-FLOPs utilisation: FLOPs per example x examples/s,
divided by the device's peak. The count is the same on any device, so it runs on the CPU too.

    python benchmarks/flops.py                       # every task, JSON on the last line
    python benchmarks/flops.py --tasks sentiment --batches 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# What each benchmark trains on, with its batch size (see the scripts beside this one).
DATA: dict[str, dict[str, Any]] = {
    "sentiment": {"data": ROOT / "examples" / "reviews.csv", "batch_size": 16},
    "ner": {"data": ROOT / "examples" / "ner" / "train.conll", "batch_size": 16},
    "segmentation": {"data": ROOT / "examples" / "segmentation" / "coins", "batch_size": 8, "image_size": 128},
    "detection": {"data": ROOT / "examples" / "detection" / "shapes" / "train.json",
                  "images": str(ROOT / "examples" / "detection" / "shapes" / "images" / "train"), "batch_size": 4,
                  "image_size": 320},
}


def flops_per_example(task_name: str, batches: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from taskzoo import options, pipeline
    from taskzoo.plugins import get_host

    spec = get_host().task(task_name)
    recipe = {**DATA[task_name], "device": "cpu", "mixed_precision": "no"}
    batch_size = recipe.pop("batch_size")
    values = options.resolve(spec, "run", [("benchmark", {**recipe, "batch_size": batch_size})])
    prepared = pipeline.prepare(spec, values)
    model = prepared.model.train()
    loader = prepared.task.dataloader(prepared.train, batch_size=batch_size, train=True, seed=0)
    total, examples = 0, 0
    for number, batch in enumerate(loader):
        if number == batches:
            break
        with FlopCounterMode(display=False) as counter:
            model(batch)["loss"].backward()
        model.zero_grad(set_to_none=True)
        total += counter.get_total_flops()
        examples += len(batch["index"] if "index" in batch else batch["sentence"])  # NER: windows of sentences
    return total / examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--batches", type=int, default=5, help="training batches counted per task")
    opts = parser.parse_args()
    results = {task: flops_per_example(task, opts.batches) for task in opts.tasks}
    for task, flops in results.items():
        print(f"{task:<14} {flops / 1e9:10.2f} GFLOP per training example (forward + backward)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
