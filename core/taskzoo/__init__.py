"""taskzoo: fine-tune pretrained models for real tasks from one command line.

Plugins import what they need from here::

    from taskzoo import hookimpl, TaskSpec, BackboneSpec, MetricSpec, Option, Finding, SampleData, DataError

This module stays cheap to import: no torch, no transformers.
"""

from taskzoo.errors import DataError, UserError
from taskzoo.hookspecs import hookimpl
from taskzoo.specs import BackboneSpec, Finding, MetricSpec, Option, SampleData, TaskSpec

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "DataError",
    "Finding",
    "MetricSpec",
    "Option",
    "SampleData",
    "TaskSpec",
    "UserError",
    "hookimpl",
    "__version__",
]
