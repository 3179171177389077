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


def cache_root() -> Path:
    return Path(os.environ.get("TASKZOO_CACHE") or Path.home() / ".cache" / "taskzoo") / "remote"


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


def fetch(location: str | os.PathLike[str]) -> Path:
    """The local path to read ``location`` from: itself when local, else a cached copy of the
    remote file or folder (copied again only where the remote changed)."""
    text = str(location)
    if not is_url(text):
        return Path(location)
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
    for remote, details in files.items():
        relative = Path(remote[len(root):].lstrip("/")) if info.get("type") == "directory" else Path()
        local = target / relative if str(relative) not in ("", ".") else target
        stamp = _stamp(details)
        if stamps.get(str(relative)) == stamp and local.exists():
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        try:
            fs.get_file(remote, str(partial))
        except Exception as error:  # noqa: BLE001 - one line naming the URL
            partial.unlink(missing_ok=True)
            raise _remote_error(f"{text.split('://')[0]}://{remote}", error) from None
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
