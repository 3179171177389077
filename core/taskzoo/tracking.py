"""Experiment tracking (``--report-to``) through accelerate's trackers: each run's options as
parameters, every logged step and epoch as metrics, and, for MLflow, the finished run folder's
pictures, metrics, config and model card as artifacts.

``--tensorboard`` is ``--report-to tensorboard``: event files in the run folder's ``tensorboard/``.
MLflow writes where ``MLFLOW_TRACKING_URI`` says, else to its own default in the working folder
(MLflow 3: ``mlflow.db``, artifacts under ``mlruns/``), where ``mlflow ui`` finds it: an experiment
``taskzoo-TASK``, a run per run folder; a tune is a parent run with its trials as children
(`TuneTracking`). The other trackers read their own environment
(``WANDB_PROJECT``, ``WANDB_MODE``...).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskzoo.errors import UserError

# tracker -> (module that must import, what to pip install)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "taskzoo[tensorboard]"),
    "mlflow": ("mlflow", "taskzoo[mlflow]"),
    "wandb": ("wandb", "taskzoo[wandb]"),
    "comet_ml": ("comet_ml", "comet_ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
}
# What a finished run shares as artifacts (the model itself stays in the run folder).
ARTIFACTS = ("*.png", "metrics.json", "config.yaml", "README.md", "labels.json")


def wanted(values: Mapping[str, Any]) -> list[str]:
    """The trackers a run's options ask for (``--report-to``, repeatable, and ``--tensorboard``)."""
    names = list(dict.fromkeys([*(values.get("report_to") or []), *(["tensorboard"] if values.get("tensorboard") else [])]))
    for name in names:
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            flag = "--tensorboard" if name == "tensorboard" and not values.get("report_to") else f"--report-to {name}"
            raise UserError(f"{flag}: needs the {module} package: pip install '{install}'")
    return names


class Trackers:
    """The trackers of one run, on the main process only (others get an empty set)."""

    def __init__(self, names: Sequence[str], run_dir: Path, task: str, main_process: bool) -> None:
        self.trackers: list[Any] = []
        if not main_process:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        for name in names:
            if name == "tensorboard":
                tracker = LOGGER_TYPE_TO_CLASS[name]("tensorboard", run_dir)
            elif name == "mlflow":
                import mlflow

                # Inside an active MLflow run (a tune's, or the caller's own), the run is its child.
                tracker = LOGGER_TYPE_TO_CLASS[name](experiment_name=f"taskzoo-{task}", run_name=run_dir.name,
                                                     nested_run=mlflow.active_run() is not None,
                                                     tags={"taskzoo.task": task, "taskzoo.run_folder": str(run_dir.resolve())})
            else:
                tracker = LOGGER_TYPE_TO_CLASS[name](run_name=f"taskzoo-{task}")
            if hasattr(tracker, "start"):
                tracker.start()
            self.trackers.append(tracker)

    def configure(self, config: Mapping[str, Any]) -> None:
        """The run's options as the tracked run's parameters."""
        flat = {key: (str(value) if isinstance(value, (Path, list, tuple)) else value)
                for key, value in config.items() if not isinstance(value, dict) and value is not None}
        for tracker in self.trackers:
            tracker.store_init_configuration(flat)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(dict(values), step=step)

    def finish(self, run_dir: Path | None = None, status: str = "FINISHED") -> None:
        """Close every tracker; with ``run_dir`` (a complete run), MLflow gets its files first.
        ``status``: MLflow's word for how the run ended (FINISHED, FAILED, KILLED)."""
        for tracker in self.trackers:
            if getattr(tracker, "name", "") == "mlflow":
                import mlflow

                for pattern in ARTIFACTS if run_dir is not None else ():
                    for path in sorted(run_dir.glob(pattern)):
                        tracker.log_artifact(str(path))
                mlflow.end_run(status=status)
            else:
                tracker.finish()
        self.trackers = []


class TuneTracking:
    """A tune's own MLflow run, parent of its trials' runs: the search's options, the best value so
    far after each trial, and at the end ``summary.json`` and the search's pictures."""

    def __init__(self, names: Sequence[str], folder: Path, task: str, params: Mapping[str, Any]) -> None:
        self.active = "mlflow" in names
        if not self.active:
            return
        import mlflow

        mlflow.set_experiment(f"taskzoo-{task}")
        mlflow.start_run(run_name=folder.name, nested=mlflow.active_run() is not None,
                         tags={"taskzoo.task": task, "taskzoo.tune_folder": str(folder.resolve())})
        mlflow.log_params({key: str(value) for key, value in params.items() if value is not None})

    def trial_done(self, number: int, values: Mapping[str, float]) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics(dict(values), step=number)

    def finish(self, folder: Path, status: str = "FINISHED") -> None:
        if not self.active:
            return
        import mlflow

        for pattern in ("summary.json", "*.png"):
            for path in sorted(folder.glob(pattern)):
                mlflow.log_artifact(str(path))
        mlflow.end_run(status=status)
        self.active = False
