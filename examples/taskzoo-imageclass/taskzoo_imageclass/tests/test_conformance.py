"""taskzoo's conformance checks, run against this plugin as installed (``pip install -e .``).

``pytest --pyargs taskzoo_imageclass`` loads the plugins exactly as ``tasks`` does, then trains
``imageclass`` for one epoch on the sample data this package ships, reloads, evaluates and
predicts through the CLI, and feeds it the bad inputs it must refuse.
"""

from __future__ import annotations

from taskzoo.testing import TaskConformance


class TestImageClass(TaskConformance):
    task = "imageclass"
