"""What the trainer benchmarks share: taskzoo's shared trainer against ``transformers.Trainer``.

A benchmark script (``sentiment_trainer.py``, ``ner_trainer.py``) prepares its task's data and
encoded examples; this module holds the rest, so both arms are run, timed and reported the same
way for every task:

- the recipe both arms share (`add_common_arguments`, `taskzoo_training_args`,
  `hf_training_arguments`, `schedule`) and the timed fits (`fit_taskzoo`, `fit_hf`);
- the checks that both arms got identical inputs (`parameters_fingerprint`, `digest`);
- the parent process: one subprocess per arm and repeat, alternating order (`run_arms`), medians
  (`summarise`) and the printed report (`print_report`), with peak RSS per arm (`peak_rss_mib`).

Results use ``val_<metric>`` keys for the quality metric (``val_accuracy``, ``val_f1``), so the
same code serves every task; see benchmarks/README.md for how to read the report.
"""

from __future__ import annotations

import argparse
import functools
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("taskzoo", "hf")
ARM_NAMES = {"taskzoo": "taskzoo", "hf": "transformers"}
# Fixed parts of the recipe, the same in both arms: taskzoo's own defaults, read from its one
# declaration of the run options.
from taskzoo.options import default_of  # noqa: E402

WEIGHT_DECAY = default_of("weight_decay")
MAX_GRAD_NORM = default_of("max_grad_norm")
SCHEDULER = default_of("scheduler")
LOG_EVERY = default_of("log_every")


# -- tasks, fingerprints, memory ------------------------------------------------------------------


