"""Finding, loading and asking plugins; the rest of taskzoo uses `get_host()` and never ``pm.hook``.

Plugins are the ``taskzoo`` entry points of installed distributions, the bundled ones included.
They load lazily, once per process, each guarded: a plugin that fails to import, defines no hooks,
or whose hook raises or returns something malformed (a record that is not a taskzoo record, or one
whose ``problems()`` are not empty, or a name another plugin already has), is recorded with its
error (see ``tasks plugins``) and everything else goes on. ``TASKZOO_STRICT_PLUGINS=1`` re-raises
instead, for plugin authors.

Environment (``tasks --disable-plugin NAME`` adds to the block-list):
    TASKZOO_PLUGINS          comma-separated entry-point names: load only these
    TASKZOO_DISABLE_PLUGINS  comma-separated entry-point names: never load these
    TASKZOO_STRICT_PLUGINS   1 to raise on the first broken plugin
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from taskzoo import hookspecs
from taskzoo.errors import UserError
from taskzoo.registry import DEFAULT_PATH, load_registry
from taskzoo.specs import BackboneSource, BackboneSpec, Finding, MetricSpec, TaskSpec

ENTRY_POINT_GROUP = "taskzoo"
CORE_DISTRIBUTION = "taskzoo"
# The core's own backbone sources come in through the plugins' door, under this name.
CORE_PLUGIN = "taskzoo-core"


@dataclass
class PluginInfo:
    """What ``tasks plugins`` shows for one plugin."""

    name: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    tasks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disabled: bool = False

    @property
    def loaded(self) -> bool:
        return not self.disabled and not any(error.startswith("failed to load") for error in self.errors)


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name, "").strip()
    return {part.strip() for part in value.split(",") if part.strip()} if value else None


class PluginHost:
    """Owns one pluggy PluginManager and everything collected from its plugins.

    :param entry_points: entry points to load; default: the installed ``taskzoo`` group.
    :param plugins: extra plugin objects registered as they are (tests, embedding applications).
    :param registry_path: the ``registry.yaml`` to read.
    :param only: load only these entry-point names (default from ``TASKZOO_PLUGINS``).
    :param disabled: never load these names (default from ``TASKZOO_DISABLE_PLUGINS``).
    :param strict: re-raise plugin failures (default from ``TASKZOO_STRICT_PLUGINS``).
    """

    def __init__(
        self,
        *,
        entry_points: Iterable[Any] | None = None,
        plugins: Sequence[tuple[str, object]] = (),
        registry_path: Path | None = DEFAULT_PATH,
        only: set[str] | None = None,
        disabled: set[str] | None = None,
        strict: bool | None = None,
    ) -> None:
        self._entry_points = entry_points
        self._extra_plugins = plugins
        self._registry_path = registry_path
        self._only = only if only is not None else _csv_env("TASKZOO_PLUGINS")
        self._disabled = disabled if disabled is not None else (_csv_env("TASKZOO_DISABLE_PLUGINS") or set())
        self._strict = strict if strict is not None else os.environ.get("TASKZOO_STRICT_PLUGINS") == "1"
        self._loaded = False
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._tasks: dict[str, TaskSpec] = {}
        self._backbones: list[BackboneSpec] = []
        self._metrics: list[MetricSpec] = []
        self._sources: dict[str, BackboneSource] = {}

    # -- loading -------------------------------------------------------------------------------

    def disable(self, names: Iterable[str]) -> None:
        """Never load the plugins with these entry-point names (``tasks --disable-plugin``).

        Only before plugins load; an unknown name is a `UserError` listing the plugins there are.
        """
        if self._loaded:
            raise RuntimeError("plugins are already loaded; disable them before the first question")
        names = set(names)
        known = {ep.name for ep in self._discovered()} | {name for name, _ in self._extra_plugins}
        unknown = sorted(names - known)
        if unknown:
            raise UserError(f"--disable-plugin {unknown[0]}: no plugin of that name; plugins: {', '.join(sorted(known))}")
        self._disabled = set(self._disabled) | names

    def load(self) -> PluginHost:
        """Load every plugin once; later calls do nothing."""
        if self._loaded:
            return self
        self._loaded = True
        from taskzoo import sources

        self.pm.register(sources, name=CORE_PLUGIN)
        for entry_point in self._ordered_entry_points():
            self._load_entry_point(entry_point)
        for name, plugin in self._extra_plugins:
            self._info[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", type(plugin).__name__))
            if name in self._disabled:
                self._info[name].disabled = True
                continue
            try:
                self._register(plugin, name)
            except Exception as error:
                if self._strict:
                    raise
                self._info[name].errors.append(f"failed to load: {type(error).__name__}: {_one_line(error)}")
        # A misspelled hook implementation fails here instead of being silently ignored.
        self.pm.check_pending()
        self._collect()
        return self

    def _discovered(self) -> list[Any]:
        if self._entry_points is None:
            self._entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        return list(self._entry_points)

    def _ordered_entry_points(self) -> list[Any]:
        # Bundled plugins first, so a third party can never take over a bundled task's name.
        return sorted(self._discovered(), key=lambda ep: (_distribution(ep)[0] != CORE_DISTRIBUTION, ep.name))

    def _load_entry_point(self, entry_point: Any) -> None:
        name = entry_point.name
        if self._only is not None and name not in self._only:
            return
        distribution, version = _distribution(entry_point)
        info = self._info.setdefault(
            name, PluginInfo(name=name, distribution=distribution, version=version, module=entry_point.value)
        )
        if name in self._disabled:
            info.disabled = True
            return
        try:
            plugin = entry_point.load()
            self._register(plugin, name)
        # SystemExit too: a plugin that calls sys.exit() at import must not end the command.
        except (Exception, SystemExit) as error:
            if self._strict:
                raise
            info.errors.append(f"failed to load: {type(error).__name__}: {_one_line(error)}")

    def _register(self, plugin: object, name: str) -> None:
        if self.pm.is_registered(plugin):
            raise ValueError("the same module is already registered under another name")
        self.pm.register(plugin, name=name)
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = [caller.name for caller in callers if not caller.has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            raise ValueError(f"unknown hook(s) {', '.join(unknown)}; known: {', '.join(_hook_names())}")
        if not callers:
            self.pm.unregister(plugin)
            # The usual cause: hook functions written without the @hookimpl marker.
            undecorated = [hook for hook in _hook_names() if callable(getattr(plugin, hook, None))]
            hint = (f"{', '.join(undecorated)} lack(s) the @taskzoo.hookimpl decorator" if undecorated
                    else f"expected functions named {', '.join(_hook_names())} decorated with @taskzoo.hookimpl")
            raise ValueError(f"defines no taskzoo hooks: {hint}")

    def _records(self, hook_name: str, kind: type) -> Iterable[tuple[str, Any]]:
        """Call one hook plugin by plugin, so each record is attributed and each failure isolated."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            try:
                result = impl.function() or []
                records = list(result)
                for record in records:
                    if not isinstance(record, kind):
                        raise TypeError(f"returned {type(record).__name__}, expected {kind.__name__}")
            except Exception as error:
                if self._strict:
                    raise
                self._problem(plugin, f"{hook_name}: {type(error).__name__}: {_one_line(error)}")
                continue
            for record in records:
                problems = record.problems()
                if problems:
                    message = f"{hook_name}: {kind.__name__} {getattr(record, 'name', '?')!r} refused: {'; '.join(problems)}"
                    if self._strict:
                        raise ValueError(message)
                    self._problem(plugin, message)
                    continue
                yield plugin, record

    def _collect(self) -> None:
        for plugin, source in self._records("taskzoo_backbone_sources", BackboneSource):
            owner = self._sources.get(source.name)
            if owner is not None and owner != source:
                self._problem(plugin, f"backbone source '{source.name}' refused: plugin '{owner.plugin}' already provides another")
                continue
            self._sources.setdefault(source.name, _with_plugin(source, plugin))

        for plugin, task in self._records("taskzoo_tasks", TaskSpec):
            if task.name in self._tasks:
                self._problem(plugin, f"task '{task.name}' refused: plugin '{self._tasks[task.name].plugin}' already provides it")
                continue
            self._tasks[task.name] = _with_plugin(task, plugin)
            if plugin in self._info:
                self._info[plugin].tasks.append(task.name)

        seen: dict[tuple[str, str], str] = {}
        backbones = load_registry(self._registry_path) if self._registry_path else []
        for backbone in backbones:
            seen[(backbone.task, backbone.name)] = "registry.yaml"
        for plugin, backbone in self._records("taskzoo_backbones", BackboneSpec):
            key = (backbone.task, backbone.name)
            if key in seen:
                self._problem(plugin, f"backbone '{backbone.name}' for task '{backbone.task}' refused: {seen[key]} already provides it")
                continue
            if backbone.source not in self._sources:
                self._problem(plugin, f"backbone '{backbone.name}' refused: no plugin provides its source "
                                      f"'{backbone.source}'; sources: {', '.join(sorted(self._sources))}")
                continue
            if backbone.offline and self._sources[backbone.source].downloads:
                self._problem(plugin, f"backbone '{backbone.name}' refused: source '{backbone.source}' downloads, "
                                      "so it cannot be offline")
                continue
            seen[key] = plugin
            backbones.append(_with_plugin(backbone, plugin))
        self._backbones = backbones

        metric_names: dict[tuple[str, str], str] = {}
        for plugin, metric in self._records("taskzoo_metrics", MetricSpec):
            clashes = [task for task in metric.tasks if (task, metric.name) in metric_names]
            if clashes:
                owner = metric_names[(clashes[0], metric.name)]
                self._problem(plugin, f"metric '{metric.name}' for task '{clashes[0]}' refused: plugin '{owner}' already provides it")
                continue
            metric_names.update({(task, metric.name): plugin for task in metric.tasks})
            self._metrics.append(_with_plugin(metric, plugin))

    def _problem(self, plugin: str, message: str) -> None:
        self._info.setdefault(plugin, PluginInfo(name=plugin)).errors.append(message)

    # -- the facade the rest of taskzoo uses ---------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every plugin found, loaded or not, sorted by name."""
        self.load()
        return sorted(self._info.values(), key=lambda info: info.name)

    def tasks(self) -> dict[str, TaskSpec]:
        """Every task, by name, sorted."""
        self.load()
        return dict(sorted(self._tasks.items()))

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; a `UserError` listing the known tasks otherwise."""
        tasks = self.tasks()
        if name not in tasks:
            known = ", ".join(tasks) or "none (see 'tasks plugins')"
            raise UserError(f"unknown task '{name}'; known tasks: {known}")
        return tasks[name]

    def backbones(self, task: str | None = None, role: str | None = None) -> list[BackboneSpec]:
        """Backbones from registry.yaml and plugins, for one task or all, default first; ``role``
        (``""``: what ``--backbone`` chooses) keeps one kind, None keeps every kind."""
        self.load()
        chosen = [b for b in self._backbones if (task is None or b.task == task) and (role is None or b.role == role)]
        return sorted(chosen, key=lambda b: (b.task, b.role, not b.default, b.name))

    def default_backbone(self, task: str, role: str = "") -> BackboneSpec:
        for backbone in self.backbones(task, role):
            if backbone.default:
                return backbone
        raise UserError(f"task '{task}' has no default {role or 'backbone'}; pass --backbone")

    def sources(self) -> dict[str, BackboneSource]:
        """Every backbone source, by name: the core's and those plugins register."""
        self.load()
        return dict(sorted(self._sources.items()))

    def source(self, backbone: BackboneSpec) -> BackboneSource:
        """The source ``backbone`` names; a `UserError` when no installed plugin provides it."""
        found = self.sources().get(backbone.source)
        if found is None:
            raise UserError(f"backbone '{backbone.name}': no installed plugin provides its source "
                            f"'{backbone.source}'; sources: {', '.join(self.sources())}")
        return found

    def metrics(self, task: str) -> list[MetricSpec]:
        """Metrics that apply to ``task``."""
        self.load()
        return [m for m in self._metrics if task in m.tasks or "*" in m.tasks]

    def check_data(self, task: str, data: Any) -> list[Finding]:
        """Every plugin's findings about ``data`` (see the ``taskzoo_check_data`` hook)."""
        self.load()
        findings: list[Finding] = []
        for impl in reversed(self.pm.hook.taskzoo_check_data.get_hookimpls()):
            try:
                result = list(impl.function(task=task, data=data) or [])
                for finding in result:
                    if not isinstance(finding, Finding):
                        raise TypeError(f"returned {type(finding).__name__}, expected Finding")
            except UserError:
                raise  # a check may stop with a DataError naming the file, like a reader
            except Exception as error:
                if self._strict:
                    raise
                # Another plugin's broken check must not stop this task's run; say so and go on.
                message = f"taskzoo_check_data: {type(error).__name__}: {_one_line(error)}"
                self._problem(impl.plugin_name, message)
                findings.append(Finding("warning", f"plugin '{impl.plugin_name}' could not check the data ({message})"))
                continue
            findings.extend(result)
        return findings


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("taskzoo_"))


def _distribution(entry_point: Any) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "", ""
    # Broken metadata must cost the plugin its version string, not the whole listing.
    try:
        return dist.metadata["Name"] or "", dist.version or ""
    except Exception:
        return "", ""


def _with_plugin(record: Any, plugin: str) -> Any:
    from dataclasses import replace

    return replace(record, plugin=plugin)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, created on first use (plugins load on first question)."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def set_host(host: PluginHost | None) -> None:
    """Replace the process-wide host (tests); ``None`` makes the next `get_host` start afresh."""
    global _host
    _host = host
