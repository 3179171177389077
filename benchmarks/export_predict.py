"""Benchmark: ``tasks predict`` on the CPU with PyTorch, ONNX Runtime fp32 and ONNX Runtime int8.

For each task (sentiment, NER, segmentation) the script fine-tunes a run on the examples (or reuses
one from ``--workdir``), exports it twice with ``tasks export`` (fp32 with ONNX Runtime's transformer
fusions; dynamic int8), and then times ``taskzoo.pipeline.predict`` -- what ``tasks predict --output``
runs: reading, tokenising or decoding, the model, writing the records -- over the same input file in
each arm, each arm in its own subprocess with the same threads and batch size, arms alternating
over ``--repeats``. Beside the speed, the quality of each arm on the task's labelled test data
(``tasks evaluate --runtime ...``): accuracy, entity F1, mean IoU. The CPU and its instruction sets
are printed with the figures::

    python benchmarks/export_predict.py                          # all three tasks, batch 1 and 32, 3 repeats
    python benchmarks/export_predict.py --tasks sentiment --batch-sizes 1 8 32 --repeats 5 --json
    python benchmarks/export_predict.py --workdir /tmp/export-bench   # keeps the trained runs for the next call

A single arm (one JSON line): ``--arm torch|onnx --run RUN --data FILE --output OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = _common.ROOT
EXAMPLES = ROOT / "examples"
ARMS = ("pytorch", "onnx-fp32", "onnx-int8")

# How each task's run is trained (not timed), what is predicted (timed) and what it is scored on.
TASKS: dict[str, dict[str, Any]] = {
    "sentiment": {"train": {"data": EXAMPLES / "reviews.csv", "epochs": 3, "max_length": 128},
                  "test": EXAMPLES / "sentiment" / "test.csv", "metric": "accuracy", "output": "preds.csv"},
    "ner": {"train": {"data": EXAMPLES / "ner" / "train.conll", "val": EXAMPLES / "ner" / "dev.conll", "epochs": 3},
            "test": EXAMPLES / "ner" / "test.conll", "metric": "f1", "output": "entities.jsonl"},
    "segmentation": {"train": {"data": EXAMPLES / "segmentation" / "coins", "epochs": 4, "image_size": 128},
                     "test": EXAMPLES / "segmentation" / "coins-test", "metric": "mean_iou", "output": "masks"},
}


def cpu_description() -> str:
    """The CPU's model name and the vector instruction sets ONNX Runtime's kernels choose between."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = " ".join(fields.get("model name\t", fields.get("model name", "unknown CPU")).split())
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    sets = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} logical cores; {', '.join(sets) or 'no AVX2'} (no {', '.join(f for f in ('avx512f', 'avx512_vnni', 'avx_vnni') if f not in flags) or '-'})"


def predict_input(task: str, folder: Path, size: int) -> Path:
    """The file (or folder) every arm predicts: the task's examples repeated to ``size`` inputs."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    if task == "sentiment":
        with (EXAMPLES / "sentiment" / "test.csv").open(encoding="utf-8") as stream:
            texts = [row[0] for row in list(csv.reader(stream))[1:]]  # the first column: the review
        path = folder / "sentiment.csv"
        with path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["text"])
            writer.writerows([texts[i % len(texts)]] for i in range(size))
        return path
    if task == "ner":
        sentences, words = [], []
        for line in (EXAMPLES / "ner" / "test.conll").read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.append(line.split()[0])
            elif words:
                sentences.append(" ".join(words))
                words = []
        path = folder / "ner.txt"
        path.write_text("\n".join(sentences[i % len(sentences)] for i in range(size)) + "\n", encoding="utf-8")
        return path
    images = folder / "segmentation" / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = sorted((EXAMPLES / "segmentation" / "coins-test" / "images").iterdir())
    for i in range(size):
        source = sources[i % len(sources)]
        shutil.copy(source, images / f"{i:05d}{source.suffix}")
    return images


def prepare_runs(task: str, workdir: Path, notes: list[str]) -> dict[str, Path]:
    """The task's trained run and its two exports, as two run folders whose ``export/`` differ."""
    import taskzoo

    fp32, int8 = workdir / task / "run", workdir / task / "run-int8"
    if not (fp32 / "metrics.json").exists():
        shutil.rmtree(fp32, ignore_errors=True)
        options = dict(TASKS[task]["train"])
        taskzoo.train(task, output=fp32, device="cpu", seed=0, progress=False, **options)
    for folder, quantize in ((fp32, "none"), (int8, "int8")):
        if folder != fp32 and not (folder / "model").exists():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(fp32, folder, ignore=shutil.ignore_patterns("export", "eval-*"))
        record = json.loads((folder / "export" / "export.json").read_text()) if (folder / "export" / "export.json").exists() else None
        if record is None or record.get("quantize") != quantize:
            # The benchmark reports int8's quality rather than stopping at the parity gate.
            record = taskzoo.load(folder, progress=False).export(quantize=quantize, tolerance=1.0)
        parity = record["parity"]
        notes.append(f"{task} {quantize}: {parity['main_metric']} on its validation data PyTorch "
                     f"{parity['pytorch'][parity['main_metric']]:.4f}, ONNX {parity['onnx'][parity['main_metric']]:.4f}; "
                     f"same answer {parity['same_answer']}/{parity['examples']}; fused: {record['fused']}")
    return {"pytorch": fp32, "onnx-fp32": fp32, "onnx-int8": int8}