def make_task(host: Any, name: str, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(spec, task instance) with the task's option defaults, updated by ``options``, as the run
    pipeline makes it."""
    from taskzoo.pipeline import make_task as pipeline_task

    spec = host.task(name)
    values = {option.key: option.default for option in spec.options}
    values.update(options or {})
    return spec, pipeline_task(spec, values, host)


def digest(payload: Any) -> str:
    """A short hash of JSON-able data, to check both arms got the same inputs."""
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def parameters_fingerprint(module: Any) -> str:
    """A hash of every parameter, to check both arms start from the same weights (head included)."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def schedule(n_train: int, batch_size: int, epochs: int, warmup_ratio: float) -> tuple[int, int]:
    """(total optimizer steps, warmup steps): taskzoo's own step maths (grad_accum 1), for the
    reference trainer to follow."""
    from taskzoo.trainer import schedule as trainer_schedule

    _, total, warmup = trainer_schedule(math.ceil(n_train / batch_size), grad_accum=1, epochs=epochs,
                                        warmup_ratio=warmup_ratio)
    return total, warmup


def read_data(task_name: str, **options: Any) -> tuple[Any, Any, list[str]]:
    """(train part, validation part, labels) exactly as ``tasks run`` reads and splits them:
    `taskzoo.pipeline.read_data`, with ``options`` checked like flags."""
    from taskzoo import options as schema
    from taskzoo import pipeline
    from taskzoo.plugins import get_host

    spec = get_host().task(task_name)
    values = schema.resolve(spec, "run", [("benchmark", {k: v for k, v in options.items() if v is not None})])
    _, train, val, labels = pipeline.read_data(spec, values)
    return train, val, labels


def taskzoo_trainer(spec: Any, task: Any, model: Any, train: Any, val: Any, run_dir: Path, **recipe: Any) -> Any:
    """The shared trainer exactly as ``tasks run`` builds it (`taskzoo.pipeline.make_trainer`), for
    data both arms share: ``recipe`` holds run options (``epochs=2, lr=1e-4``), checked and merged
    with the task's defaults like flags."""
    from taskzoo import options, pipeline
    from taskzoo.trainer import make_accelerator

    values = options.resolve(spec, "run", [("benchmark", recipe)])
    accelerator = make_accelerator(values["device"], values["mixed_precision"], values["grad_accum"], values["seed"],
                                   cpu_bf16=type(task).cpu_bf16)
    prepared = pipeline.Prepared(spec, values, task, train, val, list(task.labels_of_model), None, model, accelerator)
    return pipeline.make_trainer(prepared, run_dir)


@functools.cache
def taskzoo_precision(task_name: str, mixed_precision: str) -> str:
    """What taskzoo trains ``task_name`` in with ``--mixed-precision`` on this machine (``auto``
    depends on the device and on the task's `Task.cpu_bf16`): the precision a reference arm mirrors."""
    import torch

    from taskzoo.plugins import get_host
    from taskzoo.task import task_class
    from taskzoo.trainer import resolved_mixed_precision

    cpu_bf16 = task_class(get_host().task(task_name)).cpu_bf16
    return resolved_mixed_precision(mixed_precision, on_gpu=torch.cuda.is_available(), cpu_bf16=cpu_bf16)


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def arm_setup(opts: argparse.Namespace) -> Any:
    """Start of an arm's subprocess: torch with ``--threads``; returns the taskzoo plugin host."""
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    from taskzoo.plugins import get_host

    return get_host()


def arm_result(opts: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """The fields every arm reports, before its fit."""
    import torch

    return {
        "arm": opts.arm, **fields, "epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr,
        "seed": opts.seed, "threads": torch.get_num_threads(),
    }


def finish_result(result: dict[str, Any], n_train: int, epochs: int) -> dict[str, Any]:
    """Add throughput (with and without the arm's checkpoint writes) and peak memory once the fit is done."""
    import torch

    samples = n_train * epochs
    result["samples_per_second"] = samples / result["fit_seconds"]
    result["samples_per_second_excluding_saves"] = samples / max(result["fit_seconds"] - result["save_seconds"], 1e-9)
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return result


# -- the taskzoo arm ------------------------------------------------------------------------------


def fit_taskzoo(
    opts: argparse.Namespace, host: Any, spec: Any, task: Any, model: Any, train_data: Any, val_data: Any,
    *, metric: str,
) -> dict[str, Any]:
    """Build ``taskzoo.trainer.Trainer`` (not timed) and time its ``fit()``, saving included.

    ``metric`` is the validation metric to report (``accuracy``, ``f1``).
    """
    import torch

    with tempfile.TemporaryDirectory(prefix="taskzoo-bench-") as run_dir:
        # Building the Trainer tokenises the data and prepares model/optimizer/loaders: not timed.
        trainer = taskzoo_trainer(
            spec, task, model, train_data, val_data, Path(run_dir), epochs=opts.epochs, batch_size=opts.batch_size,
            lr=opts.lr, warmup_ratio=opts.warmup_ratio, seed=opts.seed, mixed_precision=opts.mixed_precision,
        )
        # fit() always saves the best model and a resumable checkpoint each epoch; time those
        # writes so the report can show how much of the fit they are.
        saving = SaveTimer()
        trainer.save_checkpoint = saving.timed(trainer.save_checkpoint)
        task.save = saving.timed(task.save)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        summary = trainer.fit()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        fit_seconds = time.perf_counter() - start
    history = summary["history"]
    best = next((h["val"].get(metric) for h in history if h["epoch"] == summary["best_epoch"]), None)
    return {
        "fit_seconds": fit_seconds,
        "save_seconds": saving.seconds,
        "training_loop_samples_per_second": summary["train_samples_per_second"],  # the epochs' batches only
        f"val_{metric}": history[-1]["val"][metric] if history else None,
        f"val_{metric}_by_epoch": [h["val"][metric] for h in history],
        "best_epoch": summary["best_epoch"],
        f"val_{metric}_at_best_epoch": best,  # the model taskzoo keeps (best epoch by the task's main metric)
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"],
    }


class EpochLoop:
    """Adds up the seconds of the Trainer's epochs from their start to their last batch's step
    (``on_epoch_begin`` to ``on_epoch_end``; its epoch-end evaluation and save come after), the
    span taskzoo's trainer counts for its own training samples/s, and keeps the current epoch's
    step losses: their mean is what taskzoo reports as an epoch's train loss (the Trainer logs
    windows of ``logging_steps`` instead)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None
        self._losses: list[Any] = []

    @property
    def mean_loss(self) -> float | None:
        """The mean step loss of the last epoch that ran."""
        return sum(float(loss) for loss in self._losses) / len(self._losses) if self._losses else None

    def recording(self, training_step: Callable[..., Any]) -> Callable[..., Any]:
        """``Trainer.training_step`` keeping the loss it returns (detached, unread until the end)."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            self._losses.append(loss)
            return loss
        return wrapper

    def callback(self) -> Any:
        from transformers import TrainerCallback

        loop = self

        class _Epochs(TrainerCallback):
            def on_epoch_begin(self, *args: Any, **kwargs: Any) -> None:
                loop._start = time.perf_counter()
                loop._losses = []

            def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
                if loop._start is not None:
                    loop.seconds += time.perf_counter() - loop._start
                    loop._start = None

        return _Epochs()


class SaveTimer:
    """Adds up the seconds spent in the functions it wraps (each arm's checkpoint writes)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper


# -- the transformers arm -------------------------------------------------------------------------


class ListDataset:
    """A map-style dataset over ready-made items (what ``transformers.Trainer`` needs: len and index)."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def hf_training_arguments(opts: argparse.Namespace, output_dir: str, warmup_steps: int) -> Any:
    """taskzoo's recipe expressed as ``transformers.TrainingArguments``."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    # What taskzoo's arm trains in, or (--hf-precision default) the Trainer's own default: full precision.
    precision = taskzoo_precision(opts.task, opts.mixed_precision) if opts.hf_precision == "same" else "no"
    extra: dict[str, Any] = {"optim": opts.hf_optim} if opts.hf_optim else {}
    return TrainingArguments(
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
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy=opts.hf_sampler,
        **extra,
    )


def fit_hf(
    opts: argparse.Namespace, network: Any, tokenizer: Any, train_set: Any, val_set: Any, *, collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]], warmup_steps: int, metric: str,
) -> dict[str, Any]:
    """Build ``transformers.Trainer`` on ``network`` (not timed) and time its ``train()``."""
    import torch
    from transformers import Trainer

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as output_dir:
        args = hf_training_arguments(opts, output_dir, warmup_steps)
        loop = EpochLoop()
        trainer = Trainer(
            model=network, args=args, data_collator=collator, train_dataset=train_set, eval_dataset=val_set,
            processing_class=tokenizer, compute_metrics=compute_metrics, callbacks=[loop.callback()],
        )
        # Its checkpoint writes (weights, optimizer, scheduler, random state), timed as taskzoo's are.
        saving = SaveTimer()
        trainer._save_checkpoint = saving.timed(trainer._save_checkpoint)
        trainer.training_step = loop.recording(trainer.training_step)
        if cuda:
            torch.cuda.reset_peak_memory_stats()  # as taskzoo's fit() does
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        fit_seconds = time.perf_counter() - start
    key = f"eval_{metric}"
    evals = [entry for entry in trainer.state.log_history if key in entry]
    return {
        "fit_seconds": fit_seconds,
        "save_seconds": saving.seconds,
        "trainer_reported_samples_per_second": output.metrics.get("train_samples_per_second"),  # evals and saves included
        "training_loop_samples_per_second": len(train_set) * opts.epochs / loop.seconds if loop.seconds else None,
        f"val_{metric}": evals[-1][key] if evals else None,
        f"val_{metric}_by_epoch": [entry[key] for entry in evals],
        "final_train_loss": loop.mean_loss,
        "device": str(args.device),
        "mixed_precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
        "optim": str(getattr(args.optim, "value", args.optim)),
        "sampler": opts.hf_sampler,
        "save": opts.hf_save,
    }


# -- command line ---------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, *, task: str, epochs: int, batch_size: int, lr: float) -> None:
    """The options every trainer benchmark has (its data options are its own), defaults for ``task``."""
    parser.set_defaults(task=task)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1, help="run both arms N times (alternating order); report medians")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each arm")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the task's offline default)")
    parser.add_argument("--hf-sampler", default="group_by_length", choices=["group_by_length", "random"],
                        help="transformers train_sampling_strategy; group_by_length matches taskzoo's length-grouped batches")
    parser.add_argument("--hf-save", default="epoch", choices=["epoch", "no"],
                        help="transformers checkpoints: each epoch like taskzoo (default), or none")
    parser.add_argument("--hf-optim", default=None, help="transformers optim (default: its own, adamw_torch_fused)")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                        help="taskzoo's --mixed-precision; the transformers arm trains in what it resolves to")
    parser.add_argument("--hf-precision", default="same", choices=["same", "default"],
                        help="same: transformers in taskzoo's precision; default: in TrainingArguments' own (fp32), "
                             "to compare the two tools' defaults")
    parser.add_argument("--json", action="store_true", help="print the final result as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the arms' progress bars and logs")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--split-file", type=Path, help=argparse.SUPPRESS)


def check_common_arguments(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")


def common_child_args(opts: argparse.Namespace) -> list[str]:
    """The common options, as flags for an arm's subprocess."""
    args = [
        "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size), "--lr", repr(opts.lr),
        "--seed", str(opts.seed), "--warmup-ratio", repr(opts.warmup_ratio), "--hf-sampler", opts.hf_sampler,
        "--hf-save", opts.hf_save, "--mixed-precision", opts.mixed_precision, "--hf-precision", opts.hf_precision,
    ]
    for flag, value in (("--threads", opts.threads), ("--backbone", opts.backbone), ("--hf-optim", opts.hf_optim)):
        if value:
            args += [flag, str(value)]
    return args


# -- the parent: run both arms, summarise ---------------------------------------------------------


def child_json(command: list[str], what: str) -> dict[str, Any]:
    """Run one arm's subprocess offline and return the JSON of its last stdout line; its stderr goes
    to a file, not a pipe (progress bars would fill a pipe), and is shown if the arm fails."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        if done.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{what} failed: {errors.read().decode()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_child(opts: argparse.Namespace, command: list[str], arm: str) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(f"running {ARM_NAMES[arm]} arm ...", file=sys.stderr, flush=True)
    process = subprocess.run(
        command, cwd=ROOT, env=env, text=True,
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


def run_arms(
    opts: argparse.Namespace, script: str | Path, shared: dict[str, Any], child_args: Sequence[str], *, task: str,
) -> dict[str, list[dict[str, Any]]]:
    """Run every arm ``opts.repeats`` times, each in its own subprocess of ``script``.

    ``shared`` (JSON-able: the data both arms train and validate on) is written once to a file that
    every arm reads (``--split-file``); ``child_args`` are the flags each arm gets besides ``--arm``.
    """
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix=f"{task}-bench-") as folder:
        split_file = Path(folder) / "split.json"
        split_file.write_text(json.dumps(shared, ensure_ascii=False), encoding="utf-8")
        for repeat in range(opts.repeats):
            # Alternate the order (taskzoo first on even repeats) so drift in machine load hits both.
            order = ARMS if repeat % 2 == 0 else tuple(reversed(ARMS))
            for arm in order:
                command = [sys.executable, str(Path(script).resolve()), "--arm", arm, "--split-file", str(split_file),
                           *child_args]
                runs[arm].append(_run_child(opts, command, arm))
    return runs


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    middle = statistics.median(values)
    # Keep counts (threads, best epoch) whole when an even number of repeats agree on them.
    return int(middle) if all(isinstance(v, int) for v in values) and float(middle).is_integer() else middle


CHECK_NAMES = {"data": "same_data", "init": "same_initial_weights"}


def summarise(runs: dict[str, list[dict[str, Any]]], *, task: str, metric: str) -> dict[str, Any]:
    """Medians over repeats per arm, the taskzoo/transformers ratio, and a check per ``*_fingerprint``."""
    arms: dict[str, Any] = {}
    for arm, results in runs.items():
        first = results[0]
        merged = {k: v for k, v in first.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        for key, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = _median([r.get(key) for r in results])
        merged["samples_per_second_runs"] = [r["samples_per_second"] for r in results]
        merged[f"val_{metric}_runs"] = [r[f"val_{metric}"] for r in results]
        arms[arm] = merged
    tz, hf = arms["taskzoo"], arms["hf"]
    checks = {
        CHECK_NAMES.get(key[: -len("_fingerprint")], "same_" + key[: -len("_fingerprint")]): tz[key] == hf.get(key)
        for key in tz
        if key.endswith("_fingerprint")
    }
    per_repeat = [a["samples_per_second"] / b["samples_per_second"] for a, b in zip(runs["taskzoo"], runs["hf"])]
    return {
        "task": task,
        "metric": metric,
        "ratio_samples_per_second": tz["samples_per_second"] / hf["samples_per_second"],
        "ratio_runs": per_repeat,
        # Each repeat runs the arms back to back: its ratio is the one the machine's drift moves least.
        "ratio_median_of_repeats": statistics.median(per_repeat),
        # Training and evaluation alone: the checkpoint writes, which both arms do each epoch, left out.
        "ratio_excluding_saves": tz["samples_per_second_excluding_saves"] / hf["samples_per_second_excluding_saves"],
        # The training loops alone (the epochs' batches): what a longer fit with fewer epochs tends to.
        "ratio_training_loop": tz["training_loop_samples_per_second"] / hf["training_loop_samples_per_second"],
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


def print_report(
    summary: dict[str, Any], repeats: int, *, headline: str, checks_ok: str, metric_label: str,
    notes: Sequence[str] = (),
) -> None:
    """The table both benchmarks print. ``headline``: the task, data and recipe line;
    ``checks_ok``: what the passed checks mean; ``metric_label``: e.g. "accuracy", "entity F1";
    ``notes``: extra lines printed before the table."""
    tz, hf = summary["taskzoo"], summary["transformers"]
    metric = summary["metric"]
    print(headline)
    print(
        f"device {tz['device']} (taskzoo {tz['mixed_precision']}, transformers {hf['mixed_precision']}), torch threads "
        f"{tz['threads']}, repeats {repeats}{' (medians)' if repeats > 1 else ''}; transformers optim {hf['optim']}, "
        f"sampler {hf['sampler']}, checkpoints {hf.get('save')}"
    )
    failed = [name.replace("_", " ") for name, ok in summary["checks"].items() if not ok]
    if failed:
        print(f"WARNING: check failed ({', '.join(failed)}): the arms did not get identical inputs")
    else:
        print(f"checks: {checks_ok}")
    for note in notes:
        print(note)
    by_epoch = f"val_{metric}_by_epoch"
    rows = [
        ("samples/s (fit incl. eval)", _fmt(tz["samples_per_second"]), _fmt(hf["samples_per_second"])),
        ("fit seconds", _fmt(tz["fit_seconds"]), _fmt(hf["fit_seconds"])),
        ("  of which saving checkpoints", _fmt(tz["save_seconds"]), _fmt(hf["save_seconds"])),
        ("samples/s excl. saving", _fmt(tz["samples_per_second_excluding_saves"]),
         _fmt(hf["samples_per_second_excluding_saves"])),
        ("training loop samples/s", _fmt(tz["training_loop_samples_per_second"]),
         _fmt(hf["training_loop_samples_per_second"])),
        ("peak RSS MiB", _fmt(tz["peak_rss_mib"], 0), _fmt(hf["peak_rss_mib"], 0)),
    ]
    if tz.get("peak_cuda_mib") is not None or hf.get("peak_cuda_mib") is not None:
        rows.append(("peak CUDA MiB (allocated)", _fmt(tz["peak_cuda_mib"], 0), _fmt(hf["peak_cuda_mib"], 0)))
    rows += [
        (f"val {metric_label} by epoch", " ".join(f"{a:.3f}" for a in tz[by_epoch]),
         " ".join(f"{a:.3f}" for a in hf[by_epoch])),
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
        print("ratio per repeat  " + " ".join(f"{r:.2f}" for r in summary["ratio_runs"])
              + f"  (median {summary['ratio_median_of_repeats']:.2f})")
    print(
        f"samples/s  taskzoo {tz['samples_per_second']:.1f}  transformers {hf['samples_per_second']:.1f}  "
        f"ratio {summary['ratio_samples_per_second']:.2f}  (excluding both arms' checkpoint writes: "
        f"{summary['ratio_excluding_saves']:.2f}; training loops alone: {summary['ratio_training_loop']:.2f})"
    )
    best = tz.get(f"val_{metric}_at_best_epoch")
    best_text = f" (best epoch {_fmt(tz['best_epoch'], 0)}: {_fmt(best, 3)})" if best is not None else ""
    print(
        f"val {metric_label} (last epoch)  taskzoo {_fmt(tz[f'val_{metric}'], 3)}{best_text}  "
        f"transformers {_fmt(hf[f'val_{metric}'], 3)}"
    )


def emit(summary: dict[str, Any], opts: argparse.Namespace, **report: Any) -> None:
    """Print the summary as JSON (``--json``) or as the report."""
    if opts.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary, opts.repeats, **report)
