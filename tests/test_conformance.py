"""Every bundled task passes the conformance kit that third-party plugins run (taskzoo.testing).

The tasks are discovered from the installed ``taskzoo`` distribution's entry points, so a bundled
plugin is checked as soon as it is registered in pyproject.toml.
"""

from __future__ import annotations

from taskzoo.plugins import CORE_DISTRIBUTION, PluginHost
from taskzoo.testing import TaskConformance, installed_tasks


class TestBundledTasks(TaskConformance):
    task = installed_tasks(distribution=CORE_DISTRIBUTION)


def test_every_bundled_plugin_loads_and_adds_a_task():
    # A bundled plugin that fails to load adds no task, so the class above could not check it.
    bundled = [info for info in PluginHost().plugins() if info.distribution == CORE_DISTRIBUTION]
    assert {info.name for info in bundled} >= {"sentiment", "ner", "segmentation"}
    for info in bundled:
        assert info.loaded and info.errors == [] and info.tasks, f"{info.name}: {info.errors}"
