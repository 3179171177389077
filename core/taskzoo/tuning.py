"""Hyperparameter search (``tasks tune``, `taskzoo.tune`) on Optuna: every trial an ordinary run.

A tune folder holds ``tune.json`` (what was asked), the study's journal file ``study.journal``
(unless ``--storage`` names a shared store), one run folder per trial under ``trials/``,
``summary.json``, a ``best`` link to the best trial's run folder and the pictures of the search.

How a study stays whole:

- ``--trials N`` counts finished trials (complete or pruned) of the whole study, whoever ran them:
  running the same command again continues to N, never N more, and several processes or machines
  on one storage stop together at N.
- A trial whose process died (SIGKILL, a lost machine) is failed and its parameters queued again:
  on this machine at once (its pid is gone), on others through the storage's heartbeat (database
  storages; a journal file shared between machines cannot tell a dead worker from a slow one).
- The first trial is the configuration ``tasks run`` would use, so the summary says what the
  search gained over it.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskzoo import options as schema
from taskzoo import run_folders, tracking
from taskzoo.errors import RunInterrupted, UserError
from taskzoo.plugins import get_host
from taskzoo.specs import SearchParam, TaskSpec, training_space

Notify = Callable[[str, str], None]

TUNE_FILE = "tune.json"
SUMMARY_FILE = "summary.json"
JOURNAL_FILE = "study.journal"
# Options of ``tasks tune`` itself; every other option is a run option, fixed for all trials.
TUNE_KEYS = frozenset(option.key for option in schema.SHARED_OPTIONS if option.commands == ("tune",))
# Run options a search may not vary: where data and runs are, and how the machine is used.
_NOT_SEARCHABLE = frozenset({"data", "val", "split", "subset", "config", "output", "resume", "overwrite", "backbone",
                             "device", "log_every", "tensorboard", "save_every", "keep_checkpoint", "seed",
                             "gradient_checkpointing", "compile", "data_workers"})
# Heartbeats of database storages: a trial silent this long is failed and queued again.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
# The pictures are drawn at the end and at most this often in between (a few seconds each).
DRAW_EVERY_SECONDS = 300


def _quiet(level: str, message: str) -> None:
    pass


# -- the search space ----------------------------------------------------------------------------


def default_space(spec: TaskSpec) -> list[SearchParam]:
    """What ``tasks tune TASK`` searches without ``--space``: the task's declared space, or the
    shared recipe around the task's defaults."""
    return list(spec.search_space) or list(training_space(schema.defaults(spec, "run")))


def checked_space(spec: TaskSpec, space: Sequence[SearchParam], where: str) -> list[SearchParam]:
    """Each parameter names a run option of the task that a search may vary, with bounds or
    choices that option accepts; a `UserError` naming ``where`` and the parameter otherwise."""
    searchable = {option.key: option for option in schema.for_command(spec, "run") if option.key not in _NOT_SEARCHABLE}
    checked = []
    for param in space:
        option = searchable.get(param.key)
        if option is None:
            raise schema.unknown_option(param.name, searchable, f"{where}: task '{spec.name}'")
        problems = param.problems()
        if problems:
            raise UserError(f"{where}: {problems[0]}")
        try:
            if param.choices:
                choices = tuple(schema.coerce(option, value) for value in param.choices)
                checked.append(SearchParam(option.name, choices=choices))
            else:
                if option.type not in (int, float):
                    raise UserError(f"{schema.flag(option.name)} takes {schema._kind(option)}: give a list of choices")
                low, high = schema.coerce(option, param.low), schema.coerce(option, param.high)
                checked.append(SearchParam(option.name, low, high, log=param.log))
        except UserError as error:
            raise UserError(f"{where}: {param.name}: {error}") from None
    if not checked:
        raise UserError(f"{where}: the space is empty; name at least one option to search")
    return checked


def read_space(path: Path, spec: TaskSpec) -> list[SearchParam]:
    """A ``--space`` YAML file: option names mapped to ``{low, high, log}``, a list of choices, or a
    single value (fixed). It replaces the default space; what it does not name keeps its default."""
    import yaml

    from taskzoo.helpers.tables import read_text

    try:
        document = yaml.safe_load(read_text(Path(path)))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict) or not document:
        raise UserError(f"{path}: expected a mapping of option names to ranges, e.g. 'lr: {{low: 1.0e-5, high: 1.0e-3, "
                        f"log: true}}' (see 'tasks tune {spec.name} --show-space')")
    space = []
    for name, value in document.items():
        name = str(name).replace("_", "-")
        if isinstance(value, dict):
            unknown = set(value) - {"low", "high", "log"}
            if unknown or not {"low", "high"} <= set(value):
                raise UserError(f"{path}: {name}: expected keys low, high and optionally log, got {', '.join(map(str, value))}")
            low, high = (_number(path, name, value[k]) for k in ("low", "high"))
            if not isinstance(value.get("log", False), bool):
                raise UserError(f"{path}: {name}: log must be true or false")
            space.append(SearchParam(name, low, high, log=value.get("log", False)))
        elif isinstance(value, list):
            if not value:
                raise UserError(f"{path}: {name}: an empty list of choices")
            space.append(SearchParam(name, choices=tuple(value)))
        elif value is None:
            raise UserError(f"{path}: {name}: expected a range, a list of choices or a value")
        else:
            space.append(SearchParam(name, choices=(value,)))
    return checked_space(spec, space, str(path))


