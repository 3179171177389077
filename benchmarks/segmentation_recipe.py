"""Which part of the segmentation recipe costs mean IoU on short runs of few images?

On synthetic street scenes (`_scenes.py`: 11 classes in CamVid's roles, 360 x 480; 53 to train and
20 to validate, as the study in issue 21 had), each arm trains the same Unet on the offline
EfficientNet-Lite0 encoder for 10 epochs at 256 px and is scored on the validation scenes at their
own size (logits resized to each mask):

- ``plain``: the loop a PyTorch user writes: cross-entropy, resize and horizontal flips, AdamW at a
  constant learning rate, no warmup;
- ``taskzoo <options>``: ``tasks run segmentation`` with the task's recipe, then one change at a
  time (``--loss ce``, ``--augment flip``, both), so each arm shows what its change is worth.

    python benchmarks/segmentation_recipe.py                  # seeds 1 and 2, every arm
    python benchmarks/segmentation_recipe.py --seeds 1 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scenes import write_scenes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARMS = {
    "taskzoo (ce+dice, crop)": [],
    "taskzoo --loss ce": ["--loss", "ce"],
    "taskzoo --augment flip": ["--augment", "flip"],
    "taskzoo --loss ce --augment flip": ["--loss", "ce", "--augment", "flip"],
    "taskzoo --scheduler constant": ["--scheduler", "constant"],
    "taskzoo --scheduler cosine": ["--scheduler", "cosine"],
    "taskzoo --scheduler linear": ["--scheduler", "linear"],
    "taskzoo --loss ce --augment flip --scheduler constant": ["--loss", "ce", "--augment", "flip",
                                                              "--scheduler", "constant"],
}


def taskzoo_arm(options: list[str], train: Path, val: Path, seed: int, epochs: int, folder: Path) -> dict:
    output = folder / "run"
    command = [sys.executable, "-m", "taskzoo", "run", "segmentation", "--data", str(train), "--val", str(val),
               "--epochs", str(epochs), "--image-size", "256", "--batch-size", "8", "--seed", str(seed),
               "--device", "cpu", "--mixed-precision", "no", "--output", str(output), *options]  # fp32, as the plain arm
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{options} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    last = metrics["history"][-1]["val"]["mean_iou"]
    return {"best": metrics["best"], "last": last, "seconds": time.perf_counter() - started}


def plain_arm(train: Path, val: Path, seed: int, epochs: int, lr: float) -> dict:
    """Cross-entropy, flips, AdamW at a constant lr; scored like taskzoo (own size)."""
    import torch

    from taskzoo import options, pipeline
    from taskzoo.plugins import get_host

    torch.manual_seed(seed)
    spec = get_host().task("segmentation")
    values = options.resolve(spec, "run", [("plain", {"data": train, "val": val, "image_size": 256, "seed": seed,
                                                       "augment": "flip", "loss": "ce", "device": "cpu"})])
    prepared = pipeline.prepare(spec, values)
    task, model = prepared.task, prepared.model
    network = model.network
    loader = task.dataloader(prepared.train, batch_size=8, train=True, seed=seed)
    scoring = task.dataloader(prepared.val, batch_size=8, train=False, seed=seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr)
    started = time.perf_counter()
    history = []
    for _ in range(epochs):
        network.train()
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(network(batch["image"]), batch["mask"], ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        network.eval()
        classes = len(task.labels_of_model)
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        with torch.no_grad():
            for batch in scoring:
                for result in task.predictions(batch, network(batch["image"])):
                    confusion += torch.tensor(result["confusion"])
        intersection = confusion.diag().double()
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        history.append(float((intersection[union > 0] / union[union > 0]).mean()))
    return {"best": max(history), "last": history[-1], "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="every arm's learning rate (taskzoo's default)")
    parser.add_argument("--arms", nargs="+", default=["plain", *ARMS], help="plain and/or taskzoo arms by name")
    opts = parser.parse_args()
    results: dict[str, list[dict]] = {arm: [] for arm in opts.arms}
    with tempfile.TemporaryDirectory() as scratch:
        train = write_scenes(Path(scratch) / "train", 53, seed=100)
        val = write_scenes(Path(scratch) / "val", 20, seed=200)
        for seed in opts.seeds:
            for arm in opts.arms:
                with tempfile.TemporaryDirectory() as folder:
                    result = (plain_arm(train, val, seed, opts.epochs, opts.lr) if arm == "plain"
                              else taskzoo_arm(ARMS[arm], train, val, seed, opts.epochs, Path(folder)))
                results[arm].append(result)
                print(f"seed {seed}  {arm:<56} mean IoU last {result['last']:.3f} best {result['best']:.3f}  "
                      f"{result['seconds']:.0f} s", flush=True)
    print(f"\n{'arm':<56} {'last-epoch mIoU':>16} {'best-epoch mIoU':>16}   (medians over seeds {opts.seeds})")
    for arm, runs in results.items():
        print(f"{arm:<56} {statistics.median(r['last'] for r in runs):>16.3f} "
              f"{statistics.median(r['best'] for r in runs):>16.3f}")


if __name__ == "__main__":
    main()
