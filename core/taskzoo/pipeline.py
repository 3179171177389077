"""The run pipeline: the one place that calls a `Task`, for the command line and Python alike.

``train`` (``tasks run``, `taskzoo.train`) calls, in this order:

1. ``Task(spec, options, context)``: the task's own options and a `TaskContext` (its backbones,
   a finished run to start from);
2. ``task.read(data, role="train")``, then every plugin's ``taskzoo_check_data`` on it;
3. ``task.labels(train)``;
4. ``task.read(val, role="val", labels=labels)`` and its checks, or ``task.split(train, ...)``;
5. ``task.build_model(backbone, labels)``;
6. the run folder is started: ``config.yaml`` and ``run.json`` saying ``running``;
7. `taskzoo.trainer.Trainer.fit`: ``task.fit_before_training``, ``task.dataloader``, the model's
   forward, ``task.predictions`` and ``task.references`` into the metrics after each epoch,
   ``task.save`` of the best model;
8. ``metrics.json``, ``labels.json``, ``training_curves.png``, ``task.report``, the model card with
   ``task.model_card_usage``; only then ``run.json`` says ``complete``.

``evaluate``: ``task.load(RUN/model)``, ``task.read(data, role="test")`` and its checks,
``task.dataloader``, ``task.predictions`` / ``task.references`` into the metrics, ``task.report``.
``predict``: ``task.load``, ``task.read(data, role="predict")`` or ``task.inputs_from_options()``,
``task.dataloader``, ``task.predictions``, then ``task.records`` and ``task.write_predictions``.
``check``: ``task.read(data, role="train")`` and the plugins' checks.

Options arrive already resolved by `taskzoo.options.resolve` (defaults, config files and flags or
keyword arguments merged and checked); printing is the front end's business: functions here
return what happened and report data findings through a ``notify(level, message)`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskzoo import options as schema
from taskzoo import runs
from taskzoo.errors import RunInterrupted, UserError
from taskzoo.plugins import PluginHost, get_host
from taskzoo.specs import BackboneSpec, Finding, TaskSpec
from taskzoo.task import FinishedRun, Task, TaskContext, task_class
from taskzoo.version import __version__

Notify = Callable[[str, str], None]


def _quiet(level: str, message: str) -> None:
    """The default ``notify``: data findings are not shown (errors still raise)."""


def make_task(spec: TaskSpec, task_options: Mapping[str, Any], host: PluginHost | None = None,
              notify: Notify | None = None) -> Task:
    """A task instance with its options and the context the pipeline hands every task; the task's
    warnings go to ``notify`` (default: printed to stderr)."""
    from taskzoo.weights import available_offline

    host = host or get_host()
    backbones = tuple(host.backbones(spec.name))

    def finished_run(folder: Path, option: str) -> FinishedRun:
        config = runs.open_run(Path(folder), option=option)
        if config.get("task") != spec.name:
            raise UserError(f"{schema.flag(option)} {folder}: that run is for task '{config.get('task')}', not '{spec.name}'")
        return FinishedRun(Path(folder), config)

    context = TaskContext(
        backbones=backbones,
        offline_backbones=tuple(b.name for b in backbones if available_offline(b)),
        finished_run=finished_run,
        **({"warn": lambda message: notify("warning", message)} if notify else {}),
    )
    return task_class(spec)(spec, dict(task_options), context)


def findings_or_error(findings: Sequence[Finding], notify: Notify) -> None:
    """Pass info and warnings on; stop with the first error (and how many more there are)."""
    for finding in findings:
        if finding.level != "error":
            notify(finding.level, finding.message)
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more data error(s): {'; '.join(errors[1:3])})" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)


def read_checked(task: Task, path: Path, role: str, notify: Notify, labels: Sequence[str] | None = None) -> Any:
    data = task.read(Path(path), role=role, labels=labels)
    findings_or_error(get_host().check_data(task.name, data), notify)
    return data


def check(spec: TaskSpec, values: Mapping[str, Any], notify: Notify = _quiet) -> list[Finding]:
    """Read ``values["data"]`` exactly as ``train`` would; return every finding (a `UserError` on the
    first error)."""
    if not values.get("data"):
        raise UserError("--data is required")
    task = make_task(spec, schema.task_options(spec, values), notify=notify)
    data = task.read(Path(values["data"]), role="train")
    findings = get_host().check_data(spec.name, data)
    findings_or_error(findings, notify)
    return list(findings)


# -- train ---------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything read and built before training (steps 1-5 of ``train``)."""

    spec: TaskSpec
    values: dict[str, Any]
    task: Task
    train: Any
    val: Any
    labels: list[str]
    backbone: BackboneSpec
    model: Any
    accelerator: Any


