"""The frozen records that plugins hand to the core through the hooks in `taskzoo.hookspecs`."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The sources the core itself provides; plugins add theirs (timm, implicit) with `BackboneSource`.
CORE_SOURCES = ("package", "hub", "local")
# Task names are typed on the command line and become folder names: lowercase, digits, - and _.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Option:
    """A task-specific command-line option, e.g. ``--text-column``.

    ``name`` is the option's long flag without dashes and with hyphens (``text-column``); its
    value reaches the task under the underscored key (``text_column``), and `taskzoo.train`
    takes it as that keyword. ``commands`` says which of ``run``, ``check``, ``evaluate`` and
    ``predict`` accept it. ``remember``: a run's value is used again by ``evaluate`` and
    ``predict``. ``minimum``/``maximum`` (inclusive) and ``above``/``below`` (exclusive) bound a
    number; a value outside them is refused with one line naming the flag, from the command
    line, a config file or Python alike. ``path``: the value names a file on the machine that runs
    the command, so ``tasks serve`` never takes it from a request.
    """

    name: str
    help: str
    type: type = str
    default: Any = None
    choices: tuple[str, ...] | None = None
    multiple: bool = False
    commands: tuple[str, ...] = ("run", "check")
    remember: bool = True
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    path: bool = False

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


def package_path(location: str) -> Path:
    """The file or folder ``"package/sub/path"`` inside an installed Python package."""
    from taskzoo.errors import UserError

    module, _, sub = location.partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UserError(f"'{location}': '{module}' is not an installed Python package")
    return Path(next(iter(found.submodule_search_locations))) / sub


@dataclass(frozen=True)
class SampleData:
    """Small data a task ships inside its package, so that anyone can try the task at once and
    `taskzoo.testing` can prove it works: a few dozen examples that train in seconds.

    Each path is ``"package/sub/path"`` inside an installed package (as for ``source="package"``
    backbones); `path` turns it into a real path. ``train`` is what ``tasks run --data`` takes;
    ``test`` is labelled data for ``tasks evaluate`` and ``predict`` the input of ``tasks predict``
    (both default to ``train``). ``predict_output`` is the ``--output`` name predictions are written
    to (``"predictions.jsonl"``, or a folder name for tasks that write pictures); empty means the
    screen. ``bad`` are inputs that the task must refuse with a `taskzoo.DataError` naming them.
    ``options`` are ``tasks run`` flags for a quick run on this data, e.g. ``{"image-size": 64}``.
    """

    train: str
    bad: tuple[str, ...] = ()
    test: str | None = None
    predict: str | None = None
    predict_output: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def path(self, location: str) -> Path:
        return package_path(location)


@dataclass(frozen=True)
class SearchParam:
    """One dimension of a hyperparameter search (``tasks tune``): the run option ``name`` (with
    hyphens, as the flag) drawn from ``choices``, or from ``low``..``high`` (both inclusive; on a log
    scale when ``log``; integers when both bounds are ints)."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool)

    def problems(self) -> list[str]:
        if not isinstance(self.name, str) or not self.name:
            return ["name must be an option name such as 'lr'"]
        if self.choices:
            return [] if self.low is None and self.high is None else [f"{self.name}: give choices or low/high, not both"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high)):
            return [f"{self.name}: expected numbers low and high, or a list of choices"]
        if self.low > self.high:
            return [f"{self.name}: low {self.low} is above high {self.high}"]
        if self.log and self.low <= 0:
            return [f"{self.name}: a log scale needs low above 0, got {self.low}"]
        return []

    def describe(self) -> Any:
        """The parameter as a ``--space`` YAML file writes it."""
        if self.choices:
            return list(self.choices)
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


