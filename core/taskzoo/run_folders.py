"""Run folders: what ``tasks run`` leaves behind, the marker that says it finished, and the lock
that keeps one writer per folder.

A run folder holds ``run.json`` whose ``status`` is ``running`` while training, ``failed`` after an
error (with its ``reason``), ``interrupted`` after Ctrl-C or SIGTERM, and ``complete`` only once the model, metrics, plots and card are all
written; ``predict`` and ``evaluate`` refuse anything else. While a run writes, its process holds
an OS lock on ``.lock`` (it dies with the process): a second run or ``--resume`` of the folder
stops, and a ``running`` folder whose lock nobody holds is reported as interrupted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from taskzoo.errors import UserError
from taskzoo.specs import format_metric

STATUS_FILE = "run.json"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
MODEL_FOLDER = "model"
CHECKPOINT_FOLDER = "checkpoint"

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer is then up to the user
    fcntl = None  # type: ignore[assignment]

_held: dict[Path, int] = {}  # run folder -> descriptor of the lock this process holds on it


def default_run_dir(task: str, root: Path = Path("runs")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{task}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{task}-{stamp}-{suffix}"
    return candidate


def start_run(folder: Path, config: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False) -> bool:
    """Create (or reopen, when resuming) a run folder, take its writer lock and mark it running.

    ``overwrite`` empties a folder that holds a run nobody writes (never a folder of other files).
    Resuming a ``complete`` run extends it: the folder stays ``complete`` (its model and config
    untouched) with ``extension: running`` until `finish_run`; returns whether this is an extension.
    """
    if not resume:
        check_output(folder, overwrite=overwrite)  # refused before the lock file is made, too
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--output {folder}: cannot create the run folder ({error.strerror or error})") from None
    _lock(folder)
    try:
        extending = False
        if not resume and _holds_files(folder):
            if not overwrite:
                raise _not_empty(folder)
            _empty(folder)
        if resume and (read_status(folder) or {}).get("status") == "complete":
            extending = True
            _write_status(folder, "complete", reason=None, extension="running")
        else:
            write_yaml(folder / CONFIG_FILE, config)
            _write_status(folder, "running", reason=None)
        return extending
    except OSError as error:
        _unlock(folder)
        raise UserError(f"--output {folder}: cannot write the run folder ({error.strerror or error})") from None
    except BaseException:
        _unlock(folder)
        raise


def check_output(folder: Path, *, overwrite: bool = False) -> None:
    """A `UserError` when a new run cannot go into ``folder``: a file, or a folder that holds a run
    (without ``overwrite``) or anything else."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {folder}: is a file, not a folder")
    if _holds_files(folder) and not (overwrite and (folder / STATUS_FILE).exists()):
        raise _not_empty(folder)


def _not_empty(folder: Path) -> UserError:
    if (folder / STATUS_FILE).exists():
        return UserError(f"--output {folder}: holds a run already; continue it with --resume {folder}, replace it "
                         "with --overwrite, or choose another folder")
    return UserError(f"--output {folder}: folder exists and is not empty (and is not a run folder); choose another")


def _empty(folder: Path) -> None:
    """Remove a run folder's contents, all but the lock this process holds."""
    if not (folder / STATUS_FILE).exists():
        raise _not_empty(folder)
    for path in folder.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.name != LOCK_FILE for path in folder.iterdir())


def finish_run(folder: Path, status: str = "complete", reason: str | None = None, *, extension: bool = False) -> None:
    """Mark the run ``complete`` or ``failed``/``interrupted`` (with the ``reason``) and release its
    lock. The end of an ``extension`` that did not complete leaves the run ``complete``, with the
    extension's own status and reason beside it."""
    try:
        if extension and status != "complete":
            _write_status(folder, "complete", reason=None, extension=status, extension_reason=reason)
        else:
            _write_status(folder, status, reason=reason)
    finally:
        _unlock(folder)


def refuse_if_written(folder: Path) -> None:
    """A `UserError` naming the pid when a live process writes ``folder``: checked before any work
    starts (the lock itself, taken by `start_run`, settles a race)."""
    holder = writer(Path(folder))
    if holder:
        raise _busy(Path(folder), holder)


def _busy(folder: Path, holder: int | None) -> UserError:
    return UserError(f"{folder}: another taskzoo process{f' (pid {holder})' if holder and holder > 0 else ''} is "
                     "writing this run folder; wait for it to end, or stop it")


