"""Conformance checks for taskzoo plugins: prove that a task keeps the contracts the core relies on.

Subclass `TaskConformance` in a test module of your plugin, name your task, and run pytest::

    # my_plugin/tests/test_conformance.py
    from taskzoo.testing import TaskConformance

    class TestMyTask(TaskConformance):
        task = "my-task"            # or several: ("task-a", "task-b")

The checks load the installed plugins as ``tasks`` does, then, for each task: the plugin loads
without errors and keeps its top level light; its records are well formed; it lists backbones
with one default that works offline; it trains one epoch on its own sample data (`SampleData` on
its `TaskSpec`) through ``tasks run``, saves, reloads to the same outputs, evaluates and predicts
through the CLI; and it refuses bad input (the sample's ``bad`` files, a missing path, an empty
file, an empty folder) with one ``error:`` line naming the input and exit code 2.

Override the ``taskzoo_host`` fixture to check a plugin that is not installed (register it with
``PluginHost(entry_points=...)`` or ``PluginHost(plugins=[(name, module)])``); like the kit's
other class-scoped fixtures, write it as a ``@classmethod`` under ``@pytest.fixture``. This module needs
pytest; torch is imported only by the checks that train.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner, Result

from taskzoo.errors import UserError
from taskzoo.options import SHARED_NAMES
from taskzoo.plugins import PluginHost, PluginInfo, set_host
from taskzoo.specs import SampleData, TaskSpec
from taskzoo.task import task_class

GUIDE = "docs/plugins.md"
# Modules that must not be imported by listing tasks, backbones and metrics.
HEAVY_MODULES = ("torch", "transformers", "timm", "torchvision", "tensorflow", "jax")
# Flags for a quick, deterministic run; a task's SampleData.options override them.
QUICK_RUN = {"epochs": 1, "device": "cpu", "mixed-precision": "no", "seed": 0, "log-every": 1}


def installed_tasks(distribution: str | None = None) -> list[str]:
    """Names of the installed tasks, or of those that ``distribution``'s plugins add, sorted."""
    host = PluginHost()
    owners = {info.name: info.distribution for info in host.plugins()}
    return [name for name, spec in host.tasks().items() if distribution is None or owners.get(spec.plugin) == distribution]


def invoke(host: PluginHost, args: Sequence[str]) -> Result:
    """Run ``tasks ARGS`` in this process against ``host``, as the command line would."""
    from taskzoo.cli import cli

    set_host(host)
    try:
        return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=True)
    finally:
        set_host(None)


def flags(options: Mapping[str, Any]) -> list[str]:
    """``{"image-size": 64, "no-pretrained": True}`` as ``["--image-size", "64", "--no-pretrained"]``."""
    args: list[str] = []
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [flag, str(item)]
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


def _explain(result: Result) -> str:
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text += "".join(traceback.format_exception(result.exception))
    return f"exit code {result.exit_code}; output:\n{text}"


def _same(first: Any, second: Any) -> bool:
    import torch

    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and first.shape == second.shape and torch.allclose(
            first.float(), second.float(), atol=1e-4, rtol=1e-3)
    if isinstance(first, Mapping):
        return isinstance(second, Mapping) and first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)):
        return isinstance(second, (list, tuple)) and len(first) == len(second) and all(map(_same, first, second))
    if isinstance(first, float) and isinstance(second, (int, float)):
        return math.isclose(first, second, rel_tol=1e-3, abs_tol=1e-3) or (math.isnan(first) and math.isnan(second))
    return first == second


