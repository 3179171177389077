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


def test_a_subclass_that_names_no_task_is_told_to_set_it(tmp_path):
    """Forgetting ``task = ...`` fails every check with one line saying so, not a skip or a crash."""
    import subprocess
    import sys

    (tmp_path / "test_forgot.py").write_text(
        "from taskzoo.testing import TaskConformance\n\n\nclass TestForgot(TaskConformance):\n    pass\n",
        encoding="utf-8")
    finished = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "record",
                               str(tmp_path / "test_forgot.py")], capture_output=True, text=True, cwd=tmp_path)
    assert finished.returncode == 1, finished.stdout
    assert "TestForgot: set 'task' to the name(s) of the task(s) to check" in finished.stdout, finished.stdout
    assert "NameError" not in finished.stdout
