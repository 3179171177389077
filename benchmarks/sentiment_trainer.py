"""Benchmark: taskzoo's shared trainer against ``transformers.Trainer`` on the sentiment task.

One command runs both arms, each in its own subprocess of this script, on the same backbone,
data split, tokenisation, model initialisation and recipe (batch size, epochs, learning rate,
warmup, weight decay, clipping, seed), then prints training throughput, the ratio
taskzoo / transformers, peak memory and final validation accuracy::

    python benchmarks/sentiment_trainer.py --epochs 1
    python benchmarks/sentiment_trainer.py --repeats 3 --threads 2 --json

Throughput is measured identically in both arms: training examples x epochs / wall-clock seconds
of the whole fit (training plus the per-epoch evaluation), not counting model loading,
tokenisation or building the trainer. See benchmarks/README.md for how to read the output.

A single arm can be run on its own (it prints one JSON line)::

    python benchmarks/sentiment_trainer.py --arm taskzoo --epochs 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASK = "sentiment"
ARMS = ("taskzoo", "hf")
ARM_NAMES = {"taskzoo": "taskzoo", "hf": "transformers"}
# Fixed parts of the recipe, the same in both arms (taskzoo's CLI defaults).
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
SCHEDULER = "linear"
LOG_EVERY = 10


# -- shared: data and model -----------------------------------------------------------------------


def _make_task(host: Any) -> Any:
    spec = host.task(TASK)
    options = {option.key: option.default for option in spec.options}
    return spec, spec.load()(spec, options)


def read_and_split(data_path: Path, val_fraction: float, seed: int) -> dict[str, Any]:
    """Read the file with the task's reader and split it once with the task's split.

    Returns plain data (JSON-able) so the parent can hand the exact split to both arms.
    """
    from taskzoo.plugins import get_host

    _, task = _make_task(get_host())
    full = task.read(Path(data_path), role="train")
    labels = task.labels(full)  # as the CLI does: label order (hence ids) fixed before splitting
    train, val = task.split(full, val_fraction=val_fraction, seed=seed)
    part = lambda d: {"texts": list(d.texts), "labels": list(d.labels), "rows": list(d.rows)}  # noqa: E731
    return {
        "path": str(data_path),
        "text_column": full.text_column,
        "label_column": full.label_column,
        "columns": list(full.columns),
        "labels": list(labels),
        "train": part(train),
        "val": part(val),
    }


def data_fingerprint(split: dict[str, Any]) -> str:
    ids = {label: i for i, label in enumerate(split["labels"])}
    payload = {
        "labels": split["labels"],
        "train": [split["train"]["texts"], [ids[x] for x in split["train"]["labels"]]],
        "val": [split["val"]["texts"], [ids[x] for x in split["val"]["labels"]]],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def parameters_fingerprint(module: Any) -> str:
    """A hash of every parameter, to check both arms start from the same weights (head included)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def schedule(n_train: int, batch_size: int, epochs: int, warmup_ratio: float) -> tuple[int, int]:
    """(total optimizer steps, warmup steps) exactly as taskzoo.trainer.Trainer computes them."""
    total = math.ceil(n_train / batch_size) * epochs  # grad_accum = 1
    return total, int(total * warmup_ratio)


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- one arm (runs in a subprocess) ---------------------------------------------------------------


def run_arm(opts: argparse.Namespace) -> dict[str, Any]:
    import torch
    from accelerate.utils import set_seed

    if opts.threads:
        torch.set_num_threads(opts.threads)
    from taskzoo.backbones import resolve_backbone
    from taskzoo.plugins import get_host

    if opts.split_file:
        split = json.loads(Path(opts.split_file).read_text(encoding="utf-8"))
    else:
        split = read_and_split(opts.data, opts.val_fraction, opts.seed)

    host = get_host()
    spec, task = _make_task(host)
    backbone = resolve_backbone(host, TASK, opts.backbone)
    set_seed(opts.seed)
    model = task.build_model(backbone, split["labels"])  # a SequenceClassifier wrapping .network
    init_fingerprint = parameters_fingerprint(model.network)
    n_train, n_val = len(split["train"]["texts"]), len(split["val"]["texts"])
    total_steps, warmup_steps = schedule(n_train, opts.batch_size, opts.epochs, opts.warmup_ratio)
    cuda = torch.cuda.is_available()

    result: dict[str, Any] = {
        "arm": opts.arm,
        "backbone": backbone.name,
        "train_examples": n_train,
        "val_examples": n_val,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "seed": opts.seed,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "max_length": task.max_length,
        "threads": torch.get_num_threads(),
        "data_fingerprint": data_fingerprint(split),
        "init_fingerprint": init_fingerprint,
    }
    if opts.arm == "taskzoo":
        result.update(_fit_taskzoo(opts, host, spec, task, model, split))
    else:
        result.update(_fit_hf(opts, task, model.network, split, warmup_steps))
    result["samples_per_second"] = n_train * opts.epochs / result["fit_seconds"]
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return result


