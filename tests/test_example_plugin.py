"""The example external plugin (examples/taskzoo-imageclass) works through ``tasks`` with no change
to the core, next to a plugin that is broken on purpose.

The example is registered the way pip would register it, without running pip: a ``.dist-info``
folder with its name, version and ``taskzoo`` entry point is written to a temporary folder, read
back with `importlib.metadata.PathDistribution`, and its package folder is put on ``sys.path``.
Everything else (entry-point loading, the records, the shared trainer) is taskzoo's own code path.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, fake_install

from taskzoo.cli import cli
from taskzoo.plugins import CORE_DISTRIBUTION, ENTRY_POINT_GROUP, PluginHost
from taskzoo.testing import TaskConformance

EXAMPLE = ROOT / "examples" / "taskzoo-imageclass"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SAMPLE = EXAMPLE / "taskzoo_imageclass" / "sample"
BROKEN_MESSAGE = "this plugin is broken on purpose"
QUICK = ["--epochs", "1", "--device", "cpu", "--mixed-precision", "no", "--image-size", "48", "--batch-size", "8"]


@pytest.fixture(scope="module")
def plugin_entry_points(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[importlib.metadata.EntryPoint]]:
    """taskzoo's bundled plugins, the example and a plugin that raises at import, as pip would list them."""
    site = tmp_path_factory.mktemp("site-packages")
    # A module that fails at import, the commonest way a third-party plugin breaks.
    (site / "taskzoo_broken_demo.py").write_text(f"raise RuntimeError({BROKEN_MESSAGE!r})\n", encoding="utf-8")
    example = fake_install(site, PROJECT["name"], PROJECT["version"],
                           dict(PROJECT["entry-points"][ENTRY_POINT_GROUP]))
    broken = fake_install(site, "taskzoo-broken-demo", "0.0.1", {"broken": "taskzoo_broken_demo"})
    # Only the core's own entry points from the environment: if the example happens to be
    # pip-installed too, it must not appear twice.
    bundled = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
               if ep.dist is not None and ep.dist.metadata["Name"] == CORE_DISTRIBUTION]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        patch.syspath_prepend(str(site))
        yield [*bundled, *example.entry_points, *broken.entry_points]


@pytest.fixture
def host(use_host, plugin_entry_points) -> PluginHost:
    return use_host(entry_points=plugin_entry_points)


def test_plugins_shows_the_example_with_its_version_and_the_broken_plugin(runner, host):
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["imageclass"].split()[1:] == [PROJECT["name"], PROJECT["version"], "imageclass", "ok"]
    assert rows["broken"].split()[1:] == ["taskzoo-broken-demo", "0.0.1", "-", "FAILED"]
    assert f"broken: failed to load: RuntimeError: {BROKEN_MESSAGE}" in result.stderr
    plugins = {p["name"]: p for p in json.loads(runner.invoke(cli, ["plugins", "--json"]).stdout)}
    assert plugins["imageclass"]["loaded"] and plugins["imageclass"]["errors"] == []
    assert not plugins["broken"]["loaded"]
    assert plugins["sentiment"]["loaded"], "a broken third-party plugin must not cost a bundled one"


def test_list_and_backbones_show_the_example_task(runner, host):
    result = runner.invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    tasks = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"imageclass", "sentiment", "segmentation"} <= set(tasks)
    assert tasks["imageclass"]["default_backbone"] == "efficientnet_lite0"
    backbones = json.loads(runner.invoke(cli, ["backbones", "imageclass", "--json"]).stdout)
    assert [row["name"] for row in backbones] == ["efficientnet_lite0", "resnet18"]


def test_run_evaluate_and_predict_through_the_cli(runner, host, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default backbone ships in a package
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", "imageclass", "--data", str(SAMPLE / "train"), "--output", str(run_dir), *QUICK])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["resolved"]["plugin"] == "imageclass"
    assert config["resolved"]["backbone"]["name"] == "efficientnet_lite0"
    assert config["resolved"]["labels"] == ["background", "coin"]
    summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    # The plugin's own metric hooks ran inside the shared trainer.
    assert set(summary["val"]) >= {"accuracy", "macro_f1"}
    assert 0.0 <= summary["val"]["accuracy"] <= 1.0

    result = runner.invoke(cli, ["evaluate", "--model", str(run_dir), "--data", str(SAMPLE / "test"),
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    assert 0.0 <= metrics["macro_f1"] <= 1.0

    output = tmp_path / "predictions.csv"
    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--data", str(SAMPLE / "test"),
                                 "--output", str(output), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with output.open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(Path(row["image"]).name for row in rows) == sorted(p.name for p in (SAMPLE / "test").rglob("*.png"))
    assert {row["label"] for row in rows} <= {"background", "coin"}

    one = next((SAMPLE / "test" / "coin").glob("*.png"))
    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--image", str(one), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"{one}: ") and line.split(": ")[1].split()[0] in {"background", "coin"}


def test_bad_input_is_one_error_line_naming_the_file(runner, host, tmp_path):
    result = runner.invoke(cli, ["run", "imageclass", "--data", str(SAMPLE / "bad_broken_image"),
                                 "--output", str(tmp_path / "run"), *QUICK])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "truncated.png: not a readable image" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written before the data is known to be good"


def test_disable_plugin_turns_the_example_off(runner, use_host, plugin_entry_points):
    # One host per invocation, as each `tasks` process loads its plugins afresh.
    use_host(entry_points=plugin_entry_points)
    result = runner.invoke(cli, ["--disable-plugin", "imageclass", "plugins", "--json"])
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["imageclass"]["disabled"] and plugins["imageclass"]["tasks"] == []
    assert plugins["sentiment"]["loaded"] and not plugins["sentiment"]["disabled"]

    use_host(entry_points=plugin_entry_points)
    result = runner.invoke(cli, ["--disable-plugin", "imageclass", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert "imageclass" not in {row["name"] for row in json.loads(result.stdout)}

    use_host(entry_points=plugin_entry_points)
    result = runner.invoke(cli, ["--disable-plugin", "imageclass", "run", "imageclass", "--data", str(SAMPLE / "train")])
    assert result.exit_code == 2
    assert "unknown task 'imageclass'" in result.stderr


class TestExamplePluginConformance(TaskConformance):
    """The same kit a plugin author runs with ``pytest --pyargs taskzoo_imageclass``."""

    task = "imageclass"

    @pytest.fixture(scope="class")
    @classmethod
    def taskzoo_host(cls, plugin_entry_points) -> PluginHost:
        return PluginHost(entry_points=plugin_entry_points)
