"""Hook specifications: the whole contract between taskzoo's core and its plugins.

A plugin is a module (or object) with functions named like the hooks below, decorated with
``@taskzoo.hookimpl``, published under the ``taskzoo`` entry-point group::

    # pyproject.toml of your distribution
    [project.entry-points.taskzoo]
    my_task = "my_package.plugin"

Every hook is called without side effects on the plugin's part: return records, keep the module's
top level cheap (import torch and friends inside your task class, not here), and let the core
collect, check and order what every plugin returned. A record whose name another plugin already
claimed is refused and reported by ``tasks plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from taskzoo.specs import BackboneSource, BackboneSpec, Finding, MetricSpec, TaskSpec

PROJECT = "taskzoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def taskzoo_tasks() -> list[TaskSpec]:
    """Return the tasks this plugin adds.

    Called once per process, when a command first needs the list of tasks. Each `TaskSpec` names
    the task (``tasks run NAME``), describes it for ``tasks list``, lists the data formats it
    reads, names the metric that picks the best epoch, declares its task-specific command-line
    options, and points to its `taskzoo.task.Task` subclass by import path so that listing tasks
    never imports the heavy code. ``sample`` points to small data shipped in the package, which
    ``taskzoo.testing`` trains on to prove the task works (see docs/plugins.md)::

        @hookimpl
        def taskzoo_tasks():
            return [TaskSpec(
                name="sentiment",
                description="Text classification: reviews, tickets, posts -> labels",
                data_formats=("csv", "tsv", "jsonl"),
                task_class="taskzoo_sentiment.task:SentimentTask",
                main_metric="accuracy",
                sample=SampleData(train="taskzoo_sentiment/sample/train.csv",
                                  bad=("taskzoo_sentiment/sample/one_label.csv",)),
            )]

    A record with a malformed field (see `TaskSpec.problems`) or a name another plugin already
    has is refused and reported; the plugin's other records still count.

    :return: a list of `TaskSpec`, possibly empty.
    """


@hookspec
def taskzoo_backbones() -> list[BackboneSpec]:
    """Return pretrained backbones (models) this plugin makes available, for any task.

    The bundled catalog lives in ``registry.yaml``; this hook lets a plugin add backbones without
    editing it, for its own task or for another plugin's. ``tasks backbones TASK`` lists both, and
    ``tasks run TASK --backbone NAME`` accepts their names. Mark at most one backbone per task
    ``default=True``; ship it in a Python package (``source="package"``) and set ``offline=True``
    so the task works without network::

        @hookimpl
        def taskzoo_backbones():
            return [BackboneSpec(
                name="tiny-bert.offline", task="my_task", source="package",
                location="my_weights_package/model", licence="MIT", params=4_400_000,
                default=True, offline=True,
            )]

    :return: a list of `BackboneSpec`, possibly empty.
    """


@hookspec
def taskzoo_backbone_sources() -> list[BackboneSource]:
    """Return the backbone sources this plugin brings: where weights of a new kind come from.

    The core knows ``package``, ``hub`` and ``local``; a `BackboneSpec` may name any source a
    plugin registers here, and ``tasks backbones`` asks that source whether the backbone loads
    offline. The task that builds the model still does the loading; the source only says where
    the files are and whether they are here::

        @hookimpl
        def taskzoo_backbone_sources():
            return [BackboneSource(
                name="modelzoo", description="Our company's model registry",
                locate=lambda backbone: f"/mnt/models/{backbone.location}",
                available_offline=lambda backbone: Path(f"/mnt/models/{backbone.location}").is_dir(),
            )]

    :return: a list of `BackboneSource`, possibly empty.
    """


@hookspec
def taskzoo_metrics() -> list[MetricSpec]:
    """Return metrics this plugin computes, each naming the tasks it applies to.

    After each epoch, and in ``tasks evaluate``, the core gathers every example's prediction and
    reference from the task (across all processes) and calls each applicable metric's
    ``compute(predictions, references, context)``. A plugin may add a metric to another plugin's
    task (a Cohen's kappa for ``sentiment``, say); the results land in ``metrics.json``::

        @hookimpl
        def taskzoo_metrics():
            return [MetricSpec(name="accuracy", tasks=("sentiment",), compute=accuracy)]

    :return: a list of `MetricSpec`, possibly empty.
    """


@hookspec
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    """Check a data set that a task has read, before anything trains on it.

    Called by ``tasks check`` and at the start of ``tasks run`` for every data file, after the
    task's own reader succeeded. ``task`` is the task's name and ``data`` is whatever its
    ``Task.read`` returned; return ``None`` for tasks you do not know. Return `Finding` records:
    ``info`` lines summarise the data (rows, columns, classes), ``warning`` lines flag what
    training survives (dropped rows, duplicates), and any ``error`` stops ``tasks run`` before
    training, printed as one line that names the file, column or row::

        @hookimpl
        def taskzoo_check_data(task, data):
            if task != "sentiment":
                return None
            return [Finding("info", f"{data.path}: {len(data)} rows")]

    :param task: the task's name.
    :param data: the object the task's reader returned.
    :return: a list of `Finding`, or ``None``.
    """
