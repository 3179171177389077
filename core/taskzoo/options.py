"""Every option a command shares across tasks, declared once, and the one way values are checked.

The click options of ``tasks run/check/evaluate/predict``, the YAML ``--config`` reader, the
keyword arguments of `taskzoo.train` and `Run.predict`/`Run.evaluate`, the saved ``config.yaml``,
the trainer's `TrainingArgs`, the conformance kit's clash check and the benchmarks all read
`SHARED_OPTIONS`; adding an option is one edit here. A task's own options (`TaskSpec.options`) are
the same `Option` records and go through the same checks.

Values are merged, lowest first: built-in defaults < the task's defaults (`TaskSpec.defaults`) <
a resumed run's ``config.yaml`` < a ``--config`` file < flags or keyword arguments. Every layer is
checked by `coerce`, so a wrong value gets the same one-line `UserError` wherever it came from.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from taskzoo.storage import location
from taskzoo.errors import UserError
from taskzoo.export import DEFAULT_OPSET, QUANTIZE
from taskzoo.specs import Option, TaskSpec
from taskzoo.tracking import TRACKERS

COMMANDS = ("run", "check", "evaluate", "predict", "export", "serve")
_RUN = ("run",)
_LOAD = ("evaluate", "predict", "export", "serve")
_EXPORT = ("export",)
_SERVE = ("serve",)
_TUNE = ("tune",)
# ``tasks tune`` takes every run option (fixed for all trials, or searched) except these.
_NOT_IN_TUNE = {"resume", "overwrite"}

SHARED_OPTIONS: tuple[Option, ...] = (
    # -- inputs and outputs
    Option("data", "Data file or folder (run, check: training data; evaluate: labelled test data; predict: inputs; "
           "export: labelled data to check the export on, default the run's validation data).",
           type=Path, commands=("run", "check", "evaluate", "predict", "export")),
    Option("val", "Validation data (default: a split of --data).", type=Path, commands=_RUN),
    Option("split", "Split of a Hugging Face dataset given as --data (a datasets folder or hf:NAME; default: train "
           "for run and check, test for evaluate and predict). --val takes its validation (or test) split.",
           commands=("run", "check", "evaluate", "predict"), remember=False),
    Option("subset", "Configuration of a hub dataset given as hf:NAME (e.g. sst2 of nyu-mll/glue).",
           commands=("run", "check", "evaluate", "predict"), remember=False),
    Option("config", "YAML file of options; flags override it.", type=Path, commands=_RUN, remember=False),
    Option("resume", "Continue a run folder from its last checkpoint, or extend a complete run to more --epochs.",
           type=Path, commands=_RUN, remember=False),
    Option("overwrite", "Replace the run in the folder --output names (never a folder of other files).", type=bool,
           default=False, commands=_RUN, remember=False),
    Option("model", "A finished run folder.", type=Path, commands=_LOAD, remember=False),
    Option("output", "run: the run folder (default runs/TASK-TIME). tune: the tune folder (default "
           "tunes/TASK-TIME). evaluate: the folder for metrics and pictures "
           "(default RUN/eval-DATA). predict: a file (.csv, .tsv, .jsonl, .parquet) or, for tasks that draw pictures, a "
           "folder (default: the screen). export: the export folder (default RUN/export).", type=Path,
           commands=("run", "evaluate", "predict", "export")),
    Option("json", "Print the result as JSON (evaluate: the metrics; predict: the prediction records; export: "
           "export.json).", type=bool,
           default=False, commands=("evaluate", "predict", "export"), remember=False),
    # -- the training recipe
    Option("backbone", "Backbone name from 'tasks backbones TASK', a hub id or a local folder.", commands=_RUN),
    Option("epochs", "Training epochs.", type=int, default=3, minimum=0, commands=_RUN),
    Option("batch-size", "Examples per batch per device (evaluate, predict, export, serve: default twice the run's).",
           type=int, default=16, minimum=1, commands=("run", "evaluate", "predict", "export", "serve")),
    Option("lr", "Peak learning rate (AdamW).", type=float, default=5e-5, minimum=0, commands=_RUN),
    Option("weight-decay", "AdamW weight decay.", type=float, default=0.01, minimum=0, commands=_RUN),
    Option("warmup-ratio", "Share of steps spent warming up the learning rate.", type=float, default=0.1,
           minimum=0, maximum=1, commands=_RUN),
    Option("scheduler", "Learning-rate decay after warmup (constant: none).", default="linear",
           choices=("linear", "cosine", "constant"),
           commands=_RUN),
    Option("grad-accum", "Batches per optimizer step (gradient accumulation).", type=int, default=1, minimum=1,
           commands=_RUN),
    Option("max-grad-norm", "Gradient clipping norm (0 turns it off).", type=float, default=1.0, minimum=0,
           commands=_RUN),
    Option("patience", "Stop after this many epochs without improvement (early stopping).", type=int, minimum=1,
           commands=_RUN),
    Option("val-fraction", "Validation share split off the training data when --val is not given.", type=float,
           default=0.2, above=0, below=1, commands=_RUN),
    Option("seed", "Random seed for the head, data order and split.", type=int, default=42, minimum=0,
           commands=_RUN),
    Option("device", "Where to run.", default="auto", choices=("auto", "cpu", "cuda"),
           commands=("run", "evaluate", "predict", "serve"), remember=False),
    Option("runtime", "torch: the run's PyTorch model; onnx: its ONNX export through ONNX Runtime (RUN/export, "
           "exported first when there is none).", default="torch", choices=("torch", "onnx"),
           commands=("evaluate", "predict", "serve"), remember=False),
    Option("mixed-precision", "auto: bf16 (or fp16) on CUDA, bf16 on CPUs with AMX matrix units (Intel Xeon 4th "
           "generation and later), none on other CPUs.", default="auto",
           choices=("auto", "no", "fp16", "bf16"), commands=_RUN),
    Option("gradient-checkpointing", "Recompute activations in the backward pass instead of keeping them "
           "(transformers and timm backbones): less memory for about a third more compute.", type=bool,
           default=False, commands=_RUN),
    Option("data-workers", "Processes that decode and augment batches beside training (vision tasks; default: "
           "min(4, cores - 1) with 4 or more cores, else 0: the training thread does it).", type=int, minimum=0,
           commands=("run", "evaluate", "predict")),
    Option("compile", "Compile the model's forward pass with torch.compile (one warning and eager training where "
           "it cannot); off by default: it has not yet been shown to pay for a fine-tune's length.", type=bool,
           default=False, commands=_RUN),
    Option("lora", "Train low-rank adapters of this rank (peft) instead of every weight of a transformers "
           "backbone (sentiment, NER); model/ is saved with them merged, adapter/ beside it.", type=int, minimum=1,
           commands=_RUN),
    Option("lora-alpha", "LoRA scaling alpha (default: twice --lora).", type=float, above=0, commands=_RUN),
    Option("lora-dropout", "Dropout on the LoRA adapters' input.", type=float, default=0.05, minimum=0, below=1,
           commands=_RUN),
    Option("lora-targets", "Layers to adapt, comma-separated (default: peft's choice for the architecture, "
           "e.g. query,value for BERT-like encoders).", commands=_RUN),
    Option("log-every", "Log loss and throughput every N optimizer steps.", type=int, default=10, minimum=1,
           commands=_RUN),
    Option("tensorboard", "Also write TensorBoard logs into the run folder (as --report-to tensorboard).", type=bool,
           default=False, commands=_RUN),
    Option("report-to", "Also log options, steps, epochs (and, for mlflow, the run's pictures and metrics) to this "
           "tracker; repeat for several. mlflow writes to $MLFLOW_TRACKING_URI or MLflow's default in the working folder.", multiple=True,
           choices=tuple(TRACKERS), commands=_RUN),
    # -- what a crash may cost and what a finished run keeps
    Option("save-every", "Also checkpoint every N optimizer steps inside an epoch (0: at the end of each epoch "
           "only), bounding the work a crash loses.", type=int, default=0, minimum=0, commands=_RUN),
    Option("keep-checkpoint", "Keep the optimizer state and last weights after the run completes, so an extension "
           "(--resume RUN --epochs MORE) continues exactly as if never stopped.", type=bool, default=False,
           commands=_RUN),
    # -- a search (tasks tune): every run option above is fixed for all its trials or searched
    Option("trials", "Finished trials (complete or pruned) the study should hold in all: running the command again "
           "continues to this total, never adds as many again.", type=int, default=20, minimum=1, commands=_TUNE),
    Option("timeout", "Start no trial after this long, and stop the running one at its next epoch: seconds or "
           "90s, 45m, 2h, 1h30m.", commands=_TUNE),
    Option("space", "YAML file of the options to search (option: {low, high, log} | [choices] | value); it "
           "replaces the task's space (see --show-space).", type=Path, commands=_TUNE),
    Option("show-space", "Print the space that would be searched, as a --space file, and stop.", type=bool,
           default=False, commands=_TUNE),
    Option("storage", "Where the study lives (default: a journal file in the tune folder): a database URL "
           "(postgresql://user@host/db, mysql://..., sqlite:///file.db) or a journal file on a shared disk; "
           "workers started with the same --storage and --study share one study.", commands=_TUNE),
    Option("study", "Study name in --storage (default: the tune folder's name).", commands=_TUNE),
    Option("no-prune", "Run every trial to its last epoch (by default a trial whose main metric lags the median "
           "of earlier trials at the same epoch stops there).", type=bool, default=False, commands=_TUNE),
    # -- an export (tasks export)
    Option("opset", "ONNX opset of the exported graph.", type=int, default=DEFAULT_OPSET, minimum=14, maximum=23,
           commands=_EXPORT),
    Option("quantize", "none: fp32 weights; int8: dynamic int8 quantisation of the weights (for CPUs).",
           default="none", choices=QUANTIZE, commands=_EXPORT),
    Option("tolerance", "Largest drop or gain of the main metric the export may show against the PyTorch model "
           "(default 0.001, with --quantize int8 0.01).", type=float, minimum=0, commands=_EXPORT),
    # -- a prediction server (tasks serve)
    Option("host", "Address to listen on (0.0.0.0: every network interface).", default="127.0.0.1",
           commands=_SERVE, remember=False),
    Option("port", "Port to listen on.", type=int, default=8000, minimum=1, maximum=65535, commands=_SERVE,
           remember=False),
    Option("workers", "Server processes, each with the model loaded once.", type=int, default=1, minimum=1,
           commands=_SERVE, remember=False),
    Option("max-inputs", "Most inputs (texts, ids, images) one request may carry.", type=int, default=256, minimum=1,
           commands=_SERVE, remember=False),
    Option("max-request-mb", "Largest request body, in megabytes.", type=float, default=32.0, above=0,
           commands=_SERVE, remember=False),
)

SHARED_NAMES = frozenset(option.name for option in SHARED_OPTIONS)
# Where to read and write, not how to train: a saved config.yaml keeps them but a --config
# file may not set the run's own folder.
_NOT_IN_CONFIG_FILES = {"config", "resume", "model"}


def key(name: str) -> str:
    return name.replace("-", "_")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def shared(command: str) -> list[Option]:
    """The shared options ``tasks COMMAND`` takes."""
    return [option for option in SHARED_OPTIONS if command in option.commands]


def for_command(spec: TaskSpec, command: str) -> list[Option]:
    """Every option ``tasks COMMAND`` takes for this task: shared ones, then the task's own."""
    if command == "tune":
        return [option for option in for_command(spec, "run") if option.key not in _NOT_IN_TUNE] + shared("tune")
    return shared(command) + [option for option in spec.options if command in option.commands]


