"""The ``tasks`` command line.

Listing commands stay light (no torch import); ``run``, ``evaluate`` and ``predict`` import the
trainer only when they start working.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

import taskzoo
from taskzoo.errors import UserError
from taskzoo.plugins import get_host
from taskzoo.specs import TaskSpec


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
    host = get_host()
    rows = []
    for task in host.tasks().values():
        if not fnmatch.fnmatch(task.name, pattern):
            continue
        default = next((b.name for b in host.backbones(task.name) if b.default), None)
        rows.append({
            "name": task.name,
            "description": task.description,
            "default_backbone": default,
            "data_formats": list(task.data_formats),
            "main_metric": task.main_metric,
            "plugin": task.plugin,
        })
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
    from taskzoo.backbones import available_offline

    host = get_host()
    if task:
        host.task(task)
    rows = [
        {
            "task": b.task,
            "name": b.name,
            "default": b.default,
            "source": b.source,
            "location": b.location,
            "params": b.params,
            "licence": b.licence,
            "offline_now": available_offline(b),
            "plugin": b.plugin,
        }
        for b in host.backbones(task)
    ]
    if as_json:
        _echo_json(rows)
        return
    click.echo(_table(
        [[r["task"], r["name"] + (" (default)" if r["default"] else ""), r["source"], _format_params(r["params"]),
          r["licence"], "yes" if r["offline_now"] else "no"] for r in rows],
        ["TASK", "BACKBONE", "SOURCE", "PARAMS", "LICENCE", "OFFLINE NOW"],
    ))
    if task:
        click.echo("\nNames not listed also work when the hub can be reached: a Hugging Face hub id for text "
                   "tasks, a timm model name for vision tasks.")


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


# -- options shared by run and check ---------------------------------------------------------------

# (name, type, built-in default, help). Defaults apply unless the task, a --config file or a flag
# says otherwise, in that order.
TRAINING_OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("backbone", str, None, "Backbone name from 'tasks backbones TASK', a hub id or a local folder."),
    ("epochs", int, 3, "Training epochs."),
    ("batch-size", int, 16, "Examples per batch per device."),
    ("lr", float, 5e-5, "Peak learning rate (AdamW)."),
    ("weight-decay", float, 0.01, "AdamW weight decay."),
    ("warmup-ratio", float, 0.1, "Share of steps spent warming up the learning rate."),
    ("scheduler", click.Choice(["linear", "cosine"]), "linear", "Learning-rate decay after warmup."),
    ("grad-accum", int, 1, "Batches per optimizer step (gradient accumulation)."),
    ("max-grad-norm", float, 1.0, "Gradient clipping norm (0 turns it off)."),
    ("patience", int, None, "Stop after this many epochs without improvement (early stopping)."),
    ("val-fraction", float, 0.2, "Validation share split off the training data when --val is not given."),
    ("seed", int, 42, "Random seed for the head, data order and split."),
    ("device", click.Choice(["auto", "cpu", "cuda"]), "auto", "Where to train."),
    ("mixed-precision", click.Choice(["auto", "no", "fp16", "bf16"]), "auto",
     "auto: bf16 (or fp16) on CUDA, none on the CPU."),
    ("log-every", int, 10, "Log loss and throughput every N optimizer steps."),
    ("tensorboard", bool, False, "Also write TensorBoard logs into the run folder."),
]
FILE_OPTIONS = {"data", "val", "output", "resume", "config"}


def _key(name: str) -> str:
    return name.replace("-", "_")


def _click_option(name: str, kind: Any, default: Any, help_text: str, *, multiple: bool = False) -> click.Option:
    # Defaults are resolved later (task, --config, flags), so click itself defaults to None; the
    # effective default is shown in the help text.
    if default not in (None, False, ()):
        help_text = f"{help_text}  [default: {default}]"
    if kind is bool:
        return click.Option([f"--{name}"], is_flag=True, default=None, help=help_text)
    return click.Option([f"--{name}"], type=kind, default=None, multiple=multiple, help=help_text)


def _task_click_options(spec: TaskSpec, command: str) -> list[click.Option]:
    options = []
    for option in spec.options:
        if command not in option.commands:
            continue
        kind = click.Choice(option.choices) if option.choices else option.type
        options.append(_click_option(option.name, kind, option.default, option.help, multiple=option.multiple))
    return options


def _task_option_values(spec: TaskSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The task's own options, defaults filled in where no value was given."""
    return {
        option.key: option.default if values.get(option.key) in (None, (), []) else values[option.key]
        for option in spec.options
    }


