"""Reading labelled texts from CSV, TSV, JSON Lines or Parquet, checking them, and splitting them."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo import DataError, Finding
from taskzoo.helpers.columns import Column, Spool
from taskzoo.helpers.tables import find_column, is_number, read_table, read_table_parts, read_text

TEXT_COLUMNS = ("text", "review", "sentence", "content", "body", "comment", "review_text", "document", "tweet", "message")
LABEL_COLUMNS = ("label", "labels", "sentiment", "stars", "rating", "class", "polarity", "target", "category", "categories",
                 "tags", "topics")
MISSING = {"", "nan", "none", "null", "n/a"}


@dataclass
class TextData:
    """Texts (and labels) read from one file. ``rows`` are 1-based data rows (the header is not a row).
    Read for training or evaluation they are memory-mapped `Column`\\ s; for prediction, lists."""

    path: Path
    texts: Sequence[str]
    labels: Sequence[str] | None
    rows: Sequence[int]
    text_column: str
    label_column: str | None
    columns: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextData:
        return replace(
            self,
            texts=_pick(self.texts, indices),
            labels=_pick(self.labels, indices) if self.labels is not None else None,
            rows=_pick(self.rows, indices),
            records=_pick(self.records, indices) if self.records else [],
        )


@dataclass(frozen=True)
class TokenIds:
    """Texts kept tokenised: each per-token field a tokenizer returned (but the attention mask, which
    padding makes) as one flat int32 array, and where each text starts in it; a Python list of ids
    would take nine times the memory."""

    fields: dict[str, np.ndarray]
    starts: np.ndarray

    @staticmethod
    def flat(encoded: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, np.ndarray]:
        """One tokenizer call's per-token fields, flattened: a part for `joined`."""
        count = sum(len(ids) for ids in encoded["input_ids"])
        return {name: np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=count)
                for name, rows in encoded.items() if name != "attention_mask"}

    @classmethod
    def joined(cls, parts: Sequence[dict[str, np.ndarray]], lengths: Sequence[int]) -> TokenIds:
        """The texts of ``parts`` (`flat`'s, in order), each of its length in ``lengths``."""
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        names = parts[0].keys() if parts else ("input_ids",)
        return cls({name: np.concatenate([part[name] for part in parts] or [np.zeros(0, np.int32)]) for name in names},
                   starts)

    def texts(self, indices: Sequence[int]) -> list[dict[str, list[int]]]:
        """The texts at ``indices``, as a tokenizer's ``pad`` takes them."""
        return [{name: ids[self.starts[i]:self.starts[i + 1]].tolist() for name, ids in self.fields.items()}
                for i in indices]


def _pick(values: Sequence[Any], indices: Sequence[int]) -> Sequence[Any]:
    return values.take(indices) if isinstance(values, Column) else [values[i] for i in indices]


def _cell(value: Any) -> str | None:
    """A cell as text, or None when it is missing (empty, NaN, null)."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            value = int(value)
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return None if text.lower() in MISSING else text


def _rows_text(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def sort_labels(labels: set[str]) -> list[str]:
    """Numeric labels (stars 1-5) in numeric order, others alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _number_spellings(labels: Sequence[str], known: Sequence[str] | None) -> list[str]:
    """Numeric labels as one spelling per number (``2``, ``2.0`` and ``02`` are the class ``2``),
    the trained model's own spelling when it has that number."""
    def spelling(text: str) -> str:
        number = float(text)
        return str(int(number)) if number.is_integer() else repr(number)

    model = {spelling(k): k for k in known or () if is_number(k) and math.isfinite(float(k))}
    return [model.get(spelling(label), spelling(label)) for label in labels]


def label_set(label: str, separator: str) -> list[str]:
    """The labels of a multi-label row, from its canonical text."""
    return [part for part in label.split(separator) if part]


def _canonical_sets(path: Path, column: str | None, data: TextData, separator: str,
                    known: Sequence[str] | None) -> None:
    """Each row's labels as one canonical text: split on ``separator`` (a list cell is already
    split), stripped, each label once, sorted, joined again; labels outside ``known`` name their row."""
    allowed = set(known) if known is not None else None
    for index, (row, label) in enumerate(zip(data.rows, data.labels)):
        cell = data.records[index].get(column) if data.records else None
        parts = [str(v).strip() for v in cell] if isinstance(cell, list) else [p.strip() for p in label.split(separator)]
        labels = sorted({p for p in parts if p})
        if not labels:
            raise DataError(f"{path}: row {row}, column '{column}': no label in {label!r} (labels are separated by "
                            f"{separator!r}; --label-separator changes it)")
        if allowed is not None and (unknown := [p for p in labels if p not in allowed]):
            raise DataError(f"{path}: row {row}, column '{column}': label '{unknown[0]}' was never seen in training "
                            f"(known: {', '.join(known)})")
        data.labels[index] = separator.join(labels)


