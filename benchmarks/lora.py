"""Benchmark: ``--lora 16`` against full fine-tuning of the same backbone, on the same data.

Each arm is a whole ``tasks run sentiment`` in a fresh process (so peak memory is its own), on the
example reviews (240 to train, 80 held out to validate) with the offline MiniLM, for every seed:
training samples/s and peak resident memory from the run's metrics.json (``peak_gpu_memory_bytes``
too, on CUDA), and the best validation accuracy. Full fine-tuning uses the task's recipe (lr 1e-4);
LoRA the learning rate adapters need (1e-3); both 4 epochs, batch 16, --max-length 64.

    python benchmarks/lora.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"full": ["--lr", "1e-4"], "lora16": ["--lora", "16", "--lr", "1e-3"]}


def split(folder: Path, seed: int) -> tuple[Path, Path]:
    with (ROOT / "examples" / "reviews.csv").open(encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:]
    random.Random(seed).shuffle(body)
    paths = []
    for name, part in (("train.csv", body[:240]), ("val.csv", body[240:320])):
        with (folder / name).open("w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows([header, *part])
        paths.append(folder / name)
    return paths[0], paths[1]


def run_arm(arm: str, seed: int, folder: Path, device: str, precision: str) -> dict[str, float]:
    train, val = split(folder, seed)
    output = folder / arm
    command = [sys.executable, "-m", "taskzoo", "run", "sentiment", "--data", str(train), "--val", str(val),
               "--epochs", "4", "--batch-size", "16", "--max-length", "64", "--seed", str(seed), "--device", device,
               "--mixed-precision", precision, "--output", str(output), *ARMS[arm]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    return {"samples_s": metrics["train_samples_per_second"], "peak_rss_mib": metrics["peak_rss_bytes"] / 2**20,
            "peak_gpu_mib": (metrics["peak_gpu_memory_bytes"] or 0) / 2**20, "accuracy": metrics["best"],
            "seconds": metrics["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default="auto", help="both arms' --mixed-precision")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in opts.seeds:
        for arm in ARMS:  # the same data and seed for both, one after the other
            with tempfile.TemporaryDirectory() as folder:
                results[arm].append(run_arm(arm, seed, Path(folder), opts.device, opts.mixed_precision))
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    keys = ("samples_s", "peak_rss_mib", "peak_gpu_mib", "accuracy", "seconds")
    print("| arm | " + " | ".join(keys) + " | accuracy per seed |")
    print("|---" * (len(keys) + 2) + "|")
    for arm, runs in results.items():
        medians = [statistics.median(r[k] for r in runs) for k in keys]
        print(f"| {arm} | " + " | ".join(f"{v:.1f}" if k != "accuracy" else f"{v:.4f}" for k, v in zip(keys, medians))
              + " | " + ", ".join(f"{r['accuracy']:.4f}" for r in runs) + " |")
    ratio = statistics.median(r["samples_s"] for r in results["lora16"]) / statistics.median(
        r["samples_s"] for r in results["full"])
    print(f"\nLoRA 16 / full fine-tuning, samples/s: {ratio:.2f}x (medians)")


if __name__ == "__main__":
    main()
