"""The one training loop every gradient-trained task runs through, built on accelerate.

CPU or CUDA, mixed precision, gradient accumulation and data parallel across processes or
machines (``accelerate launch``) all come from accelerate; this module adds the recipe: AdamW
with warmup and linear or cosine decay, gradient clipping, evaluation each epoch on the task's
main metric, early stopping, the best model kept, a checkpoint to resume from, and logs.

A task whose model is (also) fitted without gradients, e.g. by alternating least squares, does
that in `Task.fit_before_training`; the trainer then scores it as epoch 0 and the gradient epochs
(possibly none) continue from it, so every task still ends in the same run folder.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast, broadcast_object_list, gather_object, set_seed
from safetensors.torch import load_model
from tqdm.auto import tqdm

from taskzoo import progress
from taskzoo.errors import UserError
from taskzoo.cpu_kernels import (
    CpuTrainingKernels, SharedInputProjections, checkpoint_contexts, clip_grad_norm_, keep_freed_memory_for_reuse,
)
from taskzoo.options import default_of
from taskzoo.run_folders import CHECKPOINT_FOLDER, MODEL_FOLDER, damaged_file, replacing_folder, write_atomically
from taskzoo.snapshots import BackgroundWriter, cpu_copy, fits_in_memory, save_weights, tensor_bytes
from taskzoo.sparse_rows import RowSparseAdamW, sparse_gradients, vocabulary_embeddings
from taskzoo.specs import MetricContext, MetricSpec, format_metric
from taskzoo.task import Task

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
TRAINER_STATE = "trainer_state.json"
RANDOM_STATE = "rng.pt"


@dataclass
class TrainingArgs:
    """The recipe the trainer follows; each field is the shared run option of the same name
    (`taskzoo.options.SHARED_OPTIONS`), whose default and help it takes."""

    epochs: int = default_of("epochs")
    batch_size: int = default_of("batch_size")
    eval_batch_size: int | None = None  # default: twice batch_size
    lr: float = default_of("lr")
    weight_decay: float = default_of("weight_decay")
    warmup_ratio: float = default_of("warmup_ratio")
    scheduler: str = default_of("scheduler")
    grad_accum: int = default_of("grad_accum")
    max_grad_norm: float | None = default_of("max_grad_norm")
    patience: int | None = default_of("patience")
    seed: int = default_of("seed")
    log_every: int = default_of("log_every")
    save_every: int = default_of("save_every")
    gradient_checkpointing: bool = default_of("gradient_checkpointing")
    compile: bool = default_of("compile")
    keep_checkpoint: bool = default_of("keep_checkpoint")

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> TrainingArgs:
        """The fields out of a run's resolved options (`taskzoo.options.resolve`)."""
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if values.get(name) is not None})


def schedule(batches_per_epoch: int, *, grad_accum: int, epochs: int, warmup_ratio: float) -> tuple[int, int, int]:
    """(optimizer updates per epoch, total updates, warmup updates) of a run: the step maths the
    trainer uses, and the benchmarks give the reference trainers."""
    per_epoch = math.ceil(batches_per_epoch / grad_accum)
    total = per_epoch * epochs
    return per_epoch, total, int(total * warmup_ratio)


