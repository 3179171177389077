"""Columns of more rows than memory holds comfortably: written once, a batch at a time, to an Arrow
file in taskzoo's cache and then memory-mapped (as `datasets` keeps its tables), so the operating
system pages rows in when a data loader asks for them and drops them under pressure, instead of
the whole training set living as Python strings.

    spool = Spool({"text": pa.string(), "row": pa.int64()})
    for part in parts_of_the_file:
        spool.append(text=part.texts, row=part.rows)
    columns = spool.finish()          # {"text": Column, "row": Column}
    columns["text"][10], len(columns["text"]), columns["text"].take([3, 1, 2])

A `Column` is a read-only `Sequence`: indexing, slicing, iteration (in batches), `take` for a
subset (which copies indices, never values), and equality with a list (for tests). The file is
unlinked as soon as it is mapped: the mapping keeps it readable, and nothing is left behind
when the process ends, however it ends."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

__all__ = ["Column", "Spool", "spool_folder"]

_BATCH = 8192  # rows turned into Python objects at a time when a column is iterated


def spool_folder() -> Path:
    """Where spooled tables are written: ``spool`` in taskzoo's cache (`taskzoo.storage.cache_home`),
    on disk rather than the temporary folder, which is memory on many systems."""
    from taskzoo.storage import cache_home

    root = cache_home() / "spool"
    root.mkdir(parents=True, exist_ok=True)
    return root


class Column(Sequence[Any]):
    """One column of a memory-mapped Arrow table, seen through an optional array of row indices."""

    def __init__(self, values: Any, indices: Any = None) -> None:
        self._values = values  # a pyarrow (Chunked)Array; its buffers are the mapped file
        self._indices = indices  # a numpy int64 array, or None for every row in order

    def __len__(self) -> int:
        return len(self._values) if self._indices is None else len(self._indices)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Column: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"row {index} of a column of {size}")
        position = index if self._indices is None else int(self._indices[index])
        return self._values[position].as_py()

    def take(self, indices: Iterable[int]) -> Column:
        """The rows at ``indices`` (positions in this column), as a column over the same file."""
        import numpy as np

        chosen = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, np.ndarray) else indices.astype(np.int64)
        return Column(self._values, chosen if self._indices is None else self._indices[chosen])

    def _selected(self, start: int = 0, stop: int | None = None) -> Any:
        """The Arrow values of positions ``start`` to ``stop`` (a slice of the file, or a take through the indices)."""
        import pyarrow as pa

        stop = len(self) if stop is None else min(stop, len(self))
        if self._indices is None:
            return self._values.slice(start, stop - start)
        return self._values.take(pa.array(self._indices[start:stop]))

    def batches(self, size: int = _BATCH) -> Iterator[list[Any]]:
        """The values as Python lists of at most ``size``, in order."""
        for start in range(0, len(self), size):
            yield self._selected(start, start + size).to_pylist()

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch

    def to_numpy(self) -> Any:
        """A numeric column as one numpy array (in memory; 8 bytes a row for integers)."""
        return self._selected().to_numpy()

    def distinct(self) -> list[Any]:
        """Each value once, in order of first appearance (computed in Arrow, not in Python)."""
        import pyarrow.compute as pc

        return pc.unique(self._selected()).to_pylist()

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        """The first position of ``value`` (searched in Arrow when the column is whole)."""
        if self._indices is not None or start or stop is not None:
            return super().index(value, start, len(self) if stop is None else stop)
        import pyarrow.compute as pc

        position = pc.index(self._values, value).as_py()
        if position < 0:
            raise ValueError(f"{value!r} is not in the column")
        return position

    def respelled(self, spellings: dict[str, str]) -> Column:
        """A string column with each value read as ``spellings[value]`` (values not named stay as
        they are): codes into a dictionary of the new spellings, 4 bytes a row in memory."""
        import pyarrow as pa
        import pyarrow.compute as pc

        old = self.distinct()
        codes = pc.index_in(self._values, value_set=pa.array(old, pa.string())).cast(pa.int32())
        chunks = codes.chunks if isinstance(codes, pa.ChunkedArray) else [codes]
        dictionary = pa.array([spellings.get(value, value) for value in old], pa.string())
        return Column(pa.chunked_array([pa.DictionaryArray.from_arrays(chunk, dictionary) for chunk in chunks]),
                      self._indices)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so as unhashable as one

    def __repr__(self) -> str:
        shown = next(self.take(range(min(3, len(self)))).batches(), [])
        return f"Column({len(self)} rows: {shown}{'...' if len(self) > 3 else ''})"


class Spool:
    """An Arrow file written a batch at a time; `finish` maps it and returns its `Column`\\ s."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import pyarrow as pa

        self._schema = pa.schema(list(schema.items()))
        handle, name = tempfile.mkstemp(suffix=".arrow", dir=spool_folder())
        os.close(handle)
        self._path = Path(name)
        self._sink = pa.OSFile(str(self._path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)

    def append(self, **columns: Sequence[Any]) -> None:
        import pyarrow as pa

        sizes = {len(values) for values in columns.values()}
        if len(sizes) != 1 or set(columns) != set(self._schema.names):
            raise ValueError(f"expected columns {self._schema.names} of one length, got "
                             f"{ {name: len(values) for name, values in columns.items()} }")
        if not sizes.pop():
            return
        batch = pa.record_batch([pa.array(columns[name], type=self._schema.field(name).type)
                                 for name in self._schema.names], schema=self._schema)
        self._writer.write_batch(batch)

    def finish(self) -> dict[str, Column]:
        import pyarrow as pa

        self._writer.close()
        self._sink.close()
        try:
            table = pa.ipc.open_file(pa.memory_map(str(self._path), "r")).read_all()
        finally:
            self._path.unlink(missing_ok=True)
        return {name: Column(table.column(name)) for name in self._schema.names}

    def discard(self) -> None:
        """Close and delete the file without reading it (reading failed part way)."""
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self._path.unlink(missing_ok=True)
