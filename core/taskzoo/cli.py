"""The ``tasks`` command line: a thin shell over `taskzoo.api` and `taskzoo.pipeline`.

It parses (options derived from `taskzoo.options` in `taskzoo.cli_options`), calls the library
and prints. Listing commands stay light (no torch import); ``run``, ``evaluate`` and ``predict``
import the trainer only when they start working.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

import taskzoo
from taskzoo.cli_options import RunCommand, TaskCommandGroup, given_values
from taskzoo.errors import ParityError, RunInterrupted, UserError
from taskzoo.plugins import get_host
from taskzoo.storage import location
from taskzoo.specs import TaskSpec, format_metric


class UserFacingError(click.ClickException):
    """A `UserError` as click shows it: one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class TasksGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise UserFacingError(" ".join(str(error).split())) from None
        except ParityError as error:
            click.echo(f"error: {' '.join(str(error).split())}", err=True)
            ctx.exit(1)
        except RunInterrupted as stopped:
            click.echo(f"\n{stopped}", err=True)
            # The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
            signum = stopped.signum or (_stopped_by[-1] if _stopped_by else signal.SIGINT)
            ctx.exit(128 + signum)


_stopped_by: list[int] = []


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler, kill, docker stop) ends a run as Ctrl-C does, with an honest status."""
    _stopped_by.append(signum)
    raise KeyboardInterrupt


@click.group(cls=TasksGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(taskzoo.__version__, prog_name="taskzoo")
@click.option("--disable-plugin", "disabled_plugins", multiple=True, metavar="NAME",
              help="Do not load this plugin (a name from 'tasks plugins'); repeat for several. "
                   "TASKZOO_DISABLE_PLUGINS=a,b does the same.")
def cli(disabled_plugins: tuple[str, ...]) -> None:
    """Fine-tune pretrained models for real tasks from one command line.

    \b
      tasks list                                    what tasks are installed
      tasks run sentiment --data reviews.csv        fine-tune, leaving a run folder
      tasks predict --model runs/ID --text "..."    use the model
    """
    if disabled_plugins:
        get_host().disable(disabled_plugins)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    cli(prog_name="tasks")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _format_params(count: int | None) -> str:
    if not count:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# -- listing -------------------------------------------------------------------------------------


@cli.command("list")
@click.argument("pattern", required=False, default="*")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_tasks(pattern: str, as_json: bool) -> None:
    """List installed tasks (optionally those matching a glob PATTERN)."""
    rows = taskzoo.tasks(pattern)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no tasks match" if pattern != "*" else "no tasks installed; see 'tasks plugins'")
        return
    click.echo(_table(
        [[r["name"], r["description"], r["default_backbone"] or "-", ", ".join(r["data_formats"])] for r in rows],
        ["TASK", "DESCRIPTION", "DEFAULT BACKBONE", "DATA"],
    ))


@cli.command("backbones")
@click.argument("task", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_backbones(task: str | None, as_json: bool) -> None:
    """List backbones from registry.yaml and plugins, for one TASK or all.

    OFFLINE NOW says whether it loads right now without network (shipped in an installed
    package, or already in the local Hugging Face cache).
    """
    rows = taskzoo.backbones(task)
    if as_json:
        _echo_json(rows)
        return
    click.echo(_table(
        [[r["task"], r["name"] + _backbone_note(r), r["source"], _format_params(r["params"]),
          r["licence"], "yes" if r["offline_now"] else "no"] for r in rows],
        ["TASK", "BACKBONE", "SOURCE", "PARAMS", "LICENCE", "OFFLINE NOW"],
    ))
    if task:
        click.echo("\nNames not listed also work when the hub can be reached: a Hugging Face hub id for text "
                   "tasks, a timm model name for vision tasks.")


def _backbone_note(row: dict[str, Any]) -> str:
    notes = [row["role"]] if row["role"] else []
    if row["default"]:
        notes.append("default")
    return f" ({', '.join(notes)})" if notes else ""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_plugins(as_json: bool) -> None:
    """List installed plugins, their versions and tasks, and any that failed to load."""
    infos = get_host().plugins()
    if as_json:
        _echo_json([
            {"name": i.name, "distribution": i.distribution, "version": i.version, "module": i.module,
             "tasks": i.tasks, "loaded": i.loaded, "disabled": i.disabled, "errors": i.errors}
            for i in infos
        ])
        return
    click.echo(_table(
        [[i.name, f"{i.distribution} {i.version}".strip() or "-", ", ".join(i.tasks) or "-",
          "disabled" if i.disabled else "ok" if not i.errors else ("FAILED" if not i.loaded else "PROBLEMS")]
         for i in infos],
        ["PLUGIN", "DISTRIBUTION", "TASKS", "STATUS"],
    ))
    for info in infos:
        for error in info.errors:
            click.echo(f"{info.name}: {error}", err=True)


def _notify(level: str, message: str) -> None:
    if level == "warning":
        click.echo(f"warning: {message}", err=True)
    else:
        click.echo(message)


def _aside(level: str, message: str) -> None:
    """Findings and notices on stderr, for commands whose stdout is their result (predict)."""
    click.echo(f"warning: {message}" if level == "warning" else message, err=True)


def _warnings_only(level: str, message: str) -> None:
    if level == "warning":
        _notify(level, message)


def _run(spec: TaskSpec, given: dict[str, Any]) -> None:
    from taskzoo import pipeline

    resume = pipeline.resume_folder(given.get("resume"), given.get("output"))
    config = Path(given["config"]) if given.get("config") else None
    values = pipeline.run_values(spec, given, resume=resume, config=config)
    result = pipeline.train(spec, values, resume=resume, notify=_notify)
    if result.main_process:
        best = result.summary["best"]
        click.echo(f"best {result.main_metric} {best:.4f} at epoch {result.summary['best_epoch']}"
                   if best is not None else "no epoch finished")
        click.echo(f"run folder: {result.folder}")


@cli.group("run", cls=TaskCommandGroup, action="run", perform=_run)
def run_group() -> None:
    """Fine-tune a pretrained backbone on your data: tasks run TASK --data FILE.

    Leaves a run folder with the model, metrics.json, config.yaml, plots and a model card; its
    path is the last line printed. 'tasks run TASK --help' shows the task's options.
    """


def _check(spec: TaskSpec, given: dict[str, Any]) -> None:
    from taskzoo import pipeline

    pipeline.check(spec, given, _notify)
    click.echo(f"{given['data']}: ready for 'tasks run {spec.name}'")


@cli.group("check", cls=TaskCommandGroup, action="check", perform=_check)
def check_group() -> None:
    """Validate and summarise data exactly as 'run' would read it, without training."""


def _tune(spec: TaskSpec, given: dict[str, Any]) -> None:
    from taskzoo import tuning

    result = tuning.tune(spec, given, _notify)
    if given.get("show_space"):
        click.echo(tuning.space_text(result.space), nl=False)
        return
    summary = result.summary
    best, default = summary.get("best"), summary.get("default")
    if best:
        gain = f" ({summary['gain_over_default']:+.4f} over the default configuration)" if "gain_over_default" in summary else ""
        params = ", ".join(f"{name}={value}" for name, value in best["params"].items())
        click.echo(f"best {summary['main_metric']} {best['value']:.4f} in trial {best['number']}{gain}: {params}")
    elif default is None:
        click.echo("no trial finished")
    click.echo(f"tune folder: {result.folder}")


@cli.group("tune", cls=TaskCommandGroup, action="tune", perform=_tune)
def tune_group() -> None:
    """Search hyperparameters with Optuna: tasks tune TASK --data FILE --trials N.

    Every trial is an ordinary run folder under the tune folder; summary.json, pictures of the
    search and a 'best' link to the best trial's run are written as trials finish. Running the same
    command again continues the study; 'tasks tune TASK --show-space' prints what is searched.
    """


@cli.command("runs")
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--task", help="Only runs of this task.")
@click.option("--status", type=click.Choice(["complete", "failed", "interrupted", "running", "tune"]),
              help="Only folders of this status (tune: tune folders).")
@click.option("--sort", type=click.Choice(["started", "value", "task", "folder"]), default="started", show_default=True,
              help="started: newest first; value: highest main metric first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(folder: Path | None, task: str | None, status: str | None, sort: str, as_json: bool) -> None:
    """Run and tune folders under FOLDER (default: runs/ and tunes/), to compare without opening each."""
    rows = taskzoo.runs(folder, task=task, status=status, sort=sort)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no run folders found")
        return
    table = [[r["folder"], r["task"] or "?", r["backbone"] or "", r["status"] or "?",
              f"{r['main_metric']} {r['value']:.4f}" if isinstance(r["value"], (int, float)) else "",
              (r["started"] or "").replace("T", " ")] for r in rows]
    click.echo(_table(table, ["folder", "task", "backbone", "status", "best", "started"]))


# -- evaluate and predict --------------------------------------------------------------------------


def _evaluate(**params: Any) -> None:
    from taskzoo import pipeline

    given = given_values(params)
    model, data, as_json = given.pop("model", None), given.pop("data", None), given.pop("json", False)
    if model is None or data is None:
        raise click.UsageError("--model RUN and --data FILE are both required")
    result = pipeline.evaluate(Path(model), location(data), given, _warnings_only)
    if as_json:
        _echo_json(result.metrics)
        return
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    click.echo(f"{data}: {result.size} {result.unit}")
    click.echo(_table([[k, format_metric(v)] for k, v in scalars.items()], ["METRIC", "VALUE"]))
    for picture in result.pictures:
        click.echo(f"wrote {picture}")
    click.echo(f"evaluation folder: {result.folder}")


def _predict(**params: Any) -> None:
    from taskzoo import pipeline

    given = given_values(params)
    model, data, as_json = given.pop("model", None), given.pop("data", None), given.pop("json", False)
    if model is None:
        raise click.UsageError("--model RUN is required")
    result = pipeline.predict(Path(model), location(data) if data else None, given, as_text=not as_json,
                              keep_records=as_json, notify=_aside)
    if as_json:
        for record in result.records:
            click.echo(json.dumps(record, default=_jsonable))
    elif result.text:
        click.echo(result.text)
    if given.get("output") is not None:
        click.echo(f"wrote {result.size} predictions to {given['output']}", err=True)


def _export(**params: Any) -> None:
    from taskzoo import pipeline

    given = given_values(params)
    model, as_json = given.pop("model", None), given.pop("json", False)
    if model is None:
        raise click.UsageError("--model RUN is required")
    result = pipeline.export(Path(model), given, _warnings_only)
    if as_json:
        _echo_json({"folder": str(result.folder), **result.record})
        return
    record, parity = result.record, result.record["parity"]
    main = parity["main_metric"]
    click.echo(f"exported {model} to {result.folder} (opset {record['opset']}, "
               f"{'int8 weights' if record['quantize'] == 'int8' else 'fp32'}; fused: {record['fused']})")
    difference = parity["max_abs_difference"]
    click.echo(f"parity on {parity['data']} ({parity['examples']} examples): {main} PyTorch "
               f"{parity['pytorch'].get(main, float('nan')):.4f}, ONNX Runtime {parity['onnx'].get(main, float('nan')):.4f} "
               f"(tolerance {parity['tolerance']:g}); same answer {parity['same_answer']}/{parity['examples']}"
               + (f", largest output difference {difference:.2e}" if difference is not None else ""))


def _serve(**params: Any) -> None:
    from taskzoo import serving

    given = given_values(params)
    if given.get("model") is None:
        raise click.UsageError("--model RUN is required")
    address = {name: given.pop(name) for name in ("host", "port", "workers") if name in given}
    settings = serving.checked_settings(**given)
    serving.serve(settings, **address, started=lambda url: click.echo(
        f"serving {settings.model} ({settings.runtime}) at {url} (API docs at /docs); Ctrl-C stops", err=True))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


cli.add_command(RunCommand("evaluate", _evaluate, help=(
    "Score a trained run on labelled data (--model RUN --data FILE); writes metrics.json and pictures "
    "into --output (default RUN/eval-DATA). Options marked with task names apply to those tasks' runs.")))
cli.add_command(RunCommand("predict", _predict, help=(
    "Predict with a trained run (--model RUN), from --data or a task's inline input (e.g. --text \"...\"). "
    "Options marked with task names apply to those tasks' runs.")))

cli.add_command(RunCommand("export", _export, help=(
    "Export a trained run (--model RUN) to ONNX in --output (default RUN/export) and check it: the export and "
    "the PyTorch model score the run's validation data (or --data), and a main metric that drifts beyond "
    "--tolerance fails the command (exit 1).")))

cli.add_command(RunCommand("serve", _serve, help=(
    "Serve a trained run (--model RUN) over HTTP: a page at / to try it, POST /predict for programs (JSON "
    "inputs, or image and file uploads), /health, and the API's documentation at /docs.")))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