def read_data(spec: TaskSpec, values: Mapping[str, Any], notify: Notify = _quiet,
              host: PluginHost | None = None) -> tuple[Task, Any, Any, list[str]]:
    """Steps 1-4: the task, its training data read and checked, the labels, and the validation data
    (``--val``, or the task's split). Returns (task, train, val, labels)."""
    if not values.get("data"):
        raise UserError("--data is required (or give it in --config)")
    host = host or get_host()
    task = make_task(spec, schema.task_options(spec, values), host, notify)
    train = read_checked(task, values["data"], "train", notify)
    labels = task.labels(train)
    if values.get("val"):
        val = read_checked(task, values["val"], "val", notify, labels=labels)
    else:
        train, val = task.split(train, val_fraction=values["val_fraction"], seed=values["seed"])
    return task, train, val, labels


def prepare(spec: TaskSpec, values: Mapping[str, Any], notify: Notify = _quiet) -> Prepared:
    """Steps 1-5: `read_data`, then the backbone and the model built on it."""
    from accelerate.utils import set_seed

    from taskzoo.trainer import make_accelerator
    from taskzoo.weights import resolve_backbone

    values = dict(values)
    accelerator = make_accelerator(values["device"], values["mixed_precision"], values["grad_accum"], values["seed"])
    shown: Notify = notify if accelerator.is_main_process else _quiet
    host = get_host()
    task, train, val, labels = read_data(spec, values, shown, host)
    backbone = resolve_backbone(host, spec.name, values.get("backbone"))
    set_seed(values["seed"])
    model = task.build_model(backbone, labels)
    return Prepared(spec, values, task, train, val, labels, backbone, model, accelerator)


def make_trainer(prepared: Prepared, run_dir: Path) -> Any:
    """The shared trainer for a prepared run (step 7 is its ``fit``)."""
    from taskzoo.trainer import Trainer, TrainingArgs

    return Trainer(
        task=prepared.task, model=prepared.model, train_data=prepared.train, val_data=prepared.val,
        metrics=get_host().metrics(prepared.spec.name), main_metric=prepared.spec.main_metric,
        args=TrainingArgs.from_options(prepared.values), accelerator=prepared.accelerator, run_dir=run_dir,
    )


def _run_config(prepared: Prepared, run_dir: Path) -> dict[str, Any]:
    spec, values, task, backbone = prepared.spec, prepared.values, prepared.task, prepared.backbone
    saved = {name: value for name, value in values.items() if name not in ("config", "resume", "model", "json")}
    return {
        "task": spec.name,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in saved.items()},
        "backbone": backbone.name,
        "output": str(run_dir),
        "resolved": {
            "taskzoo_version": __version__,
            "plugin": spec.plugin,
            "backbone": {"name": backbone.name, "source": backbone.source, "location": backbone.location,
                         "licence": backbone.licence, "params": backbone.params},
            "labels": list(prepared.labels),
            "train_examples": task.size(prepared.train),
            "val_examples": task.size(prepared.val),
            "validation": str(values["val"]) if values.get("val") else task.describe_split(
                val_fraction=values["val_fraction"], seed=values["seed"]),
            # Where the data was, whatever folder the run was started from (--resume elsewhere).
            "paths": {name: str(Path(values[name]).resolve()) for name in ("data", "val") if values.get(name)},
            "processes": prepared.accelerator.num_processes,
        },
    }


@dataclass
class TrainResult:
    folder: Path
    summary: dict[str, Any]
    main_metric: str
    main_process: bool


