"""Peak memory of getting a large sentiment training set to the first batches, by three routes.

Writes a CSV of N labelled reviews (seeded), then in a subprocess per arm and size does what a
training run does before and while it trains: read and check the file, split off validation,
tokenise, and draw ``--batches`` training batches of 32 from a length-grouped loader. The peak
resident memory of each child comes from the kernel (``wait4``); each arm also reports how many
rows it trains on and, once its batches are drawn, its resident memory split into anonymous memory
(what the process holds: Python objects, arrays, the model) and file pages (memory-mapped Arrow
files and libraries: pages the kernel drops and reads again when memory is short).

- ``taskzoo``: `taskzoo.pipeline.read_data` (the file read in parts into a memory-mapped Arrow
  file, checked) and the sentiment task's loader, which tokenises a batch when it is drawn;
- ``datasets``: Hugging Face's own route, ``load_dataset("csv")`` (memory-mapped Arrow in a cache
  folder) and ``.map(tokenizer, batched=True)``, with ``DataCollatorWithPadding``;
- ``lists``: the file read whole with pandas, texts and token ids held as Python lists (what
  taskzoo did before, and what most hand-written loops do).

    python benchmarks/train_memory.py                          # 100k and 1M rows, every arm
    python benchmarks/train_memory.py --sizes 10000 --batches 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("good bad plot actor scene boring great music slow funny dull moving story ending cast script "
         "brilliant awful camera score").split()


def write_reviews(path: Path, rows: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    with path.open("w", encoding="utf-8") as stream:
        stream.write("text,label\n")
        for start in range(0, rows, 10_000):
            count = min(10_000, rows - start)
            lengths = rng.integers(8, 60, count)
            for i, length in enumerate(lengths):
                words = rng.integers(0, len(WORDS), length)
                label = "pos" if words.mean() < len(WORDS) / 2 else "neg"
                stream.write(" ".join(WORDS[j] for j in words) + f" {start + i},{label}\n")
    return path


def arm(name: str, data: Path, batches: int) -> dict:
    import torch

    from taskzoo.plugins import get_host
    from taskzoo.weights import resolve_backbone

    torch.set_num_threads(2)
    host = get_host()
    spec = host.task("sentiment")
    started = time.perf_counter()
    if name == "taskzoo":
        from taskzoo import options, pipeline

        values = options.resolve(spec, "run", [("benchmark", {"data": data})])
        task, train, val, labels = pipeline.read_data(spec, values)
        model = task.build_model(resolve_backbone(host, "sentiment", None), labels)
        loader = task.dataloader(train, batch_size=32, train=True, seed=0)
        rows = len(train) + len(val)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
        from torch.utils.data import DataLoader

        from taskzoo.weights import locate

        backbone = locate(resolve_backbone(host, "sentiment", None))
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)  # as a run holds it
        collate = DataCollatorWithPadding(tokenizer)
        if name == "datasets":
            import datasets

            datasets.disable_progress_bars()
            table = datasets.load_dataset("csv", data_files=str(data), split="train",
                                          cache_dir=str(data.parent / "hf-cache"))
            table = table.map(lambda b: tokenizer(b["text"], truncation=True, max_length=256), batched=True,
                              remove_columns=["text", "label"])
            rows = len(table)
            items = table
        else:
            import pandas as pd

            frame = pd.read_csv(data, dtype=str, keep_default_na=False)
            texts, labels = frame["text"].tolist(), frame["label"].tolist()
            del frame
            encoded = tokenizer(texts, truncation=True, max_length=256)
            items = [{"input_ids": ids, "attention_mask": mask}
                     for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
            rows = len(items)
        loader = DataLoader(items, batch_size=32, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(0))
    ready = time.perf_counter() - started
    for number, _ in enumerate(loader):
        if number + 1 == batches:
            break
    del model
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"arm": name, "rows": rows, "ready_s": round(ready, 1), "seconds": round(time.perf_counter() - started, 1),
            "anon_mib": round(int(status["RssAnon"].split()[0]) / 1024),
            "file_mib": round(int(status["RssFile"].split()[0]) / 1024)}


def run_child(name: str, data: Path, batches: int) -> dict:
    command = [sys.executable, __file__, "--arm", name, "--file", str(data), "--batches", str(batches)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "TASKZOO_CACHE": str(data.parent / "cache")})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"arm {name} failed on {data}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--arms", nargs="+", default=["taskzoo", "datasets", "lists"],
                        choices=["taskzoo", "datasets", "lists"])
    parser.add_argument("--batches", type=int, default=20, help="training batches drawn after the data is ready")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm:
        print(json.dumps(arm(opts.arm, opts.file, opts.batches)))
        return
    print(f"{'rows':>9}  {'file MiB':>8}  {'arm':<9} {'peak RSS MiB':>12}  {'anon MiB':>8}  {'mapped MiB':>10}  "
          f"{'ready s':>7}  {'rows read':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for size in opts.sizes:
            data = write_reviews(Path(folder) / f"reviews-{size}.csv", size)
            mib = data.stat().st_size / 2**20
            for name in opts.arms:
                result = run_child(name, data, opts.batches)
                print(f"{size:>9,}  {mib:>8.0f}  {name:<9} {result['peak_rss_mib']:>12,}  {result['anon_mib']:>8,}  "
                      f"{result['file_mib']:>10,}  {result['ready_s']:>7}  {result['rows']:>9,}", flush=True)


if __name__ == "__main__":
    main()
