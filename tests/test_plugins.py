"""The plugin system: discovery through entry points, isolation of broken plugins, the facade."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from toy_plugin import ToyPlugin

import taskzoo
from taskzoo import BackboneSpec, MetricSpec, TaskSpec, UserError, hookimpl
from taskzoo.cli import cli
from taskzoo.plugins import PluginHost


class FakeDistribution:
    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Stands in for an importlib.metadata entry point of an installed distribution."""

    def __init__(self, name: str, target, dist: str = "thirdparty", version: str = "1.0") -> None:
        self.name = name
        self.value = f"{dist}.plugin"
        self.dist = FakeDistribution(dist, version)
        self._target = target

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def module_with(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def task_spec(name: str) -> TaskSpec:
    return TaskSpec(name=name, description=f"{name} task", data_formats=("csv",), task_class="x:Y", main_metric="m")


def test_bundled_sentiment_plugin_is_discovered_through_its_entry_point():
    host = PluginHost()
    plugins = {info.name: info for info in host.plugins()}
    assert plugins["sentiment"].distribution == "taskzoo"
    assert plugins["sentiment"].version == taskzoo.__version__
    assert plugins["sentiment"].tasks == ["sentiment"]
    assert host.task("sentiment").plugin == "sentiment"
    assert {m.name for m in host.metrics("sentiment")} >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}


