"""Benchmark: taskzoo's shared trainer against ``transformers.Trainer`` on the NER task.

One command runs both arms, each in its own subprocess of this script, on the same backbone,
sentences, encoded windows (sub-word tokens, first-sub-token labels), model initialisation and
recipe (batch size, epochs, learning rate, warmup steps, weight decay, clipping, seed, a checkpoint
each epoch), then prints training throughput, the ratio taskzoo / transformers, peak memory and
the entity-level F1 (seqeval) on the validation set::

    python benchmarks/ner_trainer.py --epochs 1
    python benchmarks/ner_trainer.py --repeats 3 --threads 2 --json

Throughput is measured identically in both arms: training windows x epochs / wall-clock seconds of
the whole fit (training plus the per-epoch evaluation and checkpoints), not counting model
loading, encoding or building the trainer. A window is what both trainers batch: one sentence, or
a part of a sentence longer than ``--max-length`` sub-word tokens. See benchmarks/README.md.

A single arm can be run on its own (it prints one JSON line)::

    python benchmarks/ner_trainer.py --arm hf --epochs 1
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

TASK = "ner"
METRIC = "f1"  # entity-level micro F1 (seqeval), the task's main metric
IGNORED = -100  # label of non-first sub-tokens and special tokens (taskzoo_ner.task.IGNORED)
WINDOW_ONLY = ("word_index", "sentence", "start")  # taskzoo's bookkeeping in each window, not model input
ENCODED = ("input_ids", "attention_mask", "token_type_ids", "labels")


# -- shared: data and model -----------------------------------------------------------------------


def _task_options(opts: argparse.Namespace) -> dict[str, Any]:
    return {"max_length": opts.max_length} if opts.max_length else {}


def read_data(opts: argparse.Namespace) -> dict[str, Any]:
    """Read train (and val) as ``tasks run ner`` does (`taskzoo.pipeline.read_data`); plain JSON-able
    data, so the parent can hand the exact sentences and label order to both arms."""
    train, val, labels = _common.read_data(TASK, data=opts.data, val=opts.val, val_fraction=opts.val_fraction,
                                           seed=opts.seed, **_task_options(opts))
    part = lambda d: [{"tokens": s.tokens, "tags": s.tags, "line": s.line} for s in d.sentences]  # noqa: E731
    return {
        "path": str(opts.data), "val_path": str(opts.val or opts.data), "format": train.format,
        "scheme": train.scheme, "labels": list(labels), "train": part(train), "val": part(val),
    }


def ner_data(shared: dict[str, Any], role: str) -> Any:
    from taskzoo_ner.data import NerData, Sentence

    return NerData(
        path=Path(shared["path" if role == "train" else "val_path"]), format=shared["format"], scheme=shared["scheme"],
        sentences=[Sentence(tokens=s["tokens"], tags=s["tags"], line=s["line"]) for s in shared[role]],
    )


def data_fingerprint(shared: dict[str, Any]) -> str:
    ids = {label: i for i, label in enumerate(shared["labels"])}
    return digest({
        "labels": shared["labels"],
        **{role: [[s["tokens"], [ids[t] for t in s["tags"]]] for s in shared[role]] for role in ("train", "val")},
    })


def windows_fingerprint(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> str:
    """The model inputs and labels of every window (what both trainers batch)."""
    return digest([[{k: w[k] for k in ENCODED if k in w} for w in part] for part in (train, val)])


# -- one arm (runs in a subprocess) ---------------------------------------------------------------


def run_arm(opts: argparse.Namespace) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from taskzoo.weights import resolve_backbone

    host = _common.arm_setup(opts)
    shared = json.loads(Path(opts.split_file).read_text(encoding="utf-8")) if opts.split_file else read_data(opts)
    spec, task = _common.make_task(host, TASK, _task_options(opts))
    backbone = resolve_backbone(host, TASK, opts.backbone)
    set_seed(opts.seed)
    model = task.build_model(backbone, shared["labels"])  # a TransformersAdapter wrapping .network
    train, val = ner_data(shared, "train"), ner_data(shared, "val")
    # The encoded windows; taskzoo's loaders make the same ones again (task.dataloader -> windows).
    train_windows, val_windows = task.windows(train), task.windows(val)
    n_train = len(train_windows)  # what the trainers' loaders yield per epoch
    total_steps, warmup_steps = schedule(n_train, opts.batch_size, opts.epochs, opts.warmup_ratio)
    result = _common.arm_result(
        opts, backbone=backbone.name, train_windows=n_train, val_windows=len(val_windows),
        train_sentences=len(train), val_sentences=len(val), total_steps=total_steps, warmup_steps=warmup_steps,
        max_length=task.tokenizer.model_max_length, data_fingerprint=data_fingerprint(shared),
        windows_fingerprint=windows_fingerprint(train_windows, val_windows),
        init_fingerprint=parameters_fingerprint(model.network),
    )
    if opts.arm == "taskzoo":
        result.update(_common.fit_taskzoo(opts, host, spec, task, model, train, val, metric=METRIC))
    else:
        result.update(_fit_hf(opts, task, model.network, shared["labels"], train_windows, val_windows, warmup_steps))
    return _common.finish_result(result, n_train, opts.epochs)


def _fit_hf(
    opts: argparse.Namespace, task: Any, network: Any, labels: list[str], train_windows: list[dict[str, Any]],
    val_windows: list[dict[str, Any]], warmup_steps: int,
) -> dict[str, Any]:
    import numpy as np
    from seqeval.metrics import f1_score
    from transformers import DataCollatorForTokenClassification

    def items(windows: list[dict[str, Any]]) -> _common.ListDataset:
        return _common.ListDataset([{k: v for k, v in w.items() if k not in WINDOW_ONLY} for w in windows])

    def compute_metrics(prediction: Any) -> dict[str, float]:
        # Tag names of each window's labelled positions (each word's first sub-token), as taskzoo's
        # metric sees them; the same seqeval call (default mode: conlleval rules, zero_division=0).
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.argmax(logits, axis=-1)
        truth, guess = [], []
        for row_labels, row_predicted in zip(prediction.label_ids, predicted):
            keep = row_labels != IGNORED
            truth.append([labels[i] for i in row_labels[keep]])
            guess.append([labels[i] for i in row_predicted[keep]])
        return {"f1": float(f1_score(truth, guess, zero_division=0))}

    return _common.fit_hf(
        opts, network, task.tokenizer, items(train_windows), items(val_windows),
        collator=DataCollatorForTokenClassification(task.tokenizer), compute_metrics=compute_metrics,
        warmup_steps=warmup_steps, metric=METRIC,
    )


# -- the parent: run both arms, summarise ---------------------------------------------------------


def run_parent(opts: argparse.Namespace) -> None:
    shared = read_data(opts)
    child_args = ["--data", str(opts.data), "--val", str(opts.val or ""), "--val-fraction", repr(opts.val_fraction),
                  *_common.common_child_args(opts)]
    if opts.max_length:
        child_args += ["--max-length", str(opts.max_length)]
    runs = _common.run_arms(opts, __file__, shared, child_args, task=TASK)
    summary = _common.summarise(runs, task=TASK, metric=METRIC)
    tz = summary["taskzoo"]
    headline = (
        f"ner: backbone {tz['backbone']}, {tz['train_windows']} train / {tz['val_windows']} val windows "
        f"({tz['train_sentences']} / {tz['val_sentences']} sentences), {tz['epochs']} epoch(s), batch "
        f"{tz['batch_size']}, lr {tz['lr']:g}, warmup {tz['warmup_steps']}/{tz['total_steps']} steps, "
        f"seed {tz['seed']}, max_length {tz['max_length']}"
    )
    notes = []
    if tz["val_windows"] != tz["val_sentences"]:
        notes.append(
            "note: some validation sentences span several windows; taskzoo scores whole sentences, transformers "
            "scores windows, so an entity cut by a window edge counts differently"
        )
    _common.emit(
        summary, opts, headline=headline, metric_label="entity F1", notes=notes,
        checks_ok="both arms got the same sentences and tag ids, the same encoded windows and the same initial weights",
    )


def task_defaults() -> dict[str, Any]:
    """epochs, batch size and learning rate as ``tasks run ner`` uses them (TaskSpec.defaults: 8, 16, 2e-4)."""
    from taskzoo.plugins import get_host

    defaults = {"epochs": 8, "batch_size": 16, "lr": 2e-4}
    defaults.update({k: v for k, v in get_host().task(TASK).defaults.items() if k in defaults})
    return defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "ner" / "train.conll",
                        help="training sentences: CoNLL or JSON Lines")
    parser.add_argument("--val", type=lambda s: Path(s) if s else None, default=ROOT / "examples" / "ner" / "dev.conll",
                        help="validation sentences; '' to split them off --data with --val-fraction")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="used only with --val ''")
    parser.add_argument("--max-length", type=int, default=None,
                        help="sub-word tokens per window (the task's option; default: the backbone's maximum)")
    _common.add_common_arguments(parser, task=TASK, **task_defaults())
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