def shared_option(name: str) -> Option:
    """The shared option declared under ``name`` (flag or keyword spelling)."""
    for option in SHARED_OPTIONS:
        if option.name == name or option.key == name:
            return option
    raise KeyError(name)


def default_of(name: str) -> Any:
    """A shared option's built-in default (the trainer's and the benchmarks' recipe read these)."""
    return shared_option(name).default


def defaults(spec: TaskSpec, command: str = "run") -> dict[str, Any]:
    """Built-in defaults, then the task's own defaults, by underscored key."""
    values = {option.key: option.default for option in for_command(spec, command)}
    values.update({key(k): v for k, v in spec.defaults.items() if key(k) in values})
    return values


def _kind(option: Option) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}.get(option.type, "a string")


def _one(option: Option, value: Any) -> Any:
    where = flag(option.name)
    if option.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if option.type is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
        if not (isinstance(number, int) or (math.isfinite(number) and float(number).is_integer())):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        value = int(number)
    elif option.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
    elif option.type is Path:
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise UserError(f"{where}: expected a path, got {value!r}")
        value = location(value)
    else:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserError(f"{where}: expected {_kind(option)}, got {value!r}")
        value = option.type(value) if option.type is not str else str(value)
    if option.choices is not None and value not in option.choices:
        raise UserError(f"{where}: expected one of {', '.join(option.choices)}, got {value!r}")
    _check_bounds(option, value)
    return value