def http(url: str, body: Any = None, *, files: Sequence[tuple[str, Path]] = (),
         fields: Mapping[str, str] | None = None, timeout: float = 120) -> tuple[int, Any]:
    """GET ``url``, or POST ``body`` as JSON or ``files`` (``(field, path)`` pairs) and ``fields`` as a
    multipart form; the status and the JSON answer (also of a 4xx or 5xx)."""
    import urllib.error
    import urllib.request
    import uuid

    headers, data = {}, None
    if files or fields:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, path in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["content-type"] = f"multipart/form-data; boundary={boundary}"
    elif body is not None:
        data, headers["content-type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        answer = error.read()
        try:
            return error.code, json.loads(answer)
        except ValueError:
            return error.code, answer.decode("utf-8", "replace")


def http_json(url: str, body: Any = None, **kwargs: Any) -> Any:
    """`http`, expecting 200: its JSON answer."""
    status, answer = http(url, body, **kwargs)
    assert status == 200, f"{url} answered {status}: {answer}"
    return answer


def _masks_as_lists(value: Any) -> Any:
    """The server's encoded masks as the nested lists ``tasks predict --json`` prints."""
    from taskzoo.serving import decode_mask

    if isinstance(value, dict) and value.get("format") in ("png", "rle") and "size" in value:
        return decode_mask(value).tolist()
    if isinstance(value, dict):
        return {k: _masks_as_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masks_as_lists(v) for v in value]
    return value


class TaskConformance:
    """Checks that one or more tasks keep taskzoo's contracts; subclass it and set ``task``.

    Tests read the ``task_name`` argument (one class-scoped set of tests per task); the run that
    trains on the sample data happens once per task and is shared by the tests that need it.
    """

    task: ClassVar[str | Sequence[str]] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "task_name" not in metafunc.fixturenames:
            return
        names = [self.task] if isinstance(self.task, str) else list(self.task)
        # An empty list would make pytest skip every test quietly; fail them instead.
        metafunc.parametrize("task_name", names or [None], ids=[str(n) for n in names] or ["no-task"], scope="class")

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def taskzoo_host(cls) -> PluginHost:
        """The plugins as ``tasks`` would load them; override to register a plugin yourself."""
        return PluginHost()

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, taskzoo_host: PluginHost, task_name: str | None) -> TaskSpec:
        if task_name is None:
            pytest.fail(f"{cls.__name__}: set 'task' to the name(s) of the task(s) to check", pytrace=False)
        tasks = taskzoo_host.tasks()
        if task_name not in tasks:
            problems = [f"{i.name}: {e}" for i in taskzoo_host.plugins() for e in i.errors]
            pytest.fail(f"no task '{task_name}' is installed; tasks: {', '.join(tasks) or 'none'}"
                        + (f"; plugin problems: {' | '.join(problems)}" if problems else ""), pytrace=False)
        return tasks[task_name]

    @pytest.fixture(scope="class")
    @classmethod
    def plugin_info(cls, taskzoo_host: PluginHost, spec: TaskSpec) -> PluginInfo:
        return {info.name: info for info in taskzoo_host.plugins()}[spec.plugin]

    @pytest.fixture(scope="class")
    @classmethod
    def sample(cls, spec: TaskSpec) -> SampleData:
        if spec.sample is None:
            pytest.fail(
                f"task '{spec.name}' (plugin '{spec.plugin}') declares no sample data, so it cannot be trained "
                f"and checked: ship a few dozen examples in its package and add "
                f"sample=SampleData(train='<package>/sample/<train data>', bad=('<package>/sample/<bad input>',)) "
                f"to its TaskSpec (see {GUIDE}, 'Sample data')", pytrace=False)
        return spec.sample

    @pytest.fixture(scope="class")
    @classmethod
    def sample_paths(cls, sample: SampleData) -> dict[str, Path]:
        locations = {"train": sample.train, "test": sample.test or sample.train, "predict": sample.predict or sample.train}
        locations.update({f"bad {i + 1}": bad for i, bad in enumerate(sample.bad)})
        paths = {role: sample.path(location) for role, location in locations.items()}
        missing = [f"{role} '{locations[role]}' ({path})" for role, path in paths.items() if not path.exists()]
        if missing:
            pytest.fail(f"sample data declared but not shipped: {', '.join(missing)}; are the files package data?",
                        pytrace=False)
        return paths

    @pytest.fixture(scope="class")
    @classmethod
    def offline(cls) -> Iterator[None]:
        """Nothing may come from the hub: the default backbone must ship with the plugin."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_HUB_OFFLINE", "1")
            yield

    @pytest.fixture(scope="class")
    @classmethod
    def trained_run(cls, taskzoo_host: PluginHost, spec: TaskSpec, sample: SampleData,
                    sample_paths: dict[str, Path], offline: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
        run_dir = tmp_path_factory.mktemp(f"conformance-{spec.name}") / "run"
        result = invoke(taskzoo_host, ["run", spec.name, "--data", sample_paths["train"], "--output", run_dir,
                                       *flags({**QUICK_RUN, **sample.options})])
        assert result.exit_code == 0, f"tasks run {spec.name} on its sample data failed: {_explain(result)}"
        return run_dir

    @pytest.fixture(scope="class")
    @classmethod
    def run_config(cls, trained_run: Path) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((trained_run / "config.yaml").read_text(encoding="utf-8"))

    def _task(self, host: PluginHost, spec: TaskSpec, config: Mapping[str, Any]) -> Any:
        from taskzoo.pipeline import make_task

        options = {o.key: config.get(o.key, o.default) if o.remember else o.default for o in spec.options}
        return make_task(spec, options, host)

    # -- the plugin and its records --------------------------------------------------------------

    def test_plugin_loads_without_problems(self, plugin_info: PluginInfo) -> None:
        assert plugin_info.loaded, f"plugin '{plugin_info.name}' did not load: {plugin_info.errors}"
        assert plugin_info.errors == [], f"plugin '{plugin_info.name}' has problems: {plugin_info.errors}"

    def test_task_record_is_complete(self, taskzoo_host: PluginHost, spec: TaskSpec) -> None:
        assert spec.problems() == []
        task_class(spec)  # importable, and a taskzoo.task.Task subclass
        metrics = {m.name: m for m in taskzoo_host.metrics(spec.name)}
        assert spec.main_metric in metrics, (
            f"main_metric '{spec.main_metric}' is not among the task's metrics: {', '.join(metrics) or 'none'}")
        clashes = sorted({o.name for o in spec.options} & SHARED_NAMES)
        assert not clashes, f"options {clashes} clash with taskzoo's own options"
        known = {o.key for o in spec.options} | {name.replace("-", "_") for name in SHARED_NAMES}
        unknown = sorted(set(spec.defaults) - known)
        assert not unknown, f"defaults {unknown} are neither training options nor the task's own options"

    def test_search_space_fits_its_options(self, spec: TaskSpec) -> None:
        """What ``tasks tune`` searches by default names options the task takes, within their bounds."""
        from taskzoo import tuning

        try:
            space = tuning.checked_space(spec, tuning.default_space(spec), "TaskSpec.search_space")
        except UserError as error:
            pytest.fail(str(error), pytrace=False)
        assert space, "the default search space is empty"

    def test_listing_does_not_import_heavy_modules(self, plugin_info: PluginInfo) -> None:
        code = (
            "import importlib, json, sys\n"
            "module, _, attribute = sys.argv[1].partition(':')\n"
            "plugin = importlib.import_module(module)\n"
            "for part in filter(None, attribute.split('.')):\n"
            "    plugin = getattr(plugin, part)\n"
            "for hook in ('taskzoo_tasks', 'taskzoo_backbones', 'taskzoo_metrics'):\n"
            "    if hasattr(plugin, hook):\n"
            "        getattr(plugin, hook)()\n"
            f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
        )
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        done = subprocess.run([sys.executable, "-c", code, plugin_info.module], capture_output=True, text=True,
                              env=environment, timeout=120)
        assert done.returncode == 0, f"importing {plugin_info.module} on its own failed:\n{done.stderr}"
        heavy = json.loads(done.stdout.strip().splitlines()[-1])
        assert heavy == [], (f"importing {plugin_info.module} and calling its listing hooks imported {heavy}; "
                             f"import them inside the task class so 'tasks list' stays fast")

    def test_lists_backbones_with_one_offline_default(self, taskzoo_host: PluginHost, spec: TaskSpec) -> None:
        from taskzoo.weights import available_offline

        backbones = taskzoo_host.backbones(spec.name, role="")
        assert backbones, f"no backbones for '{spec.name}': return BackboneSpec records from taskzoo_backbones"
        defaults = [b.name for b in backbones if b.default]
        assert len(defaults) == 1, f"expected exactly one default backbone, found {defaults}"
        default = backbones[0]
        assert available_offline(default), (
            f"default backbone '{default.name}' ({default.source}: {default.location}) does not load offline; "
            f"ship it in a package (source='package')")
        result = invoke(taskzoo_host, ["backbones", spec.name, "--json"])
        assert result.exit_code == 0, _explain(result)
        assert [row["name"] for row in json.loads(result.output) if not row["role"]] == [b.name for b in backbones]

    # -- bad input -----------------------------------------------------------------------------

    def _refused(self, taskzoo_host: PluginHost, args: Sequence[Any], culprit: Path) -> None:
        result = invoke(taskzoo_host, args)
        command = "tasks " + " ".join(str(a) for a in args)
        assert result.exit_code == 2, f"{command} should fail with a taskzoo.DataError (exit code 2); {_explain(result)}"
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output, (
            f"{command} should end with one 'error: ...' line; {_explain(result)}")
        assert culprit.name in lines[-1], f"{command}: the error should name {culprit.name}; it says: {lines[-1]}"

    def test_rejects_the_bad_sample_inputs(self, taskzoo_host: PluginHost, spec: TaskSpec, sample: SampleData,
                                           sample_paths: dict[str, Path], tmp_path: Path) -> None:
        assert sample.bad, (f"task '{spec.name}': SampleData.bad lists no input the task must refuse; add at least "
                            f"one (a single label, a missing column, a mask without an image...)")
        for role, path in sample_paths.items():
            if role.startswith("bad"):
                self._refused(taskzoo_host, ["run", spec.name, "--data", path, "--output", tmp_path / role,
                                             *flags({**QUICK_RUN, **sample.options})], path)

    def test_rejects_missing_and_empty_input(self, taskzoo_host: PluginHost, spec: TaskSpec, sample: SampleData,
                                             sample_paths: dict[str, Path], tmp_path: Path) -> None:
        suffix = sample_paths["train"].suffix if sample_paths["train"].is_file() else ".txt"
        empty_file = tmp_path / f"empty{suffix}"
        empty_file.write_bytes(b"")
        empty_folder = tmp_path / "empty_folder"
        empty_folder.mkdir()
        for path in (tmp_path / f"missing{suffix}", empty_file, empty_folder):
            self._refused(taskzoo_host, ["run", spec.name, "--data", path, "--output", tmp_path / f"run-{path.name}",
                                         *flags({**QUICK_RUN, **sample.options})], path)

    # -- train, save, reload, evaluate, predict ---------------------------------------------------

    def test_trains_on_its_sample_data(self, spec: TaskSpec, trained_run: Path) -> None:
        status = json.loads((trained_run / "run.json").read_text(encoding="utf-8"))
        assert status["status"] == "complete"
        metrics = json.loads((trained_run / "metrics.json").read_text(encoding="utf-8"))
        best = metrics["best"]
        assert isinstance(best, (int, float)) and math.isfinite(best), f"best {spec.main_metric} is {best!r}"
        # An epoch 0 fitted before training (Task.fit_before_training) has no training loss.
        trained = [epoch for epoch in metrics["history"] if epoch.get("train_loss") is not None]
        assert trained and all(math.isfinite(epoch["train_loss"]) for epoch in trained), metrics["history"]
        assert any((trained_run / "model").iterdir()), "Task.save wrote nothing into model/"
        labels = json.loads((trained_run / "labels.json").read_text(encoding="utf-8"))
        # A task without a fixed label set (recommendation: items are ids, not classes) writes [].
        assert isinstance(labels, list), "labels.json must hold the list of label names"

    def test_reloads_what_it_saved(self, taskzoo_host: PluginHost, spec: TaskSpec, trained_run: Path,
                                   run_config: dict[str, Any],
                                   sample_paths: dict[str, Path], tmp_path: Path) -> None:
        import torch

        task = self._task(taskzoo_host, spec, run_config)
        model = task.load(trained_run / "model")
        assert list(task.labels_of_model) == json.loads((trained_run / "labels.json").read_text(encoding="utf-8"))
        inputs = task.read(sample_paths["predict"], role="predict", labels=task.labels_of_model)
        loader = task.dataloader(inputs, batch_size=4, train=False, seed=0)
        model.eval()
        count, first = 0, None
        with torch.no_grad():
            for batch in loader:
                output = model(batch)["output"]
                first = output if first is None else first
                count += len(task.predictions(batch, output))
        assert count == task.size(inputs), f"{count} predictions for {task.size(inputs)} inputs"

        task.save(model, tmp_path / "again")
        fresh = self._task(taskzoo_host, spec, run_config)
        reloaded = fresh.load(tmp_path / "again")
        reloaded.eval()
        with torch.no_grad():
            batch = next(iter(fresh.dataloader(inputs, batch_size=4, train=False, seed=0)))
            again = reloaded(batch)["output"]
        assert _same(first, again), "a model saved and loaded again gives other outputs: Task.save misses something"

    def test_evaluates_through_the_cli(self, taskzoo_host: PluginHost, spec: TaskSpec, trained_run: Path,
                                       sample_paths: dict[str, Path]) -> None:
        result = invoke(taskzoo_host, ["evaluate", "--model", trained_run, "--data", sample_paths["test"],
                                       "--device", "cpu", "--json"])
        assert result.exit_code == 0, _explain(result)
        metrics = json.loads(result.stdout[result.stdout.index("{"):])
        value = metrics.get(spec.main_metric)
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{spec.main_metric} is {value!r}"
        saved = json.loads((trained_run / f"eval-{sample_paths['test'].stem}" / "metrics.json").read_text(encoding="utf-8"))
        assert saved["examples"] > 0

    def test_predicts_through_the_cli(self, taskzoo_host: PluginHost, trained_run: Path, sample: SampleData,
                                      sample_paths: dict[str, Path], tmp_path: Path) -> None:
        args = ["predict", "--model", trained_run, "--data", sample_paths["predict"], "--device", "cpu"]
        output = tmp_path / sample.predict_output if sample.predict_output else None
        result = invoke(taskzoo_host, args + (["--output", output] if output else []))
        assert result.exit_code == 0, _explain(result)
        if output is None:
            assert result.stdout.strip(), "tasks predict printed nothing"
        elif output.is_dir():
            assert any(output.iterdir()), f"tasks predict wrote nothing into {output}"
        else:
            assert output.exists() and output.stat().st_size > 0, f"tasks predict wrote nothing to {output}"

    def test_predicts_in_parts_as_in_one(self, taskzoo_host: PluginHost, trained_run: Path, sample: SampleData,
                                         sample_paths: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """Large inputs are predicted a part at a time (`Task.parts`); the output must not show it."""
        from taskzoo import pipeline

        if not sample.predict_output:
            pytest.skip("the task's sample predictions go to the screen, which is not written in parts")
        args = ["predict", "--model", trained_run, "--data", sample_paths["predict"], "--device", "cpu", "--output"]
        whole, parted = tmp_path / "whole" / sample.predict_output, tmp_path / "parted" / sample.predict_output
        assert invoke(taskzoo_host, args + [whole]).exit_code == 0
        monkeypatch.setattr(pipeline, "PART_SIZE", 2)
        result = invoke(taskzoo_host, args + [parted])
        assert result.exit_code == 0, _explain(result)
        written = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
        assert written(tmp_path / "parted") == written(tmp_path / "whole"), "predicting in parts changed the output"

    def test_evaluates_in_parts_as_in_one(self, taskzoo_host: PluginHost, trained_run: Path, sample: SampleData,
                                          sample_paths: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """Large test sets are scored a part at a time; the metrics must not show it (a sentence or
        image number that starts again at 0 in each part would merge examples)."""
        from taskzoo import pipeline

        args = ["evaluate", "--model", trained_run, "--data", sample_paths["test"], "--device", "cpu", "--output"]
        assert invoke(taskzoo_host, args + [tmp_path / "whole"]).exit_code == 0
        monkeypatch.setattr(pipeline, "PART_SIZE", 2)
        result = invoke(taskzoo_host, args + [tmp_path / "parted"])
        assert result.exit_code == 0, _explain(result)
        metrics = lambda name: json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8"))  # noqa: E731
        whole, parted = metrics("whole"), metrics("parted")
        assert parted.keys() == whole.keys()
        # The loss is a mean per batch (over tokens, pixels...), and parts form other batches.
        whole.pop("loss", None), parted.pop("loss", None)
        for name, value in whole.items():
            if isinstance(value, float):
                assert parted[name] == pytest.approx(value, abs=1e-6), f"{name}: {parted[name]} in parts, {value} in one"
            else:
                assert parted[name] == value, f"{name} differs when evaluated in parts"

    # -- export ----------------------------------------------------------------------------------

    def test_exports_with_parity(self, taskzoo_host: PluginHost, spec: TaskSpec, trained_run: Path,
                                 sample_paths: dict[str, Path], tmp_path: Path) -> None:
        """`tasks export` writes an ONNX graph that scores what the PyTorch model scores (`Task.export_graph`)."""
        folder = tmp_path / "export"
        result = invoke(taskzoo_host, ["export", "--model", trained_run, "--data", sample_paths["test"],
                                       "--output", folder, "--json"])
        assert result.exit_code == 0, _explain(result)
        record = json.loads((folder / "export.json").read_text(encoding="utf-8"))
        assert record["good"] and (folder / record["graph"]).is_file() and record["task"] == spec.name
        parity = record["parity"]
        main = parity["main_metric"]
        assert abs(parity["onnx"][main] - parity["pytorch"][main]) <= parity["tolerance"], parity
        assert parity["examples"] > 0 and 0 <= parity["same_answer"] <= parity["examples"]

    def test_predicts_with_onnx_runtime_as_with_pytorch(self, taskzoo_host: PluginHost, trained_run: Path,
                                                        sample_paths: dict[str, Path]) -> None:
        """``--runtime onnx`` runs RUN/export and gives the PyTorch records."""
        exported = invoke(taskzoo_host, ["export", "--model", trained_run, "--data", sample_paths["test"]])
        assert exported.exit_code == 0, _explain(exported)
        records = {}
        for runtime in ("torch", "onnx"):
            result = invoke(taskzoo_host, ["predict", "--model", trained_run, "--data", sample_paths["predict"],
                                           "--device", "cpu", "--json", "--runtime", runtime])
            assert result.exit_code == 0, _explain(result)
            records[runtime] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert records["onnx"], "tasks predict --runtime onnx printed no records"
        assert _same(records["torch"], records["onnx"]), (
            f"--runtime onnx predicts {records['onnx'][:3]} where PyTorch predicts {records['torch'][:3]}")
        assert json.loads((trained_run / "export" / "export.json").read_text(encoding="utf-8"))["good"]

    # -- serving ---------------------------------------------------------------------------------

    def test_serves_what_predict_prints(self, taskzoo_host: PluginHost, spec: TaskSpec, trained_run: Path,
                                        sample_paths: dict[str, Path]) -> None:
        """``tasks serve``: /health names the task, and POST /predict with the sample's predict input
        uploaded (its images, or the file) answers the records ``tasks predict --json`` prints."""
        from taskzoo import serving

        result = invoke(taskzoo_host, ["predict", "--model", trained_run, "--data", sample_paths["predict"],
                                       "--device", "cpu", "--json"])
        assert result.exit_code == 0, _explain(result)
        expected = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        source = sample_paths["predict"]
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        assert not source.is_dir() or task_class(spec).input_images, (
            f"{spec.name} predicts from a folder ({source}): set input_images = True on its Task class so that "
            "tasks serve takes image uploads")
        set_host(taskzoo_host)
        try:
            app = serving.create_app(trained_run, device="cpu")
        finally:
            set_host(None)
        with serving.background(app) as url:
            health = http_json(f"{url}/health")
            assert health["status"] == "ok" and health["task"] == spec.name, health
            field = "image" if source.is_dir() else "file"
            answer = http_json(f"{url}/predict", files=[(field, path) for path in files])
        served = answer["predictions"]
        # The server names an uploaded file as it was sent; tasks predict, by its path.
        named = {str(path): path.name for path in files}
        named[str(source)] = source.name if not source.is_dir() else ""
        expected = json.loads(json.dumps(expected), object_hook=lambda record: {
            k: named.get(v, v) if isinstance(v, str) else v for k, v in record.items()})
        served = _masks_as_lists(served)
        assert len(served) == len(expected) and _same(expected, served), (
            f"POST /predict answered {served[:2]} where tasks predict --json printed {expected[:2]}")

    def test_predict_refuses_missing_input(self, taskzoo_host: PluginHost, trained_run: Path,
                                           sample_paths: dict[str, Path], tmp_path: Path) -> None:
        missing = tmp_path / f"missing{sample_paths['predict'].suffix}"
        self._refused(taskzoo_host, ["predict", "--model", trained_run, "--data", missing, "--device", "cpu"], missing)