def make_accelerator(
    device: str = "auto", mixed_precision: str = "auto", grad_accum: int = 1, seed: int | None = None,
    *, cpu_bf16: bool = False,
) -> Accelerator:
    """An Accelerator for ``--device`` (auto/cpu/cuda) and ``--mixed-precision`` (auto/no/fp16/bf16;
    ``cpu_bf16``: the task's `Task.cpu_bf16`, for what auto means on the CPU).

    Shuffled loaders draw their order from ``seed`` and the epoch, so every process of a
    data-parallel run sees one order, and a resumed run the order it would have had.
    """
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    on_gpu = cuda and device != "cpu"
    _join_restarted_group("nccl" if on_gpu else "gloo")
    mixed_precision = resolved_mixed_precision(mixed_precision, on_gpu=on_gpu, cpu_bf16=cpu_bf16)
    _forget_other_precision(mixed_precision)
    accelerator = Accelerator(
        cpu=not on_gpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    if accelerator.num_processes > 1:
        _destroy_process_group_at_exit(accelerator)
    else:
        asked = _processes_asked_of_accelerate()
        if asked > 1:
            raise UserError(f"accelerate launch --num_processes {asked} started one process (it does without "
                            "--multi_gpu when it finds no GPU): add --multi_gpu, which starts them on the CPU too "
                            "(leave out --cpu; --device cpu after the task keeps the run on the CPU)")
    return accelerator


def _forget_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one precision per process and refuses an Accelerator of another; a notebook
    that trains in bf16 and then evaluates (in full precision) or trains again in another precision
    starts the next one afresh. The processes and devices (accelerate's PartialState) are kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


def resolved_mixed_precision(mixed_precision: str, *, on_gpu: bool, cpu_bf16: bool = False) -> str:
    """What ``--mixed-precision`` trains in on this machine. ``auto``: bf16 on CUDA (fp16 before
    Ampere); on the CPU, bf16 for a task whose model it speeds up (`Task.cpu_bf16`) where the CPU
    has matrix units for it (Intel AMX), else full precision."""
    if mixed_precision == "auto":
        if on_gpu:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bf16 and cpu_has_bf16_matrix_units() else "no"
    if mixed_precision == "fp16" and not on_gpu:
        raise UserError("--mixed-precision fp16 needs a CUDA device; use bf16 or no on the CPU")
    return mixed_precision


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX: Intel Xeon from the 4th generation,
    Sapphire Rapids on). Elsewhere bf16 on the CPU is emulated, and slower than full precision."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; no public spelling yet
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


def _join_restarted_group(backend: str) -> None:
    """In workers that torchrun restarted after a failure, join the process group through keys of
    this attempt only: the restarted group meets in the store of the failed one, where the dead
    processes' addresses are still written, and a worker that reads one first cannot connect."""
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt in ("", "0") or dist.is_initialized() or not os.environ.get("MASTER_ADDR"):
        return
    from datetime import timedelta

    from torch.distributed.rendezvous import _create_c10d_store

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, size,
                               timedelta(minutes=10))
    dist.init_process_group(backend, store=dist.PrefixStore(f"taskzoo/attempt-{attempt}", store), rank=rank,
                            world_size=size)


def _processes_asked_of_accelerate() -> int:
    """``--num_processes N`` of an ``accelerate launch`` that started this process directly (its
    single-process launcher, which sets nothing in the environment to say so); 0 when not."""
    try:
        arguments = [part.decode(errors="replace") for part in
                     Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if part]
    except OSError:  # not Linux, or no /proc: nothing to check against
        return 0
    starts = [index for index, a in enumerate(arguments[:4])
              if a.endswith(("/accelerate", "accelerate.commands.launch")) or a == "accelerate"]
    if not starts:
        return 0
    rest = arguments[starts[0] + 1:]
    if rest[:1] == ["launch"]:
        rest = rest[1:]
    elif not arguments[starts[0]].endswith("launch"):
        return 0  # another accelerate command
    for index, argument in enumerate(rest):
        if argument == "-m" or argument.endswith(".py"):
            break  # the launched program's own arguments follow
        name, _, value = argument.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (rest[index + 1] if index + 1 < len(rest) else "")
            return int(value) if value.isdigit() else 0
    return 0


_registered_exit: list[bool] = []


def _destroy_process_group_at_exit(accelerator: Accelerator) -> None:
    """Take the process group down while Python still runs (what accelerate's ``end_training``
    does), once every process got there: left to the interpreter's last teardown, or torn down
    while another process still talks to the group's store, gloo's threads can abort a finished
    process. At exit rather than after training, so a script that goes on (``run.predict``)
    still has the group."""
    if _registered_exit:
        return
    _registered_exit.append(True)

    def leave() -> None:
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            return
        try:
            if dist.get_backend() == "gloo":  # a barrier that gives up, should a peer be gone
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that died first: leave all the same
            pass
        accelerator.state.destroy_process_group()

    atexit.register(leave)