def _fit_taskzoo(opts: argparse.Namespace, host: Any, spec: Any, task: Any, model: Any, split: dict[str, Any]) -> dict[str, Any]:
    import torch
    from taskzoo.trainer import Trainer, TrainingArgs, make_accelerator
    from taskzoo_sentiment.data import TextData

    def text_data(part: dict[str, Any]) -> TextData:
        return TextData(
            path=Path(split["path"]), texts=part["texts"], labels=part["labels"], rows=part["rows"],
            text_column=split["text_column"], label_column=split["label_column"], columns=split["columns"],
        )

    accelerator = make_accelerator("auto", "auto", 1, opts.seed)
    args = TrainingArgs(
        epochs=opts.epochs, batch_size=opts.batch_size, eval_batch_size=2 * opts.batch_size, lr=opts.lr,
        weight_decay=WEIGHT_DECAY, warmup_ratio=opts.warmup_ratio, scheduler=SCHEDULER, grad_accum=1,
        max_grad_norm=MAX_GRAD_NORM, patience=None, seed=opts.seed, log_every=LOG_EVERY,
    )
    with tempfile.TemporaryDirectory(prefix="taskzoo-bench-") as run_dir:
        # Building the Trainer tokenises the data and prepares model/optimizer/loaders: not timed.
        trainer = Trainer(
            task=task, model=model, train_data=text_data(split["train"]), val_data=text_data(split["val"]),
            metrics=host.metrics(TASK), main_metric=spec.main_metric, args=args, accelerator=accelerator,
            run_dir=Path(run_dir),
        )
        # fit() always saves the best model and a resumable checkpoint each epoch (the HF arm saves
        # nothing); time those writes so the report can show how much of the fit they are.
        saving = {"seconds": 0.0}

        def timed(function: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                start = time.perf_counter()
                try:
                    return function(*a, **k)
                finally:
                    saving["seconds"] += time.perf_counter() - start
            return wrapper

        trainer.save_checkpoint = timed(trainer.save_checkpoint)
        task.save = timed(task.save)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        summary = trainer.fit()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        fit_seconds = time.perf_counter() - start
    history = summary["history"]
    n_samples = len(split["train"]["texts"]) * opts.epochs
    return {
        "fit_seconds": fit_seconds,
        "save_seconds": saving["seconds"],
        "samples_per_second_excluding_saves": n_samples / max(fit_seconds - saving["seconds"], 1e-9),
        "trainer_reported_samples_per_second": summary["train_samples_per_second"],  # training loop only
        "val_accuracy": history[-1]["val"]["accuracy"] if history else None,
        "val_accuracy_by_epoch": [h["val"]["accuracy"] for h in history],
        "best_epoch": summary["best_epoch"],
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"],
    }


def _fit_hf(opts: argparse.Namespace, task: Any, network: Any, split: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer = task.tokenizer
    label_ids = {label: i for i, label in enumerate(split["labels"])}

    class Encoded(torch.utils.data.Dataset):
        """Tokenised once, exactly as SentimentTask does (same tokenizer, truncation, max_length)."""

        def __init__(self, part: dict[str, Any]) -> None:
            encoded = tokenizer(part["texts"], truncation=True, max_length=task.max_length)
            keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
            self.items = [
                {**{k: encoded[k][i] for k in keys}, "labels": label_ids[label]}
                for i, label in enumerate(part["labels"])
            ]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return self.items[index]

    train_set, val_set = Encoded(split["train"]), Encoded(split["val"])

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    extra: dict[str, Any] = {"optim": opts.hf_optim} if opts.hf_optim else {}
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=opts.batch_size,
            per_device_eval_batch_size=2 * opts.batch_size,
            num_train_epochs=opts.epochs,
            learning_rate=opts.lr,
            weight_decay=WEIGHT_DECAY,
            # transformers 5 has no warmup_ratio: warmup_steps takes a float ratio in [0, 1), which it
            # rounds up; give taskzoo's own step count (it rounds down) so both warm up equally long.
            warmup_steps=warmup_steps,
            lr_scheduler_type=SCHEDULER,
            max_grad_norm=MAX_GRAD_NORM,
            seed=opts.seed,
            eval_strategy="epoch",
            # Like for like: taskzoo writes a resumable checkpoint (weights, optimizer, scheduler,
            # random state) after every epoch; --hf-save no shows transformers without that work.
            save_strategy=opts.hf_save,
            report_to="none",
            logging_steps=LOG_EVERY,
            use_cpu=not cuda,
            bf16=bf16,
            fp16=cuda and not bf16,  # taskzoo's mixed precision "auto": bf16, else fp16, on CUDA
            train_sampling_strategy=opts.hf_sampler,
            **extra,
        )
        trainer = Trainer(
            model=network, args=args, data_collator=DataCollatorWithPadding(tokenizer),
            train_dataset=train_set, eval_dataset=val_set, processing_class=tokenizer,
            compute_metrics=compute_metrics,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()  # as taskzoo's fit() does
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        fit_seconds = time.perf_counter() - start
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "fit_seconds": fit_seconds,
        "trainer_reported_samples_per_second": output.metrics.get("train_samples_per_second"),
        "val_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "val_accuracy_by_epoch": [entry["eval_accuracy"] for entry in evals],
        "final_train_loss": losses[-1] if losses else output.metrics.get("train_loss"),
        "device": str(args.device),
        "mixed_precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
        "optim": str(getattr(args.optim, "value", args.optim)),
        "sampler": opts.hf_sampler,
        "save": opts.hf_save,
    }


# -- the parent: run both arms, summarise ---------------------------------------------------------


def _child_command(opts: argparse.Namespace, arm: str, split_file: Path) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--split-file", str(split_file),
        "--data", str(opts.data), "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size),
        "--lr", repr(opts.lr), "--seed", str(opts.seed), "--warmup-ratio", repr(opts.warmup_ratio),
        "--val-fraction", repr(opts.val_fraction), "--hf-sampler", opts.hf_sampler,
        "--hf-save", opts.hf_save,
    ]
    for flag, value in (("--threads", opts.threads), ("--backbone", opts.backbone), ("--hf-optim", opts.hf_optim)):
        if value:
            command += [flag, str(value)]
    return command