def _lock(folder: Path) -> None:
    if fcntl is None:
        return
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _pid_in(descriptor)
        os.close(descriptor)
        raise _busy(folder, holder) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held[folder.resolve()] = descriptor


def _unlock(folder: Path) -> None:
    descriptor = _held.pop(folder.resolve(), None)
    if descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _pid_in(descriptor: int) -> int | None:
    try:
        return int(os.pread(descriptor, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def writer(folder: Path) -> int | None:
    """The pid of the live process writing ``folder`` (this one included), or None."""
    if folder.resolve() in _held:
        return os.getpid()
    if fcntl is None or not (folder / LOCK_FILE).exists():
        return None
    descriptor = os.open(folder / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _pid_in(descriptor) or -1
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def _write_status(folder: Path, status: str, reason: str | None, **extension: str | None) -> None:
    previous = read_status(folder) or {}
    now = _dt.datetime.now().isoformat(timespec="seconds")
    record = {key: value for key, value in previous.items() if key not in ("reason", "extension", "extension_reason")}
    record.update(status=status, updated=now)
    record.setdefault("started", now)
    if reason:
        record["reason"] = reason
    record.update({key: value for key, value in extension.items() if value})
    if status == "complete" and not extension:
        record["finished"] = now
    write_atomically(folder / STATUS_FILE, json.dumps(record, indent=2) + "\n")


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` in the place of ``target``: two renames, so that a kill in between
    leaves ``target`` under a name `restore_folder` puts back, never half of either."""
    previous = target.with_name(target.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        target.rename(previous)
    new.rename(target)
    if previous.exists():
        shutil.rmtree(previous)


@contextlib.contextmanager
def replacing_folder(target: Path) -> Iterator[Path]:
    """The path of a new folder beside ``target`` (cleared of an earlier attempt's leftovers) for the
    block to write; when the block ends without an error it takes ``target``'s place through
    `replace_folder`. A block that fails leaves ``target`` as it was."""
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    yield partial
    replace_folder(partial, target)


def restore_folder(target: Path) -> None:
    """Undo a `replace_folder` that was killed between its renames."""
    previous = target.with_name(target.name + ".previous")
    if previous.is_dir() and not target.exists():
        previous.rename(target)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk and rename it over
    ``path``: a kill at any instant leaves the old file or the new one, never half of either."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def read_status(folder: Path) -> dict[str, Any] | None:
    return _read_json(folder / STATUS_FILE)


def _read_config(folder: Path) -> Any:
    """The run's ``config.yaml`` as YAML reads it; None when it is not YAML text."""
    try:
        return yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None


def open_run(folder: Path, *, require_complete: bool = True, option: str = "model") -> dict[str, Any]:
    """The resolved config of a run folder; a `UserError` naming ``--OPTION`` if it is not a usable run."""
    where = f"--{option.replace('_', '-')} {folder}"
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{where}: no such run folder")
    status = read_status(folder)
    if status is None or not (folder / CONFIG_FILE).exists():
        raise UserError(f"{where}: not a taskzoo run folder (no {STATUS_FILE} or {CONFIG_FILE})")
    config = _read_config(folder)
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise UserError(f"{where}: its {CONFIG_FILE} is damaged (expected a mapping with the run's task)")
    state = status.get("status")
    holder = writer(folder) if state == "running" else None
    if not holder:
        with contextlib.suppress(OSError):  # a read-only run folder is still read
            restore_folder(folder / MODEL_FOLDER)
            restore_folder(folder / CHECKPOINT_FOLDER)
    if state == "running" and holder:
        raise UserError(f"{where}: the run is still running (pid {holder}); wait for it to finish")
    if require_complete and state != "complete":
        why = f" ({status['reason']})" if status.get("reason") else ""
        what = {"running": "was interrupted (its process is gone)", "interrupted": "was interrupted"}.get(
            state, f"is '{state}'{why}, not complete")
        raise UserError(f"{where}: the run {what}; continue it with: tasks run {config['task']} --resume {folder}")
    return config


@contextlib.contextmanager
def damaged_file(what: str, advice: str) -> Iterator[None]:
    """A run-folder file that its loader cannot read is one line, ``WHAT (the loader's error);
    ADVICE``, not a traceback, whatever the loader (safetensors, torch, a task's own) raised."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the loader raised, the file is the cause
        detail = " ".join(str(error).split())[:200]
        raise UserError(f"{what} ({type(error).__name__}{': ' + detail if detail else ''}); {advice}") from None


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    write_atomically(path, yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True))


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def _validation_text(config: Mapping[str, Any]) -> str:
    if config.get("val"):
        return f"`{config['val']}`"
    return config.get("resolved", {}).get("validation") or "held out from the training data"


def write_model_card(folder: Path, config: Mapping[str, Any], summary: Mapping[str, Any], usage: str) -> None:
    """A short README.md: what was trained on what, how well, and how to use it."""
    val = summary.get("val", {})
    scalars = {k: v for k, v in val.items() if isinstance(v, (int, float))}
    rows = "\n".join(f"| {name} | {format_metric(value)} |" for name, value in scalars.items())
    backbone = config.get("backbone", {})
    lines = [
        f"# {config['task']} model: {folder.name}",
        "",
        f"Fine-tuned by taskzoo {config.get('taskzoo_version', '')} from backbone "
        f"**{backbone.get('name')}** ({backbone.get('source')}: `{backbone.get('location')}`, "
        f"licence {backbone.get('licence')}).",
        "",
        f"- training data: `{config.get('data')}`",
        f"- validation data: {_validation_text(config)}",
        f"- epochs run: {summary.get('epochs_run')}, best epoch: {summary.get('best_epoch')} "
        f"(chosen on {summary.get('main_metric')})",
        f"- seed: {config.get('seed')}",
        "",
        "## Validation metrics (best epoch)",
        "",
        "| metric | value |",
        "|---|---|",
        rows,
        "",
        "## Use it",
        "",
        "```",
        f"tasks evaluate --model {folder} --data test-file",
        f"tasks predict --model {folder} --data new-file --output predictions.csv",
        "```",
        "",
        usage.strip(),
        "",
    ]
    write_atomically(folder / "README.md", "\n".join(lines))


def describe(folder: Path) -> dict[str, Any] | None:
    """One row of ``tasks runs``: a run folder's or a tune folder's task, backbone, status, main
    metric and dates; None for a folder that is neither. A ``running`` run whose lock nobody holds
    is reported ``interrupted``, as `open_run` treats it."""
    folder = Path(folder)
    tune = _read_json(folder / "tune.json")
    if tune is not None:
        summary = _read_json(folder / "summary.json") or {}
        best = summary.get("best") or {}
        finished = summary.get("finished", 0)
        return {"kind": "tune", "folder": str(folder), "task": tune.get("task"),
                "backbone": (tune.get("run_options") or {}).get("backbone"),
                "status": f"{finished}/{tune.get('trials')} trials",
                "main_metric": summary.get("main_metric"), "value": best.get("value"),
                "started": _modified(folder / "tune.json"), "finished": None}
    status = read_status(folder)
    if status is None or not (folder / CONFIG_FILE).exists():
        return None
    config = _read_config(folder)
    config = config if isinstance(config, dict) else {}
    state = status.get("status")
    if state == "running" and not writer(folder):
        state = "interrupted"
    metrics = _read_json(folder / "metrics.json") or {}
    resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else {}
    backbone = resolved.get("backbone") or config.get("backbone")
    return {"kind": "run", "folder": str(folder), "task": config.get("task"),
            "backbone": backbone.get("name") if isinstance(backbone, dict) else backbone, "status": state,
            "main_metric": metrics.get("main_metric"), "value": metrics.get("best"),
            "started": status.get("started"), "finished": status.get("finished")}


def find_runs(roots: Sequence[Path], *, task: str | None = None, status: str | None = None,
              sort: str = "started") -> list[dict[str, Any]]:
    """Every run and tune folder under ``roots`` (a tune's trials included), as `describe` rows,
    filtered by task and status (``complete``, ``failed``, ``interrupted``, ``running`` or ``tune``)
    and sorted by ``started`` (newest first), ``value`` (highest first), ``task`` or ``folder``."""
    markers = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
        markers += [*root.rglob(STATUS_FILE), *root.rglob("tune.json")]
    rows = []
    for marker in sorted(markers):
        row = describe(marker.parent)
        if row is None or (task and row["task"] != task):
            continue
        if status and not (row["status"] == status or (status == "tune" and row["kind"] == "tune")):
            continue
        rows.append(row)
    keys = {"started": lambda r: r["started"] or "", "task": lambda r: (r["task"] or "", r["folder"]),
            "folder": lambda r: r["folder"], "value": lambda r: (r["value"] is not None, r["value"] or 0)}
    if sort not in keys:
        raise UserError(f"--sort: expected one of {', '.join(keys)}, got {sort!r}")
    return sorted(rows, key=keys[sort], reverse=sort in ("started", "value"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def _modified(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