def read_texts(
    path: Path,
    *,
    role: str,
    text_column: str | None = None,
    label_column: str | None = None,
    known_labels: Sequence[str] | None = None,
    label_separator: str | None = None,
) -> TextData:
    """Read one file for ``role`` (train/val/test/predict); a `DataError` names what is wrong.
    With ``label_separator`` (multi-label), each row's label is its set of labels as one text
    (`label_set` splits it); ``known_labels`` are then single labels.

    Labelled data (train/val/test) is read in parts of `PART_ROWS` rows into a memory-mapped Arrow
    file (`taskzoo.helpers.columns`): its texts, labels and rows are `Column`\\ s, not lists, so a
    training set larger than memory can be trained on. Texts to predict for keep their whole rows."""
    path = Path(path)
    if role == "predict":
        if path.suffix.lower() == ".txt":
            return _read_lines(path)
        frame = read_table(path)
        text_col, _ = _columns(path, list(frame.columns), role, text_column, None)
        return _from_frame(path, frame, 1, role, text_col, None)
    return _read_labelled(path, role, text_column, label_column, known_labels, label_separator)


PART_ROWS = 50_000  # rows of a labelled file checked and spooled at a time


def _read_labelled(path: Path, role: str, text_column: str | None, label_column: str | None,
                   known_labels: Sequence[str] | None, separator: str | None) -> TextData:
    import pyarrow as pa

    spool = Spool({"text": pa.string(), "label": pa.string(), "row": pa.int64()})
    text_col = label_col = None
    columns: list[str] = []
    dropped: list[tuple[int, str]] = []
    seen_rows = 0
    try:
        for first, frame in read_table_parts(path, PART_ROWS):
            if text_col is None:
                columns = list(frame.columns)
                text_col, label_col = _columns(path, columns, role, text_column, label_column)
            part = _from_frame(path, frame, first, role, text_col, label_col, whole_file=False, lists=separator)
            if separator is not None:
                _canonical_sets(path, label_col, part, separator, known_labels)
            spool.append(text=part.texts, label=part.labels, row=part.rows)
            dropped.extend(part.dropped)
            seen_rows = first + len(frame) - 1
    except BaseException:
        spool.discard()
        raise
    spooled = spool.finish()
    if not len(spooled["text"]):
        raise DataError(f"{path}: column '{text_col}' has no usable text (all {seen_rows} rows are empty)")
    labels = _checked_labels(path, label_col, role, spooled, known_labels, separator)
    return TextData(path=path, texts=spooled["text"], labels=labels, rows=spooled["row"], text_column=text_col,
                    label_column=label_col, columns=columns, dropped=dropped)


def _checked_labels(path: Path, column: str | None, role: str, spooled: dict[str, Column],
                    known: Sequence[str] | None, separator: str | None) -> Column:
    """The label column, each label in one spelling, checked over its distinct values (a handful,
    however many rows): a single class, labels never seen in training, numbers that are not finite.
    An error names the first row that has the label at fault."""
    raw = spooled["label"]
    distinct = raw.distinct()

    def first_row(label: str) -> int:
        return spooled["row"][raw.index(label)]

    if separator is not None:
        if role == "train" and len({p for label in distinct for p in label_set(label, separator)}) < 2:
            raise DataError(f"{path}: column '{column}' has a single label; at least two are needed")
        return raw
    spelling = {label: label for label in distinct}
    if distinct and all(is_number(label) for label in distinct):
        for label in distinct:
            if not math.isfinite(float(label)):
                raise DataError(f"{path}: row {first_row(label)}, column '{column}': label '{label}' is not a "
                                "finite number")
        spelling = dict(zip(distinct, _number_spellings(distinct, known)))
    if role == "train" and len(set(spelling.values())) < 2:
        raise DataError(f"{path}: column '{column}' has a single class ('{raw[0]}'); at least two classes are needed")
    allowed = set(known) if known is not None else None
    unknown = [label for label in distinct if allowed is not None and spelling[label] not in allowed]
    if unknown:
        bad = min(unknown, key=first_row)  # the earliest row at fault, as reading row by row would find
        raise DataError(f"{path}: row {first_row(bad)}, column '{column}': label '{bad}' was never seen in "
                        f"training (known: {', '.join(known)})")
    if all(spelling[label] == label for label in distinct):
        return raw
    return raw.respelled(spelling)