def _run_child(opts: argparse.Namespace, arm: str, split_file: Path) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(f"running {ARM_NAMES[arm]} arm ...", file=sys.stderr, flush=True)
    process = subprocess.run(
        _child_command(opts, arm, split_file), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=None if opts.verbose else subprocess.PIPE,
    )
    result = None
    for line in reversed(process.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                candidate = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(candidate, dict) and candidate.get("arm") == arm:
                result = candidate
                break
    if process.returncode != 0 or result is None:
        sys.stderr.write(process.stdout[-4000:])
        if process.stderr:
            sys.stderr.write(process.stderr[-8000:])
        raise SystemExit(f"the {ARM_NAMES[arm]} arm failed (exit code {process.returncode})")
    return result


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm, results in runs.items():
        first = results[0]
        merged = {k: v for k, v in first.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        for key, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = _median([r.get(key) for r in results])
        merged["samples_per_second_runs"] = [r["samples_per_second"] for r in results]
        merged["val_accuracy_runs"] = [r["val_accuracy"] for r in results]
        arms[arm] = merged
    tz, hf = arms["taskzoo"], arms["hf"]
    checks = {
        "same_data": tz["data_fingerprint"] == hf["data_fingerprint"],
        "same_initial_weights": tz["init_fingerprint"] == hf["init_fingerprint"],
    }
    return {
        "task": TASK,
        "ratio_samples_per_second": tz["samples_per_second"] / hf["samples_per_second"],
        "ratio_runs": [a["samples_per_second"] / b["samples_per_second"] for a, b in zip(runs["taskzoo"], runs["hf"])],
        "checks": checks,
        "taskzoo": tz,
        "transformers": hf,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(summary: dict[str, Any], repeats: int) -> None:
    tz, hf = summary["taskzoo"], summary["transformers"]
    print(
        f"sentiment: backbone {tz['backbone']}, {tz['train_examples']} train / {tz['val_examples']} val examples, "
        f"{tz['epochs']} epoch(s), batch {tz['batch_size']}, lr {tz['lr']:g}, warmup {tz['warmup_steps']}/"
        f"{tz['total_steps']} steps, seed {tz['seed']}, max_length {tz['max_length']}"
    )
    print(
        f"device {tz['device']} ({tz['mixed_precision']}), torch threads {tz['threads']}, "
        f"repeats {repeats}{' (medians)' if repeats > 1 else ''}; transformers optim {hf['optim']}, sampler {hf['sampler']}, checkpoints {hf.get('save')}"
    )
    failed = [name.replace("_", " ") for name, ok in summary["checks"].items() if not ok]
    if failed:
        print(f"WARNING: check failed ({', '.join(failed)}): the arms did not get identical inputs")
    else:
        print("checks: both arms got the same data split (texts, label ids) and the same initial weights")
    rows = [
        ("samples/s (fit incl. eval)", _fmt(tz["samples_per_second"]), _fmt(hf["samples_per_second"])),
        ("fit seconds", _fmt(tz["fit_seconds"]), _fmt(hf["fit_seconds"])),
        ("  of which taskzoo saving", _fmt(tz["save_seconds"]), "-"),
        ("samples/s excl. saving", _fmt(tz["samples_per_second_excluding_saves"]), _fmt(hf["samples_per_second"])),
        ("trainer's own samples/s", _fmt(tz["trainer_reported_samples_per_second"]),
         _fmt(hf["trainer_reported_samples_per_second"])),
        ("peak RSS MiB", _fmt(tz["peak_rss_mib"], 0), _fmt(hf["peak_rss_mib"], 0)),
    ]
    if tz.get("peak_cuda_mib") is not None or hf.get("peak_cuda_mib") is not None:
        rows.append(("peak CUDA MiB (allocated)", _fmt(tz["peak_cuda_mib"], 0), _fmt(hf["peak_cuda_mib"], 0)))
    rows += [
        ("val accuracy by epoch", " ".join(f"{a:.3f}" for a in tz["val_accuracy_by_epoch"]),
         " ".join(f"{a:.3f}" for a in hf["val_accuracy_by_epoch"])),
        ("best epoch (taskzoo keeps it)", _fmt(tz["best_epoch"], 0), "-"),
        ("final train loss", _fmt(tz["final_train_loss"], 4), _fmt(hf["final_train_loss"], 4)),
    ]
    if repeats > 1:
        rows.append(("samples/s per repeat", " ".join(_fmt(v) for v in tz["samples_per_second_runs"]),
                     " ".join(_fmt(v) for v in hf["samples_per_second_runs"])))
    header = ("", "taskzoo", "transformers")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    print()
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    if repeats > 1:
        print("ratio per repeat  " + " ".join(f"{r:.2f}" for r in summary["ratio_runs"]))
    print(
        f"samples/s  taskzoo {tz['samples_per_second']:.1f}  transformers {hf['samples_per_second']:.1f}  "
        f"ratio {summary['ratio_samples_per_second']:.2f}"
    )
    print(f"val accuracy  taskzoo {_fmt(tz['val_accuracy'], 3)}  transformers {_fmt(hf['val_accuracy'], 3)}")


def run_parent(opts: argparse.Namespace) -> None:
    split = read_and_split(opts.data, opts.val_fraction, opts.seed)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="sentiment-bench-") as folder:
        split_file = Path(folder) / "split.json"
        split_file.write_text(json.dumps(split, ensure_ascii=False), encoding="utf-8")
        for repeat in range(opts.repeats):
            # Alternate the order (taskzoo first on even repeats) so drift in machine load hits both.
            order = ARMS if repeat % 2 == 0 else tuple(reversed(ARMS))
            for arm in order:
                runs[arm].append(_run_child(opts, arm, split_file))
    summary = summarise(runs)
    if opts.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary, opts.repeats)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "reviews.csv", help="labelled CSV/TSV/JSONL")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=1, help="run both arms N times (alternating order); report medians")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each arm")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the task's offline default)")
    parser.add_argument("--hf-sampler", default="group_by_length", choices=["group_by_length", "random"],
                        help="transformers train_sampling_strategy; group_by_length matches taskzoo's length-grouped batches")
    parser.add_argument("--hf-save", default="epoch", choices=["epoch", "no"],
                        help="transformers checkpoints: each epoch like taskzoo (default), or none")
    parser.add_argument("--hf-optim", default=None, help="transformers optim (default: its own, adamw_torch_fused)")
    parser.add_argument("--json", action="store_true", help="print the final result as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the arms' progress bars and logs")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--split-file", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.arm:
        result = run_arm(opts)
        print(json.dumps(result), flush=True)
    else:
        run_parent(opts)


if __name__ == "__main__":
    main()