def arm(opts: argparse.Namespace) -> dict[str, Any]:
    import torch

    from taskzoo import pipeline

    torch.set_num_threads(opts.threads)
    given = {"device": "cpu", "batch_size": opts.batch_size, "runtime": opts.arm}
    loaded = pipeline.load(Path(opts.run), "predict", given)
    result: dict[str, Any] = {}
    if opts.evaluate:
        metrics = pipeline.evaluate(Path(opts.run), Path(opts.evaluate), {**given, "output": Path(opts.output) / "eval"},
                                    loaded=loaded).metrics
        result["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        return result
    output = Path(opts.output) / opts.output_name
    pipeline.predict(Path(opts.run), Path(opts.data), {**given, "output": output}, loaded=loaded, keep_records=False)  # warm-up
    started = time.perf_counter()
    prediction = pipeline.predict(Path(opts.run), Path(opts.data), {**given, "output": output}, loaded=loaded,
                                  keep_records=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "inputs": prediction.size, "per_second": prediction.size / seconds}


def run_arm(name: str, run: Path, opts: argparse.Namespace, task: str, data: Path, scratch: Path,
            evaluate: Path | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--arm", "torch" if name == "pytorch" else "onnx", "--run", str(run),
               "--data", str(data), "--output", str(scratch / name), "--output-name", TASKS[task]["output"],
               "--threads", str(opts.threads), "--batch-size", str(opts.batch_size)]
    if evaluate is not None:
        command += ["--evaluate", str(evaluate)]
    return _common.child_json(command, f"{task} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32],
                        help="each arm predicts at each of these batch sizes (1: a server's single requests)")
    parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help="inputs predicted (default: 800 texts, 96 images)")
    parser.add_argument("--workdir", type=Path, help="keep the trained runs and exports here for the next call")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--arm", choices=("torch", "onnx"), help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--output-name", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm:
        print(json.dumps(arm(opts)))
        return
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="export-bench-"))
    notes: list[str] = []
    results: dict[str, Any] = {}
    for task in opts.tasks:
        runs = prepare_runs(task, workdir, notes)
        size = opts.size or (96 if task == "segmentation" else 800)
        data = predict_input(task, workdir / "inputs", size)
        scratch = Path(tempfile.mkdtemp(prefix=f"{task}-", dir=workdir))
        quality = {name: run_arm(name, runs[name], opts, task, data, scratch, evaluate=TASKS[task]["test"])["metrics"]
                   for name in ARMS}
        results[task] = {"quality": quality, "speed": {}}
        for batch_size in opts.batch_sizes:
            opts.batch_size = batch_size
            speeds: dict[str, list[float]] = {name: [] for name in ARMS}
            for repeat in range(opts.repeats):
                order = ARMS if repeat % 2 == 0 else tuple(reversed(ARMS))
                for name in order:
                    speeds[name].append(run_arm(name, runs[name], opts, task, data, scratch)["per_second"])
            results[task]["speed"][batch_size] = {name: {"per_second": statistics.median(speeds[name]),
                                                         "repeats": speeds[name]} for name in ARMS}
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"CPU: {cpu_description()}; {opts.threads} threads, medians of {opts.repeats} repeats")
    for task, figures in results.items():
        metric = TASKS[task]["metric"]
        unit = "images/s" if task == "segmentation" else "inputs/s"
        print(f"{task}: test {metric} " + ", ".join(f"{name} {figures['quality'][name].get(metric, float('nan')):.4f}"
                                                   for name in ARMS))
        for batch_size, arms in figures["speed"].items():
            base = arms["pytorch"]["per_second"]
            print(f"  batch {batch_size:3}: " + "   ".join(
                f"{name} {arm['per_second']:7.1f} {unit} ({arm['per_second'] / base:.2f}x)" for name, arm in arms.items()))
    for note in notes:
        print(f"  export check: {note}")
    if opts.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
