"""The contract a task's implementation fulfils; the run pipeline (`taskzoo.pipeline`) and the
shared trainer drive it.

A plugin's `TaskSpec.task_class` points to a subclass of `Task`. One instance serves one command
(``run``, ``check``, ``evaluate`` or ``predict``), so it may keep state such as a tokenizer.
What it needs from the rest of taskzoo (its backbones, a finished run to start from) comes in a
`TaskContext`; a task never asks the process-wide plugin host or opens run folders itself.

The model a task builds is a ``torch.nn.Module`` whose ``forward(batch)`` takes one batch from the
task's own data loader and returns ``{"loss": tensor or None, "output": tensor}``; that is all the
trainer knows about it.
"""

from __future__ import annotations

import os

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskzoo.errors import UserError
from taskzoo.specs import BackboneSpec, TaskSpec

if TYPE_CHECKING:
    import torch

    from taskzoo.export import Graph


@dataclass(frozen=True)
class FinishedRun:
    """A complete run folder of the same task, handed to a task that starts from it (``--init``)."""

    folder: Path
    config: Mapping[str, Any]

    @property
    def model(self) -> Path:
        """The folder `Task.save` wrote."""
        return self.folder / "model"


class Labels(list):
    """Label names in id order, as `Task.labels` returns them, with what else the data says about
    them in ``details`` (a segmentation class's colour, a detection category's own id). The
    pipeline hands the same object to `Task.build_model`, so nothing travels through task state."""

    def __init__(self, names: Sequence[str], **details: Any) -> None:
        super().__init__(names)
        self.details: dict[str, Any] = details


def label_details(labels: Sequence[str]) -> dict[str, Any]:
    """``labels.details`` for `Labels`, an empty mapping for a plain list of names."""
    return labels.details if isinstance(labels, Labels) else {}


def _to_stderr(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)


def _no_runs(folder: Path, option: str) -> FinishedRun:
    raise UserError(f"--{option.replace('_', '-')} {folder}: this command cannot start from another run")


@dataclass(frozen=True)
class TaskContext:
    """What the pipeline hands a task besides its options.

    ``backbones``: the task's backbones (catalog and plugins), default first. ``offline_backbones``:
    the names of those that load without network right now, for error messages.
    ``finished_run(folder, option)``: the complete run of this task at ``folder``, or a `UserError`
    naming ``option`` (``init``) when it is not one. ``warn(message)``: tell the user something the
    work survives (the command line prints ``warning: ...``, Python issues a `UserWarning`).
    ``workers``: processes that should load and augment batches (``--data-workers``); tasks whose
    batches cost real work to make (decoding and augmenting images) pass `loader_options` to their
    DataLoader.
    """

    backbones: tuple[BackboneSpec, ...] = ()
    offline_backbones: tuple[str, ...] = ()
    finished_run: Callable[[Path, str], FinishedRun] = _no_runs
    warn: Callable[[str], None] = _to_stderr
    workers: int | None = None

    def loader_options(self, train: bool) -> dict[str, Any]:
        """DataLoader keywords: ``num_workers`` (``--data-workers``, default `default_workers`) and pinned
        memory when batches go to a GPU. Workers are started anew each epoch (not persistent), so
        they see the epoch a dataset's ``set_epoch`` set: augmentation differs from epoch to epoch."""
        import torch

        workers = default_workers() if self.workers is None else self.workers
        return {"num_workers": workers, "pin_memory": torch.cuda.is_available()}