def training_space(defaults: Mapping[str, Any]) -> tuple[SearchParam, ...]:
    """The search over the shared recipe, around a task's defaults (the keys of ``TaskSpec.defaults``
    merged over the built-in ones): the learning rate log-uniform from a fifth to five times its
    default, the batch size halved, kept or doubled, weight decay, warmup and up to the default epochs."""
    lr, batch, epochs = float(defaults["lr"]), int(defaults["batch_size"]), int(defaults["epochs"])
    decay = float(defaults.get("weight_decay") or 0.0)
    return (
        SearchParam("lr", lr / 5, lr * 5, log=True),
        SearchParam("batch-size", choices=tuple(sorted({max(1, batch // 2), batch, batch * 2}))),
        SearchParam("weight-decay", 0.0, max(0.1, 2 * decay)),
        SearchParam("warmup-ratio", 0.0, 0.2),
        SearchParam("epochs", max(1, epochs // 2), max(1, epochs)),
    )


@dataclass(frozen=True)
class TaskSpec:
    """A task a plugin adds, e.g. ``sentiment``.

    ``task_class`` is an import path ``"package.module:ClassName"`` to a subclass of
    `taskzoo.task.Task`; it is imported only when the task is used (`taskzoo.task.task_class`), so
    listing tasks stays fast.
    ``main_metric`` names the metric (from a `MetricSpec`) that picks the best epoch.
    ``options`` are extra command-line options; ``defaults`` overrides the trainer's defaults for
    this task (``{"epochs": 5, "lr": 1e-4}``), which a config file or a flag overrides in turn.
    ``sample`` is the `SampleData` the task ships (for trying it out and for `taskzoo.testing`).
    ``search_space`` is what ``tasks tune`` searches by default (`SearchParam` records over run
    options); empty means `training_space` around the task's defaults.
    """

    name: str
    description: str
    data_formats: tuple[str, ...]
    task_class: str
    main_metric: str
    options: tuple[Option, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    sample: SampleData | None = None
    plugin: str = ""
    search_space: tuple[SearchParam, ...] = ()

    def problems(self) -> list[str]:
        """What makes this record unusable, one sentence each; empty when it is well-formed."""
        found = _name_and_description_problems(self.name, self.description)
        if not _strings(self.data_formats):
            found.append(f"data_formats must be a non-empty tuple of strings, got {self.data_formats!r}")
        module, colon, class_name = self.task_class.partition(":") if isinstance(self.task_class, str) else ("", "", "")
        if not (module and colon and class_name):
            found.append(f"task_class must be 'package.module:ClassName', got {self.task_class!r}")
        if not isinstance(self.main_metric, str) or not self.main_metric:
            found.append("main_metric must name a metric")
        if not isinstance(self.options, (tuple, list)) or not all(isinstance(o, Option) for o in self.options):
            found.append("options must be a tuple of taskzoo.Option")
        if not isinstance(self.defaults, Mapping):
            found.append("defaults must be a mapping such as {'epochs': 5}")
        if self.sample is not None and not (isinstance(self.sample, SampleData) and isinstance(self.sample.train, str)
                                            and _strings(self.sample.bad, allow_empty=True)):
            found.append("sample must be a taskzoo.SampleData with 'package/path' strings")
        if not isinstance(self.search_space, (tuple, list)) or not all(isinstance(p, SearchParam) for p in self.search_space):
            found.append("search_space must be a tuple of taskzoo.SearchParam")
        else:
            found += [f"search_space: {problem}" for param in self.search_space for problem in param.problems()]
        return found


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained model a task can start from.

    ``source`` names the `BackboneSource` that says how ``location`` is read: the core's
    ``package`` (an installed Python package's folder, ``"module/sub/folder"``), ``hub`` (a
    Hugging Face hub id) and ``local`` (a folder on disk), or one a plugin registers (the bundled
    ``timm`` and ``implicit``). ``offline`` is true when the weights ship in a package and need no
    network once installed. ``params`` is the parameter count. ``role`` names the part a backbone
    plays when a task takes more than one model (recommendation's ``text encoder`` and ``image
    encoder`` beside its recommender); empty for what ``--backbone`` chooses.
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
    role: str = ""

    def problems(self) -> list[str]:
        """What makes this record unusable, one sentence each; empty when it is well-formed."""
        found = []
        for key in ("name", "task", "location", "licence"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                found.append(f"{key} must be a non-empty string")
        if not isinstance(self.source, str) or not NAME_PATTERN.match(self.source):
            found.append(f"source {self.source!r} must name a backbone source (package, hub, local, or a plugin's)")
        if self.params is not None and (not isinstance(self.params, int) or isinstance(self.params, bool)):
            found.append(f"params must be an integer parameter count, got {self.params!r}")
        return found


@dataclass(frozen=True)
class BackboneSource:
    """Where backbones of one kind come from, so that a plugin can bring weights from a place the
    core has never heard of (a model zoo, a company registry).

    ``locate(backbone)`` returns the folder, file or id the task's loader reads (default: the
    backbone's ``location`` as it is); ``available_offline(backbone)`` says whether it loads now
    without network (default: the backbone's ``offline`` flag, or for ``downloads=True`` sources
    whether the Hugging Face cache holds it). ``downloads`` marks sources that fetch weights from
    a hub: their backbones cannot be catalogued ``offline``. Two plugins may register one name
    only with the same record (the bundled vision plugins both bring ``timm``).
    """

    name: str
    description: str
    locate: Callable[[BackboneSpec], str] | None = None
    available_offline: Callable[[BackboneSpec], bool] | None = None
    downloads: bool = False
    plugin: str = field(default="", compare=False)

    def problems(self) -> list[str]:
        """What makes this record unusable, one sentence each; empty when it is well-formed."""
        found = _name_and_description_problems(self.name, self.description)
        for hook in ("locate", "available_offline"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                found.append(f"{hook} must be a function (backbone) -> value, or None")
        return found


@dataclass(frozen=True)
class MetricContext:
    """What a metric needs besides predictions and references: the task and its label names."""

    task: str
    labels: tuple[str, ...] = ()


def format_metric(value: float | int) -> str:
    """A metric as a person reads it: counts (``k``, evaluated users) as counts, scores to 4 places."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4f}"


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed when a task evaluates.

    ``compute(predictions, references, context)`` receives the per-example predictions and
    references that the task produced (any type the task chose: class ids, tag sequences, boxes)
    and a `MetricContext`; it returns a float, or a JSON-able structure for tables (per-class
    figures, a confusion matrix), or None where it does not apply to this evaluation (it is then left
    out). ``tasks`` names the tasks it applies to. ``goal`` says whether a
    larger (``max``) or smaller (``min``) value is better when the metric picks the best epoch.
    """

    name: str
    tasks: tuple[str, ...]
    compute: Callable[[Sequence[Any], Sequence[Any], MetricContext], Any]
    goal: Literal["max", "min"] = "max"
    description: str = ""
    plugin: str = ""

    def problems(self) -> list[str]:
        """What makes this record unusable, one sentence each; empty when it is well-formed."""
        found = []
        if not isinstance(self.name, str) or not self.name:
            found.append("name must be a non-empty string")
        # A bare string here (tasks=("sentiment") without the comma) would match by substring.
        if not _strings(self.tasks):
            found.append(f"tasks must be a non-empty tuple of task names, got {self.tasks!r}")
        if not callable(self.compute):
            found.append("compute must be a function (predictions, references, context) -> value")
        if self.goal not in ("max", "min"):
            found.append(f"goal must be 'max' or 'min', got {self.goal!r}")
        return found


@dataclass(frozen=True)
class Finding:
    """One line of a data check: ``info`` describes the data, ``warning`` flags something odd that
    training survives (rows dropped, duplicates), ``error`` stops ``tasks run`` before training."""

    level: Literal["info", "warning", "error"]
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


def _name_and_description_problems(name: Any, description: Any) -> list[str]:
    found = []
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        found.append(f"name {name!r} must be lowercase letters, digits, '-' or '_', starting with a letter")
    if not isinstance(description, str) or not description.strip():
        found.append("description must be a non-empty string")
    return found


def _strings(value: Any, *, allow_empty: bool = False) -> bool:
    return (isinstance(value, (tuple, list)) and (allow_empty or bool(value))
            and all(isinstance(item, str) and item for item in value))