def read_texts_in_parts(path: Path, rows: int, *, text_column: str | None = None) -> Iterator[TextData]:
    """Texts to predict for, ``rows`` at a time, read as they go (CSV, TSV or plain lines), so that
    memory does not grow with the file; row numbers are those of the whole file."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        yield from _lines_in_parts(path, rows)
        return
    text_col = None
    found = False
    for first, frame in read_table_parts(path, rows):
        if text_col is None:
            text_col, _ = _columns(path, list(frame.columns), "predict", text_column, None)
        part = _from_frame(path, frame, first, "predict", text_col, None, whole_file=False)
        if part.texts:
            found = True
            yield part
    if not found:
        raise DataError(f"{path}: column '{text_col}' has no usable text (every row is empty)")


def _columns(path: Path, columns: list[str], role: str, text_column: str | None,
             label_column: str | None) -> tuple[str, str | None]:
    text_col = find_column(path, columns, text_column, TEXT_COLUMNS, "text", "--text-column")
    if text_col is None:
        raise DataError(
            f"{path}: no text column among {', '.join(columns)}; expected one of "
            f"{', '.join(TEXT_COLUMNS)}, or name it with --text-column"
        )
    label_col = find_column(path, columns, label_column, LABEL_COLUMNS, "label", "--label-column")
    if role in ("train", "val", "test") and label_col is None:
        raise DataError(
            f"{path}: no label column among {', '.join(columns)}; expected one of "
            f"{', '.join(LABEL_COLUMNS)}, or name it with --label-column"
        )
    if label_col == text_col:
        raise DataError(f"{path}: the text and label columns are both '{text_col}'")
    return text_col, label_col


def _from_frame(path: Path, frame: Any, first_row: int, role: str, text_col: str, label_col: str | None,
                *, whole_file: bool = True, lists: str | None = None) -> TextData:
    """The usable rows of ``frame`` (whose first data row is ``first_row`` of the file); ``lists``:
    a list label cell (JSON Lines, Parquet) is its labels joined by this separator."""
    needs_labels = role in ("train", "val", "test")
    raw_texts = [_cell(v) for v in frame[text_col].tolist()]

    def label_cell(value: Any) -> str | None:
        if lists is not None and isinstance(value, list):
            return lists.join(str(v).strip() for v in value) or None
        return _cell(value)

    raw_labels = [label_cell(v) for v in frame[label_col].tolist()] if label_col and needs_labels else None
    present = [t for t in raw_texts if t is not None]
    if present and all(is_number(t) for t in present) and (whole_file or first_row == 1):
        raise DataError(f"{path}: column '{text_col}' holds numbers, not text; name the text column with --text-column")

    texts, labels, rows, records, dropped = [], [], [], [], []
    unlabelled = []
    frame_records = frame.to_dict(orient="records")
    for index, text in enumerate(raw_texts):
        row = first_row + index
        if text is None:
            dropped.append((row, "empty text"))
            continue
        if raw_labels is not None:
            if raw_labels[index] is None:
                unlabelled.append(row)
                continue
            labels.append(raw_labels[index])
        texts.append(text)
        rows.append(row)
        records.append(frame_records[index])
    if unlabelled:
        raise DataError(
            f"{path}: column '{label_col}' is empty or NaN on row {_rows_text(unlabelled)}; "
            f"every {role} row needs a label"
        )
    if not texts and whole_file:
        raise DataError(f"{path}: column '{text_col}' has no usable text (all {len(raw_texts)} rows are empty)")
    return TextData(
        path=path, texts=texts, labels=labels if raw_labels is not None else None, rows=rows,
        text_column=text_col, label_column=label_col if raw_labels is not None else None,
        columns=list(frame.columns), records=records, dropped=dropped,
    )


def _lines_in_parts(path: Path, size: int) -> Iterator[TextData]:
    """A plain text file for prediction, one text per non-empty line, ``size`` texts at a time."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    texts: list[str] = []
    rows: list[int] = []
    found, number = False, 0
    with path.open(encoding="utf-8-sig") as stream:
        try:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    texts.append(line.strip())
                    rows.append(number)
                if len(texts) == size:
                    found = True
                    yield _lines(path, texts, rows)
                    texts, rows = [], []
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: line {number + 1}: byte 0x{error.object[error.start]:02x} is not valid UTF-8; "
                            "save the file as UTF-8 (e.g. 'iconv -f latin1 -t utf-8')") from None
    if texts:
        found = True
        yield _lines(path, texts, rows)
    if not found:
        raise DataError(f"{path}: no non-empty lines to predict for")