def lr_lambda(warmup_steps: int, total_steps: int, kind: str):
    """Linear warmup, then linear or cosine decay to zero, or (``constant``) the peak kept."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def batch_size_of(batch: Any) -> int:
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
        if isinstance(value, list):
            return len(value)
    return 1


def _progress(accelerator: Accelerator, loader: Any, description: str) -> Any:
    # Shown only when the work takes more than a moment.
    return tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True, delay=2.0,
                disable=not (accelerator.is_local_main_process and progress.show()))


@dataclass
class Scored:
    """What evaluation keeps of each example: the task's (compact) prediction and reference, and
    the summed loss. Parts of one data set are scored one after another and added up."""

    predictions: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: int = 0

    def metrics(self, metrics: Sequence[MetricSpec], context: MetricContext) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if self.loss_count:
            results["loss"] = self.loss_sum / self.loss_count
        for metric in metrics:
            value = metric.compute(self.predictions, self.references, context)
            if value is not None:  # None: the metric does not apply to this evaluation
                results[metric.name] = value
        return results


@torch.no_grad()
def score(accelerator: Accelerator, model: torch.nn.Module, loader: Any, task: Task,
          into: Scored | None = None) -> Scored:
    """Run ``model`` over ``loader`` on every process; add each example's prediction and reference
    (in loader order) and the loss to ``into``."""
    model.eval()
    scored = into if into is not None else Scored()
    for batch in _progress(accelerator, loader, "evaluating"):
        out = model(batch)
        if out.get("loss") is not None:
            size = batch_size_of(batch)
            losses = accelerator.gather_for_metrics(out["loss"].detach().float().reshape(1).repeat(size))
            scored.loss_sum += float(losses.sum())
            scored.loss_count += int(losses.numel())
        local = list(zip(task.predictions(batch, out["output"]), task.references(batch)))
        for prediction, reference in accelerator.gather_for_metrics(local, use_gather_object=True):
            scored.predictions.append(prediction)
            scored.references.append(reference)
    return scored


def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: Any,
    task: Task,
    metrics: Sequence[MetricSpec],
    context: MetricContext,
) -> tuple[dict[str, Any], list[Any]]:
    """Run ``model`` over ``loader`` on every process; return (metrics, predictions in loader order)."""
    scored = score(accelerator, model, loader, task)
    return scored.metrics(metrics, context), scored.predictions


@torch.no_grad()
def predict_all(accelerator: Accelerator, model: torch.nn.Module, loader: Any, task: Task) -> list[Any]:
    """The task's predictions for every example in ``loader``, in loader order."""
    model.eval()
    predictions: list[Any] = []
    for batch in _progress(accelerator, loader, "predicting"):
        local = task.predictions(batch, model(batch)["output"])
        predictions.extend(accelerator.gather_for_metrics(local, use_gather_object=True))
    return predictions


