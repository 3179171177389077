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
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when imported from elsewhere
import _common  # noqa: E402
from _common import ROOT, digest, parameters_fingerprint, schedule  # noqa: E402

TASK = "sentiment"
METRIC = "accuracy"  # the validation metric reported for both arms


# -- shared: data and model -----------------------------------------------------------------------


def read_and_split(data: Path, seed: int, *, val: Path | None = None, val_fraction: float = 0.2,
                   text_column: str | None = None, label_column: str | None = None) -> dict[str, Any]:
    """Read and split the data as ``tasks run sentiment`` does (`taskzoo.pipeline.read_data`): the
    validation part is ``val``, or ``val_fraction`` of ``data``.

    Returns plain data (JSON-able) so the parent can hand the exact split to both arms.
    """
    train, val_part, labels = _common.read_data(
        TASK, data=data, val=val, val_fraction=val_fraction, seed=seed, text_column=text_column,
        label_column=label_column,
    )
    part = lambda d: {"texts": list(d.texts), "labels": list(d.labels), "rows": list(d.rows)}  # noqa: E731
    return {
        "path": str(data),
        "text_column": train.text_column,
        "label_column": train.label_column,
        "columns": list(train.columns),
        "labels": list(labels),
        "train": part(train),
        "val": part(val_part),
    }


def split_of(opts: argparse.Namespace) -> dict[str, Any]:
    return read_and_split(opts.data, opts.seed, val=opts.val, val_fraction=opts.val_fraction,
                          text_column=opts.text_column, label_column=opts.label_column)


def data_fingerprint(split: dict[str, Any]) -> str:
    ids = {label: i for i, label in enumerate(split["labels"])}
    return digest({
        "labels": split["labels"],
        "train": [split["train"]["texts"], [ids[x] for x in split["train"]["labels"]]],
        "val": [split["val"]["texts"], [ids[x] for x in split["val"]["labels"]]],
    })


# -- one arm (runs in a subprocess) ---------------------------------------------------------------


def run_arm(opts: argparse.Namespace) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from taskzoo.weights import resolve_backbone

    host = _common.arm_setup(opts)
    if opts.split_file:
        split = json.loads(Path(opts.split_file).read_text(encoding="utf-8"))
    else:
        split = split_of(opts)

    spec, task = _common.make_task(host, TASK)
    backbone = resolve_backbone(host, TASK, opts.backbone)
    set_seed(opts.seed)
    model = task.build_model(backbone, split["labels"])  # a TransformersAdapter wrapping .network
    n_train, n_val = len(split["train"]["texts"]), len(split["val"]["texts"])
    total_steps, warmup_steps = schedule(n_train, opts.batch_size, opts.epochs, opts.warmup_ratio)
    result = _common.arm_result(
        opts, backbone=backbone.name, train_examples=n_train, val_examples=n_val, total_steps=total_steps,
        warmup_steps=warmup_steps, max_length=task.max_length, data_fingerprint=data_fingerprint(split),
        init_fingerprint=parameters_fingerprint(model.network),
    )
    if opts.arm == "taskzoo":
        train, val = text_data(split, split["train"]), text_data(split, split["val"])
        result.update(_common.fit_taskzoo(opts, host, spec, task, model, train, val, metric=METRIC))
    else:
        result.update(_fit_hf(opts, task, model.network, split, warmup_steps))
    return _common.finish_result(result, n_train, opts.epochs)


def text_data(split: dict[str, Any], part: dict[str, Any]) -> Any:
    from taskzoo_sentiment.data import TextData

    return TextData(
        path=Path(split["path"]), texts=part["texts"], labels=part["labels"], rows=part["rows"],
        text_column=split["text_column"], label_column=split["label_column"], columns=split["columns"],
    )


def _fit_hf(opts: argparse.Namespace, task: Any, network: Any, split: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    import numpy as np
    from transformers import DataCollatorWithPadding

    tokenizer = task.tokenizer
    label_ids = {label: i for i, label in enumerate(split["labels"])}

    def encoded(part: dict[str, Any]) -> _common.ListDataset:
        """Tokenised once, exactly as SentimentTask does (same tokenizer, truncation, max_length)."""
        tokens = tokenizer(part["texts"], truncation=True, max_length=task.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
        return _common.ListDataset([
            {**{k: tokens[k][i] for k in keys}, "labels": label_ids[label]}
            for i, label in enumerate(part["labels"])
        ])

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}

    return _common.fit_hf(
        opts, network, tokenizer, encoded(split["train"]), encoded(split["val"]),
        collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics, warmup_steps=warmup_steps,
        metric=METRIC,
    )


# -- the parent: run both arms, summarise ---------------------------------------------------------


def run_parent(opts: argparse.Namespace) -> None:
    split = split_of(opts)
    child_args = ["--data", str(opts.data), "--val", str(opts.val or ""), "--val-fraction", repr(opts.val_fraction),
                  "--text-column", opts.text_column or "", "--label-column", opts.label_column or "",
                  *_common.common_child_args(opts)]
    runs = _common.run_arms(opts, __file__, split, child_args, task=TASK)
    summary = _common.summarise(runs, task=TASK, metric=METRIC)
    tz = summary["taskzoo"]
    headline = (
        f"sentiment: backbone {tz['backbone']}, {tz['train_examples']} train / {tz['val_examples']} val examples, "
        f"{tz['epochs']} epoch(s), batch {tz['batch_size']}, lr {tz['lr']:g}, warmup {tz['warmup_steps']}/"
        f"{tz['total_steps']} steps, seed {tz['seed']}, max_length {tz['max_length']}"
    )
    _common.emit(
        summary, opts, headline=headline, metric_label="accuracy",
        checks_ok="both arms got the same data split (texts, label ids) and the same initial weights",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "reviews.csv",
                        help="labelled texts: CSV, TSV, JSON Lines, Parquet (what tasks run reads)")
    parser.add_argument("--val", type=lambda s: Path(s) if s else None, default=None,
                        help="validation texts (default: --val-fraction of --data)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="used only without --val")
    parser.add_argument("--text-column", default=None, type=lambda s: s or None,
                        help="the task's option (default: detected, e.g. text/review/sentence)")
    parser.add_argument("--label-column", default=None, type=lambda s: s or None,
                        help="the task's option (default: detected, e.g. label/sentiment/stars)")
    _common.add_common_arguments(parser, task=TASK, epochs=3, batch_size=16, lr=1e-4)
    opts = parser.parse_args(argv)
    _common.check_common_arguments(parser, opts)
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
