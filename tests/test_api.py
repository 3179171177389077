"""taskzoo from Python: the same options, checks, pipeline and results as the command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from toy_plugin import ToyPlugin, toy_points

import taskzoo
from taskzoo import options as schema
from taskzoo import pipeline
from taskzoo.cli import cli
from taskzoo.specs import SampleData
from taskzoo.testing import QUICK_RUN

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(use_host, tmp_path):
    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


def cli_error(runner, args: list[Any]) -> str:
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    return line.removeprefix("error: ")


# -- the public surface -----------------------------------------------------------------------------


def test_public_names_are_exactly_all():
    public = {name for name in dir(taskzoo) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(taskzoo, name)).__name__ == "module"}
    assert public - modules == set(taskzoo.__all__) - {"__version__"}
    for name in ("train", "load", "Run", "check", "tasks", "backbones", "UserError"):
        assert name in taskzoo.__all__
    assert callable(taskzoo.backbones), "a submodule import must not shadow taskzoo.backbones()"


def test_import_taskzoo_stays_light():
    code = "import sys, taskzoo; taskzoo.tasks(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_tasks_and_backbones_are_what_the_listing_commands_print(runner):
    assert taskzoo.tasks() == json.loads(runner.invoke(cli, ["list", "--json"]).output)
    assert taskzoo.tasks("s*") == [t for t in taskzoo.tasks() if t["name"].startswith("s")]
    assert taskzoo.backbones("ner") == json.loads(runner.invoke(cli, ["backbones", "ner", "--json"]).output)
    assert any(b["default"] and b["offline_now"] for b in taskzoo.backbones("ner"))


def test_check_returns_the_findings_tasks_check_prints(runner):
    data = ROOT / "examples" / "ner" / "train.conll"
    findings = taskzoo.check("ner", data=data)
    printed = runner.invoke(cli, ["check", "ner", "--data", str(data)]).output
    assert findings and all(f.message in printed for f in findings if f.level == "info")


# -- one schema: the command line, a YAML file and keywords take each option the same way -----------


def sample_value(option: schema.Option) -> Any:
    if option.choices:
        return option.choices[-1]
    if option.type is bool:
        return True
    if option.type is int:
        return int(option.minimum or 0) + 3
    if option.type is float:
        return 0.25
    if option.type is Path:
        return f"some/{option.key}.csv"
    return f"value-{option.key}"


def captured_values(monkeypatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_train(spec, values, *, resume=None, notify=None):
        seen.append(dict(values))
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "train", fake_train)
    return seen


SETTABLE = [o for o in schema.shared("run") if o.name not in ("config", "resume")]


@pytest.mark.parametrize("option", SETTABLE, ids=lambda o: o.name)
def test_each_shared_option_is_taken_alike_by_cli_yaml_and_python(option, toy, runner, monkeypatch, tmp_path):
    value = sample_value(option)
    seen = captured_values(monkeypatch)
    base = {"data": toy} if option.key != "data" else {}
    # The command line.
    flag = [schema.flag(option.name)] + ([] if option.type is bool else [str(value)])
    runner.invoke(cli, ["run", "toy", *schema_flags(base), *flag])
    # A YAML config file.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({option.name: str(value) if isinstance(value, Path) else value}))
    runner.invoke(cli, ["run", "toy", *schema_flags(base), "--config", str(config)])
    # Python keywords.
    with pytest.raises(SystemExit):
        taskzoo.train("toy", **{k: v for k, v in base.items()}, **{option.key: value})
    assert len(seen) == 3, f"not every front end reached the pipeline: {seen}"
    expected = Path(value) if option.type is Path else value
    expected = [expected] if option.multiple else expected  # a repeatable option given once
    assert [values[option.key] for values in seen] == [expected] * 3
    without_config = [{k: v for k, v in values.items() if k != "config"} for values in seen]
    assert without_config[0] == without_config[1] == without_config[2]


def schema_flags(values: dict[str, Any]) -> list[str]:
    return [part for k, v in values.items() for part in (schema.flag(k), str(v))]


BAD_VALUES = [
    ("epochs", "many", "--epochs: expected an integer, got 'many'"),
    ("epochs", -1, "--epochs: expected at least 0, got -1"),
    ("batch_size", 0, "--batch-size: expected at least 1, got 0"),
    ("lr", -1, "--lr: expected at least 0, got -1"),
    ("val_fraction", 1.5, "--val-fraction: expected less than 1, got 1.5"),
    ("warmup_ratio", 5, "--warmup-ratio: expected at most 1, got 5"),
    ("grad_accum", 0, "--grad-accum: expected at least 1, got 0"),
    ("scheduler", "step", "--scheduler: expected one of linear, cosine, constant, got 'step'"),
    ("patience", 0, "--patience: expected at least 1, got 0"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[b[0] + "=" + str(b[1]) for b in BAD_VALUES])
def test_a_bad_value_gets_one_line_from_every_front_end(name, value, message, toy, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a run folder would appear by default
    assert cli_error(runner, ["run", "toy", "--data", toy, schema.flag(name), value]) == message
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({name: value}))
    assert cli_error(runner, ["run", "toy", "--data", toy, "--config", config]) == message
    with pytest.raises(taskzoo.UserError) as raised:
        taskzoo.train("toy", data=toy, **{name: value})
    assert str(raised.value) == message
    assert not (tmp_path / "runs").exists()


def test_unknown_names_get_the_same_line_from_cli_and_python(toy, runner, tmp_path):
    message = "task 'toy': no option --epoch; did you mean --epochs?"
    assert cli_error(runner, ["run", "toy", "--data", toy, "--epoch", 2]) == message
    with pytest.raises(taskzoo.UserError) as raised:
        taskzoo.train("toy", data=toy, epoch=2)
    assert str(raised.value) == message
    with pytest.raises(taskzoo.UserError) as raised:
        taskzoo.train("toyy", data=toy)
    assert str(raised.value) == cli_error(runner, ["backbones", "toyy"]) == "unknown task 'toyy'; known tasks: toy"
    missing = tmp_path / "missing.csv"
    with pytest.raises(taskzoo.DataError) as raised:
        taskzoo.train("toy", data=missing)
    assert str(raised.value) == cli_error(runner, ["run", "toy", "--data", missing])
    with pytest.raises(taskzoo.UserError) as raised:
        taskzoo.train("toy", data=toy, backbone="./no/such/folder")
    assert str(raised.value) == cli_error(runner, ["run", "toy", "--data", toy, "--backbone", "./no/such/folder"])
    assert str(raised.value).startswith("--backbone ./no/such/folder: no such folder")


def test_help_of_evaluate_and_predict_lists_the_tasks_options(runner):
    predict = " ".join(runner.invoke(cli, ["predict", "--help"]).output.split())
    for flag in ("--text", "--user", "--k", "--similar-to", "--popular-fallback", "--score-threshold", "--images",
                 "--text-column", "--all-scores", "--json", "--output"):
        assert flag in predict, flag
    # --text is taken by two tasks, with a meaning each.
    assert "(ner) A text to find entities in; repeat for several. (sentiment) A text to label" in predict
    evaluate = runner.invoke(cli, ["evaluate", "--help"]).output
    for flag in ("--text-column", "--label-column", "--images", "--k", "--output", "--json"):
        assert flag in evaluate, flag
    # A default of 0 is shown too.
    assert "[default: 0" in runner.invoke(cli, ["run", "recommendation", "--help"]).output


# -- the Python API end to end, every bundled task -------------------------------------------------


def sample_run(task: str, tmp_path: Path) -> tuple[taskzoo.Run, SampleData]:
    from taskzoo.plugins import get_host

    sample = get_host().task(task).sample
    options = {schema.key(k): v for k, v in {**QUICK_RUN, **sample.options}.items()}
    run = taskzoo.train(task, data=sample.path(sample.train), output=tmp_path / "run", progress=False, **options)
    return run, sample


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sentiment", "ner", "segmentation", "detection", "recommendation"])
def test_train_load_predict_evaluate(task, tmp_path):
    from taskzoo.plugins import get_host

    spec = get_host().task(task)
    trained, sample = sample_run(task, tmp_path)
    assert trained.folder == tmp_path / "run" and trained.task == task
    assert trained.config["epochs"] == QUICK_RUN["epochs"] and trained.metrics["main_metric"] == spec.main_metric
    run = taskzoo.load(trained.folder)
    records = run.predict(sample.path(sample.predict or sample.test or sample.train), device="cpu")
    assert records and all(isinstance(record, dict) for record in records)
    assert any("score" in record or "entities" in record for record in records)
    metrics = run.evaluate(sample.path(sample.test or sample.train), device="cpu")
    assert spec.main_metric in metrics
    saved = json.loads((run.folder / f"eval-{Path(sample.test or sample.train).stem}" / "metrics.json").read_text())
    assert saved[spec.main_metric] == metrics[spec.main_metric]


@pytest.mark.slow
def test_cli_and_python_give_the_same_run_for_the_same_seed(runner, tmp_path):
    from taskzoo.plugins import get_host

    sample = get_host().task("sentiment").sample
    data = sample.path(sample.train)
    flags = {**QUICK_RUN, **sample.options, "epochs": 2}
    result = runner.invoke(cli, ["run", "sentiment", "--data", str(data), "--output", str(tmp_path / "cli"),
                                 *[part for k, v in flags.items() for part in (f"--{k}", str(v))]])
    assert result.exit_code == 0, result.output
    run = taskzoo.train("sentiment", data=str(data), output=tmp_path / "py", progress=False,
                        **{schema.key(k): v for k, v in flags.items()})
    from_cli = taskzoo.load(tmp_path / "cli")
    assert [h["val"]["accuracy"] for h in from_cli.metrics["history"]] == \
        [h["val"]["accuracy"] for h in run.metrics["history"]]
    assert [h["train_loss"] for h in from_cli.metrics["history"]] == pytest.approx(
        [h["train_loss"] for h in run.metrics["history"]], rel=1e-5)
    drop = {"output", "resolved"}
    assert {k: v for k, v in from_cli.config.items() if k not in drop} == \
        {k: v for k, v in run.config.items() if k not in drop}
    texts = ["the hoppy finish was wonderful", "flat and sour, poured it out"]
    from_python = run.predict(texts, device="cpu")
    printed = runner.invoke(cli, ["predict", "--model", str(tmp_path / "py"), "--device", "cpu", "--json",
                                  *[part for t in texts for part in ("--text", t)]])
    assert printed.exit_code == 0, printed.output
    assert [json.loads(line) for line in printed.stdout.splitlines()] == from_python
    assert {"prediction", "score", "scores"} <= set(from_python[0])
    assert sum(from_python[0]["scores"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_predict_all_scores_and_outputs(tmp_path):
    run, sample = sample_run("sentiment", tmp_path)
    output = tmp_path / "preds.csv"
    records = run.predict(sample.path(sample.test), output=output, all_scores=True, device="cpu")
    with output.open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    labels = json.loads((run.folder / "labels.json").read_text())
    assert len(rows) == len(records) and {f"score_{label}" for label in labels} <= set(rows[0])
    assert float(rows[0][f"score_{records[0]['prediction']}"]) == pytest.approx(records[0]["score"])
    # --k is recommendation's: a sentiment run refuses it by name, from Python and the command line alike.
    with pytest.raises(taskzoo.UserError) as raised:
        run.predict(["a text"], k=3)
    assert str(raised.value).startswith("a sentiment run: no option --k")
    from click.testing import CliRunner

    assert cli_error(CliRunner(), ["predict", "--model", run.folder, "--text", "a text", "--k", 3]) == str(raised.value)
    with pytest.raises(taskzoo.UserError, match="expected a path or a list of strings"):
        run.predict([1, 2])


def test_train_and_load_refuse_bad_arguments(toy, tmp_path):
    with pytest.raises(taskzoo.UserError, match="task: expected a task name"):
        taskzoo.train(3)  # type: ignore[arg-type]
    with pytest.raises(taskzoo.UserError, match="--data is required"):
        taskzoo.train("toy")
    with pytest.raises(taskzoo.UserError, match=r"--model .*: no such run folder"):
        taskzoo.load(tmp_path / "nothing")


def test_toy_run_from_python_predicts_as_the_cli(toy, runner, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=3, progress=False)
    assert run.metrics["best"] > 0.9 and repr(run).startswith(f"Run('{tmp_path / 'run'}', task='toy'")
    records = run.predict(toy, flavour="sweet")
    printed = runner.invoke(cli, ["predict", "--model", str(run.folder), "--data", str(toy), "--flavour", "sweet"])
    labels = json.loads((run.folder / "labels.json").read_text())
    assert [labels[r["label"]] for r in records] == printed.stdout.splitlines()
    assert run.evaluate(toy)["accuracy"] == pytest.approx(run.metrics["best"], abs=0.1)


def test_a_loaded_run_loads_its_model_once(toy, tmp_path, monkeypatch):
    from toy_plugin import ToyTask

    taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    loads = []
    original = ToyTask.load
    monkeypatch.setattr(ToyTask, "load", lambda self, folder: loads.append(folder) or original(self, folder))
    run = taskzoo.load(tmp_path / "run")
    first = run.predict(toy, flavour="sweet")
    assert run.predict(toy) == first and run.evaluate(toy)["accuracy"] >= 0
    assert len(loads) == 1
    run.predict(toy, device="cpu")  # another device: loaded again, there
    assert len(loads) == 2


def test_evaluate_output_folders_never_mix_two_files_of_one_name(toy, runner, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    other = tmp_path / "other" / "points.csv"
    other.parent.mkdir()
    other.write_text(toy.read_text())
    for data in (toy, other, toy):
        result = runner.invoke(cli, ["evaluate", "--model", str(run.folder), "--data", str(data)])
        assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in run.folder.glob("eval-*"))
    assert folders == ["eval-points", "eval-points-2"]
    assert json.loads((run.folder / "eval-points-2" / "metrics.json").read_text())["data"] == str(other)
    chosen = tmp_path / "scores"
    result = runner.invoke(cli, ["evaluate", "--model", str(run.folder), "--data", str(toy), "--output", str(chosen)])
    assert result.exit_code == 0 and result.output.strip().endswith(f"evaluation folder: {chosen}")
    assert json.loads((chosen / "metrics.json").read_text())["accuracy"] >= 0


def test_an_older_run_folder_still_loads(toy, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    config = yaml.safe_load((run.folder / "config.yaml").read_text())
    # What an earlier taskzoo wrote: no 'json'/'model' keys ever, an option since retired, no resolved section.
    config.pop("resolved")
    config["retired_option"] = 3
    (run.folder / "config.yaml").write_text(yaml.safe_dump(config))
    again = taskzoo.load(run.folder)
    assert again.evaluate(toy)["accuracy"] >= 0 and len(again.predict(toy)) == 200


def test_an_unfinished_run_names_the_command_that_finishes_it(toy, runner, tmp_path):
    from taskzoo import run_folders

    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    run_folders.finish_run(run.folder, "failed")
    message = cli_error(runner, ["predict", "--model", run.folder, "--data", toy])
    assert message == f"--model {run.folder}: the run is 'failed', not complete; " \
                      f"continue it with: tasks run toy --resume {run.folder}"
    with pytest.raises(taskzoo.UserError) as raised:
        taskzoo.load(run.folder)
    assert str(raised.value) == message


def test_a_runs_own_config_repeats_it_into_a_new_folder(toy, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = taskzoo.train("toy", data=toy, output="first", epochs=2, lr=0.05, progress=False)
    result = runner.invoke(cli, ["run", "toy", "--config", str(first.folder / "config.yaml")])
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1].removeprefix("run folder: "))
    assert folder != first.folder and folder.parent == Path("runs")
    again = taskzoo.load(folder)
    assert (again.config["epochs"], again.config["lr"]) == (2, 0.05)
    assert again.metrics["history"][-1]["val"] == first.metrics["history"][-1]["val"]


def test_resume_and_progress_from_python(toy, tmp_path, capsys):
    first = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    quiet = capsys.readouterr()
    assert "epoch 1" not in quiet.out + quiet.err
    resumed = taskzoo.train("toy", resume=first.folder, epochs=3)
    shown = capsys.readouterr()
    assert "epoch 2:" in shown.out + shown.err and "epoch 1:" not in shown.out + shown.err
    assert resumed.folder == first.folder and [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]
    assert resumed.config["data"] == str(toy)


def test_predicting_in_parts_keeps_no_part_after_it_is_written(toy, tmp_path, monkeypatch):
    """Memory stays flat on long inputs only if nothing holds on to a written part: the
    accelerator keeps each loader it prepares, so predict lets go of them part by part."""
    from taskzoo import pipeline
    from toy_plugin import ToyTask

    monkeypatch.setattr(ToyTask, "parts", lambda self, data, size: (
        {"path": data["path"], "x": data["x"][i:i + size], "y": None} for i in range(0, len(data["x"]), size)),
        raising=False)
    monkeypatch.setattr(pipeline, "PART_SIZE", 16)
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    loaded = pipeline.load(run.folder, "predict", {"output": str(tmp_path / "out.txt")})
    seen = []
    original = loaded.accelerator.prepare_data_loader

    def counting(loader, *args, **kwargs):
        seen.append(len(loaded.accelerator._dataloaders))
        return original(loader, *args, **kwargs)

    monkeypatch.setattr(loaded.accelerator, "prepare_data_loader", counting)
    pipeline.predict(run.folder, toy, {"output": str(tmp_path / "out.txt")}, loaded=loaded, as_text=False,
                     keep_records=False)
    assert len(seen) > 5 and set(seen) == {0}, seen
    assert loaded.accelerator._dataloaders == []