class Trainer:
    """Fits ``model`` on ``train_data``, evaluating on ``val_data`` each epoch.

    Writes into ``run_dir``: ``metrics.jsonl`` (one line per logged step and per epoch), the best
    model under ``model/`` (through `Task.save`) and a resumable ``checkpoint/``.
    """

    def __init__(
        self,
        *,
        task: Task,
        model: torch.nn.Module,
        train_data: Any,
        val_data: Any,
        metrics: Sequence[MetricSpec],
        main_metric: str,
        args: TrainingArgs,
        accelerator: Accelerator,
        run_dir: Path,
        after_epoch: Callable[[int, float], bool] | None = None,
        trackers: Any = None,
        resumable: bool = True,
    ) -> None:
        """``after_epoch(epoch, main metric)`` is told each scored epoch; when it returns true,
        training ends there as if stopped early (a search's pruner stops hopeless trials so).
        ``trackers`` (`taskzoo.tracking.Trackers`) get every logged step and epoch. A run that is
        not ``resumable`` mid-way (a search's trial: a crash starts it again) checkpoints without
        the optimizer state, twice the weights' size, which only a resume would read."""
        self.task = task
        self.resumable = resumable
        self.trackers = trackers
        self.after_epoch = after_epoch
        self._halted = False
        self.train_data = train_data
        self.args = args
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.metrics = list(metrics)
        self.main_metric = main_metric
        by_name = {m.name: m for m in self.metrics}
        if main_metric not in by_name:
            raise ValueError(f"task {task.name} names main metric '{main_metric}', which no plugin provides")
        self.maximise = by_name[main_metric].goal == "max"
        self.context = MetricContext(task=task.name, labels=tuple(task.labels_of_model))

        if task.channels_last:  # NHWC convolutions: faster on GPUs' tensor cores and on CPUs' oneDNN alike
            model.to(memory_format=torch.channels_last)
        if args.gradient_checkpointing and not enable_gradient_checkpointing(model):
            task.context.warn("--gradient-checkpointing: no transformers or timm network in this model supports "
                              "it; training keeps every activation")
        if args.compile:
            compile_with_fallback(model, task.context.warn)
        set_seed(args.seed)
        train_loader = task.dataloader(train_data, batch_size=args.batch_size, train=True, seed=args.seed)
        val_loader = task.dataloader(
            val_data, batch_size=args.eval_batch_size or args.batch_size * 2, train=False, seed=args.seed
        )
        self.updates_per_epoch, total, warmup = schedule(
            len(train_loader), grad_accum=args.grad_accum, epochs=args.epochs, warmup_ratio=args.warmup_ratio
        )
        # Mixed precision wraps the forward pass in autocast when prepared; evaluation goes without it.
        self._full_precision_forward = model.forward
        optimizer = _adamw(self._parameter_groups(model), args.lr, args.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total, args.scheduler))
        # accelerate steps a prepared scheduler once per process per update, so the totals above
        # are counted on the single-process loader.
        self.model, self.optimizer, self.train_loader, self.val_loader, self.scheduler = accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler
        )
        # A compiled model has its kernels generated; timm's checkpointed blocks recompute with
        # PyTorch's own, which would not replay the forward pass's dropout.
        timm_checkpointed = any(getattr(module, "grad_checkpointing", False) is True for module in model.modules())
        self._on_cpu = on_cpu = accelerator.device.type == "cpu"
        self._cpu_kernels = on_cpu and not args.compile and not timm_checkpointed
        self._projections = SharedInputProjections(model) if self._cpu_kernels else None
        # Row gradients for vocabularies (`taskzoo.sparse_rows`): one process, as processes average
        # dense gradients; not compiled, as inductor's embedding backward is dense.
        single_cpu = on_cpu and accelerator.num_processes == 1 and not args.compile
        self._vocabularies = vocabulary_embeddings(model) if single_cpu else []
        if on_cpu:
            keep_freed_memory_for_reuse()
        self._samples_seen, self._train_seconds = 0, 0.0
        self._writer = BackgroundWriter()
        self._stop_requests = _StopRequests()
        self.state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "history": []}

    @staticmethod
    def _parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
        # Biases and norm weights (1-d tensors) are conventionally not weight-decayed.
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    # -- logging ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log({f"{record['type']}/{key}": value for key, value in record.items()
                               if isinstance(value, (int, float)) and key not in ("epoch", "step")}, self.state["global_step"])

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, *, epoch_end: bool = True) -> None:
        """Write weights, optimizer, scheduler, random and trainer state into ``checkpoint/``,
        swapped in whole so a crash never leaves half a checkpoint. ``best.safetensors`` is a hard
        link to the best epoch's weights, so keeping the best model costs no extra copy. Inside an
        epoch (``epoch_end=False``: ``--save-every``, a stop) the state says how far the epoch got.

        On a GPU the files are written from a snapshot on a background thread while training goes
        on (`taskzoo.snapshots`); whatever ends training waits for it to be complete. The last
        epoch's checkpoint leaves out the optimizer state when a complete run would drop it
        (`keep_progress_only`)."""
        self.accelerator.wait_for_everyone()
        # Each process's own: their dropout draws differ once their batches' shapes do.
        random_states = gather_object([torch.get_rng_state()])  # one process: the list itself
        if self.accelerator.is_main_process:
            last = epoch_end and (self.state["epoch"] >= self.args.epochs or self._should_stop())
            weights = self.accelerator.unwrap_model(self.model).state_dict()
            state: dict[str, Any] = {"weights": weights}
            if self.resumable and not (last and not self.args.keep_checkpoint):
                state["optimizer"] = self.optimizer.state_dict()
                state["scheduler"] = self.scheduler.state_dict()
            background = self._save_in_background(state)
            self._writer.wait()  # the previous checkpoint is complete before this one is laid out
            if background:
                state = cpu_copy(state)
            else:  # written in place: safetensors takes only tensors in the default (not channels-last) layout
                state["weights"] = {name: tensor.contiguous() for name, tensor in weights.items()}
            state["random"] = {"torch": random_states[0], "processes": random_states}
            state["trainer"] = json.dumps({**self.state, "python_rng": _jsonable_random_state()})
            best_now = epoch_end and self.state["best_epoch"] == self.state["epoch"]
            self._writer.write(lambda: self._write_checkpoint(state, best_now), background=background)
        self.accelerator.wait_for_everyone()

    def _save_in_background(self, state: dict[str, Any]) -> bool:
        """Whether checkpoint ``state`` is written by the background thread: when training on a GPU,
        whose host cores are mostly idle, and a copy fits in memory. On the CPU every core does the
        training's math and a writer beside it costs more than it saves (bf16 training of MiniLM on
        two cores ran a quarter slower with one)."""
        return self.accelerator.device.type != "cpu" and fits_in_memory(tensor_bytes(state))

    def _write_checkpoint(self, state: dict[str, Any], best_now: bool) -> None:
        folder = self.run_dir / CHECKPOINT_FOLDER
        with replacing_folder(folder) as partial:
            partial.mkdir(parents=True)
            save_weights(state["weights"], partial / WEIGHTS)
            if best_now:
                _link(partial / WEIGHTS, partial / BEST_WEIGHTS)
            elif (folder / BEST_WEIGHTS).exists():
                _link(folder / BEST_WEIGHTS, partial / BEST_WEIGHTS)
            if "optimizer" in state:
                torch.save(state["optimizer"], partial / "optimizer.pt")
                torch.save(state["scheduler"], partial / "scheduler.pt")
            torch.save(state["random"], partial / RANDOM_STATE)
            (partial / TRAINER_STATE).write_text(state["trainer"], encoding="utf-8")

    def load_checkpoint(self, *, extend: bool = False) -> None:
        """Continue from ``checkpoint/``. A complete run keeps only its progress there (see
        `keep_progress_only`): its model comes from ``model/`` (the pipeline loads it) and the
        optimizer starts afresh, its learning rate where the schedule had got to."""
        folder = self.run_dir / CHECKPOINT_FOLDER
        state = checkpoint_progress(self.run_dir)
        if state is None:
            raise UserError(f"{self.run_dir}: no checkpoint to resume from (no {CHECKPOINT_FOLDER}/ folder)")
        # Our own files, written above; weights_only still refuses anything but tensors and plain data.
        with _checkpoint_file(folder / TRAINER_STATE, "the trainer's progress as JSON"):
            python_rng = state.pop("python_rng")
            random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
        if (folder / WEIGHTS).exists():
            with _checkpoint_file(folder / WEIGHTS, "the weights the trainer saved (safetensors)"):
                load_model(self.accelerator.unwrap_model(self.model), str(folder / WEIGHTS))
        if (folder / "optimizer.pt").exists():
            with _checkpoint_file(folder / "optimizer.pt", "the optimizer state the trainer saved"):
                self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
            with _checkpoint_file(folder / "scheduler.pt", "the learning-rate schedule the trainer saved"):
                self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        else:
            _advance(self.scheduler.scheduler, state["global_step"])
        if (folder / RANDOM_STATE).exists():
            with _checkpoint_file(folder / RANDOM_STATE, "the random state the trainer saved"):
                saved = torch.load(folder / RANDOM_STATE, weights_only=True)
                states = saved.get("processes") or [saved["torch"]]
                process = self.accelerator.process_index
                torch.set_rng_state(states[process] if len(states) == self.accelerator.num_processes else states[0])
        if extend:
            state["bad_epochs"] = 0  # more epochs were asked for: early stopping counts afresh
        self.state = state
        self._forget_logs_after_checkpoint()

    def _forget_logs_after_checkpoint(self) -> None:
        """Drop the log lines of work the checkpoint does not hold (the steps of an epoch that was
        stopped), so that after a resume ``metrics.jsonl`` has each step and epoch once."""
        log = self.run_dir / "metrics.jsonl"
        if not self.accelerator.is_main_process or not log.exists():
            return
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if record.get("type") == "epoch":
                if record.get("epoch", 0) <= self.state["epoch"]:
                    kept.append(line)
            elif record.get("step", 0) <= self.state["global_step"]:
                kept.append(line)
        write_atomically(log, "".join(f"{line}\n" for line in kept))

    def save_best_model(self) -> None:
        """Load the best epoch's weights into the model on every process and save it the task's way
        into ``model/``. When later epochs ran after the best one and the task's pictures come
        from its last evaluation (`Task.report_draws_predictions`), evaluate it once more, so they
        show the saved model rather than the last epoch's."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        best = self.run_dir / CHECKPOINT_FOLDER / BEST_WEIGHTS
        found = [accelerator.is_main_process and best.exists()]
        broadcast_object_list(found)
        if not found[0]:
            return
        model = accelerator.unwrap_model(self.model)
        if accelerator.is_main_process:
            load_model(model, str(best))
            # Saved beside the model it replaces, then swapped in: an extension that dies here
            # leaves the run's earlier model, never half of one.
            with replacing_folder(self.run_dir / MODEL_FOLDER) as partial, contiguous_for_saving(model):
                self.task.save(model, partial)
        if accelerator.num_processes > 1:  # the file may be on the main node only
            for tensor in model.state_dict().values():
                broadcast(tensor)
        if self.state["best_epoch"] != self.state["epoch"] and self.task.report_draws_predictions:
            self._evaluate()
        accelerator.wait_for_everyone()

    def _evaluate(self) -> tuple[dict[str, Any], list[Any]]:
        """The validation metrics, computed in full precision whatever the training precision, so
        that they are what ``tasks evaluate`` and ``tasks predict`` get from the saved model."""
        model = self.accelerator.unwrap_model(self.model)
        mixed_forward = model.forward
        model.forward = self._full_precision_forward
        try:
            return evaluate(self.accelerator, self.model, self.val_loader, self.task, self.metrics, self.context)
        finally:
            model.forward = mixed_forward

    # -- the loop --------------------------------------------------------------------------------

    def fit(self, resume: bool = False, extend: bool = False) -> dict[str, Any]:
        """Train to the end (or early stop); return the summary that goes into ``metrics.json``.
        ``extend``: the resumed run was complete and goes on to more epochs.

        Ctrl-C or SIGTERM stops at the next optimizer step: a checkpoint of that step is written,
        then `TrainingStopped` is raised; a second signal stops at once (KeyboardInterrupt)."""
        args, accelerator = self.args, self.accelerator
        if resume:
            self.load_checkpoint(extend=extend)
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            with self._stop_requests, sparse_gradients(self._vocabularies):
                if not resume:
                    self._fit_before_training()
                self._train_epochs()
        finally:
            self._writer.close()  # however training ended, the checkpoint being written is finished
        self.save_best_model()
        return {
            "best_epoch": self.state["best_epoch"],
            "main_metric": self.main_metric,
            "best": self.state["best"],
            "epochs_run": self.state["epoch"],
            "stopped_early": self._should_stop() and self.state["epoch"] < args.epochs,
            "halted": self._halted,
            "val": next(
                (h["val"] for h in self.state["history"] if h["epoch"] == self.state["best_epoch"]), {}
            ),
            "history": self.state["history"],
            "train_samples_per_second": self._samples_seen / self._train_seconds if self._train_seconds else None,
            "wall_seconds": time.perf_counter() - started,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "peak_rss_bytes": _peak_rss_bytes(),
            "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device),
            "args": asdict(args),
        }

    def _fit_before_training(self) -> None:
        """The task's non-gradient fit, scored as epoch 0 so the best-model choice includes it."""
        if self.task.fit_before_training(self.accelerator.unwrap_model(self.model), self.train_data):
            val, _ = self._evaluate()
            self._end_epoch(0, val, None, None)

    def _train_epochs(self) -> None:
        args, accelerator = self.args, self.accelerator
        while self.state["epoch"] < args.epochs and not self._should_stop():
            epoch = self.state["epoch"] + 1
            self.model.train()
            self.train_loader.set_epoch(epoch)
            # A checkpoint written inside this epoch: go on after the batches it holds, in the
            # same order (the sampler's order depends on the seed and the epoch only).
            done = self.state.pop("partial_epoch", None) or {"batches": 0, "loss_total": 0.0, "samples": 0}
            loader = self.train_loader
            if done["batches"]:
                loader = _keeping_random_state(accelerator.skip_first_batches(self.train_loader, done["batches"]))
            bar = tqdm(
                loader,
                desc=f"epoch {epoch}/{args.epochs}",
                unit="batch",
                initial=done["batches"],
                total=len(self.train_loader),
                disable=not (accelerator.is_local_main_process and progress.show()),
                dynamic_ncols=True,
            )
            epoch_start = time.perf_counter()
            epoch_samples, loss_total, loss_batches = done["samples"], done["loss_total"], done["batches"]
            window_loss, window_batches, window_start, window_samples = 0.0, 0, time.perf_counter(), 0
            for batch in bar:
                with accelerator.accumulate(self.model):
                    with CpuTrainingKernels(self._projections) if self._cpu_kernels else nullcontext():
                        loss = self.model(batch)["loss"]
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        self._clip_gradients()
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                size = batch_size_of(batch) * accelerator.num_processes
                value = float(loss.detach())
                epoch_samples += size
                window_samples += size
                loss_total += value
                loss_batches += 1
                window_loss += value
                window_batches += 1
                if not accelerator.sync_gradients:
                    continue
                self.state["global_step"] += 1
                if self.state["global_step"] % args.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "type": "step",
                        "epoch": epoch,
                        "step": self.state["global_step"],
                        "loss": window_loss / window_batches,
                        "lr": self.scheduler.get_last_lr()[0],
                        "samples_per_second": window_samples / max(elapsed, 1e-9),
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_second']:.1f}")
                    window_loss, window_batches, window_start, window_samples = 0.0, 0, time.perf_counter(), 0
                stop = self._stop_requested()
                inside = loss_batches < len(self.train_loader)  # the epoch's end saves its own checkpoint
                if inside and (stop or (args.save_every and self.state["global_step"] % args.save_every == 0)):
                    self.state["partial_epoch"] = {"batches": loss_batches, "loss_total": loss_total,
                                                   "samples": epoch_samples}
                    self.save_checkpoint(epoch_end=False)
                    self.state.pop("partial_epoch")
                    if stop:
                        bar.close()
                        raise TrainingStopped(stop)
            bar.close()
            epoch_seconds = time.perf_counter() - epoch_start
            self._train_seconds += epoch_seconds
            self._samples_seen += epoch_samples
            val, _ = self._evaluate()
            self._end_epoch(epoch, val, loss_total / max(loss_batches, 1), epoch_samples / max(epoch_seconds, 1e-9))
            if (stop := self._stop_requested()):
                raise TrainingStopped(stop)

    def _clip_gradients(self) -> None:
        """Scale the gradients to at most ``--max-grad-norm`` in total (2-norm), after unscaling
        them from fp16 loss scaling; on the CPU through `taskzoo.cpu_kernels.clip_grad_norm_`."""
        if self._on_cpu:
            self.accelerator.unscale_gradients()
            clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        else:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)

    def _stop_requested(self) -> int | None:
        """The signal that asked the run to stop, agreed by every process (one stops, all stop)."""
        accelerator = self.accelerator
        if self._stop_requests.signal is not None:
            accelerator.set_trigger()
        if accelerator.num_processes == 1:
            return self._stop_requests.signal
        return (self._stop_requests.signal or signal.SIGTERM) if accelerator.check_trigger() else None

    def _end_epoch(
        self, epoch: int, val: dict[str, Any], train_loss: float | None, samples_per_second: float | None
    ) -> None:
        """Record an epoch (0: the fit before training, without a train loss) and checkpoint."""
        score = val[self.main_metric]
        best = self.state["best"]
        improved = best is None or (score > best if self.maximise else score < best)
        self.state["history"].append(
            {"epoch": epoch, "train_loss": train_loss, "samples_per_second": samples_per_second, "val": val}
        )
        scalars = {k: v for k, v in val.items() if isinstance(v, (int, float))}
        self._log({"type": "epoch", "epoch": epoch, "step": self.state["global_step"], "train_loss": train_loss,
                   "samples_per_second": samples_per_second, **{f"val_{k}": v for k, v in scalars.items()}})
        if self.accelerator.is_main_process and progress.show():
            loss_text = f"train loss {train_loss:.4f}" if train_loss is not None else "fitted before training"
            tqdm.write(
                f"epoch {epoch}: {loss_text}, "
                + ", ".join(f"val {k} {format_metric(v)}" for k, v in scalars.items())
            )
        if improved:
            self.state.update(best=score, best_epoch=epoch, bad_epochs=0)
        else:
            self.state["bad_epochs"] += 1
        self.state["epoch"] = epoch
        self.save_checkpoint()
        if self.after_epoch is not None and self.after_epoch(epoch, score):
            self._halted = True

    def _should_stop(self) -> bool:
        patience = self.args.patience
        return self._halted or (bool(patience) and self.state["bad_epochs"] >= patience)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped at a step boundary on a signal, after writing a checkpoint there."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopRequests(AbstractContextManager["_StopRequests"]):
    """While training: the first Ctrl-C or SIGTERM asks the loop to stop at the next optimizer
    step (a checkpoint is written there); a second one stops at once. Only the main thread can
    catch signals; elsewhere (a notebook's worker thread) signals keep their usual effect."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise TrainingStopped(signum)
        self.signal = signum
        if progress.show():
            tqdm.write(f"\n{signal.Signals(signum).name}: stopping after this step to save it "
                       f"({'Ctrl-C' if signum == signal.SIGINT else 'the signal'} again stops at once)")

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this PyTorch supports it for the parameters (several times faster on CPU),
    taking row gradients as well (`taskzoo.sparse_rows`)."""
    try:
        return RowSparseAdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return RowSparseAdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)