def _number(path: Path, name: str, value: Any) -> int | float:
    if isinstance(value, bool):
        raise UserError(f"{path}: {name}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    try:  # YAML reads 1e-5 (no dot) as a string
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {name}: expected a number, got {value!r}") from None


def space_text(space: Sequence[SearchParam]) -> str:
    """The space as a ``--space`` file writes it."""
    import yaml

    return yaml.safe_dump({param.name: param.describe() for param in space}, sort_keys=False)


def _suggest(trial: Any, param: SearchParam) -> Any:
    if param.choices:
        return param.choices[0] if len(param.choices) == 1 else trial.suggest_categorical(param.name, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.name, param.low, param.high, log=param.log)
    return trial.suggest_float(param.name, float(param.low), float(param.high), log=param.log)


def _inside(param: SearchParam, value: Any) -> bool:
    if param.choices:
        return value in param.choices
    return isinstance(value, (int, float)) and param.low <= value <= param.high


def parse_duration(text: Any) -> float:
    """``--timeout``: seconds, or a duration such as ``90s``, ``45m``, ``2h``, ``1h30m``, ``1d``."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise UserError(f"--timeout: expected seconds or a duration such as 90s, 45m, 2h or 1h30m, got {text!r}")
        seconds = sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"--timeout: expected a duration above 0, got {text!r}")
    return seconds


# -- storage -------------------------------------------------------------------------------------


def open_storage(address: str | None, folder: Path) -> Any:
    """Optuna storage: a journal file in the tune folder by default; ``--storage`` a database URL
    (``postgresql://``, ``mysql://``, ``sqlite:///``) or a journal file on a shared disk."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if not address:
        return optuna.storages.JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    if "://" not in address:
        path = Path(address).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"--storage {address}: folder {path.parent} does not exist")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = _with_driver(address)
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable for years
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
        except ModuleNotFoundError as error:
            if url.startswith("postgres"):
                raise UserError(f"--storage {_without_password(address)}: the PostgreSQL driver ({error.name}) is not "
                                "installed; pip install 'taskzoo[postgres]'") from None
            raise UserError(f"--storage {_without_password(address)}: its driver ({error.name}) is not installed") from None
        except Exception as error:  # sqlalchemy's errors: the URL, the server, or a race
            # Workers started together race to create the study tables; the loser finds them made.
            if type(error).__name__ == "IntegrityError" and attempt < 3:
                time.sleep(0.5 + attempt)
                continue
            message = " ".join(str(error).split("\n")[0].split())[:300]
            raise UserError(f"--storage {_without_password(address)}: cannot open the study store ({message})") from None
    raise AssertionError("unreachable")


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; the ``[postgres]`` extra installs psycopg 3."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None:
        return f"postgresql+psycopg://{rest}"
    return url


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# -- the study -----------------------------------------------------------------------------------


@dataclass
class TuneResult:
    folder: Path
    summary: dict[str, Any]
    space: list[SearchParam]


def default_tune_dir(task: str) -> Path:
    return run_folders.default_run_dir(task, Path("tunes"))


def split_given(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the search's own options, the run options every trial shares)."""
    mine = TUNE_KEYS | {"output"}  # --output is the tune folder; each trial's run folder is inside it
    own = {schema.key(k): v for k, v in given.items() if schema.key(k) in mine}
    return own, {k: v for k, v in given.items() if schema.key(k) not in mine}


def tune(spec: TaskSpec, given: Mapping[str, Any], notify: Notify = _quiet) -> TuneResult:
    """Search ``given``'s space (``space``, default `default_space`) for ``trials`` finished trials;
    every other option is a run option shared by all trials. Returns the study's summary."""
    from taskzoo import pipeline

    own_given, run_given = split_given(given)
    own = schema.resolve(spec, "tune", [(schema.task_where(spec), own_given)])
    space = read_space(own["space"], spec) if own.get("space") else checked_space(spec, default_space(spec), "the default space")
    fixed = [param for param in space if param.key in run_given]
    if fixed:
        notify("info", f"not searched, given on the command line: {', '.join(schema.flag(p.name) for p in fixed)}")
        space = [param for param in space if param.key not in run_given]
    if own.get("show_space"):
        return TuneResult(Path(own.get("output") or "."), {}, space)
    if not space:
        raise UserError("nothing left to search: every option of the space is given on the command line")
    config = Path(run_given["config"]) if run_given.get("config") else None
    base = pipeline.run_values(spec, run_given, config=config)
    timeout = parse_duration(own["timeout"]) if own.get("timeout") else None
    folder = Path(own.get("output") or default_tune_dir(spec.name))
    data = pipeline.read_data(spec, base, notify)  # bad data stops here, once; trials that read alike share it
    _start_folder(folder, spec, base, own, space)
    study = _open_study(spec, own, folder)
    search = _Search(spec, study, space, base, run_given, folder, own, timeout, notify, data)
    search.tracking = tracking.TuneTracking(
        tracking.wanted(base), folder, spec.name,
        {"study": study.study_name, "trials": own["trials"], "timeout": own.get("timeout"),
         **{f"space.{p.name}": json.dumps(p.describe()) for p in space}})
    try:
        search.run()
    except KeyboardInterrupt as error:
        search.write_summary()
        search.tracking.finish(folder, status="KILLED")
        signum = getattr(error, "signum", None)
        raise RunInterrupted(f"tune stopped; run the same command again to continue the study in {folder}",
                             signum) from None
    except BaseException:
        search.tracking.finish(folder, status="FAILED")
        raise
    summary = search.write_summary()
    search.tracking.finish(folder)
    return TuneResult(folder, summary, space)


def _start_folder(folder: Path, spec: TaskSpec, base: Mapping[str, Any], own: Mapping[str, Any],
                  space: Sequence[SearchParam]) -> None:
    marker = folder / TUNE_FILE
    if marker.exists():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{marker}: damaged; expected the JSON a tune writes (remove the folder to start over)") from None
        if previous.get("task") != spec.name:
            raise UserError(f"--output {folder}: holds a tune of task '{previous.get('task')}', not '{spec.name}'")
    elif folder.exists() and any(folder.iterdir()):
        raise UserError(f"--output {folder}: a folder of other files, not a tune folder; choose an empty or new folder")
    try:
        (folder / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--output {folder}: cannot create it ({error.strerror or error})") from None
    record = {"task": spec.name, "trials": own["trials"], "timeout": own.get("timeout"),
              "storage": _without_password(own["storage"]) if own.get("storage") else str(folder / JOURNAL_FILE),
              "study": own.get("study") or folder.name, "space": {p.name: p.describe() for p in space},
              "run_options": _jsonable(base)}
    run_folders.write_json(marker, record)


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def _open_study(spec: TaskSpec, own: Mapping[str, Any], folder: Path) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goal = {metric.name: metric.goal for metric in get_host().metrics(spec.name)}.get(spec.main_metric, "max")
    storage = open_storage(own.get("storage"), folder)
    name = own.get("study") or folder.name
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                direction="maximize" if goal == "max" else "minimize")
    recorded = study.user_attrs.get("task")
    if recorded is None:
        study.set_user_attr("task", spec.name)
        study.set_user_attr("main_metric", spec.main_metric)
    elif recorded != spec.name:
        raise UserError(f"--study {name}: a study of task '{recorded}' in that storage, not '{spec.name}'; "
                        "choose another --study name")
    return study


def make_sampler(seed: int, trials: int) -> Any:
    """TPE as a search of ``trials`` uses it: random for the first third (2 to 10 trials), then
    guided; ``constant_liar`` keeps parallel workers from all trying the same point."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=max(2, min(10, trials // 3)))


class _Search:
    """One worker's share of a study: trials until the study holds ``trials`` finished ones."""

    def __init__(self, spec: TaskSpec, study: Any, space: list[SearchParam], base: dict[str, Any],
                 run_given: Mapping[str, Any], folder: Path, own: Mapping[str, Any], timeout: float | None,
                 notify: Notify, data: Any = None) -> None:
        import optuna
        from taskzoo import pipeline

        self.spec, self.study, self.space, self.base, self.folder = spec, study, space, base, folder
        self.run_given, self.own, self.notify = dict(run_given), own, notify
        self.data, self.data_read_for = data, pipeline.reading_inputs(spec, base)
        self.tracking = tracking.TuneTracking([], folder, spec.name, {})
        self.wanted = own["trials"]
        self._drawn = time.monotonic()
        self.deadline = time.monotonic() + timeout if timeout else None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._recover_dead_trials()
        if not study.trials:
            defaults = {p.name: base[p.key] for p in space if _inside(p, base[p.key]) and len(p.choices) != 1}
            study.enqueue_trial(defaults, user_attrs={"default": True}, skip_if_exists=True)
        # A new study samples as --seed says; a continued one, or a worker joining others, draws afresh.
        states = [t.state for t in study.get_trials(deepcopy=False)]
        others = optuna.trial.TrialState.RUNNING in states
        started = sum(state != optuna.trial.TrialState.WAITING for state in states)
        study.sampler = make_sampler(base["seed"] + started + (self.pid if others else 0), self.wanted)
        study.pruner = (optuna.pruners.NopPruner() if own.get("no_prune")
                        else optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))

    # -- counting ----------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts

    def _finished(self, counts: Mapping[str, int]) -> int:
        return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)

    def run(self) -> None:
        while True:
            self._recover_dead_trials()
            counts = self._finished_and_running()
            finished, running, failed = counts
            if finished >= self.wanted:
                return
            if finished + running >= self.wanted:
                self.notify("info", f"the study's last {running} trial(s) are running elsewhere; this worker stops")
                return
            if failed >= max(3, self.wanted):
                raise UserError(f"{failed} trials failed (see {self.folder / SUMMARY_FILE}); the study stops here")
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.notify("info", f"--timeout {self.own['timeout']} reached after {finished} finished trial(s)")
                return
            self.study.optimize(self._objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            self._report_last()
            best = self._best()
            if best is not None:
                self.tracking.trial_done(len(self.study.trials) - 1, {f"best_{self.spec.main_metric}": best.value})
            self.write_summary(draw=time.monotonic() - self._drawn > DRAW_EVERY_SECONDS)

    def _finished_and_running(self) -> tuple[int, int, int]:
        counts = self._counts()
        return self._finished(counts), counts.get("RUNNING", 0), counts.get("FAIL", 0)

    # -- one trial ---------------------------------------------------------------------------

    def _objective(self, trial: Any) -> float:
        import optuna

        from taskzoo import pipeline

        params = {param.key: _suggest(trial, param) for param in self.space}
        run_dir = self.folder / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", str(run_dir.resolve()))
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("pid", self.pid)
        shown = ", ".join(f"{p.name}={_short(params[p.key])}" for p in self.space)
        self.notify("info", f"trial {trial.number} ({self._finished_and_running()[0] + 1}/{self.wanted}): {shown}")
        stopped: dict[str, Any] = {}

        def after_epoch(epoch: int, score: float) -> bool:
            trial.report(score, epoch)
            if trial.should_prune():
                stopped.update(reason="pruned", epoch=epoch)
                return True
            if self.deadline is not None and time.monotonic() >= self.deadline:
                stopped.update(reason="stopped by --timeout", epoch=epoch)
                return True
            return False

        try:
            values = pipeline.run_values(self.spec, {**self.run_given, **params, "output": run_dir},
                                         config=Path(self.run_given["config"]) if self.run_given.get("config") else None)
            # A trial that reads as the search did (image size, say, was not searched) trains on that data.
            data = self.data if pipeline.reading_inputs(self.spec, values) == self.data_read_for else None
            result = pipeline.train(self.spec, values, notify=_warnings_only(self.notify), after_epoch=after_epoch,
                                    data=data, resumable=False)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {' '.join(str(error).split())}"[:500])
            raise
        value = result.summary["best"]
        if stopped:
            trial.set_user_attr("stopped", f"{stopped['reason']} after epoch {stopped['epoch']}")
            raise optuna.TrialPruned(trial.user_attrs["stopped"])
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"{self.spec.main_metric} is {value}")
        return value

    def _report_last(self) -> None:
        mine = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == self.pid
                and t.user_attrs.get("host") == self.host and t.state.is_finished()]
        if not mine:
            return
        trial = mine[-1]
        best = self._best()
        state = trial.state.name.lower()
        if trial.state.name == "COMPLETE":
            outcome = f"{self.spec.main_metric} {trial.value:.4f}"
        elif trial.state.name == "PRUNED":
            outcome = trial.user_attrs.get("stopped", "pruned")
        else:
            outcome = f"failed: {trial.user_attrs.get('error', 'see the log')}"
        best_text = f"best {best.value:.4f} (trial {best.number})" if best is not None else "no complete trial yet"
        self.notify("info", f"trial {trial.number} {state if state != 'complete' else 'done'}: {outcome}; {best_text}")

    def _best(self) -> Any:
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not complete:
            return None
        return self.study.best_trial

    # -- recovery ----------------------------------------------------------------------------

    def _recover_dead_trials(self) -> None:
        """Trials left running by a process of this machine that no longer lives: failed, and their
        parameters queued again."""
        import optuna

        storage = self.study._storage
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
            if host != self.host or pid is None or pid == self.pid or _alive(pid):
                continue
            try:
                storage.set_trial_user_attr(trial._trial_id, "error", f"its process ({pid}) died")
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker got there first
                continue
            self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            self.notify("info", f"trial {trial.number} was cut off (process {pid} died); its parameters run again")

    # -- results -----------------------------------------------------------------------------

    def write_summary(self, draw: bool = True) -> dict[str, Any]:
        """``summary.json`` and the ``best`` link; with ``draw``, the pictures too."""
        trials = self.study.get_trials(deepcopy=False)
        best = self._best()
        default = next((t for t in trials if t.user_attrs.get("default")), None)
        summary: dict[str, Any] = {
            "task": self.spec.name, "study": self.study.study_name, "main_metric": self.spec.main_metric,
            "direction": self.study.direction.name.lower(), "trials_asked": self.wanted,
            "finished": self._finished(self._counts()),
            "best": _trial_record(best) if best is not None else None,
            "default": _trial_record(default) if default is not None else None,
            "trials": [_trial_record(t) for t in trials],
        }
        if best is not None and default is not None and default.value is not None:
            summary["gain_over_default"] = best.value - default.value
        run_folders.write_json(self.folder / SUMMARY_FILE, summary)
        if best is not None:
            _link_best(self.folder, Path(best.user_attrs.get("folder", "")))
        if draw:
            _draw(self.folder, self.study, self.spec.main_metric)
            self._drawn = time.monotonic()
        return summary


