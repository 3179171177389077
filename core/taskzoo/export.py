"""ONNX export of a finished run, proven on labelled data before it is called good, and ONNX
Runtime inference behind the same `Task` calls as the PyTorch model.

A task describes what to export with `Task.export_graph`, a `Graph`: the network that becomes the
ONNX graph (it takes tensors, not the task's batch dicts), how a batch of the task's own data
loader feeds it, and how the graph's outputs become what the model's ``forward`` returns under
``"output"``. Everything after that is shared: `export` writes the graph (with ONNX Runtime's
transformer fusions where the encoder has them, and dynamic int8 quantisation on request), then
scores the PyTorch model and the export on the same batches and writes both metrics into
``export.json``; `OnnxModel` is the export as a model that `taskzoo.pipeline`'s predict and
evaluate run exactly as they run the PyTorch one, so outputs, formats and pictures are the same.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskzoo import run_folders
from taskzoo.errors import DataError, ParityError, UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from taskzoo.pipeline import Loaded, Notify

EXPORT_FOLDER = "export"
GRAPH_FILE = "model.onnx"
DEFAULT_OPSET = 18
QUANTIZE = ("none", "int8")
# Largest drift of the main metric an export may show and still be called good.
DEFAULT_TOLERANCE = {"none": 0.001, "int8": 0.01}
# Encoders whose attention and layer-norm patterns ONNX Runtime's transformer optimizer fuses
# (config.model_type -> its model_type).
FUSIBLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "camembert": "bert",
           "mpnet": "bert", "distilbert": "bert", "deberta-v2": "bert", "albert": "bert"}
Feeds = dict[str, "np.ndarray"]


def _batch_tensors(names: Sequence[str]) -> Callable[[Mapping[str, Any]], list[Feeds]]:
    def feeds(batch: Mapping[str, Any]) -> list[Feeds]:
        return [{name: batch[name].detach().cpu().numpy() for name in names}]
    return feeds


def _first_output(batch: Mapping[str, Any], results: list[list[np.ndarray]]) -> torch.Tensor:
    import torch

    return torch.from_numpy(results[0][0])


@dataclass
class Graph:
    """What a task exports: `Task.export_graph` returns one.

    ``network``: a module whose ``forward`` takes the inputs named by ``input_names``, in that
    order, as tensors, and returns a tensor or a tuple of them (``output_names``).
    ``dynamic_axes``: per input and output name, the axes that vary (default: axis 0, the batch).
    ``feeds(batch)``: the graph's inputs for one batch of the task's data loader, as numpy arrays,
    one mapping per graph call (a graph that takes one image at a time gets one per image); by
    default the batch's tensors of the same names. ``output(batch, results)``: the graph's outputs
    of those calls as what the model's ``forward`` returns under ``"output"``; by default the first
    output of the only call, as a tensor. ``files(folder)``: writes what a user of the export needs
    beside the graph (a tokenizer, a preprocessing config). ``preprocessing``: how inputs are made
    (resize, normalisation, ...), recorded in ``export.json``. ``transformer``: the encoder's
    ``config.model_type``, attention heads and hidden size, for ONNX Runtime's fusions.
    ``tracing``: export with the TorchScript tracer instead of ``torch.export`` (for networks with
    data-dependent control flow, such as torchvision's detectors).
    """

    network: torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] = ("output",)
    dynamic_axes: dict[str, dict[int, str]] | None = None
    feeds: Callable[[Mapping[str, Any]], list[Feeds]] | None = None
    output: Callable[[Mapping[str, Any], list[list[np.ndarray]]], Any] = _first_output
    files: Callable[[Path], None] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    transformer: dict[str, Any] | None = None
    tracing: bool = False

    def __post_init__(self) -> None:
        if self.dynamic_axes is None:
            self.dynamic_axes = {name: {0: "batch"} for name in (*self.input_names, *self.output_names)}
        if self.feeds is None:
            self.feeds = _batch_tensors(self.input_names)


# -- ONNX Runtime as a model ----------------------------------------------------------------------


def _quiet_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency of taskzoo; only a broken install lacks it
        raise UserError("ONNX export needs onnxruntime: pip install onnxruntime (onnxruntime-gpu for CUDA)") from None
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def session(path: Path, *, device: str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session for ``path``: CUDA when ``device`` allows and onnxruntime-gpu is
    installed, else the CPU with ``threads`` (default: torch's) intra-op threads."""
    import torch

    onnxruntime = _quiet_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=providers(device))


def providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for ``--device``: CUDA first where it is asked for or
    ``auto`` and onnxruntime-gpu is installed; ``cuda`` without it is a `UserError`."""
    cuda = "CUDAExecutionProvider" in _quiet_onnxruntime().get_available_providers()
    if device == "cuda" and not cuda:
        raise UserError("--device cuda --runtime onnx: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
                        "in its place, or use --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" and cuda else ["CPUExecutionProvider"]


class OnnxModel:
    """An export as a model for `taskzoo.pipeline`: ``model(batch)`` returns ``{"loss": None,
    "output": ...}`` as the PyTorch model does, so `Task.predictions` takes its output unchanged."""

    def __init__(self, graph: Graph, runtime: Any) -> None:
        self.graph, self.runtime = graph, runtime
        self.output_names = [output.name for output in runtime.get_outputs()]

    def run(self, batch: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return [self.runtime.run(self.output_names, feeds) for feeds in self.graph.feeds(batch)]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {"loss": None, "output": self.graph.output(batch, self.run(batch))}

    def eval(self) -> OnnxModel:
        return self


# -- exporting ------------------------------------------------------------------------------------


@dataclass
class Export:
    """What `export` did: the folder, its ``export.json`` and whether parity held."""

    folder: Path
    record: dict[str, Any]

    @property
    def good(self) -> bool:
        return bool(self.record.get("good"))


def export_folder(run: Path) -> Path:
    return Path(run) / EXPORT_FOLDER


def read_record(folder: Path) -> dict[str, Any] | None:
    """The export's ``export.json``; None where there is no export. An export that a kill caught
    while it was being replaced is put back first (`run_folders.restore_folder`)."""
    with contextlib.suppress(OSError):  # a read-only folder is still read
        run_folders.restore_folder(Path(folder))
    try:
        return json.loads((Path(folder) / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch.onnx and the fusion tools print their progress and deprecation notes; a user sees
    taskzoo's lines only (a failure still raises)."""
    quiet = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript",
                                                     "onnx_ir", "onnxruntime", "fusion_utils", "onnx_model",
                                                     "onnx_model_bert", "fusion_base", "optimizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write_graph(graph: Graph, example: Feeds, path: Path, opset: int) -> None:
    import torch

    arguments = tuple(torch.from_numpy(example[name]) for name in graph.input_names)
    graph.network.eval()
    with torch.no_grad(), _quiet_export():
        if graph.tracing:
            torch.onnx.export(graph.network, arguments, str(path), input_names=list(graph.input_names),
                              output_names=list(graph.output_names), dynamic_axes=graph.dynamic_axes,
                              opset_version=opset, dynamo=False)
        else:
            shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in graph.dynamic_axes.get(name, {})}
                           for name in graph.input_names)
            parameters = inspect.signature(graph.network.forward).parameters.values()
            if any(parameter.kind is parameter.VAR_POSITIONAL for parameter in parameters):
                shapes = (shapes,)  # forward(*tensors): torch.export sees one argument, the tuple
            program = torch.onnx.export(graph.network, arguments, input_names=list(graph.input_names),
                                        output_names=list(graph.output_names), dynamic_shapes=shapes,
                                        opset_version=opset, dynamo=True, optimize=True, verbose=False)
            program.save(str(path), external_data=False)


def _fuse(graph: Graph, path: Path) -> str:
    """ONNX Runtime's transformer fusions (attention, layer norm, GELU) on the graph in place;
    returns what was fused, or "none" when the encoder is not one ONNX Runtime knows."""
    details = graph.transformer
    if not details or details.get("model_type") not in FUSIBLE:
        return "none"
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_export():
        optimized = optimize_model(str(path), model_type=FUSIBLE[details["model_type"]],
                                   num_heads=int(details.get("num_heads") or 0),
                                   hidden_size=int(details.get("hidden_size") or 0), opt_level=1)
        optimized.save_model_to_file(str(path))
        fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
    return ", ".join(f"{name} x{count}" for name, count in sorted(fused.items())) or "none"


