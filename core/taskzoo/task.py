"""The contract a task's implementation fulfils; the shared trainer and the CLI drive it.

A plugin's `TaskSpec.task_class` points to a subclass of `Task`. One instance serves one command
(``run``, ``check``, ``evaluate`` or ``predict``), so it may keep state such as a tokenizer.

The model a task builds is a ``torch.nn.Module`` whose ``forward(batch)`` takes one batch from the
task's own data loader and returns ``{"loss": tensor or None, "output": tensor}``; that is all the
trainer knows about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskzoo.specs import BackboneSpec, TaskSpec

if TYPE_CHECKING:
    import torch


class Task:
    """Base class for a task: reading data, building and saving the model, turning outputs into
    predictions. Raise `taskzoo.DataError` for anything wrong with the user's files."""

    #: What `size` counts, in messages such as ``tasks evaluate``'s "data.csv: 120 examples".
    size_unit = "examples"

    def __init__(self, spec: TaskSpec, options: Mapping[str, Any]) -> None:
        self.spec = spec
        self.options = dict(options)

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
        """The label names found in training data, in the order that fixes their ids."""
        raise NotImplementedError

    def size(self, data: Any) -> int:
        """Number of examples in ``data``."""
        return len(data)

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

    # -- outputs ---------------------------------------------------------------------------------

    def write_predictions(self, data: Any, predictions: list[Any], output: Path | None) -> str:
        """Write predictions to ``output`` (format from its suffix) or return them as text."""
        raise NotImplementedError

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        """Write pictures of evaluation results (confusion matrix...) into ``folder``."""
        return []

    def model_card_usage(self, run_folder: Path) -> str:
        """Extra Markdown for the run's model card, e.g. how to load the model elsewhere."""
        return ""
