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
``export``: ``task.load``, ``task.export_graph`` and, to prove the export, the run's validation data
(or ``--data``) through ``task.dataloader``, the model and ``task.predictions`` / ``task.answer``;
``--runtime onnx`` in evaluate and predict runs that export in place of the model (`taskzoo.export`).

Options arrive already resolved by `taskzoo.options.resolve` (defaults, config files and flags or
keyword arguments merged and checked); printing is the front end's business: functions here
return what happened and report data findings through a ``notify(level, message)`` callable.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taskzoo import options as schema
from taskzoo import run_folders, tracking
from taskzoo.errors import RunInterrupted, UserError
from taskzoo.plugins import PluginHost, get_host
from taskzoo.specs import BackboneSpec, Finding, TaskSpec
from taskzoo.storage import fetch, is_url, writable
from taskzoo.task import FinishedRun, Task, TaskContext, task_class
from taskzoo.version import __version__

Notify = Callable[[str, str], None]


def _quiet(level: str, message: str) -> None:
    """The default ``notify``: data findings are not shown (errors still raise)."""


def make_task(spec: TaskSpec, task_options: Mapping[str, Any], host: PluginHost | None = None,
              notify: Notify | None = None, workers: int | None = None) -> Task:
    """A task instance with its options and the context the pipeline hands every task; the task's
    warnings go to ``notify`` (default: printed to stderr)."""
    from taskzoo.weights import available_offline

    host = host or get_host()
    backbones = tuple(host.backbones(spec.name))

    def finished_run(folder: Path, option: str) -> FinishedRun:
        config = run_folders.open_run(Path(folder), option=option)
        if config.get("task") != spec.name:
            raise UserError(f"{schema.flag(option)} {folder}: that run is for task '{config.get('task')}', not '{spec.name}'")
        return FinishedRun(Path(folder), config)

    context = TaskContext(
        backbones=backbones,
        offline_backbones=tuple(b.name for b in backbones if not b.role and available_offline(b)),
        finished_run=finished_run,
        workers=workers,
        **({"warn": lambda message: notify("warning", message)} if notify else {}),
    )
    return task_class(spec)(spec, fetched(spec, task_options), context)


def fetched(spec: TaskSpec, task_options: Mapping[str, Any]) -> dict[str, Any]:
    """The task's options with those that name files (``Option.path``) read from where they are:
    a URL becomes the path of its local copy."""
    paths = {option.key for option in spec.options if option.path}
    return {key: (fetch(value) if key in paths and value is not None and is_url(value) else value)
            for key, value in task_options.items()}


def findings_or_error(findings: Sequence[Finding], notify: Notify) -> None:
    """Pass info and warnings on; stop with the first error (and how many more there are)."""
    for finding in findings:
        if finding.level != "error":
            notify(finding.level, finding.message)
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more data error(s): {'; '.join(errors[1:3])})" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)


def read_checked(task: Task, path: Path | str, role: str, notify: Notify, labels: Sequence[str] | None = None,
                 values: Mapping[str, Any] | None = None) -> Any:
    """``task.read`` of ``path`` (a URL or dataset through `taskzoo.storage.fetch`; ``values``
    give ``--split``/``--subset``) and every plugin's check of it."""
    data = task.read(fetch(path, role=role, **_dataset_choice(values, role)), role=role, labels=labels)
    findings_or_error(get_host().check_data(task.name, data), notify)
    return data


def _dataset_choice(values: Mapping[str, Any] | None, role: str) -> dict[str, Any]:
    """--split and --subset, for the data they are about (--data, not --val)."""
    values = values or {}
    return {"split": values.get("split") if role != "val" else None, "subset": values.get("subset")}


def check(spec: TaskSpec, given: Mapping[str, Any], notify: Notify = _quiet) -> list[Finding]:
    """Read the data of ``given`` (the options of ``tasks check``, flags or keywords, resolved and
    checked here) exactly as ``train`` would; return every finding (a `UserError` on the first error)."""
    values = schema.resolve(spec, "check", [(schema.task_where(spec), given)])
    if not values.get("data"):
        raise UserError("--data is required")
    task = make_task(spec, schema.task_options(spec, values), notify=notify)
    data = task.read(fetch(values["data"], role="train", **_dataset_choice(values, "train")), role="train")
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