def _quantize(path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name("quantized.onnx")
    with _quiet_export():
        # The fused graph's com.microsoft operators defeat shape inference; their outputs are float.
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(quantized, path)


def _main_metric(loaded: Loaded) -> str:
    return loaded.config.get("resolved", {}).get("main_metric") or loaded.spec.main_metric


def parity_data(loaded: Loaded, data: Path | None, notify: Notify) -> tuple[Any, str]:
    """The labelled data parity is measured on: ``data`` (``--data``), else the run's own
    validation data (its ``--val`` file, or the same split of its training data)."""
    from taskzoo.pipeline import make_task, read_checked

    task, labels, config = loaded.task, loaded.task.labels_of_model, loaded.config
    if data is not None:
        return read_checked(task, data, "test", notify, labels=labels), str(data)
    # Absolute as the run resolved them, so an export works from any folder; as typed for messages.
    paths = {**{k: config[k] for k in ("data", "val") if config.get(k)}, **(config.get("resolved") or {}).get("paths", {})}
    source = paths.get("val") or paths.get("data")
    if not source or not Path(source).exists():
        raise UserError(f"the run's validation data ({source}) is not there any more; give labelled data with --data")
    if paths.get("val"):
        return read_checked(task, Path(paths["val"]), "val", notify, labels=labels), str(config["val"])
    # A task of its own for the split: splitting may set state (seen items) that the loaded model's task keeps.
    splitter = make_task(loaded.spec, loaded.run_options)
    train = splitter.read(Path(paths["data"]), role="train")
    _, val = splitter.split(train, val_fraction=float(config["val_fraction"]), seed=int(config["seed"]))
    return val, f"the run's validation split of {config['data']}"


def _max_difference(expected: Sequence[Any], found: Sequence[np.ndarray]) -> float | None:
    """Largest absolute difference between the network's and the graph's float outputs of the same
    shape (None when no output compares: a detector that found a different number of boxes)."""
    import numpy as np

    largest = None
    for mine, theirs in zip(expected, found):
        mine = mine.detach().float().cpu().numpy()
        if mine.shape != theirs.shape or not np.issubdtype(theirs.dtype, np.floating) or not mine.size:
            continue
        finite = np.isfinite(mine) & np.isfinite(theirs)
        if finite.any():
            difference = float(np.abs(mine[finite] - theirs[finite]).max())
            largest = difference if largest is None else max(largest, difference)
    return largest


def measure_parity(loaded: Loaded, graph: Graph, model: OnnxModel, data: Any) -> dict[str, Any]:
    """Score the PyTorch model and the export on the same batches; per example, whether the task's
    answer is the same (`Task.answer`), and the largest difference between raw outputs."""
    import torch

    from taskzoo.pipeline import PART_SIZE
    from taskzoo.plugins import get_host
    from taskzoo.specs import MetricContext
    from taskzoo.trainer import Scored

    task = loaded.task
    torch_scored, onnx_scored = Scored(), Scored()
    same = total = 0
    largest: float | None = None
    seconds = {"pytorch": 0.0, "onnx": 0.0}
    with torch.no_grad():
        for part in task.parts(data, PART_SIZE):
            for batch in task.dataloader(part, batch_size=loaded.batch_size, train=False, seed=0):
                started = time.perf_counter()
                expected = task.predictions(batch, loaded.model(batch)["output"])
                middle = time.perf_counter()
                results = model.run(batch)
                found = task.predictions(batch, graph.output(batch, results))
                seconds["pytorch"] += middle - started
                seconds["onnx"] += time.perf_counter() - middle
                references = task.references(batch)
                torch_scored.predictions += expected
                onnx_scored.predictions += found
                torch_scored.references += references
                onnx_scored.references += references
                same += sum(task.answer(a) == task.answer(b) for a, b in zip(expected, found))
                total += len(expected)
                for feeds, outputs in zip(graph.feeds(batch), results):
                    raw = graph.network(*(torch.from_numpy(feeds[name]) for name in graph.input_names))
                    difference = _max_difference(raw if isinstance(raw, (tuple, list)) else (raw,), outputs)
                    if difference is not None:
                        largest = difference if largest is None else max(largest, difference)
    metrics = get_host().metrics(loaded.spec.name)
    context = MetricContext(task=loaded.spec.name, labels=tuple(task.labels_of_model))
    return {"pytorch": torch_scored.metrics(metrics, context), "onnx": onnx_scored.metrics(metrics, context),
            "examples": total, "same_answer": same, "max_abs_difference": largest, "seconds": seconds}


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def export(loaded: Loaded, *, output: Path | None = None, data: Path | None = None, opset: int = DEFAULT_OPSET,
           quantize: str = "none", tolerance: float | None = None, notify: Notify | None = None) -> Export:
    """Export a loaded run to ONNX in ``output`` (default ``RUN/export``) and prove it: the export
    and the PyTorch model score the same labelled data, and the main metric may drift by at most
    ``tolerance``. A drift beyond it raises `ParityError` (the folder stays, marked not good)."""
    import onnx
    import torch

    from taskzoo.pipeline import _quiet
    from taskzoo.version import __version__

    notify = notify or _quiet
    tolerance = DEFAULT_TOLERANCE[quantize] if tolerance is None else float(tolerance)
    run = Path(loaded.folder)
    target = Path(output) if output is not None else export_folder(run)
    if target.exists() and any(target.iterdir()) and read_record(target) is None:
        raise UserError(f"--output {target}: a folder of other files; give an empty or new folder")
    task = loaded.task
    backbone = loaded.config.get("backbone") or (loaded.config.get("resolved", {}).get("backbone") or {}).get("name")
    loaded.model.cpu().eval()
    graph = task.export_graph(loaded.model)
    parity_on, described = parity_data(loaded, data, notify)
    first_part = next(iter(task.parts(parity_on, 2)))
    example = graph.feeds(next(iter(task.dataloader(first_part, batch_size=2, train=False, seed=0))))[0]

    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    path = partial / GRAPH_FILE
    try:
        _write_graph(graph, example, path, opset)
    except Exception as error:  # the exporter's own errors are many and deep; one line names what failed
        shutil.rmtree(partial, ignore_errors=True)
        cause = error.__cause__ or error  # torch.onnx wraps the tracer's own error in instructions
        first = next((line for line in str(cause).strip().splitlines() if line.strip()), "")
        raise UserError(f"--model {run}: backbone '{backbone}' of task '{loaded.spec.name}' does not export to "
                        f"ONNX ({type(cause).__name__}: {first[:300]})") from None
    try:
        fused = _fuse(graph, path)
        if quantize == "int8":
            if graph.transformer is None:
                notify("warning", "--quantize int8 on a network without a transformer encoder: ONNX Runtime's dynamic "
                                  "int8 convolutions run slower than fp32 on CPUs (benchmarks/README.md); the fp32 "
                                  "export is the faster one there")
            _quantize(path)
        onnx.checker.check_model(str(path))
        if graph.files is not None:
            graph.files(partial)
        run_folders.write_json(partial / "labels.json", list(task.labels_of_model))
        runtime = session(path, device="cpu")
        try:
            parity = measure_parity(loaded, graph, OnnxModel(graph, runtime), parity_on)
        except DataError as error:
            if data is not None:
                raise
            raise UserError(f"--model {run}: {described} cannot be scored again with the saved model ({error}); "
                            "give labelled data with --data") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    main = _main_metric(loaded)
    before, after = parity["pytorch"].get(main), parity["onnx"].get(main)
    drift = abs(float(after) - float(before)) if before is not None and after is not None else None
    good = drift is not None and drift <= tolerance + 1e-12
    record = {
        "source_run": str(run), "task": loaded.spec.name, "backbone": backbone, "graph": GRAPH_FILE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "taskzoo": __version__, "torch": torch.__version__,
        "onnx": onnx.__version__, "onnxruntime": _quiet_onnxruntime().__version__, "opset": opset,
        "quantize": quantize, "fused": fused,
        "inputs": {i.name: {"shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                   for i in runtime.get_inputs()},
        "outputs": [o.name for o in runtime.get_outputs()],
        "preprocessing": graph.preprocessing,
        "parity": {"data": described, "examples": parity["examples"], "main_metric": main,
                   "pytorch": _scalars(parity["pytorch"]), "onnx": _scalars(parity["onnx"]),
                   "difference": drift, "tolerance": tolerance, "same_answer": parity["same_answer"],
                   "same_answer_share": parity["same_answer"] / max(parity["examples"], 1),
                   "max_abs_difference": parity["max_abs_difference"],
                   "seconds": {k: round(v, 3) for k, v in parity["seconds"].items()}},
        "good": good,
    }
    del runtime
    run_folders.write_json(partial / "export.json", record)
    target.parent.mkdir(parents=True, exist_ok=True)
    run_folders.replace_folder(partial, target)  # a kill in between leaves the old export for read_record
    if not good:
        raise ParityError(
            f"{target}: the export scores {main} {_number(after)} where the PyTorch model scores {_number(before)} "
            f"on {described}, {parity['examples']} examples (difference {_number(drift)}, tolerance {tolerance:g}); "
            f"the export is kept but not marked good; check it on more labelled data (--data) or allow "
            "the drift with --tolerance")
    return Export(target, record)


def _number(value: Any) -> str:
    return "none" if value is None else f"{float(value):.4f}"


def onnx_model(loaded: Loaded, *, device: str, notify: Notify) -> OnnxModel:
    """The run's export (``RUN/export``) as a model, exporting first (with the defaults) when there
    is none; an export that failed its parity check is refused."""
    providers(device)  # a device ONNX Runtime cannot use stops before any export work
    folder = export_folder(loaded.folder)
    record = read_record(folder)
    if record is None:
        notify("info", f"{loaded.folder} has no export yet; exporting it to {folder} first")
        record = export(loaded, notify=notify).record
    if not record.get("good"):
        parity = record.get("parity", {})
        raise UserError(f"--runtime onnx: {folder} failed its parity check ({parity.get('main_metric')} "
                        f"{_number(parity.get('onnx', {}).get(parity.get('main_metric')))} against PyTorch's "
                        f"{_number(parity.get('pytorch', {}).get(parity.get('main_metric')))}); export again with "
                        "'tasks export' or use --runtime torch")
    loaded.model.cpu().eval()
    graph = loaded.task.export_graph(loaded.model)
    return OnnxModel(graph, session(folder / record.get("graph", GRAPH_FILE), device=device))