def train(spec: TaskSpec, values: Mapping[str, Any], *, resume: Path | None = None,
          notify: Notify = _quiet) -> TrainResult:
    """Fine-tune: steps 1-8 above. ``resume`` continues that run folder from its checkpoint."""
    from accelerate.utils import broadcast_object_list

    from taskzoo.helpers.plots import plot_training_curves

    target = resume or values.get("output")
    if target:
        runs.refuse_if_written(Path(target))
    prepared = prepare(spec, values, notify)
    accelerator, task = prepared.accelerator, prepared.task
    main_process = accelerator.is_main_process
    folder = [str(resume or prepared.values.get("output") or runs.default_run_dir(spec.name))]
    broadcast_object_list(folder)
    run_dir = Path(folder[0])
    config = _run_config(prepared, run_dir)
    if main_process:
        runs.start_run(run_dir, config, resume=resume is not None)
    accelerator.wait_for_everyone()
    try:
        summary = make_trainer(prepared, run_dir).fit(resume=resume is not None)
        if summary["best_epoch"] is None:
            raise UserError(f"--epochs {prepared.values['epochs']}: no epoch finished, so there is no model to keep; "
                            f"train at least one epoch")
        if main_process:
            runs.write_json(run_dir / "metrics.json", summary)
            runs.write_json(run_dir / "labels.json", list(prepared.labels))
            plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png", spec.main_metric)
            task.report(run_dir, summary["val"])
            card_config = {**config, "taskzoo_version": __version__, "backbone": config["resolved"]["backbone"]}
            runs.write_model_card(run_dir, card_config, summary, task.model_card_usage(run_dir))
            runs.finish_run(run_dir, "complete")
    except KeyboardInterrupt as error:
        from taskzoo.trainer import CHECKPOINT

        resumable = (run_dir / CHECKPOINT / "trainer_state.json").exists()
        if main_process and run_dir.exists():
            if resumable:
                runs.finish_run(run_dir, "interrupted", reason="stopped before it finished")
            else:
                runs.finish_run(run_dir, "failed", reason="stopped before its first epoch was saved")
        if resumable:
            raise RunInterrupted(f"{run_dir}: interrupted; the last finished epoch's checkpoint is kept; continue it "
                                 f"with: tasks run {spec.name} --resume {run_dir}") from error
        raise RunInterrupted(f"{run_dir}: interrupted before its first epoch was saved; nothing to resume, "
                             "start the run again") from error
    except BaseException as error:
        if main_process and run_dir.exists():
            reason = " ".join(str(error).split()) or type(error).__name__
            runs.finish_run(run_dir, "failed", reason=f"{type(error).__name__}: {reason}"[:500])
        raise
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, summary, spec.main_metric, main_process)