def _read_config_file(path: Path) -> dict[str, Any]:
    import yaml

    from taskzoo.tables import read_text

    try:
        document = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    document.pop("resolved", None)
    return {_key(str(k)): v for k, v in document.items()}


def _merge(ctx: click.Context, spec: TaskSpec, layers: list[Mapping[str, Any]], source_name: str) -> dict[str, Any]:
    """Built-in defaults < task defaults < config file < flags given on the command line."""
    values: dict[str, Any] = {_key(name): default for name, _, default, _ in TRAINING_OPTIONS}
    values.update({"data": None, "val": None, "output": None})
    values.update({option.key: option.default for option in spec.options})
    values.update({_key(k): v for k, v in spec.defaults.items()})
    known = set(values)
    for layer in layers:
        unknown = sorted(set(layer) - known - {"task"})
        if unknown:
            raise UserError(f"{source_name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in layer.items() if k != "task"})
    for name, value in ctx.params.items():
        if name in ("config", "resume"):
            continue
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            values[name] = list(value) if isinstance(value, tuple) else value
    return values


class TaskCommandGroup(click.Group):
    """``tasks run TASK`` / ``tasks check TASK``: one subcommand per installed task, built on demand
    with the common options plus the task's own."""

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.action = action

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(get_host().tasks())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        try:
            spec = get_host().task(name)
        except UserError:
            return None
        return _task_command(spec, self.action)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = ", ".join(get_host().tasks()) or "none (see 'tasks plugins')"
            raise click.UsageError(f"unknown task '{name}'; known tasks: {known}", ctx)
        return super().resolve_command(ctx, args)


def _task_command(spec: TaskSpec, action: str) -> click.Command:
    params: list[click.Parameter] = [
        click.Option(["--data"], type=click.Path(path_type=Path), help="Training data file or folder."),
    ]
    if action == "run":
        params += [
            click.Option(["--val"], type=click.Path(path_type=Path), help="Validation data (default: a split of --data)."),
            click.Option(["--config"], type=click.Path(path_type=Path), help="YAML file of options; flags override it."),
            click.Option(["--output"], type=click.Path(path_type=Path), help="Run folder (default: runs/TASK-TIMESTAMP)."),
            click.Option(["--resume"], type=click.Path(path_type=Path), help="Continue a run folder from its last checkpoint."),
        ]
        params += [
            _click_option(name, kind, spec.defaults.get(_key(name), default), help_text)
            for name, kind, default, help_text in TRAINING_OPTIONS
        ]
    params += _task_click_options(spec, action)

    def callback(**_: Any) -> None:
        ctx = click.get_current_context()
        if action == "run":
            _run(ctx, spec)
        else:
            _check(ctx, spec)

    defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
    help_text = f"{spec.description}\n\nData: {', '.join(spec.data_formats)}."
    if defaults:
        help_text += f" Task defaults: {defaults}."
    return click.Command(spec.name, params=params, callback=callback, help=help_text)


@cli.group("run", cls=TaskCommandGroup, action="run")
def run_group() -> None:
    """Fine-tune a pretrained backbone on your data: tasks run TASK --data FILE.

    Leaves a run folder with the model, metrics.json, config.yaml, plots and a model card; its
    path is the last line printed. 'tasks run TASK --help' shows the task's options.
    """


@cli.group("check", cls=TaskCommandGroup, action="check")
def check_group() -> None:
    """Validate and summarise data exactly as 'run' would read it, without training."""


def _report_findings(findings: list[Any], *, quiet_info: bool) -> None:
    """Print info and warnings; stop with the first error (and how many more there are)."""
    for finding in findings:
        if finding.level == "warning":
            click.echo(f"warning: {finding.message}", err=True)
        elif finding.level == "info" and not quiet_info:
            click.echo(finding.message)
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more data error(s): {'; '.join(errors[1:3])})" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)


def _read_checked(host: Any, task: Any, path: Path, role: str, *, labels: Any = None, quiet_info: bool) -> Any:
    data = task.read(path, role=role, labels=labels)
    _report_findings(host.check_data(task.name, data), quiet_info=quiet_info)
    return data