def default_workers() -> int:
    """Batch-loading processes when ``--data-workers`` is not given: one core is left to training, and
    below four cores none (extra processes then cost more than they give)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores - 1) if cores >= 4 else 0


def task_class(spec: TaskSpec) -> type[Task]:
    """Import the spec's task class; a `UserError` naming the plugin if that fails, so a task whose
    code cannot import (a missing dependency) stops in one line."""
    module_name, _, class_name = spec.task_class.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"task '{spec.name}' (plugin '{spec.plugin}'): cannot import its code '{spec.task_class}': "
            f"{type(error).__name__}: {' '.join(str(error).split())}"
        ) from error
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise UserError(f"task '{spec.name}' (plugin '{spec.plugin}'): '{spec.task_class}' is not a taskzoo.task.Task subclass")
    return found


class Task:
    """Base class for a task: reading data, building and saving the model, turning outputs into
    predictions. Raise `taskzoo.DataError` for anything wrong with the user's files."""

    #: What `size` counts, in messages such as ``tasks evaluate``'s "data.csv: 120 examples".
    size_unit = "examples"
    #: The predict option that a plain list of inputs stands for in ``Run.predict([...])``
    #: (``"text"`` for text tasks, ``"user"`` for recommendation); None: only files.
    inline_input: str | None = None
    #: Whether ``tasks predict --data`` takes a folder of images, so ``tasks serve`` takes image uploads.
    input_images: bool = False
    #: Whether the model is convolutional over image batches: the trainer then keeps it channels-last
    #: (NHWC), which PyTorch's convolutions run faster on GPUs and CPUs alike.
    channels_last: bool = False
    #: Whether bf16 autocast trains the model faster than full precision on CPUs with bf16 matrix
    #: units (Intel AMX), so that ``--mixed-precision auto`` uses it there: true for transformers
    #: encoders and the Unet (1.3x-1.7x), false for Faster R-CNN (slower). Measure before setting it.
    cpu_bf16: bool = False
    #: Whether `report` draws what `predictions` kept during the last evaluation (example images
    #: with their masks or boxes) rather than the metrics alone. The trainer then evaluates the
    #: best epoch's model once more after training when a later epoch ran, so the pictures show
    #: the saved model; a task whose pictures come from the metrics sets it false and saves that pass.
    report_draws_predictions: bool = True

    def __init__(self, spec: TaskSpec, options: Mapping[str, Any], context: TaskContext | None = None) -> None:
        self.spec = spec
        self.options = dict(options)
        self.context = context or TaskContext()

    @property
    def name(self) -> str:
        return self.spec.name

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> Any:
        """Read and validate one data file or folder.

        :param role: ``train``, ``val``, ``test`` (labelled, for evaluation) or ``predict``.
        :param labels: the label names a trained model knows, for ``val``/``test``/``predict``;
            a ``test`` label outside them is a `DataError`.
        """
        raise NotImplementedError

    def inputs_from_options(self) -> Any | None:
        """Data for ``tasks predict`` given inline by the task's options (``--text``), or None."""
        return None

    def split(self, data: Any, *, val_fraction: float, seed: int) -> tuple[Any, Any]:
        """Split training data into train and validation parts (stratified where it makes sense)."""
        raise NotImplementedError

    def describe_split(self, *, val_fraction: float, seed: int) -> str:
        """How the last `split` chose the validation part, in words, for the run's config and
        model card. Override it when the split is not a plain random share of the examples."""
        return f"a random {val_fraction:.0%} of the training data (seed {seed})"

    def labels(self, data: Any) -> list[str]:
        """The label names found in training data, in the order that fixes their ids; a `Labels`
        when more than the names is needed to build the model (it is passed to `build_model`)."""
        raise NotImplementedError

    def size(self, data: Any) -> int:
        """Number of examples in ``data``."""
        return len(data)

    def read_parts(self, path: Path, *, role: str, labels: Sequence[str] | None = None, size: int) -> Iterator[Any]:
        """The file or folder `read` reads, as `parts` of at most ``size`` examples. Override it to
        read a large input as it goes (``role="predict"``); the default reads it whole first."""
        yield from self.parts(self.read(path, role=role, labels=labels), size)

    def parts(self, data: Any, size: int) -> Iterator[Any]:
        """``data`` in consecutive parts of at most ``size`` examples, for ``predict`` and
        ``evaluate`` to encode and score one part at a time (memory that does not grow with the
        input). Each part must be data that `dataloader`, `records` and `write_predictions` take,
        keeping what the written predictions name (row and line numbers) and whatever the metrics
        group examples by (a sentence or image number must not start again at 0 in each part).
        The default is one part: all of it."""
        yield data

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        """Load the pretrained backbone and put a fresh head for ``labels`` on it."""
        raise NotImplementedError

    def fit_before_training(self, model: torch.nn.Module, train_data: Any) -> bool:
        """Fit what gradient steps do not learn, before the trainer's first epoch (optional).

        For models fitted in closed form or by alternating solves (matrix factorisation by
        alternating least squares, a nearest-neighbour index, a fitted tokenizer-free baseline):
        write the result into ``model`` (into its parameters, so checkpoints keep it) and return
        True. The trainer then evaluates the model as epoch 0 and keeps it as the best model
        unless a later gradient epoch beats it; with ``--epochs 0`` it is the model saved. It is
        called once per run (not again when a run resumes), on every process, with the model
        already on its device. Show a progress bar for long fits. The default fits nothing and
        returns False: the trainer goes straight to its epochs.
        """
        return False

    def dataloader(self, data: Any, *, batch_size: int, train: bool, seed: int) -> torch.utils.data.DataLoader:
        """Batches for the model; shuffled (and seeded) when ``train``."""
        raise NotImplementedError

    def predictions(self, batch: Mapping[str, Any], output: Any) -> list[Any]:
        """One JSON-able prediction per example in ``batch``, from the model's ``output`` (usually
        a tensor; whatever ``forward`` returned under "output"); what metrics and outputs receive."""
        raise NotImplementedError

    def references(self, batch: Mapping[str, Any]) -> list[Any]:
        """One reference (true answer) per example in ``batch``."""
        raise NotImplementedError

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Save the model in its library's own format (``save_pretrained``, safetensors)."""
        raise NotImplementedError

    def load(self, folder: Path) -> torch.nn.Module:
        """Load what `save` wrote; after this, `labels_of_model` is known."""
        raise NotImplementedError

    @property
    def labels_of_model(self) -> list[str]:
        """The label names of the built or loaded model."""
        raise NotImplementedError

    # -- export ----------------------------------------------------------------------------------

    def export_graph(self, model: torch.nn.Module) -> Graph:
        """What of ``model`` becomes an ONNX graph, and how the task's batches feed it: a
        `taskzoo.export.Graph`. For a network that takes one batch tensor and returns the output
        tensor, ``Graph(network, input_names=("image",))`` is all it takes. The default: no export."""
        raise UserError(f"task '{self.name}' has no ONNX export (its plugin does not define Task.export_graph)")

    def answer(self, prediction: Any) -> Any:
        """What of one prediction an export must reproduce exactly for the example to count as the
        same answer in the parity report (not the scores): by default its ``label``, else all of it."""
        return prediction.get("label", prediction) if isinstance(prediction, Mapping) else prediction

    # -- outputs ---------------------------------------------------------------------------------

    def records(self, data: Any, predictions: list[Any]) -> list[dict[str, Any]]:
        """The predictions as the records ``tasks predict`` writes (one dict per row or input, with
        the scores behind each answer), in input order; what ``Run.predict`` returns. The default
        returns the predictions themselves, ordered by their ``index`` when they have one."""
        if predictions and isinstance(predictions[0], Mapping) and "index" in predictions[0]:
            return sorted(predictions, key=lambda p: p["index"])
        return list(predictions)

    def write_predictions(self, data: Any, predictions: list[Any], output: Path | None) -> str:
        """Write predictions to ``output`` (format from its suffix) or return them as text."""
        raise NotImplementedError

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        """Write pictures of evaluation results (confusion matrix...) into ``folder``."""
        return []

    def model_card_usage(self, run_folder: Path) -> str:
        """Extra Markdown for the run's model card, e.g. how to load the model elsewhere."""
        return ""