ReadData = tuple[Task, Any, Any, list[str]]


def read_data(spec: TaskSpec, values: Mapping[str, Any], notify: Notify = _quiet,
              host: PluginHost | None = None) -> ReadData:
    """Steps 1-4: the task, its training data read and checked, the labels, and the validation data
    (``--val``, or the task's split). Returns (task, train, val, labels)."""
    if not values.get("data"):
        raise UserError("--data is required (or give it in --config)")
    host = host or get_host()
    task = make_task(spec, schema.task_options(spec, values), host, notify, workers=values.get("data_workers"))
    train = read_checked(task, values["data"], "train", notify, values=values)
    labels = task.labels(train)
    if values.get("val"):
        val = read_checked(task, values["val"], "val", notify, labels=labels, values=values)
    else:
        train, val = task.split(train, val_fraction=values["val_fraction"], seed=values["seed"])
    return task, train, val, labels


def reading_inputs(spec: TaskSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """What `read_data` depends on: runs that agree here read the same task, data and split."""
    return {**schema.task_options(spec, values),
            **{name: values.get(name) for name in ("data", "val", "split", "subset", "val_fraction", "seed")}}


def prepare(spec: TaskSpec, values: Mapping[str, Any], notify: Notify = _quiet,
            start_from: Path | None = None, data: ReadData | None = None) -> Prepared:
    """Steps 1-5: `read_data` (or ``data`` it returned for the same `reading_inputs`), then the
    backbone and the model built on it (or, ``start_from``, the model a complete run saved, for an
    extension whose checkpoint kept no weights)."""
    from accelerate.utils import set_seed

    from taskzoo.trainer import make_accelerator
    from taskzoo.weights import resolve_backbone

    values = dict(values)
    accelerator = make_accelerator(values["device"], values["mixed_precision"], values["grad_accum"], values["seed"],
                                   cpu_bf16=task_class(spec).cpu_bf16)
    shown: Notify = notify if accelerator.is_main_process else _quiet
    host = get_host()
    task, train, val, labels = data or read_data(spec, values, shown, host)
    backbone = resolve_backbone(host, spec.name, values.get("backbone"))
    set_seed(values["seed"])
    if start_from is None:
        model = task.build_model(backbone, labels)
    else:
        with run_folders.damaged_file(f"--resume {start_from.parent}: its model/ cannot be loaded",
                               f"expected what a {spec.name} run saves there"):
            model = task.load(start_from)
    if values.get("lora"):
        from taskzoo.helpers.lora import apply_lora

        targets = [t.strip() for t in str(values.get("lora_targets") or "").split(",") if t.strip()]
        shown("info", apply_lora(model, rank=values["lora"], alpha=values.get("lora_alpha"),
                                 dropout=values.get("lora_dropout") or 0.0, targets=targets))
    return Prepared(spec, values, task, train, val, labels, backbone, model, accelerator)


def make_trainer(prepared: Prepared, run_dir: Path, after_epoch: Callable[[int, float], bool] | None = None,
                 trackers: Any = None, resumable: bool = True) -> Any:
    """The shared trainer for a prepared run (step 7 is its ``fit``)."""
    from taskzoo.trainer import Trainer, TrainingArgs

    return Trainer(
        task=prepared.task, model=prepared.model, train_data=prepared.train, val_data=prepared.val,
        metrics=get_host().metrics(prepared.spec.name), main_metric=prepared.spec.main_metric,
        args=TrainingArgs.from_options(prepared.values), accelerator=prepared.accelerator, run_dir=run_dir,
        after_epoch=after_epoch, trackers=trackers, resumable=resumable,
    )


def _run_config(prepared: Prepared, run_dir: Path) -> dict[str, Any]:
    spec, values, task, backbone = prepared.spec, prepared.values, prepared.task, prepared.backbone
    saved = {name: value for name, value in values.items()
             if name not in ("config", "resume", "model", "json", "overwrite")}
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
            "paths": {name: str(values[name]) if is_url(values[name]) else str(Path(values[name]).resolve())
                      for name in ("data", "val") if values.get(name)},
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
          notify: Notify = _quiet, after_epoch: Callable[[int, float], bool] | None = None,
          data: ReadData | None = None, resumable: bool = True) -> TrainResult:
    """Fine-tune: steps 1-8 above. ``resume`` continues that run folder from its checkpoint, or
    extends a complete run to more epochs (its model stays usable until the extension completes).
    ``after_epoch(epoch, main metric)`` ends training after that epoch when it returns true. A
    search hands its trials ``data`` it read once (see `prepare`) and runs them not ``resumable``
    (see `taskzoo.trainer.Trainer`)."""
    from accelerate.utils import broadcast_object_list

    from taskzoo import trainer as training
    from taskzoo.helpers.plots import plot_training_curves

    tracking.wanted(values)  # a tracker that is not installed stops the run before any work
    target = resume or values.get("output")
    if target:
        run_folders.refuse_if_written(Path(target))
    if resume is None and values.get("output"):
        run_folders.check_output(Path(values["output"]), overwrite=values.get("overwrite", False))
    start_from = _resume_start(spec, resume, values, notify) if resume is not None else None
    prepared = prepare(spec, values, notify, start_from, data)
    accelerator, task = prepared.accelerator, prepared.task
    main_process = accelerator.is_main_process
    folder = [str(resume or prepared.values.get("output") or run_folders.default_run_dir(spec.name))]
    broadcast_object_list(folder)
    run_dir = Path(folder[0])
    config = _run_config(prepared, run_dir)
    extending = [False]
    if main_process:
        extending[0] = run_folders.start_run(run_dir, config, resume=resume is not None, overwrite=values.get("overwrite", False))
    broadcast_object_list(extending)
    extending = extending[0]
    # A run stopped before its first checkpoint has nothing to go on from: it starts over, in its folder.
    from_checkpoint = resume is not None and training.checkpoint_progress(run_dir) is not None
    if resume is not None and not from_checkpoint and main_process:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    trackers = tracking.Trackers(tracking.wanted(prepared.values), run_dir, spec.name, main_process)
    trackers.configure(config)
    try:
        summary = make_trainer(prepared, run_dir, after_epoch, trackers, resumable).fit(resume=from_checkpoint, extend=extending)
        if summary["best_epoch"] is None:
            raise UserError(f"--epochs {prepared.values['epochs']}: no epoch finished, so there is no model to keep; "
                            f"train at least one epoch")
        if main_process:
            if extending:
                run_folders.write_yaml(run_dir / run_folders.CONFIG_FILE, config)
            run_folders.write_json(run_dir / "metrics.json", summary)
            run_folders.write_json(run_dir / "labels.json", list(prepared.labels))
            plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png", spec.main_metric)
            task.report(run_dir, summary["val"])
            card_config = {**config, "taskzoo_version": __version__, "backbone": config["resolved"]["backbone"]}
            run_folders.write_model_card(run_dir, card_config, summary, task.model_card_usage(run_dir))
            run_folders.finish_run(run_dir, "complete")
            if not prepared.values.get("keep_checkpoint"):
                training.keep_progress_only(run_dir)
        trackers.finish(run_dir)
    except KeyboardInterrupt as error:
        trackers.finish(status="KILLED")
        raise _interrupted(spec, run_dir, error, main_process, extending, values["epochs"]) from error
    except BaseException as error:
        trackers.finish(status="FAILED")
        if main_process and run_dir.exists():
            reason = " ".join(str(error).split()) or type(error).__name__
            run_folders.finish_run(run_dir, "failed", reason=f"{type(error).__name__}: {reason}"[:500], extension=extending)
        if extending and isinstance(error, UserError):
            raise type(error)(f"{error}; the run stays complete with its earlier model; retry the extension with: "
                              f"tasks run {spec.name} --resume {run_dir} --epochs {values['epochs']}") from None
        raise
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, summary, spec.main_metric, main_process)


