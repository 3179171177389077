"""Benchmark: ``tasks tune sentiment`` against ``transformers.Trainer.hyperparameter_search``.

The same search in both arms, each in its own subprocess of this script: the same data split
(taskzoo's reader and split, handed to both), backbone, space (learning rate log-uniform, batch size,
epochs), number of trials, first trial (the task's default learning rate and batch size), Optuna's
TPE sampler as taskzoo configures it (`taskzoo.tuning.make_sampler`, same seed) and a median pruner
fed by each epoch's validation accuracy, so both arms try the same parameters trial by trial until
a pruning decision differs. Reports the whole search's wall time, the ratio taskzoo /
transformers, the best validation accuracy of each and, for taskzoo, its first trial (the default
configuration)::

    python benchmarks/tune_trainer.py                       # 6 trials on examples/reviews.csv
    python benchmarks/tune_trainer.py --trials 10 --json
    python benchmarks/tune_trainer.py --seed 42 43 44        # one search per seed, and the spread

A single arm: ``python benchmarks/tune_trainer.py --arm taskzoo`` (one JSON line).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from sentiment_trainer import read_and_split  # noqa: E402

TASK = "sentiment"
# The space of both arms: taskzoo's option names, and transformers' TrainingArguments fields.
LR = (2e-5, 5e-4)
BATCH_SIZES = (8, 16, 32)
EPOCHS = (1, 2)


def taskzoo_arm(opts: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()  # both arms: from before their imports, reading and tokenising to the end
    import taskzoo

    with tempfile.TemporaryDirectory(prefix="tune-bench-") as scratch:
        space = Path(scratch) / "space.yaml"
        space.write_text(f"lr: {{low: {LR[0]!r}, high: {LR[1]!r}, log: true}}\nbatch-size: {list(BATCH_SIZES)}\n"
                         f"epochs: {list(EPOCHS)}\n", encoding="utf-8")
        result = taskzoo.tune(TASK, opts.data, trials=opts.trials, space=space, output=Path(scratch) / "tune",
                              seed=opts.seed, max_length=opts.max_length, device="cpu", progress=opts.verbose,
                              mixed_precision="no")  # as the Trainer arm: full precision on the CPU
        seconds = time.perf_counter() - started
    summary = result.summary
    return {"arm": "taskzoo", "seconds": seconds, "best_accuracy": summary["best"]["value"],
            "best_params": summary["best"]["params"], "default_accuracy": summary["default"]["value"],
            "states": [t["state"] for t in summary["trials"]],
            "trial_seconds": [t["seconds"] for t in summary["trials"]],
            "params": [[t["params"]["lr"], t["params"]["batch-size"], t["params"]["epochs"]] for t in summary["trials"]]}


def hf_arm(opts: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np
    import optuna
    import torch
    from accelerate.utils import set_seed
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from taskzoo import tuning
    from taskzoo.weights import resolve_backbone

    host = _common.arm_setup(opts)
    split = read_and_split(opts.data, opts.seed)
    spec, task = _common.make_task(host, TASK, {"max_length": opts.max_length})
    backbone = resolve_backbone(host, TASK, None)
    task.build_model(backbone, split["labels"])  # the tokenizer, as the task sets it up
    tokenizer = task.tokenizer
    label_ids = {label: i for i, label in enumerate(split["labels"])}

    def encoded(part: dict[str, Any]) -> Any:
        tokens = tokenizer(part["texts"], truncation=True, max_length=task.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
        return _common.ListDataset([{**{k: tokens[k][i] for k in keys}, "labels": label_ids[label]}
                                    for i, label in enumerate(part["labels"])])

    def model_init(trial: Any = None) -> Any:
        set_seed(opts.seed)
        return task.build_model(backbone, split["labels"]).network

    def accuracy(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}

    def space(trial: Any) -> dict[str, Any]:
        return {"learning_rate": trial.suggest_float("learning_rate", *LR, log=True),
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", list(BATCH_SIZES)),
                "num_train_epochs": trial.suggest_categorical("num_train_epochs", list(EPOCHS))}

    with tempfile.TemporaryDirectory(prefix="hf-tune-bench-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_eval_batch_size=32, weight_decay=_common.WEIGHT_DECAY,
            warmup_steps=0.1, lr_scheduler_type=_common.SCHEDULER, max_grad_norm=_common.MAX_GRAD_NORM,
            seed=opts.seed, eval_strategy="epoch", save_strategy="epoch", report_to="none",
            use_cpu=not torch.cuda.is_available(), train_sampling_strategy="group_by_length",
            disable_tqdm=not opts.verbose)
        trainer = Trainer(model_init=model_init, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                          train_dataset=encoded(split["train"]), eval_dataset=encoded(split["val"]),
                          processing_class=tokenizer, compute_metrics=accuracy)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # The first trial is taskzoo's default configuration in both arms (taskzoo's tune queues it itself).
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, study_name="hps", direction="maximize")
        study.enqueue_trial({"learning_rate": spec.defaults["lr"], "per_device_train_batch_size": spec.defaults.get(
            "batch_size", _common.default_of("batch_size"))})
        best = trainer.hyperparameter_search(
            direction="maximize", backend="optuna", hp_space=space, n_trials=opts.trials,
            compute_objective=lambda metrics: metrics["eval_accuracy"], storage=storage, study_name="hps",
            load_if_exists=True, sampler=tuning.make_sampler(opts.seed, opts.trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
        seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name="hps", storage=storage).trials
    return {"arm": "hf", "seconds": seconds, "best_accuracy": best.objective, "best_params": best.hyperparameters,
            "states": [t.state.name.lower() for t in trials],
            "trial_seconds": [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials],
            "params": [[t.params["learning_rate"], t.params["per_device_train_batch_size"], t.params["num_train_epochs"]]
                       for t in trials]}


def run_child(opts: argparse.Namespace, arm: str, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--arm", arm, "--trials", str(opts.trials), "--seed", str(seed),
               "--max-length", str(opts.max_length), "--data", str(opts.data), "--threads", str(opts.threads)]
    return _common.child_json(command, f"the {arm} arm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=_common.ROOT / "examples" / "reviews.csv")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, nargs="+", default=[42],
                        help="one search per seed (split, sampler and weights), arms alternating in order")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--arm", choices=("taskzoo", "hf"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm:
        import torch

        torch.set_num_threads(opts.threads)
        opts.seed = opts.seed[0]
        print(json.dumps(taskzoo_arm(opts) if opts.arm == "taskzoo" else hf_arm(opts)))
        return
    print(f"sentiment search: {opts.trials} trials, TPE, median pruner, lr {LR[0]:g}..{LR[1]:g} (log), "
          f"batch {list(BATCH_SIZES)}, epochs {list(EPOCHS)}, max_length {opts.max_length}, {opts.data.name}")
    searches = []
    for index, seed in enumerate(opts.seed):
        # Alternate which arm goes first, so a machine that slows down over the runs favours neither.
        order = ("taskzoo", "hf") if index % 2 == 0 else ("hf", "taskzoo")
        results = {arm: run_child(opts, arm, seed) for arm in order}
        searches.append({"seed": seed, **results})
        tz, hf = results["taskzoo"], results["hf"]
        same = all(math.isclose(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(tz["params"], hf["params"]))
        print(f"seed {seed}:")
        print(f"  taskzoo tune      {tz['seconds']:7.1f} s   best val accuracy {tz['best_accuracy']:.4f}   "
              f"(default configuration {tz['default_accuracy']:.4f}; trials {', '.join(tz['states'])})")
        print(f"  transformers hps  {hf['seconds']:7.1f} s   best val accuracy {hf['best_accuracy']:.4f}   "
              f"(trials {', '.join(hf['states'])})")
        print(f"  same parameters trial by trial: {same}   wall time ratio taskzoo / transformers: "
              f"{tz['seconds'] / hf['seconds']:.2f}", flush=True)
    if len(searches) > 1:
        ratios = [s["taskzoo"]["seconds"] / s["hf"]["seconds"] for s in searches]
        total = sum(s["taskzoo"]["seconds"] for s in searches) / sum(s["hf"]["seconds"] for s in searches)
        tz_best = [s["taskzoo"]["best_accuracy"] for s in searches]
        hf_best = [s["hf"]["best_accuracy"] for s in searches]
        print(f"over {len(searches)} seeds: wall time ratio median {statistics.median(ratios):.2f} "
              f"(all searches together {total:.2f}); best val accuracy mean taskzoo {statistics.mean(tz_best):.4f}, "
              f"transformers {statistics.mean(hf_best):.4f}; taskzoo's best >= transformers' in "
              f"{sum(t >= h for t, h in zip(tz_best, hf_best))} of {len(searches)}")
    if opts.json:
        print(json.dumps(searches, indent=2))


if __name__ == "__main__":
    main()
