"""Data where users keep it: local paths, and URLs of any fsspec filesystem (``s3://``, ``gs://``,
``az://``, ``https://``, ...) for ``--data``, ``--val``, task options that name files (``Option.path``)
and predict's ``--output``.

A remote file or folder is copied into a local cache (``$TASKZOO_CACHE``, default
``~/.cache/taskzoo/remote``) and read from there by the task's own reader, so every reader, error
message and check works the same on remote data; a copy is used again while the remote's size and
ETag (or modification time) are unchanged. Credentials and endpoints come from each store's
standard environment variables (for S3 also ``AWS_ENDPOINT_URL``, so MinIO and other
S3-compatible stores work). The drivers are the ``[cloud]`` extra: a URL whose driver is missing
stops with one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from taskzoo.errors import DataError, UserError

__all__ = ["cache_root", "fetch", "is_url", "location", "writable"]

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
# The fsspec driver each common scheme needs, all in taskzoo's [cloud] extra.
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
           "abfss": "adlfs", "adl": "adlfs"}
# A remote folder larger than this is refused rather than copied (TASKZOO_CACHE_LIMIT_GB).
DEFAULT_LIMIT_GB = 50.0


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL of a remote filesystem (``file://`` is a local path)."""
    match = _URL.match(str(location))
    return bool(match) and match.group(1).lower() != "file"


def location(value: str | os.PathLike[str]) -> str | Path:
    """What the user gave as a path: a `Path`, or the URL as text (a Path would fold its ``//``)."""
    return str(value) if is_url(value) else Path(value)


def cache_home() -> Path:
    """taskzoo's cache: ``$TASKZOO_CACHE``, default ``~/.cache/taskzoo``."""
    return Path(os.environ.get("TASKZOO_CACHE") or Path.home() / ".cache" / "taskzoo")


def cache_root() -> Path:
    return cache_home() / "remote"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if scheme in ("s3", "s3a") and endpoint:
        options["endpoint_url"] = endpoint
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        driver = DRIVERS.get(scheme)
        if driver:
            raise UserError(f"{url}: reading {scheme}:// needs {driver}: pip install 'taskzoo[cloud]'") from None
        raise UserError(f"{url}: no installed fsspec driver reads {scheme}:// URLs") from None
    except ValueError as error:
        raise UserError(f"{url}: {_one_line(error)}") from None


def _stamp(info: dict[str, Any]) -> str:
    """What says a remote file changed: its size and ETag (or modification time)."""
    version = next((str(info[key]) for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified",
                                               "updated") if info.get(key) is not None), "")
    return f"{info.get('size')}:{version}"


def _remote_error(url: str, error: BaseException) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"{url}: no such file or folder")
    if isinstance(error, PermissionError):
        return DataError(f"{url}: access denied; check the store's credentials ({_one_line(error)})")
    return DataError(f"{url}: cannot be read: {_one_line(error)}")


def fetch(location: str | os.PathLike[str], *, role: str = "train", split: str | None = None,
          subset: str | None = None) -> Path:
    """The local path to read ``location`` from: itself when local, else a cached copy of the
    remote file or folder (copied again only where the remote changed). A Hugging Face dataset
    (a ``save_to_disk`` folder, local or remote, or ``hf:NAME`` from the hub) becomes a Parquet
    file of one split: ``split``, or the usual one for ``role``."""
    text = str(location)
    if text.startswith("hf:"):
        return _dataset_as_parquet(_hub_dataset(text, subset), text, role, split)
    local = _copy(text) if is_url(text) else Path(location)
    if _is_datasets_folder(local):
        return _dataset_as_parquet(_folder_dataset(local, text), text, role, split)
    if split and role != "val":
        raise UserError(f"--split {split}: {text} is not a Hugging Face dataset (a datasets folder or hf:NAME)")
    return local


# -- Hugging Face datasets -----------------------------------------------------------------------

# The split a role reads when --split does not say.
USUAL_SPLITS = {"train": ("train",), "val": ("validation", "valid", "dev", "test"), "test": ("test", "validation"),
                "predict": ("test", "validation", "train")}


def _is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json"))


def _folder_dataset(path: Path, text: str) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises its own types for a broken folder
        raise DataError(f"{text}: not a readable datasets folder (save_to_disk): {_one_line(error)}") from None


def _hub_dataset(text: str, subset: str | None) -> Any:
    import datasets

    from taskzoo.weights import hub_reachable

    name = text[3:].strip()
    if not name:
        raise UserError(f"{text}: expected hf:NAME, a dataset id on the Hugging Face hub (e.g. hf:stanfordnlp/imdb)")
    try:
        return datasets.load_dataset(name, subset)
    except Exception as error:  # offline, unknown name, missing subset: one line
        if not hub_reachable():
            raise UserError(f"{text}: not in the local datasets cache and the hub cannot be reached (no network?); "
                            "save it with datasets' save_to_disk where there is a network and give that folder") from None
        raise UserError(f"{text}: {_one_line(error)}") from None