def _trial_record(trial: Any) -> dict[str, Any]:
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    record = {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
              "params": dict(trial.params), "seconds": seconds, "folder": trial.user_attrs.get("folder"),
              "host": trial.user_attrs.get("host")}
    for extra in ("error", "stopped", "default", "retry_of"):
        if extra in trial.user_attrs:
            record[extra] = trial.user_attrs[extra]
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        record["value"] = trial.intermediate_values[max(trial.intermediate_values)]
    return record


def _link_best(folder: Path, best: Path) -> None:
    """``best`` -> the best trial's run folder (relative, so the tune folder can move)."""
    if not best.is_dir():
        return  # run on another machine
    link = folder / "best"
    try:
        target = os.path.relpath(best, folder)
    except ValueError:
        target = str(best)
    partial = folder / ".best.partial"
    partial.unlink(missing_ok=True)
    os.symlink(target, partial, target_is_directory=True)
    os.replace(partial, link)


def _draw(folder: Path, study: Any, metric: str) -> None:
    """The search as pictures: the main metric over trials, parameter importances, and the main
    metric against the learning rate."""
    from taskzoo.helpers.plots import _pyplot, save_figure

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return
    import optuna.visualization.matplotlib as views

    # optuna's views switch matplotlib to its ggplot style: rc_context puts the run's own style back.
    with warnings.catch_warnings(), _pyplot().rc_context():
        warnings.simplefilter("ignore")  # optuna's matplotlib views are marked experimental
        axes = views.plot_optimization_history(study, target_name=metric)
        axes.figure.tight_layout()
        save_figure(axes.figure, folder / "optimization_history.png")
        if len(complete) >= 2:
            try:
                axes = views.plot_param_importances(study, target_name=metric)
                axes.figure.tight_layout()
                save_figure(axes.figure, folder / "param_importances.png")
            except (RuntimeError, ValueError, ZeroDivisionError):
                pass  # every parameter was the same in the complete trials: nothing to rank yet
    if any("lr" in t.params for t in complete):
        _plot_against_lr(study, metric, folder / "metric_vs_lr.png")


def _plot_against_lr(study: Any, metric: str, output: Path) -> None:
    from taskzoo.helpers.plots import _pyplot, save_figure

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for state, colour in (("COMPLETE", "tab:blue"), ("PRUNED", "tab:orange")):
        points = [(t.params["lr"], t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)])
                  for t in study.get_trials(deepcopy=False)
                  if t.state.name == state and "lr" in t.params and (t.value is not None or t.intermediate_values)]
        if points:
            axis.scatter(*zip(*points), color=colour, label=state.lower())
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} against the learning rate")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, output)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _warnings_only(notify: Notify) -> Notify:
    def shown(level: str, message: str) -> None:
        if level == "warning":
            notify(level, message)

    return shown
