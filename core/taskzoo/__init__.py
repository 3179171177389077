"""taskzoo: fine-tune pretrained models for real tasks, from the command line or from Python.

    import taskzoo

    run = taskzoo.train("sentiment", data="examples/reviews.csv", epochs=2)
    run.predict(["the hoppy finish was wonderful"])
    taskzoo.load("runs/sentiment-20261203-101500").evaluate("examples/sentiment/test.csv")

Plugins import the records they declare from here too (`TaskSpec`, `BackboneSpec`, `Option`,
`hookimpl`, ...); helpers for writing tasks live in `taskzoo.helpers`. Only the names in
``__all__`` are promised. This module stays cheap to import: no torch, no transformers.
"""

from taskzoo.api import Run, Tune, backbones, check, load, runs, serve, tasks, train, tune
from taskzoo.errors import DataError, ParityError, RunInterrupted, UserError
from taskzoo.hookspecs import hookimpl
from taskzoo.specs import (BackboneSource, BackboneSpec, Finding, MetricSpec, Option, SampleData, SearchParam, TaskSpec,
                           training_space)
from taskzoo.version import __version__

__all__ = [
    # using taskzoo
    "Run",
    "Tune",
    "backbones",
    "check",
    "load",
    "runs",
    "serve",
    "tasks",
    "train",
    "tune",
    "UserError",
    "DataError",
    "ParityError",
    "RunInterrupted",
    # writing plugins
    "BackboneSource",
    "BackboneSpec",
    "Finding",
    "MetricSpec",
    "Option",
    "SampleData",
    "SearchParam",
    "TaskSpec",
    "training_space",
    "hookimpl",
    "__version__",
]