def _dataset_as_parquet(dataset: Any, text: str, role: str, split: str | None) -> Path:
    """One split as Parquet in the cache, class ids as their names (a ClassLabel column's ints
    become 'negative'/'positive', as a CSV would hold them)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        names = list(dataset)
        wanted = [split] if split else [name for name in USUAL_SPLITS.get(role, ("train",)) if name in names]
        if not wanted or wanted[0] not in names:
            asked = f"no split '{split}'" if split else f"no {' or '.join(USUAL_SPLITS.get(role, ('train',)))} split"
            raise UserError(f"{text}: {asked}; its splits are {', '.join(names)} (choose one with --split)")
        split, dataset = wanted[0], dataset[wanted[0]]
    fingerprint = getattr(dataset, "_fingerprint", "") or ""
    key = hashlib.sha256(f"{text}|{split}|{fingerprint}".encode()).hexdigest()[:20]
    target = cache_root() / "datasets" / key / f"{Path(text.rstrip('/')).name or 'dataset'}-{split or 'data'}.parquet"
    if target.exists():
        return target
    frame = dataset.to_pandas()
    for column, feature in dataset.features.items():
        names = _class_names(feature)
        if names is None:
            continue
        if isinstance(feature, datasets.ClassLabel):
            frame[column] = [names[v] if 0 <= v < len(names) else "" for v in frame[column]]
        else:  # a sequence of class ids (NER tags)
            frame[column] = [[names[v] for v in values] for values in frame[column]]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    frame.to_parquet(partial, index=False)
    partial.replace(target)
    return target


def _class_names(feature: Any) -> list[str] | None:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _copy(text: str) -> Path:
    fs, path = _filesystem(text)
    try:
        fs.invalidate_cache()  # fsspec keeps listings per process: look again at what is there now
        info = fs.info(path)
        files = ({info["name"]: info} if info.get("type") != "directory"
                 else fs.find(path, detail=True))
    except Exception as error:  # each store raises its own types: one line naming the URL
        raise _remote_error(text, error) from None
    folder = cache_root() / hashlib.sha256(text.rstrip("/").encode()).hexdigest()[:20]
    name = Path(path.rstrip("/")).name or "data"
    target = folder / name
    if info.get("type") == "directory":
        total = sum(int(f.get("size") or 0) for f in files.values())
        limit = float(os.environ.get("TASKZOO_CACHE_LIMIT_GB") or DEFAULT_LIMIT_GB)
        if total > limit * 1e9:
            raise DataError(f"{text}: {total / 1e9:.1f} GB, above the {limit:g} GB local cache limit "
                            "(TASKZOO_CACHE_LIMIT_GB); copy the part you need, or raise the limit")
        if not files:
            raise DataError(f"{text}: the folder is empty")
    stamps_file = folder / "stamps.json"
    stamps = json.loads(stamps_file.read_text()) if stamps_file.exists() else {}
    root = info["name"].rstrip("/")
    wanted: list[tuple[str, Path, Path, str]] = []  # (remote, relative, local, stamp): not cached as they are now
    for remote, details in files.items():
        relative = Path(remote[len(root):].lstrip("/")) if info.get("type") == "directory" else Path()
        local = target / relative if str(relative) not in ("", ".") else target
        stamp = _stamp(details)
        if stamps.get(str(relative)) == stamp and local.exists():
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        wanted.append((remote, relative, local, stamp))
    partials = [local.with_name(local.name + ".partial") for _, _, local, _ in wanted]
    try:  # one call: the asynchronous stores (s3fs, gcsfs, adlfs) fetch many files at once
        if wanted:
            fs.get([remote for remote, _, _, _ in wanted], [str(partial) for partial in partials])
    except Exception as error:  # noqa: BLE001 - one line naming the URL
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise _remote_error(text, error) from None
    for (_, relative, local, stamp), partial in zip(wanted, partials):
        partial.replace(local)
        stamps[str(relative)] = stamp
    folder.mkdir(parents=True, exist_ok=True)
    stamps_file.write_text(json.dumps(stamps))
    return target


@contextmanager
def writable(location: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """A local path to write ``location`` to; for a URL, a local file uploaded when the block ends
    without an error (so a failed prediction leaves nothing half-written in the store)."""
    if location is None or not is_url(str(location)):
        yield None if location is None else Path(location)
        return
    text = str(location)
    fs, path = _filesystem(text)
    staging = cache_root() / "outputs" / hashlib.sha256(text.encode()).hexdigest()[:20]
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    local = staging / Path(path).name
    yield local
    try:
        if local.is_dir():
            fs.put(str(local), path, recursive=True)
        else:
            fs.put_file(str(local), path)
    except Exception as error:  # noqa: BLE001 - one line naming the URL
        raise DataError(f"{text}: cannot be written: {_one_line(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
