"""Run folders: what ``tasks run`` leaves behind, and the marker that says it finished.

A run folder holds ``run.json`` whose ``status`` is ``running`` while training, ``failed`` after a
crash and ``complete`` only once the model, metrics, plots and card are all written; ``predict``
and ``evaluate`` refuse anything else.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from taskzoo.errors import UserError

STATUS_FILE = "run.json"
CONFIG_FILE = "config.yaml"


def default_run_dir(task: str, root: Path = Path("runs")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{task}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{task}-{stamp}-{suffix}"
    return candidate


def start_run(folder: Path, config: Mapping[str, Any], *, resume: bool = False) -> None:
    """Create (or reopen, when resuming) a run folder and mark it running."""
    if not resume and folder.exists() and any(folder.iterdir()):
        raise UserError(f"--output {folder}: folder exists and is not empty; choose another or use --resume {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / CONFIG_FILE, config)
    _write_status(folder, "running")


def finish_run(folder: Path, status: str = "complete") -> None:
    _write_status(folder, status)


def _write_status(folder: Path, status: str) -> None:
    previous = read_status(folder) or {}
    now = _dt.datetime.now().isoformat(timespec="seconds")
    record = {**previous, "status": status, "updated": now}
    record.setdefault("started", now)
    if status == "complete":
        record["finished"] = now
    (folder / STATUS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_status(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
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
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise UserError(f"{where}: its {CONFIG_FILE} is damaged (expected a mapping with the run's task)")
    if require_complete and status.get("status") != "complete":
        raise UserError(
            f"{where}: the run is '{status.get('status')}', not complete; "
            f"finish it with: tasks run {config['task']} --resume {folder}"
        )
    return config


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _validation_text(config: Mapping[str, Any]) -> str:
    if config.get("val"):
        return f"`{config['val']}`"
    return config.get("resolved", {}).get("validation") or "held out from the training data"


def write_model_card(folder: Path, config: Mapping[str, Any], summary: Mapping[str, Any], usage: str) -> None:
    """A short README.md: what was trained on what, how well, and how to use it."""
    val = summary.get("val", {})
    scalars = {k: v for k, v in val.items() if isinstance(v, (int, float))}
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in scalars.items())
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
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