def _resume_start(spec: TaskSpec, folder: Path, values: Mapping[str, Any], notify: Notify) -> Path | None:
    """Check that an extension of a complete run asks for more epochs than it ran. Returns the model
    to start from when the checkpoint kept no weights (a complete run's: ``model/``, with a fresh
    optimizer), else None (the checkpoint's weights, or a run that starts over)."""
    from taskzoo import trainer as training

    complete = (run_folders.read_status(folder) or {}).get("status") == "complete"
    progress = training.checkpoint_progress(folder)
    if complete and progress is None:
        raise UserError(f"--resume {folder}: the run is complete and kept no checkpoint to extend it from; "
                        f"start a new run with --config {folder / run_folders.CONFIG_FILE}")
    if complete:
        with run_folders.damaged_file(f"--resume {folder}: its metrics.json is damaged",
                               "expected the JSON a complete run writes"):
            trained = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["epochs_run"]
        if values["epochs"] <= trained:
            raise UserError(f"--resume {folder}: the run is complete after {trained} epoch(s); give --epochs "
                            f"more than {trained} to train it further")
    if progress is None or training.has_weights(folder):
        return None
    if not (folder / run_folders.MODEL_FOLDER).is_dir():
        raise UserError(f"--resume {folder}: its checkpoint/ holds no weights and there is no model/ to start "
                        "from; start the run again")
    notify("info", f"extending {folder} from its saved model (epoch {progress['best_epoch']}) with a fresh optimizer "
                   "state, which the run did not keep (--keep-checkpoint keeps it)")
    return folder / run_folders.MODEL_FOLDER