def _check_bounds(option: Option, value: Any) -> None:
    where = flag(option.name)
    if option.minimum is not None and value < option.minimum:
        raise UserError(f"{where}: expected at least {option.minimum:g}, got {value:g}")
    if option.maximum is not None and value > option.maximum:
        raise UserError(f"{where}: expected at most {option.maximum:g}, got {value:g}")
    if option.above is not None and value <= option.above:
        raise UserError(f"{where}: expected more than {option.above:g}, got {value:g}")
    if option.below is not None and value >= option.below:
        raise UserError(f"{where}: expected less than {option.below:g}, got {value:g}")


def coerce(option: Option, value: Any) -> Any:
    """``value`` as the option's type, checked against its choices and bounds; ``None`` stays
    ``None`` (not given). A `UserError` naming the flag otherwise."""
    if value is None:
        return None
    if option.multiple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_one(option, item) for item in items]
    if isinstance(value, (list, tuple)):
        raise UserError(f"{flag(option.name)}: expected {_kind(option)}, got a list")
    return _one(option, value)


def unknown_option(name: str, known: Iterable[str], where: str) -> UserError:
    """The one message for an option a command does not take, with the closest known name."""
    known_flags = sorted({flag(k) for k in known})
    close = difflib.get_close_matches(flag(name), known_flags, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known_flags)}"
    return UserError(f"{where}: no option {flag(name)}{hint}")