def _check(ctx: click.Context, spec: TaskSpec) -> None:
    host = get_host()
    values = _merge(ctx, spec, [], "flags")
    if not values["data"]:
        raise click.UsageError("--data is required", ctx)
    task = spec.load()(spec, _task_option_values(spec, values))
    _read_checked(host, task, values["data"], "train", quiet_info=False)
    click.echo(f"{values['data']}: ready for 'tasks run {spec.name}'")


def _run(ctx: click.Context, spec: TaskSpec) -> None:
    from taskzoo import runs

    host = get_host()
    layers: list[Mapping[str, Any]] = []
    source = "flags"
    resume: Path | None = ctx.params.get("resume")
    if resume is not None:
        saved = runs.open_run(resume, require_complete=False)
        if saved.get("task") != spec.name:
            raise UserError(f"--resume {resume}: that run is for task '{saved.get('task')}', not '{spec.name}'")
        layers.append({k: v for k, v in saved.items() if k not in ("output", "resolved")})
        source = str(resume / runs.CONFIG_FILE)
    if ctx.params.get("config") is not None:
        layers.append(_read_config_file(ctx.params["config"]))
        source = str(ctx.params["config"])
    values = _merge(ctx, spec, layers, source)
    if not values["data"]:
        raise click.UsageError("--data is required (or give it in --config)", ctx)
    _train(host, spec, values, resume)


def _train(host: Any, spec: TaskSpec, values: dict[str, Any], resume: Path | None) -> None:
    from accelerate.utils import broadcast_object_list, set_seed

    from taskzoo import runs
    from taskzoo.backbones import resolve_backbone
    from taskzoo.plots import plot_training_curves
    from taskzoo.trainer import Trainer, TrainingArgs, make_accelerator

    accelerator = make_accelerator(values["device"], values["mixed_precision"], values["grad_accum"], values["seed"])
    main_process = accelerator.is_main_process
    task = spec.load()(spec, _task_option_values(spec, values))
    train = _read_checked(host, task, Path(values["data"]), "train", quiet_info=not main_process)
    labels = task.labels(train)
    if values["val"]:
        val = _read_checked(host, task, Path(values["val"]), "val", labels=labels, quiet_info=not main_process)
    else:
        train, val = task.split(train, val_fraction=values["val_fraction"], seed=values["seed"])
    backbone = resolve_backbone(host, spec.name, values["backbone"])
    set_seed(values["seed"])
    model = task.build_model(backbone, labels)

    folder = [str(resume or values["output"] or runs.default_run_dir(spec.name))]
    broadcast_object_list(folder)
    run_dir = Path(folder[0])
    config = {
        "task": spec.name,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()},
        "backbone": backbone.name,
        "output": str(run_dir),
        "resolved": {
            "taskzoo_version": taskzoo.__version__,
            "plugin": spec.plugin,
            "backbone": {"name": backbone.name, "source": backbone.source, "location": backbone.location,
                         "licence": backbone.licence, "params": backbone.params},
            "labels": list(labels),
            "train_examples": task.size(train),
            "val_examples": task.size(val),
            "validation": str(values["val"]) if values["val"] else task.describe_split(
                val_fraction=values["val_fraction"], seed=values["seed"]),
            "processes": accelerator.num_processes,
        },
    }
    if main_process:
        runs.start_run(run_dir, config, resume=resume is not None)
    accelerator.wait_for_everyone()
    args = TrainingArgs(
        epochs=values["epochs"], batch_size=values["batch_size"], lr=values["lr"],
        weight_decay=values["weight_decay"], warmup_ratio=values["warmup_ratio"], scheduler=values["scheduler"],
        grad_accum=values["grad_accum"], max_grad_norm=values["max_grad_norm"], patience=values["patience"],
        seed=values["seed"], log_every=values["log_every"], tensorboard=bool(values["tensorboard"]),
    )
    try:
        trainer = Trainer(
            task=task, model=model, train_data=train, val_data=val, metrics=host.metrics(spec.name),
            main_metric=spec.main_metric, args=args, accelerator=accelerator, run_dir=run_dir,
        )
        summary = trainer.fit(resume=resume is not None)
        if main_process:
            runs.write_json(run_dir / "metrics.json", summary)
            runs.write_json(run_dir / "labels.json", list(labels))
            plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png", spec.main_metric)
            task.report(run_dir, summary["val"])
            card_config = {**config, "taskzoo_version": taskzoo.__version__, "backbone": config["resolved"]["backbone"]}
            runs.write_model_card(run_dir, card_config, summary, task.model_card_usage(run_dir))
            runs.finish_run(run_dir, "complete")
    except BaseException:
        if main_process and run_dir.exists():
            runs.finish_run(run_dir, "failed")
        raise
    accelerator.wait_for_everyone()
    if main_process:
        best = summary["best"]
        click.echo(f"best {spec.main_metric} {best:.4f} at epoch {summary['best_epoch']}" if best is not None else "no epoch finished")
        click.echo(f"run folder: {run_dir}")