def _checkpoint_file(path: Path, expected: str) -> AbstractContextManager[None]:
    return damaged_file(f"{path}: damaged or not {expected}", "resume from an intact run folder")


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]




def _peak_rss_bytes() -> int | None:
    """The process's largest resident memory so far (the whole process: data, model, optimizer)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS counts bytes, Linux kibibytes


def _compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile (dynamo tracing or a backend's compiler), not from the model."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor")) or any(
        type(error).__name__ == name for name in ("BackendCompilerFailed", "InductorError", "Unsupported"))


@contextmanager
def contiguous_for_saving(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in PyTorch's default memory layout while it is saved (safetensors writes only
    contiguous tensors), then channels-last again if it was."""
    channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                        for p in model.parameters())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    try:
        yield model
    finally:
        if channels_last:
            model.to(memory_format=torch.channels_last)


def compile_with_fallback(model: torch.nn.Module, warn: Callable[[str], None]) -> None:
    """Compile ``model``'s forward pass in place (its state_dict keeps its names, so checkpoints
    and saved models do not change). Compilation happens at the first call; if it fails there,
    the model goes back to eager with one warning and the call is repeated eagerly, so a model
    that cannot compile never fails a run. Shapes that change are compiled as dynamic ones."""
    eager = model.forward
    compiled = torch.compile(eager, dynamic=None)
    # Stays the model's forward after a failure too: what wraps it later (mixed precision's autocast)
    # keeps wrapping it, and only the first failure warns.
    failed = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - only compiler failures are caught (re-raised otherwise)
                if not _compile_failure(error):
                    raise
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                warn(f"--compile: {type(model).__name__} could not be compiled ({first.strip()[:200]}); training eagerly")
                failed = True
        return eager(*args, **kwargs)

    model.forward = forward