def _interrupted(spec: TaskSpec, run_dir: Path, error: KeyboardInterrupt, main_process: bool,
                 extending: bool, epochs: int) -> RunInterrupted:
    """Mark a run stopped by Ctrl-C or SIGTERM and say how to go on."""
    from taskzoo.trainer import checkpoint_progress

    progress = checkpoint_progress(run_dir) if run_dir.exists() else None
    resumable = progress is not None and (progress["global_step"] > 0 or progress["epoch"] > 0)
    signum = getattr(error, "signum", None)
    if main_process and run_dir.exists():
        reason = "stopped before it finished" if resumable or extending else "stopped before its first checkpoint"
        run_folders.finish_run(run_dir, "interrupted", reason=reason, extension=extending)
    if extending:
        return RunInterrupted(f"{run_dir}: the extension was interrupted; the run stays complete with its earlier "
                              f"model; continue the extension with: tasks run {spec.name} --resume {run_dir} --epochs {epochs}", signum)
    if resumable:
        where = f"step {progress['global_step']}" if progress.get("partial_epoch") else f"epoch {progress['epoch']}"
        return RunInterrupted(f"{run_dir}: interrupted; the checkpoint of {where} is kept; continue it "
                              f"with: tasks run {spec.name} --resume {run_dir}", signum)
    return RunInterrupted(f"{run_dir}: interrupted before its first checkpoint; run it again from the start "
                          f"with: tasks run {spec.name} --resume {run_dir}", signum)


def resume_folder(resume: Any, output: Any) -> Path | None:
    """The run folder to continue: ``--resume``, or, in a worker that torchrun restarted after a
    failure (``--max-restarts``), the run that ``--output`` names, so the restarted processes go on
    from its last checkpoint instead of refusing the folder or starting over."""
    if resume:
        return Path(resume)
    if _environment_number("TORCHELASTIC_MAX_RESTARTS") > 0 and not output:
        raise UserError("--output is needed under torchrun --max-restarts: restarted workers continue the run in it")
    if _environment_number("TORCHELASTIC_RESTART_COUNT") > 0 and output and (Path(output) / run_folders.STATUS_FILE).exists():
        return Path(output)
    return None


def _environment_number(name: str) -> int:
    try:
        return int(os.environ.get(name) or 0)
    except ValueError:
        return 0