def _lines(path: Path, texts: list[str], rows: list[int]) -> TextData:
    return TextData(path=path, texts=texts, labels=None, rows=rows, text_column="text", label_column=None,
                    columns=["text"], records=[{"text": t} for t in texts])


def _read_lines(path: Path) -> TextData:
    """A plain text file for prediction: one text per non-empty line."""
    texts, rows = [], []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            texts.append(line.strip())
            rows.append(number)
    if not texts:
        raise DataError(f"{path}: no non-empty lines to predict for")
    return _lines(path, texts, rows)


def check(data: TextData) -> list[Finding]:
    """What ``tasks check`` reports: size, columns, classes, lengths, duplicates, dropped rows."""
    path = data.path
    findings = [
        Finding("info", f"{path}: {len(data)} usable rows; text column '{data.text_column}'"
                + (f", label column '{data.label_column}'" if data.label_column else ""))
    ]
    words = np.fromiter((len(t.split()) for t in data.texts), dtype=np.int64, count=len(data))
    findings.append(Finding(
        "info", f"text length in words: min {words.min()}, median {np.median(words):g}, max {words.max()}"
    ))
    if data.labels is not None:
        counts = Counter(data.labels)
        ordered = sort_labels(set(counts))
        findings.append(Finding(
            "info", f"classes ({len(counts)}): " + ", ".join(f"{label} {counts[label]}" for label in ordered),
            {"classes": {label: counts[label] for label in ordered}},
        ))
        smallest, largest = min(counts.values()), max(counts.values())
        if smallest * 10 < largest:
            rare = [label for label in ordered if counts[label] == smallest]
            findings.append(Finding(
                "warning", f"classes are imbalanced: '{rare[0]}' has {smallest} rows against {largest} for the largest; "
                "watch macro F1, not only accuracy"
            ))
        singletons = [label for label in ordered if counts[label] < 2]
        if singletons:
            findings.append(Finding(
                "warning", f"class(es) {', '.join(singletons)} have a single row: too few to validate on"
            ))
    if data.dropped:
        reasons: dict[str, list[int]] = defaultdict(list)
        for row, reason in data.dropped:
            reasons[reason].append(row)
        for reason, rows in reasons.items():
            findings.append(Finding("warning", f"{len(rows)} row(s) will be dropped ({reason}): row {_rows_text(rows)}"))
    duplicates, conflicts = _repeated_texts(data)
    if duplicates:
        findings.append(Finding("warning", f"{len(duplicates)} duplicate text(s), kept: row {_rows_text(duplicates)}"))
    if conflicts:
        findings.append(Finding(
            "warning", f"{len(conflicts)} text(s) appear with different labels: rows {_rows_text(conflicts)}"
        ))
    return findings


def _repeated_texts(data: TextData) -> tuple[list[int], list[str]]:
    """Rows whose text (case and spacing aside) came before: with the same label (duplicates,
    their rows) or another (conflicts, "first/later" rows). Through 8-byte hashes sorted in numpy,
    not a dictionary of every text, so that checking a large file stays within memory; rows whose
    hashes meet are compared by their texts, so a collision never reports a duplicate."""
    def key(text: str) -> str:
        return " ".join(text.lower().split())

    hashes = np.fromiter((hash(key(text)) for text in data.texts), dtype=np.int64, count=len(data))
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions (in order) that repeat the one before
    first_of: dict[int, int] = {}  # index of a repeated row -> index of the first row with its text
    start = None
    for position in repeats:
        if start is None or ordered[start] != ordered[position]:
            start = position - 1
        group = [int(i) for i in order[start:position + 1]]
        later = group[-1]
        for earlier in group[:-1]:  # the first earlier row whose text really is the same
            if key(data.texts[earlier]) == key(data.texts[later]):
                first_of[later] = first_of.get(earlier, earlier)
                break
    duplicates, conflicts = [], []
    for later in sorted(first_of):
        first = first_of[later]
        if data.labels is not None and data.labels[first] != data.labels[later]:
            conflicts.append(f"{data.rows[first]}/{data.rows[later]}")
        else:
            duplicates.append(data.rows[later])
    return duplicates, conflicts
