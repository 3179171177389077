"""taskzoo from Python: `train`, `tune`, `load`, `Run` (predict, evaluate, export), `serve`, `check`, `tasks`, `backbones`.

Every keyword argument is a ``tasks`` option under its underscored name, with the same default and
the same checks (`taskzoo.options`); a wrong name or value raises `taskzoo.UserError` with the
line ``tasks`` prints. The work itself is `taskzoo.pipeline`, the same code the command line runs,
so a run started here and one started by ``tasks run`` with the same options are the same run.
This module imports no torch until a function needs it, so ``import taskzoo`` stays quick.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from taskzoo import options as schema
from taskzoo import progress as _progress
from taskzoo.errors import UserError
from taskzoo.plugins import get_host
from taskzoo.storage import location
from taskzoo.specs import Finding

PathArg = str | PathLike


_PACKAGE = str(Path(__file__).resolve().parent)


def _warn(level: str, message: str) -> None:
    """Data warnings as Python warnings, attributed to the caller's line rather than taskzoo's."""
    if level != "warning":
        return
    frame, depth = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, depth = frame.f_back, depth + 1
    warnings.warn(message, UserWarning, stacklevel=depth)


def _task(name: str) -> Any:
    if not isinstance(name, str):
        raise UserError(f"task: expected a task name such as 'sentiment', got {name!r}")
    return get_host().task(name)


class Run:
    """A finished run folder: its config, metrics and model, ready to predict and evaluate.

    ``folder``: the run folder; ``config``: its resolved ``config.yaml``; ``metrics``: its
    ``metrics.json`` (``metrics["best"]`` is the best epoch's main metric); ``task``: the task name.
    The model is loaded on the first `predict` or `evaluate` and kept for the next calls.
    ``progress=False`` hides their progress bars; ``runtime="onnx"`` predicts and evaluates with the
    run's ONNX export (see `export`) instead of the PyTorch model.
    """

    def __init__(self, folder: PathArg, *, progress: bool = True, runtime: str = "torch") -> None:
        from taskzoo import run_folders

        self.folder = Path(folder)
        self.progress = progress
        self.runtime = runtime
        self.config: dict[str, Any] = run_folders.open_run(self.folder)
        metrics_file = self.folder / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
        self._loaded: dict[Any, Any] = {}

    @property
    def task(self) -> str:
        return self.config["task"]

    def __repr__(self) -> str:
        best = self.metrics.get("best")
        score = f", {self.metrics.get('main_metric')}={best:.4f}" if isinstance(best, (int, float)) else ""
        return f"Run('{self.folder}', task='{self.task}'{score})"

    def _load(self, command: str, given: dict[str, Any]) -> Any:
        from taskzoo import pipeline

        # The model is loaded once per device and runtime; each call sets its own options on the task
        # (both check the options' names and values).
        where = (given.get("device", "auto"), given.get("runtime", "torch"))
        if self._loaded.get("where") != where:
            self._loaded = {"where": where, "run": pipeline.load(self.folder, command, given, _warn)}
        else:
            pipeline.use_options(self._loaded["run"], command, given)
        return self._loaded["run"]

    def predict(self, data: PathArg | Sequence[str] | None = None, *, output: PathArg | None = None,
                batch_size: int | None = None, device: str = "auto", runtime: str | None = None,
                **task_options: Any) -> list[dict[str, Any]]:
        """Predictions as the records ``tasks predict`` writes, scores included, in input order.

        ``data`` is a file or folder, or a list of inputs (texts for sentiment and NER, user ids for
        recommendation); task options (``k=5``, ``score_threshold=0.5``, ``all_scores=True``) follow as
        keywords. With ``output``, the predictions are also written there as ``tasks predict --output``.
        """
        from taskzoo import pipeline

        given = {k: v for k, v in {"output": output, "batch_size": batch_size, "device": device,
                                   "runtime": runtime or self.runtime, **task_options}.items() if v is not None}
        path: Path | None = None
        if isinstance(data, (str, PathLike)):
            path = location(data)
        elif data is not None:
            if not isinstance(data, (list, tuple)) or not all(isinstance(item, str) for item in data):
                raise UserError(f"data: expected a path or a list of strings, got {type(data).__name__}")
            spec = get_host().task(self.task)
            inline = _inline_option(spec)
            if inline is None:
                raise UserError(f"data: a {self.task} run predicts from a file or folder; give its path")
            given[inline] = list(data)
        with _progress.shown(self.progress):
            loaded = self._load("predict", given)
            return pipeline.predict(self.folder, path, given, loaded=loaded, as_text=False).records

    def evaluate(self, data: PathArg, *, output: PathArg | None = None, batch_size: int | None = None,
                 device: str = "auto", runtime: str | None = None, **task_options: Any) -> dict[str, Any]:
        """Score the run on labelled ``data``; the metrics ``tasks evaluate`` writes (also written to
        ``output``, default ``RUN/eval-<file name>/``, with its pictures)."""
        from taskzoo import pipeline

        if not isinstance(data, (str, PathLike)):
            raise UserError(f"data: expected the path of labelled data, got {type(data).__name__}")
        given = {k: v for k, v in {"output": output, "batch_size": batch_size, "device": device,
                                   "runtime": runtime or self.runtime, **task_options}.items() if v is not None}
        with _progress.shown(self.progress):
            loaded = self._load("evaluate", given)
            return pipeline.evaluate(self.folder, location(data), given, _warn, loaded=loaded).metrics

    def export(self, output: PathArg | None = None, *, data: PathArg | None = None, opset: int | None = None,
               quantize: str | None = None, tolerance: float | None = None,
               batch_size: int | None = None) -> dict[str, Any]:
        """Export the run to ONNX as ``tasks export`` does (into ``output``, default ``RUN/export``;
        ``opset`` and ``quantize`` default as there: 18, ``"none"``) and check it on ``data`` (default:
        the run's validation data); returns its ``export.json``
        with ``folder`` added. A main metric that drifts beyond ``tolerance`` raises
        `taskzoo.ParityError` (the export stays, marked ``good: false``)."""
        from taskzoo import pipeline

        given = {k: v for k, v in {"output": output, "data": data, "opset": opset, "quantize": quantize,
                                   "tolerance": tolerance, "batch_size": batch_size}.items() if v is not None}
        with _progress.shown(self.progress):
            result = pipeline.export(self.folder, given, _warn)
        return {"folder": result.folder, **result.record}


def _inline_option(spec: Any) -> str | None:
    from taskzoo.task import task_class

    name = task_class(spec).inline_input
    return name if name and any(o.key == name for o in schema.for_command(spec, "predict")) else None


def train(task: str, data: PathArg | None = None, *, config: PathArg | None = None, resume: PathArg | None = None,
          progress: bool = True, **options: Any) -> Run:
    """Fine-tune ``task`` on ``data``, exactly as ``tasks run TASK --data DATA`` would; returns the run.

    Every option of ``tasks run TASK`` is a keyword (``epochs=2``, ``batch_size=8``,
    ``text_column="review"``); ``config`` is a YAML file of options (keywords override it);
    ``resume`` continues a run folder from its last checkpoint. ``progress=False`` hides progress
    bars and epoch lines. Works under ``accelerate launch`` as ``tasks run`` does (every process
    returns the same run).
    """
    from taskzoo import pipeline

    spec = _task(task)
    resume_path = pipeline.resume_folder(resume, options.get("output"))
    given = {**options, **({"data": data} if data is not None else {})}
    values = pipeline.run_values(spec, given, resume=resume_path, config=Path(config) if config is not None else None)
    with _progress.shown(progress):
        result = pipeline.train(spec, values, resume=resume_path, notify=_warn)
    return Run(result.folder, progress=progress)


class Tune:
    """A hyperparameter search's folder: ``summary`` (its ``summary.json``: best and default trials,
    every trial's state, value and parameters), ``best`` (the best trial's `Run`), ``folder``."""

    def __init__(self, folder: PathArg, summary: dict[str, Any], *, progress: bool = True) -> None:
        self.folder, self.summary, self.progress = Path(folder), summary, progress

    @property
    def best(self) -> Run | None:
        best = self.summary.get("best")
        return Run(best["folder"], progress=self.progress) if best and best.get("folder") else None

    def __repr__(self) -> str:
        best = self.summary.get("best")
        score = f", best {self.summary['main_metric']}={best['value']:.4f}" if best else ""
        return f"Tune('{self.folder}', {self.summary.get('finished', 0)} finished trials{score})"


def tune(task: str, data: PathArg | None = None, *, trials: int = 20, space: PathArg | None = None,
         progress: bool = True, **options: Any) -> Tune:
    """Search hyperparameters as ``tasks tune TASK --data DATA --trials N`` does; returns the study's
    summary and best run. Keywords are the options of ``tasks tune`` (``timeout="2h"``,
    ``storage=...``, ``study=...``, ``output=...``) and of ``tasks run`` (fixed for every trial)."""
    from taskzoo import tuning

    spec = _task(task)
    given = {**options, "trials": trials, **({"data": data} if data is not None else {}),
             **({"space": space} if space is not None else {})}
    with _progress.shown(progress):
        result = tuning.tune(spec, given, _warn)
    return Tune(result.folder, result.summary, progress=progress)


def load(folder: PathArg, *, progress: bool = True, runtime: str = "torch") -> Run:
    """A finished run folder (of this or an earlier taskzoo), ready to predict and evaluate; with
    ``runtime="onnx"`` through its ONNX export (exported first when it has none)."""
    if not isinstance(folder, (str, PathLike)):
        raise UserError(f"folder: expected the path of a run folder, got {type(folder).__name__}")
    runtime = schema.coerce(schema.shared_option("runtime"), runtime)
    return Run(folder, progress=progress, runtime=runtime)


def serve(run: PathArg | Run, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          runtime: str | None = None, device: str = "auto", batch_size: int | None = None,
          max_inputs: int = 256, max_request_mb: float = 32.0) -> None:
    """Serve a finished run as ``tasks serve --model RUN`` does, until stopped (Ctrl-C). To embed the
    server in an ASGI application of your own, mount ``taskzoo.serving.create_app(RUN)``."""
    from taskzoo import serving

    folder = run.folder if isinstance(run, Run) else run
    if not isinstance(folder, (str, PathLike)):
        raise UserError(f"run: expected a run folder or a taskzoo.Run, got {type(run).__name__}")
    runtime = runtime or (run.runtime if isinstance(run, Run) else "torch")
    settings = serving.checked_settings(model=folder, runtime=runtime, device=device, batch_size=batch_size,
                                        max_inputs=max_inputs, max_request_mb=max_request_mb)
    serving.serve(settings, host=host, port=port, workers=workers)


def runs(folder: PathArg | None = None, *, task: str | None = None, status: str | None = None,
         sort: str = "started") -> list[dict[str, Any]]:
    """Run and tune folders under ``folder`` (default: ``runs/`` and ``tunes/``), what ``tasks runs
    --json`` prints: task, backbone, status, main metric and its best value, dates, per folder.
    ``status`` keeps one status (``complete``, ``failed``, ``interrupted``, ``running``, ``tune``);
    ``sort`` is ``started`` (newest first), ``value`` (highest first), ``task`` or ``folder``."""
    from taskzoo import run_folders

    if task is not None:
        _task(task)
    roots = [Path(folder)] if folder is not None else [p for p in (Path("runs"), Path("tunes")) if p.is_dir()]
    return run_folders.find_runs(roots, task=task, status=status, sort=sort)


def check(task: str, data: PathArg, **options: Any) -> list[Finding]:
    """Read ``data`` exactly as `train` would and return what ``tasks check`` prints (info and
    warning findings); a data error raises `taskzoo.DataError` naming the file, column or line."""
    from taskzoo import pipeline

    return pipeline.check(_task(task), {**options, "data": data})


def tasks(pattern: str = "*") -> list[dict[str, Any]]:
    """The installed tasks (what ``tasks list --json`` prints), optionally those matching a glob."""
    import fnmatch

    host = get_host()
    rows = []
    for spec in host.tasks().values():
        if not fnmatch.fnmatch(spec.name, pattern):
            continue
        default = next((b.name for b in host.backbones(spec.name, role="") if b.default), None)
        rows.append({"name": spec.name, "description": spec.description, "default_backbone": default,
                     "data_formats": list(spec.data_formats), "main_metric": spec.main_metric, "plugin": spec.plugin})
    return rows


def backbones(task: str | None = None) -> list[dict[str, Any]]:
    """The backbones of one task or all (what ``tasks backbones --json`` prints); ``offline_now``
    says whether one loads right now without network."""
    from taskzoo.weights import available_offline

    host = get_host()
    if task is not None:
        _task(task)
    return [
        {"task": b.task, "name": b.name, "default": b.default, "source": b.source, "location": b.location,
         "params": b.params, "licence": b.licence, "offline_now": available_offline(b), "plugin": b.plugin,
         "role": b.role}
        for b in host.backbones(task)
    ]
