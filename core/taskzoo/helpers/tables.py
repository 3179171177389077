"""Reading users' tabular files (CSV, TSV, JSON Lines, Parquet) strictly: UTF-8, with errors naming
the file and the line, never a traceback; and writing prediction rows as CSV, TSV or JSON Lines.

Parquet cells read as CSV cells do (text, an empty cell for a missing value), list cells as lists
(as JSON Lines gives them), so a task's reader sees the same rows from either."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskzoo.errors import DataError

__all__ = [
    "TABLE_FORMATS",
    "delimited_text",
    "find_column",
    "is_number",
    "json_lines",
    "json_lines_text",
    "read_table",
    "read_table_parts",
    "read_text",
    "write_or_return",
]

if TYPE_CHECKING:
    import pandas as pd

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet", ".pq": "parquet"}


def read_text(path: Path, *, allow_empty: bool = False) -> str:
    """The file's text; a `DataError` naming the line if it is missing, not UTF-8, or empty (unless
    ``allow_empty``: a YOLO label file of an image without objects is empty on purpose)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    raw = path.read_bytes()
    if not raw.strip() and not allow_empty:
        raise DataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: byte 0x{raw[error.start]:02x} is not valid UTF-8; "
            "save the file as UTF-8 (e.g. 'iconv -f latin1 -t utf-8')"
        ) from None


def read_table(path: Path) -> pd.DataFrame:
    """A CSV/TSV (all cells as strings) or JSON Lines file (one object per line) as a DataFrame."""
    import pandas as pd

    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown file type '{path.suffix}'; expected one of {', '.join(sorted(TABLE_FORMATS))}"
        )
    if kind == "parquet":
        return _parquet_frame(path, _parquet_file(path).read().to_pandas())
    text = read_text(path)
    if kind == "jsonl":
        frame = pd.DataFrame.from_records([record for _, record in json_lines(path, text)])
    else:
        separator = "\t" if kind == "tsv" else ","
        try:
            with warnings.catch_warnings():
                # Rows longer than the header would otherwise silently become an index or be cut.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, index_col=False)
        except pd.errors.ParserWarning:
            header = text.splitlines()[0]
            raise DataError(
                f"{path}: rows have more fields than the header ({header!r}); quote fields that contain "
                f"the separator {separator!r}"
            ) from None
        except pd.errors.ParserError as error:
            raise DataError(f"{path}: malformed {kind.upper()}: {' '.join(str(error).split())}") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the file is empty") from None
    if frame.empty:
        raise DataError(f"{path}: no data rows (only a header?)")
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def read_table_parts(path: Path, rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """`read_table` in parts of at most ``rows`` data rows, each with the number of its first row:
    a CSV or TSV file is read as it goes (JSON Lines is read whole, then cut), so that a file too
    large to hold twice over can still be predicted for."""
    import pandas as pd

    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind == "parquet":  # row groups as they come, in batches of ``rows``
        first = 1
        for batch in _parquet_file(path).iter_batches(batch_size=rows):
            frame = _parquet_frame(path, batch.to_pandas(), allow_empty=True)
            if len(frame):
                yield first, frame
                first += len(frame)
        if first == 1:
            raise DataError(f"{path}: no data rows")
        return
    if kind == "jsonl" or kind is None:
        frame = read_table(path)
        for start in range(0, len(frame), rows):
            yield start + 1, frame.iloc[start:start + rows].reset_index(drop=True)
        return
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    separator = "\t" if kind == "tsv" else ","
    first, header = 1, None
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = None
        while True:
            try:
                with warnings.catch_warnings():  # only around the reading, not while the caller works
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    if reader is None:
                        reader = pd.read_csv(stream, sep=separator, dtype=str, keep_default_na=False,
                                             index_col=False, chunksize=rows)
                    frame = next(reader, None)
            except pd.errors.ParserWarning:
                raise DataError(f"{path}: rows have more fields than the header; quote fields that contain the "
                                f"separator {separator!r}") from None
            except pd.errors.ParserError as error:
                raise DataError(f"{path}: malformed {kind.upper()}: {' '.join(str(error).split())}") from None
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file is empty") from None
            except UnicodeDecodeError as error:
                line, byte = _first_bad_utf8(path) or (None, error.object[error.start])
                where = f"line {line}" if line else f"after data row {first - 1}"
                raise DataError(f"{path}: {where}: byte 0x{byte:02x} is not valid UTF-8; save the file as UTF-8 "
                                "(e.g. 'iconv -f latin1 -t utf-8')") from None
            if frame is None:
                break
            frame.columns = [str(column).strip() for column in frame.columns]
            header = header or list(frame.columns)
            yield first, frame
            first += len(frame)
    if header is None or first == 1:
        raise DataError(f"{path}: no data rows (only a header?)")


def _first_bad_utf8(path: Path) -> tuple[int, int] | None:
    """The line and value of the first byte of ``path`` that is not UTF-8, read a megabyte at a time."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                # the error's offset counts from the bytes the decoder still held before this chunk
                held = len(error.object) - len(chunk)
                start = max(error.start - held, 0)
                return line + chunk[:start].count(b"\n"), error.object[error.start]
            line += chunk.count(b"\n")
    return None


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own types for a broken file
        raise DataError(f"{path}: not a readable Parquet file: {' '.join(str(error).split())}") from None


def _parquet_frame(path: Path, frame: pd.DataFrame, *, allow_empty: bool = False) -> pd.DataFrame:
    """Parquet columns as CSV cells: text (missing: empty), lists as lists of the same."""
    import numpy as np
    import pandas as pd

    if frame.empty and not allow_empty:
        raise DataError(f"{path}: no data rows")

    def native(value: Any) -> Any:  # inside a struct (an entity's start and end): Python values, not text
        if isinstance(value, dict):
            return {key: native(item) for key, item in value.items()}
        if isinstance(value, (list, tuple, np.ndarray)):
            return [native(item) for item in value]
        return value.item() if isinstance(value, np.generic) else value

    def cell(value: Any) -> Any:
        if isinstance(value, dict):
            return native(value)
        if isinstance(value, (list, tuple, np.ndarray)):
            return [cell(item) for item in value]
        if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
            return ""
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value)) if abs(value) < 1e15 else str(value)
        return str(value)

    frame = frame.apply(lambda column: column.map(cell)) if len(frame) else frame.astype(object)
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def json_lines(path: Path, text: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a JSON Lines file; a `DataError` names a bad line."""
    for number, line in enumerate((read_text(path) if text is None else text).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def find_column(path: Path, columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, option: str) -> str | None:
    """The column the user named, or the first known name found (case-insensitive), or None."""
    if given:
        if given not in columns:
            raise DataError(f"{path}: no column '{given}' (from {option}); columns are: {', '.join(columns)}")
        return given
    lowered = {column.lower(): column for column in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (a header row of numbers only is data, not names)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def delimited_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, tabs: bool) -> str:
    """``rows`` as CSV (or TSV with ``tabs``) with a header of ``columns``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), delimiter="\t" if tabs else ",", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_lines_text(records: Iterable[Any]) -> str:
    """One JSON object per line, non-ASCII kept as it is."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_or_return(text: str, output: Path | None) -> str:
    """Write ``text`` to ``output`` (creating its folder) and return ""; without an output, return
    the text for the screen. What `Task.write_predictions` returns either way."""
    if output is None:
        return text.rstrip("\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return ""