# -- evaluate and predict --------------------------------------------------------------------------


def _parse_task_options(ctx: click.Context, spec: TaskSpec, command: str, extra: list[str]) -> dict[str, Any]:
    """Parse the task's own options (given after the common ones) for evaluate/predict."""
    parser = click.Command(ctx.command_path, params=_task_click_options(spec, command))
    sub = parser.make_context(ctx.command_path, list(extra))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sub.params.items() if v not in (None, ())}


def _load_run(model_dir: Path, ctx: click.Context, command: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    from taskzoo import runs

    host = get_host()
    config = runs.open_run(model_dir)
    spec = host.task(config["task"])
    saved = {option.key: config.get(option.key) for option in spec.options if option.remember}
    given = _parse_task_options(ctx, spec, command, ctx.args)
    task = spec.load()(spec, _task_option_values(spec, {**saved, **given}))
    return host, spec, task, config


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A run folder.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled test data.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def evaluate(ctx: click.Context, model_dir: Path, data: Path, batch_size: int, device: str, as_json: bool) -> None:
    """Score a trained run on labelled data; writes metrics and pictures into the run folder.

    Task options (e.g. --text-column) may follow.
    """
    from taskzoo import runs
    from taskzoo.specs import MetricContext
    from taskzoo.trainer import evaluate as run_evaluation
    from taskzoo.trainer import make_accelerator

    host, spec, task, _ = _load_run(model_dir, ctx, "evaluate")
    accelerator = make_accelerator(device, "no")
    model = task.load(model_dir / "model")
    labels = task.labels_of_model
    test = _read_checked(host, task, data, "test", labels=labels, quiet_info=True)
    loader = task.dataloader(test, batch_size=batch_size, train=False, seed=0)
    model, loader = accelerator.prepare(model, loader)
    metrics, _ = run_evaluation(
        accelerator, model, loader, task, host.metrics(spec.name), MetricContext(task=spec.name, labels=tuple(labels))
    )
    out_dir = model_dir / f"eval-{data.stem}"
    out_dir.mkdir(exist_ok=True)
    runs.write_json(out_dir / "metrics.json", {"data": str(data), "examples": task.size(test), **metrics})
    pictures = task.report(out_dir, metrics)
    if as_json:
        _echo_json(metrics)
        return
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    click.echo(f"{data}: {task.size(test)} {task.size_unit}")
    click.echo(_table([[k, f"{v:.4f}"] for k, v in scalars.items()], ["METRIC", "VALUE"]))
    for picture in pictures:
        click.echo(f"wrote {picture}")
    click.echo(f"evaluation folder: {out_dir}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A run folder.")
@click.option("--data", type=click.Path(path_type=Path), help="Inputs to predict for.")
@click.option("--output", type=click.Path(path_type=Path), help="Write predictions here (format from suffix).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.pass_context
def predict(ctx: click.Context, model_dir: Path, data: Path | None, output: Path | None, batch_size: int, device: str) -> None:
    """Predict with a trained run, from --data or the task's inline options (e.g. --text "...")."""
    from taskzoo.trainer import make_accelerator, predict_all

    _, _, task, _ = _load_run(model_dir, ctx, "predict")
    model = task.load(model_dir / "model")
    inputs = task.read(data, role="predict", labels=task.labels_of_model) if data else task.inputs_from_options()
    if inputs is None:
        raise click.UsageError("give --data FILE or the task's inline input (see 'tasks predict --help')", ctx)
    accelerator = make_accelerator(device, "no")
    loader = task.dataloader(inputs, batch_size=batch_size, train=False, seed=0)
    model, loader = accelerator.prepare(model, loader)
    predictions = predict_all(accelerator, model, loader, task)
    text = task.write_predictions(inputs, predictions, output)
    if text:
        click.echo(text)
    if output is not None:
        click.echo(f"wrote {task.size(inputs)} predictions to {output}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
