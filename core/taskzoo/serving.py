"""``tasks serve`` / `taskzoo.serve`: a finished run behind a JSON API and a page, on FastAPI and uvicorn.

``create_app(run)`` is the ASGI application (embed it with ``app.mount("/reviews", create_app(...))``);
`serve` runs it under uvicorn. Routes:

- ``GET /health``: the model is loaded; task, backbone, runtime.
- ``GET /info``: what the page shows: run, task, labels, main metric, what a request takes.
- ``POST /predict``: JSON ``{"inputs": [...], OPTION: value}`` for tasks with an inline input (texts,
  user ids), or a multipart form with ``image`` files (vision tasks) or one ``file`` (any task: a data
  file or an image, read as ``tasks predict --data`` reads it), task options as form fields. The
  answer is ``{"predictions": [...]}``, the records ``tasks predict --json`` prints, with 2-D masks
  as a PNG (``"masks": "png"``, default) or COCO run-length encoding per class (``"rle"``).
- ``GET /``: the page; ``/docs``: the OpenAPI documentation.

The model is loaded once per worker process. Requests are answered one at a time by a worker (a
request's task options apply to that request alone, so two requests never share a batch), each
in a thread, so ``/health`` answers while a prediction runs. Every mistake in a request is a 4xx
with ``{"error": "...", "field": "..."}``; the server goes on serving.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from taskzoo import options as schema
from taskzoo.errors import UserError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
MASK_FORMATS = ("png", "rle")
_SETTINGS_VARIABLE = "TASKZOO_SERVE_SETTINGS"  # how uvicorn's worker processes learn what to serve
_PAGE = Path(__file__).with_name("serve_page.html")
_LINGER = 1 << 20  # bytes of a too-large body still read before answering 413
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Settings:
    """What a server serves and its limits (the ``tasks serve`` options)."""

    model: str
    runtime: str = "torch"
    device: str = "auto"
    batch_size: int | None = None
    max_inputs: int = 256
    max_request_mb: float = 32.0


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), the ``field`` at fault and what was expected."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


# -- the model -----------------------------------------------------------------------------------


class Predictor:
    """A run loaded once, answering one request at a time."""

    def __init__(self, settings: Settings) -> None:
        from taskzoo.api import Run, _inline_option
        from taskzoo.plugins import get_host
        from taskzoo.task import task_class

        self.settings = settings
        self.run = Run(settings.model, progress=False, runtime=settings.runtime)
        self.spec = get_host().task(self.run.task)
        self.inline = _inline_option(self.spec)
        self.images = bool(task_class(self.spec).input_images)
        # A request may set the task's own predict options, except the inline input, which is "inputs",
        # and options naming files on the server.
        self.options = {option.key: option for option in self.spec.options
                        if "predict" in option.commands and option.key != self.inline and not option.path}
        self._lock = threading.Lock()
        with self._lock:  # the model is loaded now, not on the first request
            self.run._load("predict", {"device": settings.device, "runtime": settings.runtime})

    def info(self) -> dict[str, Any]:
        config, metrics = self.run.config, self.run.metrics
        inline = next((o for o in self.spec.options if o.key == self.inline), None)
        return {
            "run": Path(self.settings.model).resolve().name, "task": self.spec.name,
            "description": self.spec.description, "backbone": config.get("backbone"),
            "runtime": self.settings.runtime, "labels": (config.get("resolved") or {}).get("labels", []),
            "main_metric": self.spec.main_metric, "main_metric_value": metrics.get("best"),
            "inputs": {"json": self.inline is not None, "inline_option": self.inline,
                       "inline_help": inline.help if inline else None, "images": self.images, "file": True},
            "options": {schema.key(o.name): {"help": o.help, "default": o.default} for o in self.options.values()},
            "max_inputs": self.settings.max_inputs, "max_request_mb": self.settings.max_request_mb,
        }

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model_loaded": True, "task": self.spec.name,
                "backbone": self.run.config.get("backbone"), "runtime": self.settings.runtime,
                "run": Path(self.settings.model).resolve().name}

    def checked_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Each request field but the inputs is a task option of ``tasks predict``, checked alone so
        the error names it."""
        checked = {}
        for name, value in given.items():
            option = self.options.get(schema.key(name))
            if option is None:
                accepted = ", ".join(["inputs" if self.inline else "image/file", "masks",
                                      *sorted(self.options)])
                raise RequestError(422, name, f"unknown field '{name}'; expected {accepted}")
            try:
                checked[option.key] = schema.coerce(option, value)
            except UserError as error:
                raise RequestError(422, name, f"{name}: {_without_flag(str(error), option.name)}") from None
        return checked

    def predict(self, data: Sequence[str] | Path, options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Records for a list of inline inputs (none: the options are the input, as recommendation's
        ``similar_to``) or a path, as ``tasks predict --json`` gives them."""
        given = {"device": self.settings.device, **({"batch_size": self.settings.batch_size}
                                                    if self.settings.batch_size else {}), **(options or {})}
        with self._lock:
            try:
                return self.run.predict(data if isinstance(data, Path) else (list(data) or None), **given)
            except UserError as error:
                raise RequestError(422, "inputs" if not isinstance(data, Path) else "file", str(error)) from None


# -- requests ------------------------------------------------------------------------------------


def _without_flag(message: str, name: str) -> str:
    return message.replace(f"--{name}: ", "").replace(f"--{name} ", "")


def read_json(body: bytes, predictor: Predictor) -> tuple[list[str], dict[str, Any], str]:
    """(inputs, task options, mask format) of a JSON request."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body", "request body: not UTF-8 text") from None
    except ValueError as error:
        raise RequestError(400, "body", f"request body: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise RequestError(422, "body", f"request body: expected a JSON object such as {{\"inputs\": [...]}}, "
                                        f"got {type(document).__name__}")
    masks = _mask_format(document.pop("masks", "png"))
    inputs = document.pop("inputs", None)
    options = predictor.checked_options(document)
    if predictor.inline is None:
        raise RequestError(415, "inputs", f"a {predictor.spec.name} model predicts from files: send a multipart "
                                          f"form with {'image files' if predictor.images else 'a file'}")
    if inputs is None:
        if any(name in options for name in predictor.options if predictor.options[name].multiple):
            return [], options, masks  # e.g. recommendation's similar_to: the option is the input
        raise RequestError(422, "inputs", "missing field 'inputs': expected a list of strings")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise RequestError(422, "inputs", f"inputs: expected a list of strings, got {type(inputs).__name__}")
    if not inputs:
        raise RequestError(422, "inputs", "inputs: an empty list; give at least one input")
    for index, item in enumerate(inputs):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise RequestError(422, f"inputs[{index}]", f"inputs[{index}]: expected a string, got {type(item).__name__}")
    inputs = [str(item) for item in inputs]
    for index, item in enumerate(inputs):
        if not item.strip():
            raise RequestError(422, f"inputs[{index}]", f"inputs[{index}]: an empty string")
    return inputs, options, masks


def _mask_format(value: Any) -> str:
    if value not in MASK_FORMATS:
        raise RequestError(422, "masks", f"masks: expected one of {', '.join(MASK_FORMATS)}, got {value!r}")
    return value


def _decodes(content: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many kinds for a file that is not an image
        return False


def _safe_name(name: str, index: int, default_suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "").name).strip("._") or "upload"
    suffix = Path(stem).suffix.lower() or default_suffix
    return f"{index:05d}-{Path(stem).stem[:80]}{suffix}"


# -- answers -------------------------------------------------------------------------------------


def jsonable(value: Any, masks: str = "png", names: Mapping[str, str] | None = None) -> Any:
    """A record as JSON: 2-D integer arrays (masks) as PNG or COCO RLE, other arrays as lists,
    numpy numbers as numbers, the server's own paths of uploaded files as the uploaded names."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v, masks, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, masks, names) for v in value]
    if isinstance(value, np.ndarray):
        if value.ndim == 2 and np.issubdtype(value.dtype, np.integer):
            return _encode_mask(value, masks)
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and names:
        return names.get(value, value)
    if isinstance(value, float) and value != value:
        return None
    return value


def _encode_mask(mask: Any, masks: str) -> dict[str, Any]:
    import numpy as np

    height, width = mask.shape
    if masks == "rle":
        from pycocotools import mask as coco

        counts = {}
        for value in np.unique(mask):
            encoded = coco.encode(np.asfortranarray((mask == value).astype(np.uint8)))
            counts[str(int(value))] = encoded["counts"].decode("ascii")
        return {"format": "rle", "size": [height, width], "counts": counts}
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return {"format": "png", "size": [height, width], "png": base64.b64encode(buffer.getvalue()).decode("ascii")}


def decode_mask(encoded: Mapping[str, Any]) -> Any:
    """The class-id array of a mask `jsonable` encoded (for clients in Python, and the tests)."""
    import numpy as np

    if encoded["format"] == "png":
        from PIL import Image

        return np.array(Image.open(io.BytesIO(base64.b64decode(encoded["png"]))))
    from pycocotools import mask as coco

    height, width = encoded["size"]
    result = np.zeros((height, width), dtype=np.uint8)
    for value, counts in encoded["counts"].items():
        result[coco.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)] = int(value)
    return result


# -- the application -----------------------------------------------------------------------------


def create_app(model: str | os.PathLike | Any = None, *, runtime: str = "torch", device: str = "auto",
               batch_size: int | None = None, max_inputs: int = 256, max_request_mb: float = 32.0) -> FastAPI:
    """The ASGI application serving the run folder ``model`` (loaded now). Without ``model``, the
    settings come from the environment `serve` sets for uvicorn's worker processes. ``model`` may
    also be a `taskzoo.Run`."""
    model = getattr(model, "folder", model)
    if model is None:
        settings = Settings(**json.loads(os.environ[_SETTINGS_VARIABLE]))
    else:
        settings = checked_settings(model=model, runtime=runtime, device=device, batch_size=batch_size,
                                    max_inputs=max_inputs, max_request_mb=max_request_mb)
    return _application(Predictor(settings))


def checked_settings(**given: Any) -> Settings:
    """`Settings` from ``tasks serve`` options, each checked by its declaration."""
    from taskzoo import run_folders

    values = {}
    for name, value in given.items():
        if value is not None:
            values[name] = schema.coerce(schema.shared_option(name), value)
    run_folders.open_run(Path(values["model"]), option="model")
    values["model"] = str(values["model"])
    return Settings(**values)


def _application(predictor: Predictor) -> FastAPI:
    settings = predictor.settings
    info = predictor.info()
    app = FastAPI(title=f"taskzoo: {info['run']}", version=_version(),
                  description=f"{predictor.spec.name} predictions from the run {info['run']} "
                              f"({info['backbone']}, {settings.runtime}).")
    limit = int(settings.max_request_mb * 1024 * 1024)

    def refused(error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message, "field": error.field}, status_code=error.status)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, error: RequestError) -> JSONResponse:
        return refused(error)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail), "field": None}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception) -> JSONResponse:
        # A fault of the server, not the request: one line for the client, the traceback in the log.
        import logging

        logging.getLogger("taskzoo.serve").exception("prediction failed")
        return JSONResponse({"error": f"the server failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}",
                             "field": None}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid')}", "field": field}, status_code=422)

    @app.get("/health", summary="Whether the model is loaded, and what it is")
    async def health() -> dict[str, Any]:
        return predictor.health()

    @app.get("/info", summary="The run, its labels and main metric, and what /predict takes")
    async def run_info() -> dict[str, Any]:
        return info

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(_PAGE.read_text(encoding="utf-8").replace("{{BASE}}", base))

    @app.post("/predict", summary="Predictions, as the records tasks predict --json prints",
              openapi_extra={"requestBody": _request_body(predictor)})
    async def predict(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, "body", f"request body: {int(declared) / 1e6:.1f} MB, above the "
                                            f"server's --max-request-mb {settings.max_request_mb:g}")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await _body(request, limit, settings.max_request_mb)
            inputs, options, masks = read_json(body, predictor)
            _count(len(inputs), settings.max_inputs)
            records = await run_in_threadpool(predictor.predict, inputs, options)
            return JSONResponse({"predictions": jsonable(records, masks)})
        if kind == "multipart/form-data":
            if not declared:  # the form parser would read a chunked upload of any size
                raise RequestError(411, "content-length", "content-length: a multipart upload must declare its length")
            return await _predict_uploads(request, predictor, limit)
        raise RequestError(415, "content-type", f"content-type: expected application/json or multipart/form-data, "
                                                f"got {kind or 'none'}")

    return app


async def _body(request: Request, limit: int, megabytes: float) -> bytes:
    """The body, refused once it grows past the limit (a chunked request declares no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + _LINGER:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        # The rest of a body a little over the limit is read and dropped first, so that the client,
        # still sending, gets the answer rather than a broken connection.
        raise RequestError(413, "body", f"request body: above the server's --max-request-mb {megabytes:g}")
    return b"".join(chunks)


def _count(count: int, most: int) -> None:
    if count > most:
        raise RequestError(413, "inputs", f"inputs: {count} in one request, above the server's --max-inputs {most}; "
                                          "send them in smaller requests")


async def _predict_uploads(request: Request, predictor: Predictor, limit: int) -> JSONResponse:
    settings = predictor.settings
    try:
        form = await request.form(max_files=settings.max_inputs + 1, max_fields=100, max_part_size=limit)
    except Exception as error:  # starlette's MultiPartException and the parser's own errors
        raise RequestError(400, "body", f"request body: not a readable multipart form ({error})") from None
    try:
        images = [item for key, item in form.multi_items() if key in ("image", "images")]
        files = [item for key, item in form.multi_items() if key == "file"]
        fields = {key: value for key, value in form.multi_items() if key not in ("image", "images", "file")}
        for key, value in fields.items():
            if isinstance(value, UploadFile):
                raise RequestError(422, key, f"unknown file field '{key}'; send files as 'image' or 'file'")
        masks = _mask_format(fields.pop("masks", "png"))
        options = predictor.checked_options({key: _form_value(predictor, key, form) for key in fields})
        if not images and not files:
            expected = "'image' files" if predictor.images else "a 'file'"
            raise RequestError(422, "image" if predictor.images else "file", f"no file in the form: expected {expected}")
        if images and not predictor.images:
            raise RequestError(422, "image", f"a {predictor.spec.name} model does not read images; send a 'file' "
                                             f"{'or JSON inputs' if predictor.inline else ''}".rstrip())
        if len(files) > 1 or (files and images):
            raise RequestError(422, "file", "one 'file' per request, and not together with 'image' files")
        if files and predictor.images and Path(files[0].filename or "").suffix.lower() not in _IMAGE_SUFFIXES:
            # A list or dataset file would name paths on the server's own disk.
            raise RequestError(422, "file", f"file '{files[0].filename}': a {predictor.spec.name} model takes images "
                                            f"({', '.join(_IMAGE_SUFFIXES)}); send them as 'image' files")
        _count(len(images), settings.max_inputs)
        folder = Path(tempfile.mkdtemp(prefix="taskzoo-serve-"))
        try:
            names: dict[str, str] = {}
            uploads = images or files
            for index, upload in enumerate(uploads):
                content = await upload.read()
                field = "image" if images else "file"
                label = f"{field} '{upload.filename or index}'"
                if not content:
                    raise RequestError(422, field, f"{label}: an empty file")
                name = _safe_name(upload.filename or "", index, ".png" if images else ".txt")
                if images or Path(name).suffix in _IMAGE_SUFFIXES:
                    if not _decodes(content):
                        raise RequestError(422, field, f"{label}: not an image that decodes (PNG, JPEG, ...)")
                path = folder / name
                path.write_bytes(content)
                names[str(path)] = upload.filename or name
            if images or (predictor.images and Path(name).suffix in _IMAGE_SUFFIXES):
                data = folder  # vision tasks read a folder of images
                names[str(folder)] = ""
            else:
                data = folder / name
            try:
                records = await run_in_threadpool(predictor.predict, data, options)
            except RequestError as error:  # the task names the file as the server saved it
                message = error.message
                for saved, sent in sorted(names.items(), key=lambda item: -len(item[0])):
                    message = message.replace(saved, sent or "the upload")
                raise RequestError(error.status, error.field, message) from None
            return JSONResponse({"predictions": jsonable(records, masks, names)})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        await form.close()


def _form_value(predictor: Predictor, key: str, form: Any) -> Any:
    option = predictor.options.get(schema.key(key))
    values = form.getlist(key)
    return values if option is not None and option.multiple else values[-1]


def _request_body(predictor: Predictor) -> dict[str, Any]:
    """The two ways to send inputs, for the OpenAPI page."""
    options = {schema.key(o.name): {"description": o.help} for o in predictor.options.values()}
    masks = {"type": "string", "enum": list(MASK_FORMATS), "default": "png",
             "description": "How 2-D masks come back: a PNG of class ids, or COCO RLE per class id."}
    content: dict[str, Any] = {}
    if predictor.inline:
        content["application/json"] = {"schema": {
            "type": "object", "required": ["inputs"],
            "properties": {"inputs": {"type": "array", "items": {"type": "string"}, "maxItems": predictor.settings.max_inputs,
                                      "description": next(o.help for o in predictor.spec.options if o.key == predictor.inline)},
                           "masks": masks, **options}}}
    files = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {"file": {**files, "description": "A data file, as tasks predict --data reads it."}}
    if predictor.images:
        properties["image"] = {"type": "array", "items": files, "description": "Images (repeat the field)."}
    content["multipart/form-data"] = {"schema": {"type": "object", "properties": {**properties, "masks": masks, **options}}}
    return {"required": True, "content": content}


def _version() -> str:
    from taskzoo.version import __version__

    return __version__


# -- the server ----------------------------------------------------------------------------------


def serve(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1,
          log_level: str = "info", started: Callable[[str], None] | None = None) -> None:
    """Run the server until it is stopped (Ctrl-C). With ``workers`` above 1, uvicorn starts that
    many processes, each loading the model once. ``started`` is called with the URL to open once
    the address is checked (and, with one worker, the model loaded)."""
    import uvicorn

    host, port, workers = (schema.coerce(schema.shared_option(name), value)
                           for name, value in (("host", host), ("port", port), ("workers", workers)))
    _check_address(host, port)
    # Listening on every address: this machine's own is one of them.
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if workers > 1:
        if settings.runtime == "onnx":
            # Export once here (when the run has no export yet), not in every worker at the same time.
            Predictor(settings)
            import gc

            gc.collect()
        os.environ[_SETTINGS_VARIABLE] = json.dumps(asdict(settings))
        if started:
            started(url)
        uvicorn.run("taskzoo.serving:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    else:
        app = _application(Predictor(settings))
        if started:
            started(url)
        uvicorn.run(app, host=host, port=port, log_level=log_level)


def _check_address(host: str, port: int) -> None:
    """A port another program holds, or an address this machine does not have, is one line before
    the model is loaded, not uvicorn's traceback after."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = "already in use" if error.errno == 98 else (error.strerror or str(error))
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({reason}); choose another --port") from None


@contextlib.contextmanager
def background(app: Any, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a thread of this process for the ``with`` block (port 0: a free one);
    yields the server's base URL, such as ``http://127.0.0.1:38211``. For notebooks and tests."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="taskzoo-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