def run_values(spec: TaskSpec, given: Mapping[str, Any], *, resume: Path | None = None,
               config: Path | None = None) -> dict[str, Any]:
    """Every option of ``tasks run TASK``, resolved and checked: defaults < the resumed run's own
    (``resume``) < a ``config`` file < ``given`` (flags or keywords). The one merge the command line
    and `taskzoo.train` share."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if resume is not None:
        layers.append((str(Path(resume) / run_folders.CONFIG_FILE), resume_layer(spec, Path(resume))))
    if config is not None:
        layers.append((str(config), schema.read_config_file(Path(config))))
    files = {name: path for name, path in (("resume", resume), ("config", config)) if path is not None}
    layers.append((schema.task_where(spec), {**given, **files}))
    return schema.resolve(spec, "run", layers)


def resume_layer(spec: TaskSpec, folder: Path) -> dict[str, Any]:
    """The options a run folder was started with, for ``--resume``."""
    saved = run_folders.open_run(Path(folder), require_complete=False, option="resume")
    if saved.get("task") != spec.name:
        raise UserError(f"--resume {folder}: that run is for task '{saved.get('task')}', not '{spec.name}'")
    known = {option.key for option in schema.for_command(spec, "run")}
    layer = {k: v for k, v in saved.items() if k in known and k not in ("output", "config", "resume")}
    absolute = (saved.get("resolved") or {}).get("paths") or {}
    for name, path in absolute.items():
        if layer.get(name) and not is_url(layer[name]) and not Path(layer[name]).exists() and Path(path).exists():
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
    folder: Path = Path()
    batch_size: int = 0
    runtime: str = "torch"
    values: dict[str, Any] = field(default_factory=dict)  # the last call's options, resolved


def load(folder: Path, command: str, given: Mapping[str, Any], notify: Notify | None = None) -> Loaded:
    """Open a finished run and load its model; ``given`` are the shared and task options of
    ``tasks COMMAND`` (a task option that the run's task does not take is refused)."""
    from taskzoo.trainer import make_accelerator

    folder = Path(folder)
    config = run_folders.open_run(folder)
    spec = get_host().task(config["task"])
    values = schema.resolve(spec, command, [(schema.run_where(spec), given)])
    run_options = {option.key: option.default for option in spec.options}
    run_options.update(schema.remembered(spec, config))
    task = make_task(spec, run_options, notify=notify)
    with run_folders.damaged_file(f"--model {folder}: its model/ cannot be loaded",
                           f"expected what a {spec.name} run saves there"):
        model = task.load(folder / "model")
    runtime = values.get("runtime") or "torch"
    # ONNX Runtime places its own work; the task's batches stay on the CPU.
    device = "cpu" if runtime == "onnx" or command == "export" else values["device"]
    loaded = Loaded(spec, config, task, model, make_accelerator(device, "no"), run_options, folder)
    _apply(loaded, values, given)
    if runtime == "onnx":
        from taskzoo import export

        loaded.model = export.onnx_model(loaded, device=values["device"], notify=notify or _quiet)
        loaded.runtime = "onnx"
    return loaded


def use_options(loaded: Loaded, command: str, given: Mapping[str, Any]) -> None:
    """Check ``given`` for ``tasks COMMAND`` and make them the options of the next call."""
    _apply(loaded, schema.resolve(loaded.spec, command, [(schema.run_where(loaded.spec), given)]), given)


def _apply(loaded: Loaded, values: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """The task's own options over what the run remembers, and the batch size (default twice the run's)."""
    loaded.values = dict(values)
    options = dict(loaded.run_options)
    options.update({k: values[k] for k in given if k in options and values.get(k) is not None})
    loaded.task.options = fetched(loaded.spec, options)
    loaded.task.context = replace(loaded.task.context, workers=values.get("data_workers"))
    loaded.batch_size = values["batch_size"] if given.get("batch_size") else 2 * int(loaded.config.get("batch_size") or 16)


def _for_inference(loaded: Loaded, loader: Any) -> tuple[Any, Any]:
    """The model on its device without a data-parallel wrapper (nothing is trained), and the loader
    sharded across processes."""
    accelerator = loaded.accelerator
    model = loaded.model if loaded.runtime == "onnx" else accelerator.prepare_model(loaded.model, evaluation_mode=True)
    return model, accelerator.prepare_data_loader(loader)


def _forget_prepared(accelerator: Any) -> None:
    """Let go of the loaders (and with them a part's encoded inputs) and model wrappers the
    accelerator keeps a reference to from each prepare. `Accelerator.free_memory` does this too,
    with a full garbage collection that costs a tenth of a second on a large heap: a server pays
    that on every request."""
    for kept in (getattr(accelerator, "_dataloaders", None), getattr(accelerator, "_models", None)):
        if isinstance(kept, list):
            kept.clear()


PART_SIZE = 4096  # inputs encoded, scored and written at a time: memory does not grow with the input


def evaluation_folder(run: Path, data: Path, output: Path | None) -> Path:
    """Where ``evaluate`` writes: ``--output``, else ``RUN/eval-<stem>``, numbered when another file
    of the same name was evaluated there before (evaluating the same file again replaces it)."""
    if output is not None:
        return Path(output)
    candidate, number = run / f"eval-{Path(data).stem}", 1
    while (candidate / "metrics.json").exists():
        try:
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
    """Score a finished run on labelled data; write ``metrics.json`` and pictures.

    The data is read and checked whole, then encoded and scored in parts of `PART_SIZE` (`Task.parts`),
    keeping of each example only what the metrics need."""
    from taskzoo.specs import MetricContext
    from taskzoo.trainer import Scored, score

    loaded = loaded or load(folder, "evaluate", given, notify)
    task = loaded.task
    labels = task.labels_of_model
    test = read_checked(task, data, "test", notify, labels=labels, values=loaded.values)
    scored = Scored()
    for part in task.parts(test, PART_SIZE):
        loader = task.dataloader(part, batch_size=loaded.batch_size, train=False, seed=0)
        model, loader = _for_inference(loaded, loader)
        score(loaded.accelerator, model, loader, task, into=scored)
        del loader, model
        _forget_prepared(loaded.accelerator)
    metrics = scored.metrics(get_host().metrics(loaded.spec.name), MetricContext(task=loaded.spec.name, labels=tuple(labels)))
    out_dir = evaluation_folder(Path(folder), Path(data), given.get("output"))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_folders.write_json(out_dir / "metrics.json", {"data": str(data), "examples": task.size(test), **metrics})
    pictures = task.report(out_dir, metrics)
    return Evaluation(metrics, out_dir, pictures, task.size(test), task.size_unit)


def export(folder: Path, given: Mapping[str, Any], notify: Notify = _quiet) -> Any:
    """Export a finished run to ONNX and check it on labelled data (`taskzoo.export.export`);
    returns the `taskzoo.export.Export` (its folder and ``export.json`` record)."""
    from taskzoo import export as exporting

    loaded = load(folder, "export", given, notify)
    values = loaded.values
    return exporting.export(loaded, output=values.get("output"), data=values.get("data"), opset=values["opset"],
                            quantize=values["quantize"], tolerance=values.get("tolerance"), notify=notify)


@dataclass
class Prediction:
    records: list[dict[str, Any]]
    text: str
    size: int


_APPENDABLE = {".csv": True, ".tsv": True, ".txt": True, ".jsonl": False}  # suffix -> may start with a header
_COLUMNAR = (".parquet", ".pq")  # the records of each part (as JSON Lines has them) as a row group


def predict(folder: Path, data: Path | None, given: Mapping[str, Any], loaded: Loaded | None = None,
            *, as_text: bool = True, keep_records: bool = True, notify: Notify | None = None) -> Prediction:
    """Predict with a finished run, from ``data`` or the task's inline options (``text``). The
    predictions are written to ``given["output"]``, or made into text for the screen when
    ``as_text``; the records are returned when ``keep_records``.

    Into a file (CSV, TSV, JSON Lines, Parquet) or a folder, the inputs go through in parts of `PART_SIZE`
    (`Task.parts`), each written as it is scored; the file appears, whole, when the last part is in.
    ``data`` and ``output`` may be URLs (`taskzoo.storage`)."""
    loaded = loaded or load(folder, "predict", given, notify)
    with writable(given.get("output")) as output:  # a URL: written here, uploaded when complete
        return _predict_into(loaded, data, output, as_text=as_text, keep_records=keep_records)


def _predict_into(loaded: Loaded, data: Any, output: Path | None, *, as_text: bool, keep_records: bool) -> Prediction:
    from taskzoo.trainer import predict_all

    task = loaded.task
    columnar = output is not None and output.suffix.lower() in _COLUMNAR
    streamed = output is not None and (output.suffix.lower() in _APPENDABLE or not output.suffix or columnar)
    if data and streamed:
        inputs = task.read_parts(fetch(data, role="predict", **_dataset_choice(loaded.values, "predict")),
                                 role="predict", labels=task.labels_of_model, size=PART_SIZE)
    elif data:
        inputs = [task.read(fetch(data, role="predict", **_dataset_choice(loaded.values, "predict")), role="predict",
                            labels=task.labels_of_model)]
    else:
        inline = task.inputs_from_options()
        if inline is None:
            raise UserError("give --data FILE or the task's inline input (see 'tasks predict --help')")
        inputs = task.parts(inline, PART_SIZE) if streamed else [inline]
    records: list[dict[str, Any]] = []
    text, size = "", 0
    with _Parts(output if streamed else None) as parts:
        for part in inputs:
            loader = task.dataloader(part, batch_size=loaded.batch_size, train=False, seed=0)
            model, loader = _for_inference(loaded, loader)
            predictions = predict_all(loaded.accelerator, model, loader, task)
            part_records = task.records(part, predictions) if columnar or keep_records else []
            if columnar:
                parts.write_records(part_records)
            elif streamed:
                task.write_predictions(part, predictions, parts.next())
            elif output is not None or as_text:
                text = task.write_predictions(part, predictions, output)
            if keep_records:
                records.extend(part_records)
            size += task.size(part)
            del loader, model, predictions
            _forget_prepared(loaded.accelerator)
    return Prediction(records, text, size)


class _Parts:
    """Where each part's predictions go: a folder output takes every part itself; a file output
    gets each part in a file beside it, appended to ``.NAME.partial`` (less a first line that
    repeats the first part's, the header), which
    replaces ``NAME`` once all parts are in, so an interrupted prediction never looks finished."""

    def __init__(self, output: Path | None) -> None:
        self.output, self.count, self.header = output, 0, b""
        self.file = output is not None and output.suffix.lower() in (*_APPENDABLE, *_COLUMNAR)
        self.writer: Any = None  # Parquet: one writer, a row group per part

    def __enter__(self) -> _Parts:
        if self.file:
            try:
                self.output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"--output {self.output}: cannot create its folder ({error.strerror or error})") from None
            self.partial = self.output.with_name(f".{self.output.name}.partial")
            self.part = self.output.with_name(f".{self.output.stem}.part{self.output.suffix}")
            self.partial.write_bytes(b"")
        return self

    def next(self) -> Path:
        self._append()
        self.count += 1
        return self.part if self.file else self.output

    def write_records(self, records: list[dict[str, Any]]) -> None:
        """A part's records as a row group of the Parquet file; the first part sets the columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            table = pa.Table.from_pylist(records)
            self.writer = pq.ParquetWriter(self.partial, table.schema)
        else:
            unknown = {key for record in records for key in record} - set(self.writer.schema.names)
            if unknown:
                raise RuntimeError(f"a later part of the predictions has columns the first had not: {sorted(unknown)}")
            table = pa.Table.from_pylist(records, schema=self.writer.schema)
        self.writer.write_table(table)

    def _append(self) -> None:
        if not self.file or not self.part.exists():
            return
        with self.part.open("rb") as source, self.partial.open("ab") as target:
            if _APPENDABLE[self.output.suffix.lower()]:
                first = source.readline()
                if self.count == 1:
                    self.header = first
                if self.count == 1 or first != self.header:  # a later part's header is dropped, nothing else
                    target.write(first)
            shutil.copyfileobj(source, target)
        self.part.unlink()

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if not self.file:
            return
        if self.writer is not None:
            self.writer.close()
        if kind is None:
            self._append()
            os.replace(self.partial, self.output)
        else:
            self.part.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