def test_fake_plugin_object_adds_task_backbone_metric_and_checks():
    host = PluginHost(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    assert list(host.tasks()) == ["toy"]
    assert host.default_backbone("toy").name == "linear"
    assert [m.name for m in host.metrics("toy")] == ["accuracy"]
    findings = host.check_data("toy", {"path": "p", "x": [1, 2], "y": ["bad", "ok"]})
    assert [f.level for f in findings] == ["info", "error"]


def test_entry_point_discovery_and_broken_plugin_isolation():
    good = module_with("good", taskzoo_tasks=lambda: [task_spec("alpha")])
    entry_points = [
        FakeEntryPoint("good", good, dist="good-dist", version="2.1"),
        FakeEntryPoint("broken", ImportError("No module named 'missing_dependency'"), dist="broken-dist"),
    ]
    host = PluginHost(entry_points=entry_points, registry_path=None)
    assert list(host.tasks()) == ["alpha"]
    infos = {info.name: info for info in host.plugins()}
    assert infos["good"].version == "2.1" and infos["good"].loaded
    assert not infos["broken"].loaded
    assert "missing_dependency" in infos["broken"].errors[0]


def test_duplicate_task_name_is_refused_naming_both_plugins():
    first = module_with("first", taskzoo_tasks=lambda: [task_spec("shared")])
    second = module_with("second", taskzoo_tasks=lambda: [task_spec("shared"), task_spec("own")])
    host = PluginHost(entry_points=[FakeEntryPoint("a_first", first), FakeEntryPoint("b_second", second)], registry_path=None)
    assert host.task("shared").plugin == "a_first"
    assert host.task("own").plugin == "b_second"
    errors = {info.name: info.errors for info in host.plugins()}["b_second"]
    assert errors == ["task 'shared' refused: plugin 'a_first' already provides it"]


def test_bundled_plugin_wins_a_name_over_a_third_party_loaded_earlier_alphabetically():
    impostor = module_with("impostor", taskzoo_tasks=lambda: [task_spec("sentiment")])
    bundled = module_with("bundled", taskzoo_tasks=lambda: [task_spec("sentiment")])
    host = PluginHost(
        entry_points=[FakeEntryPoint("aaa", impostor), FakeEntryPoint("zzz", bundled, dist="taskzoo")],
        registry_path=None,
    )
    assert host.task("sentiment").plugin == "zzz"


def test_hook_that_raises_or_returns_junk_is_reported_and_others_survive():
    raising = module_with("raising", taskzoo_tasks=lambda: 1 / 0)
    junk = module_with("junk", taskzoo_tasks=lambda: ["not a TaskSpec"])
    fine = module_with("fine", taskzoo_tasks=lambda: [task_spec("ok")])
    host = PluginHost(
        entry_points=[FakeEntryPoint("raising", raising), FakeEntryPoint("junk", junk), FakeEntryPoint("fine", fine)],
        registry_path=None,
    )
    assert list(host.tasks()) == ["ok"]
    errors = {info.name: info.errors for info in host.plugins()}
    assert "ZeroDivisionError" in errors["raising"][0]
    assert "returned str, expected TaskSpec" in errors["junk"][0]


def test_misspelled_hook_is_an_error_not_silently_ignored():
    typo = module_with("typo", taskzoo_taks=lambda: [task_spec("never")])
    host = PluginHost(entry_points=[FakeEntryPoint("typo", typo)], registry_path=None)
    assert host.tasks() == {}
    (info,) = host.plugins()
    assert "unknown hook(s) taskzoo_taks" in info.errors[0]


def test_strict_mode_reraises_for_plugin_authors():
    host = PluginHost(entry_points=[FakeEntryPoint("broken", ImportError("boom"))], registry_path=None, strict=True)
    with pytest.raises(ImportError, match="boom"):
        host.load()


def test_disable_and_allow_lists_from_environment(monkeypatch):
    a = module_with("a", taskzoo_tasks=lambda: [task_spec("a")])
    b = module_with("b", taskzoo_tasks=lambda: [task_spec("b")])
    eps = lambda: [FakeEntryPoint("a", a), FakeEntryPoint("b", b)]  # noqa: E731
    monkeypatch.setenv("TASKZOO_DISABLE_PLUGINS", "a")
    assert list(PluginHost(entry_points=eps(), registry_path=None).tasks()) == ["b"]
    monkeypatch.delenv("TASKZOO_DISABLE_PLUGINS")
    monkeypatch.setenv("TASKZOO_PLUGINS", "a")
    assert list(PluginHost(entry_points=eps(), registry_path=None).tasks()) == ["a"]


def test_unknown_task_names_the_known_ones():
    host = PluginHost(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    with pytest.raises(UserError, match="unknown task 'nope'; known tasks: toy"):
        host.task("nope")


def test_cli_plugins_shows_failures_and_list_keeps_working(runner, use_host):
    use_host(
        entry_points=[FakeEntryPoint("broken", ImportError("No module named 'torchaudio'"), dist="broken-dist", version="0.3")],
        plugins=[("toy", ToyPlugin())],
        registry_path=None,
    )
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "broken-dist 0.3" in result.output and "FAILED" in result.output
    assert "No module named 'torchaudio'" in result.output
    listed = json.loads(runner.invoke(cli, ["list", "--json"]).output)
    assert [row["name"] for row in listed] == ["toy"]
    assert listed[0]["default_backbone"] == "linear"
    plugins = json.loads(runner.invoke(cli, ["plugins", "--json"]).output)
    assert {p["name"]: p["loaded"] for p in plugins} == {"broken": False, "toy": True}


def test_listing_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from taskzoo.cli import cli\n"
        "for args in (['list'], ['backbones', 'sentiment'], ['plugins'], ['run', '--help']):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_malformed_records_are_refused_one_by_one_and_reported(runner, use_host):
    bad_task = TaskSpec(name="Bad Name", description="", data_formats=("csv",), task_class="no_colon",
                        main_metric="m")
    bad_backbone = BackboneSpec(name="b", task="good", source="ftp", location="x", licence="MIT")
    # tasks=("good") without the comma is the string "good": it would match tasks by substring.
    bad_metric = MetricSpec(name="m", tasks="good", compute=len)  # type: ignore[arg-type]
    sloppy = module_with(
        "sloppy",
        taskzoo_tasks=lambda: [bad_task, task_spec("good")],
        taskzoo_backbones=lambda: [bad_backbone],
        taskzoo_metrics=lambda: [bad_metric, MetricSpec(name="m", tasks=("good",), compute=len)],
    )
    host = use_host(entry_points=[FakeEntryPoint("sloppy", sloppy)], registry_path=None)
    assert list(host.tasks()) == ["good"]
    assert host.backbones("good") == []
    assert [m.name for m in host.metrics("good")] == ["m"]
    (info,) = host.plugins()
    assert info.loaded and info.tasks == ["good"]
    assert len(info.errors) == 3
    assert info.errors[0].startswith("taskzoo_tasks: TaskSpec 'Bad Name' refused: name 'Bad Name' must be lowercase")
    assert "description must be a non-empty string" in info.errors[0]
    assert "task_class must be 'package.module:ClassName', got 'no_colon'" in info.errors[0]
    assert info.errors[1] == "backbone 'b' refused: no plugin provides its source 'ftp'; sources: hub, local, package"
    assert "taskzoo_metrics: MetricSpec 'm' refused: tasks must be a non-empty tuple of task names" in info.errors[2]
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "PROBLEMS" in result.stdout
    assert "sloppy: taskzoo_tasks: TaskSpec 'Bad Name' refused" in result.stderr


def test_plugin_without_hooks_is_reported_with_the_likely_cause():
    empty = types.ModuleType("empty")
    undecorated = types.ModuleType("undecorated")
    undecorated.taskzoo_tasks = lambda: [task_spec("never")]  # the @hookimpl marker is missing
    fine = module_with("fine", taskzoo_tasks=lambda: [task_spec("ok")])
    host = PluginHost(entry_points=[FakeEntryPoint("empty", empty), FakeEntryPoint("undecorated", undecorated),
                                    FakeEntryPoint("fine", fine)], registry_path=None)
    assert list(host.tasks()) == ["ok"]
    infos = {info.name: info for info in host.plugins()}
    assert not infos["empty"].loaded
    assert infos["empty"].errors[0].startswith("failed to load: ValueError: defines no taskzoo hooks: expected functions")
    assert infos["undecorated"].errors == [
        "failed to load: ValueError: defines no taskzoo hooks: taskzoo_tasks lack(s) the @taskzoo.hookimpl decorator"]
    assert infos["fine"].loaded and infos["fine"].errors == []


def test_plugin_calling_sys_exit_at_import_does_not_end_the_command(runner, use_host):
    fine = module_with("fine", taskzoo_tasks=lambda: [task_spec("ok")])
    use_host(entry_points=[FakeEntryPoint("quitter", SystemExit(3), dist="quitter-dist"), FakeEntryPoint("fine", fine)],
             registry_path=None)
    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["quitter"]["errors"] == ["failed to load: SystemExit: 3"] and not plugins["quitter"]["loaded"]
    assert plugins["fine"]["tasks"] == ["ok"]


def test_cli_disable_plugin_turns_one_off_and_an_unknown_name_exits_2(runner, use_host):
    a = module_with("a", taskzoo_tasks=lambda: [task_spec("a")])
    b = module_with("b", taskzoo_tasks=lambda: [task_spec("b")])
    eps = lambda: [FakeEntryPoint("a", a), FakeEntryPoint("b", b)]  # noqa: E731
    use_host(entry_points=eps(), registry_path=None)
    result = runner.invoke(cli, ["--disable-plugin", "a", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["b"]

    use_host(entry_points=eps(), registry_path=None)
    result = runner.invoke(cli, ["--disable-plugin", "a", "plugins"])
    assert result.exit_code == 0
    status = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()[1:]}
    assert status == {"a": "disabled", "b": "ok"}

    use_host(entry_points=eps(), registry_path=None)
    result = runner.invoke(cli, ["--disable-plugin", "a", "--disable-plugin", "b", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []

    use_host(entry_points=eps(), registry_path=None)
    result = runner.invoke(cli, ["--disable-plugin", "nosuch", "list"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --disable-plugin nosuch: no plugin of that name; plugins: a, b"


def test_a_plugin_brings_a_backbone_source_the_core_never_heard_of(tmp_path, runner, use_host):
    from taskzoo import BackboneSource, BackboneSpec
    from taskzoo.weights import available_offline, locate

    zoo = tmp_path / "zoo"
    (zoo / "small").mkdir(parents=True)
    source = BackboneSource("modelzoo", "Our model registry", locate=lambda b: str(zoo / b.location),
                            available_offline=lambda b: (zoo / b.location).is_dir())
    plugin = module_with(
        "zooplugin",
        taskzoo_tasks=lambda: [task_spec("good")],
        taskzoo_backbone_sources=lambda: [source],
        taskzoo_backbones=lambda: [BackboneSpec("small", "good", "modelzoo", "small", "MIT", default=True),
                                   BackboneSpec("large", "good", "modelzoo", "large", "MIT")],
    )
    host = use_host(entry_points=[FakeEntryPoint("zooplugin", plugin)], registry_path=None)
    assert set(host.sources()) == {"package", "hub", "local", "modelzoo"}
    small, large = sorted(host.backbones("good"), key=lambda b: b.name != "small")
    assert locate(small) == str(zoo / "small") and available_offline(small) and not available_offline(large)
    listed = runner.invoke(cli, ["backbones", "good", "--json"]).output
    assert {b["name"]: b["offline_now"] for b in json.loads(listed)} == {"small": True, "large": False}


def test_two_plugins_share_a_source_only_when_it_is_the_same_record(use_host):
    from taskzoo import BackboneSource
    from taskzoo.sources import TIMM

    other_timm = BackboneSource("timm", "Another idea of timm", downloads=False)
    first = module_with("first", taskzoo_backbone_sources=lambda: [TIMM])
    same = module_with("same", taskzoo_backbone_sources=lambda: [TIMM])
    clash = module_with("clash", taskzoo_backbone_sources=lambda: [other_timm])
    # Loaded in name order: the first to register a name owns it.
    plugins = (("a_first", first), ("b_same", same), ("c_clash", clash))
    host = use_host(entry_points=[FakeEntryPoint(n, m) for n, m in plugins], registry_path=None)
    assert host.sources()["timm"] == TIMM and host.sources()["timm"].downloads
    errors = {info.name: info.errors for info in host.plugins()}
    assert errors["a_first"] == errors["b_same"] == []
    assert errors["c_clash"] == ["backbone source 'timm' refused: plugin 'a_first' already provides another"]


def test_an_offline_backbone_from_a_downloading_source_is_refused(use_host):
    from taskzoo import BackboneSpec

    plugin = module_with("liar", taskzoo_tasks=lambda: [task_spec("good")],
                         taskzoo_backbones=lambda: [BackboneSpec("b", "good", "hub", "org/model", "MIT", offline=True)])
    host = use_host(entry_points=[FakeEntryPoint("liar", plugin)], registry_path=None)
    assert host.backbones("good") == []
    assert host.plugins()[0].errors == ["backbone 'b' refused: source 'hub' downloads, so it cannot be offline"]