def run_values(spec: TaskSpec, given: Mapping[str, Any], *, resume: Path | None = None,
               config: Path | None = None) -> dict[str, Any]:
    """Every option of ``tasks run TASK``, resolved and checked: defaults < the resumed run's own
    (``resume``) < a ``config`` file < ``given`` (flags or keywords). The one merge the command line
    and `taskzoo.train` share."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if resume is not None:
        layers.append((str(Path(resume) / runs.CONFIG_FILE), resume_layer(spec, Path(resume))))
    if config is not None:
        layers.append((str(config), schema.read_config_file(Path(config))))
    files = {name: path for name, path in (("resume", resume), ("config", config)) if path is not None}
    layers.append((schema.task_where(spec), {**given, **files}))
    return schema.resolve(spec, "run", layers)


def resume_layer(spec: TaskSpec, folder: Path) -> dict[str, Any]:
    """The options a run folder was started with, for ``--resume``."""
    saved = runs.open_run(Path(folder), require_complete=False, option="resume")
    if saved.get("task") != spec.name:
        raise UserError(f"--resume {folder}: that run is for task '{saved.get('task')}', not '{spec.name}'")
    known = {option.key for option in schema.for_command(spec, "run")}
    layer = {k: v for k, v in saved.items() if k in known and k not in ("output", "config", "resume")}
    absolute = (saved.get("resolved") or {}).get("paths") or {}
    for name, path in absolute.items():
        if layer.get(name) and not Path(layer[name]).exists() and Path(path).exists():
            layer[name] = path  # the run was started from another folder
    return layer


# -- using a finished run -------------------------------------------------------------------------


@dataclass
class Loaded:
    """A finished run's task with its model loaded, ready to evaluate or predict (again and again:
    `use_options` sets the options of the next call without loading the model again)."""

    spec: TaskSpec
    config: dict[str, Any]
    task: Task
    model: Any
    accelerator: Any
    run_options: dict[str, Any]
    batch_size: int = 0


def load(folder: Path, command: str, given: Mapping[str, Any], notify: Notify | None = None) -> Loaded:
    """Open a finished run and load its model; ``given`` are the shared and task options of
    ``tasks COMMAND`` (a task option that the run's task does not take is refused)."""
    from taskzoo.trainer import make_accelerator

    folder = Path(folder)
    config = runs.open_run(folder)
    spec = get_host().task(config["task"])
    values = schema.resolve(spec, command, [(schema.run_where(spec), given)])
    run_options = {option.key: option.default for option in spec.options}
    run_options.update(schema.remembered(spec, config))
    task = make_task(spec, run_options, notify=notify)
    with runs.damaged_file(f"--model {folder}: its model/ cannot be loaded",
                           f"expected what a {spec.name} run saves there"):
        model = task.load(folder / "model")
    loaded = Loaded(spec, config, task, model, make_accelerator(values["device"], "no"), run_options)
    _apply(loaded, values, given)
    return loaded


def use_options(loaded: Loaded, command: str, given: Mapping[str, Any]) -> None:
    """Check ``given`` for ``tasks COMMAND`` and make them the options of the next call."""
    _apply(loaded, schema.resolve(loaded.spec, command, [(schema.run_where(loaded.spec), given)]), given)


def _apply(loaded: Loaded, values: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """The task's own options over what the run remembers, and the batch size (default twice the run's)."""
    options = dict(loaded.run_options)
    options.update({k: values[k] for k in given if k in options and values.get(k) is not None})
    loaded.task.options = options
    loaded.batch_size = values["batch_size"] if given.get("batch_size") else 2 * int(loaded.config.get("batch_size") or 16)


def _for_inference(loaded: Loaded, loader: Any) -> tuple[Any, Any]:
    """The model on its device without a data-parallel wrapper (nothing is trained), and the loader
    sharded across processes."""
    accelerator = loaded.accelerator
    return accelerator.prepare_model(loaded.model, evaluation_mode=True), accelerator.prepare_data_loader(loader)


def evaluation_folder(run: Path, data: Path, output: Path | None) -> Path:
    """Where ``evaluate`` writes: ``--output``, else ``RUN/eval-<stem>``, numbered when another file
    of the same name was evaluated there before (evaluating the same file again replaces it)."""
    if output is not None:
        return Path(output)
    candidate, number = run / f"eval-{Path(data).stem}", 1
    while (candidate / "metrics.json").exists():
        try:
            import json

            previous = json.loads((candidate / "metrics.json").read_text(encoding="utf-8")).get("data")
        except ValueError:
            previous = None
        if previous == str(data):
            break
        number += 1
        candidate = run / f"eval-{Path(data).stem}-{number}"
    return candidate


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    folder: Path
    pictures: list[Path]
    size: int
    unit: str


def evaluate(folder: Path, data: Path, given: Mapping[str, Any], notify: Notify = _quiet,
             loaded: Loaded | None = None) -> Evaluation:
    """Score a finished run on labelled data; write ``metrics.json`` and pictures."""
    from taskzoo.specs import MetricContext
    from taskzoo.trainer import evaluate as run_evaluation

    loaded = loaded or load(folder, "evaluate", given, notify)
    task = loaded.task
    labels = task.labels_of_model
    test = read_checked(task, data, "test", notify, labels=labels)
    loader = task.dataloader(test, batch_size=loaded.batch_size, train=False, seed=0)
    model, loader = _for_inference(loaded, loader)
    metrics, _ = run_evaluation(loaded.accelerator, model, loader, task, get_host().metrics(loaded.spec.name),
                                MetricContext(task=loaded.spec.name, labels=tuple(labels)))
    out_dir = evaluation_folder(Path(folder), Path(data), given.get("output"))
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / "metrics.json", {"data": str(data), "examples": task.size(test), **metrics})
    pictures = task.report(out_dir, metrics)
    return Evaluation(metrics, out_dir, pictures, task.size(test), task.size_unit)


@dataclass
class Prediction:
    records: list[dict[str, Any]]
    text: str
    size: int


def predict(folder: Path, data: Path | None, given: Mapping[str, Any], loaded: Loaded | None = None,
            *, as_text: bool = True, notify: Notify | None = None) -> Prediction:
    """Predict with a finished run, from ``data`` or the task's inline options (``text``). The
    predictions are written to ``given["output"]``, or made into text for the screen when
    ``as_text``; the records are returned either way."""
    from taskzoo.trainer import predict_all

    loaded = loaded or load(folder, "predict", given, notify)
    task = loaded.task
    inputs = task.read(Path(data), role="predict", labels=task.labels_of_model) if data else task.inputs_from_options()
    if inputs is None:
        raise UserError("give --data FILE or the task's inline input (see 'tasks predict --help')")
    loader = task.dataloader(inputs, batch_size=loaded.batch_size, train=False, seed=0)
    model, loader = _for_inference(loaded, loader)
    predictions = predict_all(loaded.accelerator, model, loader, task)
    output = given.get("output")
    text = task.write_predictions(inputs, predictions, Path(output) if output else None) if output or as_text else ""
    return Prediction(task.records(inputs, predictions), text, task.size(inputs))
