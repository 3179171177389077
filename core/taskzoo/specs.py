"""The frozen records that plugins hand to the core through the hooks in `taskzoo.hookspecs`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SOURCES = ("package", "hub", "local", "timm", "smp", "implicit")


@dataclass(frozen=True)
class Option:
    """A task-specific command-line option, e.g. ``--text-column``.

    ``name`` is the option's long flag without dashes and with hyphens (``text-column``); its
    value reaches the task under the underscored key (``text_column``). ``commands`` says which of
    ``run``, ``check``, ``evaluate`` and ``predict`` accept it.
    """

    name: str
    help: str
    type: type = str
    default: Any = None
    choices: tuple[str, ...] | None = None
    multiple: bool = False
    commands: tuple[str, ...] = ("run", "check")

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class TaskSpec:
    """A task a plugin adds, e.g. ``sentiment``.

    ``task_class`` is an import path ``"package.module:ClassName"`` to a subclass of
    `taskzoo.task.Task`; it is imported only when the task is used, so listing tasks stays fast.
    ``main_metric`` names the metric (from a `MetricSpec`) that picks the best epoch.
    ``options`` are extra command-line options; ``defaults`` overrides the trainer's defaults for
    this task (``{"epochs": 5, "lr": 1e-4}``), which a config file or a flag overrides in turn.
    """

    name: str
    description: str
    data_formats: tuple[str, ...]
    task_class: str
    main_metric: str
    options: tuple[Option, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def load(self) -> type:
        """Import and return the task class."""
        module_name, _, class_name = self.task_class.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained model a task can start from.

    ``source`` says how ``location`` is read: ``package`` (an installed Python package's folder,
    ``"module/sub/folder"``), ``hub`` (a Hugging Face hub id), ``local`` (a folder on disk),
    ``timm``, ``smp`` or ``implicit``. ``offline`` is true when the weights ship in a package and
    need no network once installed. ``params`` is the parameter count.
    """

    name: str
    task: str
    source: str
    location: str
    licence: str
    params: int | None = None
    default: bool = False
    offline: bool = False
    upstream: str | None = None
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class MetricContext:
    """What a metric needs besides predictions and references: the task and its label names."""

    task: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed when a task evaluates.

    ``compute(predictions, references, context)`` receives the per-example predictions and
    references that the task produced (any type the task chose: class ids, tag sequences, boxes)
    and a `MetricContext`; it returns a float, or a JSON-able structure for tables (per-class
    figures, a confusion matrix). ``tasks`` names the tasks it applies to. ``goal`` says whether a
    larger (``max``) or smaller (``min``) value is better when the metric picks the best epoch.
    """

    name: str
    tasks: tuple[str, ...]
    compute: Callable[[Sequence[Any], Sequence[Any], MetricContext], Any]
    goal: Literal["max", "min"] = "max"
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Finding:
    """One line of a data check: ``info`` describes the data, ``warning`` flags something odd that
    training survives (rows dropped, duplicates), ``error`` stops ``tasks run`` before training."""

    level: Literal["info", "warning", "error"]
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