def task_where(spec: TaskSpec) -> str:
    """How an unknown option's message names the task: the same from a flag and a keyword."""
    return f"task '{spec.name}'"


def run_where(spec: TaskSpec) -> str:
    """The same for ``evaluate`` and ``predict``, where the task is a finished run's."""
    return f"a {spec.name} run"


def check_names(given: Mapping[str, Any], options: Sequence[Option], where: str) -> None:
    known = {option.key for option in options}
    for name in given:
        if key(name) not in known:
            raise unknown_option(name, known, where)


def resolve(
    spec: TaskSpec, command: str, layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """Every option of ``tasks COMMAND TASK`` with its value, from defaults up through ``layers``
    (``(where, values)`` pairs, lowest first; ``where`` names the source in error messages)."""
    options = {option.key: option for option in for_command(spec, command)}
    values = defaults(spec, command)
    for where, layer in layers:
        check_names(layer, list(options.values()), where)
        for name, value in layer.items():
            option = options[key(name)]
            if value is None or (option.multiple and value in ((), [])):
                continue
            values[option.key] = coerce(option, value)
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """A ``--config`` YAML file's options, by underscored key (a saved ``config.yaml`` works too)."""
    import yaml

    from taskzoo.helpers.tables import read_text

    try:
        document = yaml.safe_load(read_text(Path(path)))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    if document.pop("resolved", None) is not None:
        # A run's own config.yaml: repeat the run, into a new folder rather than over it.
        document.pop("output", None)
    document.pop("task", None)
    values = {key(str(k)): v for k, v in document.items()}
    for name in _NOT_IN_CONFIG_FILES & set(values):
        raise UserError(f"{path}: '{name}' cannot be set in a config file; give {flag(name)} on the command line")
    return values


def task_options(spec: TaskSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The task's own options out of resolved ``values`` (what `Task.options` holds)."""
    return {option.key: values.get(option.key, option.default) for option in spec.options}


def remembered(spec: TaskSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """The task options a finished run keeps for evaluate and predict (``Option.remember``)."""
    return {option.key: config[option.key] for option in spec.options
            if option.remember and config.get(option.key) is not None}