def enable_gradient_checkpointing(model: torch.nn.Module) -> list[str]:
    """Turn on activation checkpointing in every transformers or timm network inside ``model``
    (non-reentrant, so dropout draws the same numbers in the recomputation, under the forward pass's
    `CpuTrainingKernels` where it ran under one); returns the class names of the networks it was turned
    on in, empty when none supports it."""
    enabled = []
    replaying = {"use_reentrant": False, "context_fn": checkpoint_contexts}
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "activation_checkpointing_enable"):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=replaying)
        elif getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=replaying)  # transformers < 5.x
        elif callable(getattr(module, "set_grad_checkpointing", None)) and hasattr(module, "grad_checkpointing"):
            module.set_grad_checkpointing(True)
        else:
            continue
        enabled.append(type(module).__name__)
    return enabled


def keep_progress_only(run_dir: Path) -> None:
    """What a complete run keeps of its checkpoint: the trainer's progress (epochs, best score,
    history) and random state, a few kilobytes, so that it can still be extended. The weights are
    in ``model/``; the optimizer state (twice the weights again) is dropped."""
    folder = Path(run_dir) / CHECKPOINT_FOLDER
    if not (folder / TRAINER_STATE).exists():
        return
    for path in folder.iterdir():
        if path.name not in (TRAINER_STATE, RANDOM_STATE):
            path.unlink()


def checkpoint_progress(run_dir: Path) -> dict[str, Any] | None:
    """The trainer state in a run's checkpoint (epochs run, best...), or None without one."""
    path = Path(run_dir) / CHECKPOINT_FOLDER / TRAINER_STATE
    if not path.exists():
        return None
    with _checkpoint_file(path, "the trainer's progress as JSON"):
        return json.loads(path.read_text(encoding="utf-8"))


def has_weights(run_dir: Path) -> bool:
    """Whether the checkpoint holds the weights (a run in progress, or one kept whole)."""
    return (Path(run_dir) / CHECKPOINT_FOLDER / WEIGHTS).exists()


def _keeping_random_state(loader: Any) -> Iterator[Any]:
    """Iterate ``loader`` as if it had been iterating all along: a new DataLoader iterator draws its
    workers' seed from the global random state, a draw a run that was never stopped made at the
    start of the epoch, so the state restored from the checkpoint is put back after it."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    try:
        first = next(iterator)
    except StopIteration:
        return
    torch.set_rng_state(state)
    yield first
    yield from iterator


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Set a fresh learning-rate schedule to where ``steps`` updates had taken it."""
    import warnings

    scheduler.last_epoch = steps - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": deliberate here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
