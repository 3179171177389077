"""Reading annotated sentences for NER: CoNLL columns, JSON Lines of tokens and tags, JSON Lines of
text with character-offset entities, and plain text for prediction. Every tag scheme (BIO/IOB2,
IOB1, BIOES) is normalised to IOB2."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskzoo import DataError, Finding
from taskzoo.helpers.tables import json_lines, read_table, read_text

# Words for raw text: runs of word characters (keeping inner hyphens, apostrophes and decimal
# points: "type-2", "Mary's", "0.5") or single punctuation marks.
WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")
TAG = re.compile(r"([BIESLU])-(\S+)")
SCHEMES = ("auto", "iob2", "iob1", "bioes")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str] | None
    line: int
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None
    token_lines: list[int] | None = None

    def line_of(self, token: int) -> int:
        return self.token_lines[token] if self.token_lines else self.line

    def surface(self) -> tuple[str, list[tuple[int, int]]]:
        """The sentence's text and each token's character span in it."""
        if self.text is not None and self.offsets is not None:
            return self.text, self.offsets
        offsets, position = [], 0
        for token in self.tokens:
            offsets.append((position, position + len(token)))
            position += len(token) + 1
        return " ".join(self.tokens), offsets


@dataclass
class NerData:
    path: Path
    sentences: list[Sentence]
    format: str
    scheme: str | None = None
    repairs: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Number of the first sentence in the file: the parts of one file keep distinct sentence numbers.
    first: int = 0

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def labelled(self) -> bool:
        return bool(self.sentences) and self.sentences[0].tags is not None


def words_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    matches = list(WORD.finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


# -- tag schemes ---------------------------------------------------------------------------------


def _parse(tag: str, where: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    match = TAG.fullmatch(tag)
    if not match:
        raise DataError(
            f"{where}: tag '{tag}' is not in a known scheme; expected O, B-TYPE and I-TYPE (BIO, IOB1), "
            "or also E-TYPE and S-TYPE (BIOES)"
        )
    return match.group(1), match.group(2)


def detect_scheme(sentences: Sequence[tuple[list[str], list[int]]], path: Path) -> str:
    """BIOES when E-/S- (or L-/U-) tags occur; IOB1 when most entities open with I-; else IOB2."""
    opened_by_b = opened_by_i = 0
    for tags, lines in sentences:
        previous = None
        for tag, line in zip(tags, lines):
            prefix, kind = _parse(tag, f"{path}: line {line}")
            if prefix in "ESLU":
                return "bioes"
            if prefix == "B":
                opened_by_b += 1
            elif prefix == "I" and previous != kind:
                opened_by_i += 1
            previous = kind
    return "iob1" if opened_by_i > opened_by_b else "iob2"


def to_iob2(tags: list[str], lines: list[int], scheme: str, path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """IOB2 tags, and the (line, tag) of every I-/E- tag that opened an entity and became B-."""
    result: list[str] = []
    repairs: list[tuple[int, str]] = []
    previous: str | None = None
    for tag, line in zip(tags, lines):
        prefix, kind = _parse(tag, f"{path}: line {line}")
        if prefix in "LU":
            prefix = {"L": "E", "U": "S"}[prefix]
        if prefix in "ES" and scheme != "bioes":
            raise DataError(f"{path}: line {line}: tag '{tag}' belongs to BIOES, but the file was read as {scheme.upper()}")
        if prefix == "O":
            result.append("O")
        elif prefix in "BS":
            result.append(f"B-{kind}")
        elif previous == kind:  # I or E continuing an entity of the same type
            result.append(f"I-{kind}")
        else:
            result.append(f"B-{kind}")
            if scheme != "iob1":
                repairs.append((line, tag))
        previous = None if prefix in "OES" else kind
    return result, repairs


# -- readers -------------------------------------------------------------------------------------


def read_ner(
    path: Path,
    *,
    role: str,
    tag_column: int | None = None,
    scheme: str = "auto",
    known_types: Sequence[str] | None = None,
) -> NerData:
    """Read one file for ``role`` (train/val/test/predict); a `DataError` names the line at fault."""
    path = Path(path)
    suffix = path.suffix.lower()
    needs_tags = role != "predict"
    if suffix in (".jsonl", ".json", ".ndjson"):
        data = _read_jsonl(path, needs_tags=needs_tags, scheme=scheme)
    elif suffix in (".parquet", ".pq"):  # the JSON Lines forms as columns: tokens + tags, or text + entities
        rows = enumerate(read_table(path).to_dict("records"), start=1)
        data = _read_jsonl(path, needs_tags=needs_tags, scheme=scheme, records=rows, unit="row")
    elif suffix == ".txt" and role == "predict":
        data = _read_plain_text(path)
    else:
        data = _read_conll(path, tag_column=tag_column, needs_tags=needs_tags, scheme=scheme)
    if not data.sentences:
        raise DataError(f"{path}: no sentences found")
    if needs_tags and known_types is not None:
        known = set(known_types)
        for sentence in data.sentences:
            for position, tag in enumerate(sentence.tags or []):
                if tag != "O" and tag[2:] not in known:
                    raise DataError(
                        f"{path}: line {sentence.line_of(position)}: entity type '{tag[2:]}' was never seen in training "
                        f"(known: {', '.join(sorted(known))})"
                    )
    return data


def _normalise(path: Path, raw: list[tuple[list[str], list[str], list[int]]], scheme: str, form: str) -> NerData:
    if scheme not in SCHEMES:
        raise DataError(f"--tag-scheme {scheme}: expected one of {', '.join(SCHEMES)}")
    chosen = detect_scheme([(tags, lines) for _, tags, lines in raw], path) if scheme == "auto" else scheme
    sentences, repairs = [], []
    for tokens, tags, lines in raw:
        iob2, repaired = to_iob2(tags, lines, chosen, path)
        repairs.extend(repaired)
        sentences.append(Sentence(tokens=tokens, tags=iob2, line=lines[0], token_lines=lines))
    return NerData(path=path, sentences=sentences, format=form, scheme=chosen, repairs=repairs)


def _read_conll(path: Path, *, tag_column: int | None, needs_tags: bool, scheme: str) -> NerData:
    raw: list[tuple[list[str], list[str], list[int]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def close() -> None:
        if tokens:
            raw.append((list(tokens), list(tags), list(lines)))
        tokens.clear(), tags.clear(), lines.clear()

    untagged = None
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            close()
            continue
        if len(parts) == 1:
            if needs_tags:
                raise DataError(f"{path}: line {number}: expected a token and a tag separated by whitespace, got {line.strip()!r}")
            untagged = True
            tokens.append(parts[0])
            lines.append(number)
            continue
        column = (tag_column - 1) if tag_column else len(parts) - 1
        if not 0 < column < len(parts):
            raise DataError(f"{path}: line {number}: no column {column + 1} (from --tag-column) in {line.strip()!r}")
        tokens.append(parts[0])
        tags.append(parts[column])
        lines.append(number)
    close()
    if not needs_tags and (untagged or not any(t for _, t, _ in raw)):
        return NerData(path=path, sentences=[Sentence(tokens=t, tags=None, line=ln[0]) for t, _, ln in raw], format="conll")
    data = _normalise(path, raw, scheme, "conll")
    if not needs_tags:
        for sentence in data.sentences:
            sentence.tags = None
    return data


def _read_jsonl(path: Path, *, needs_tags: bool, scheme: str, records: Any = None, unit: str = "line") -> NerData:
    token_rows: list[tuple[list[str], list[str], list[int]]] = []
    sentences: list[Sentence] = []
    notes: list[str] = []
    form = None
    for number, record in (json_lines(path) if records is None else records):
        where = f"{path}: {unit} {number}"
        if "tokens" in record:
            form = form or "jsonl-tokens"
            tokens = record["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
                raise DataError(f"{where}: 'tokens' must be a list of non-empty strings")
            tags = record.get("tags", record.get("ner_tags"))
            if tags is None:
                if needs_tags:
                    raise DataError(f"{where}: 'tokens' without 'tags'")
                sentences.append(Sentence(tokens=tokens, tags=None, line=number))
                continue
            if not isinstance(tags, list) or len(tags) != len(tokens):
                count = len(tags) if isinstance(tags, list) else "no list of"
                raise DataError(f"{where}: {len(tokens)} tokens but {count} tags; every token needs one tag")
            if not all(isinstance(t, str) for t in tags):
                raise DataError(f"{where}: 'tags' must be strings such as 'B-PER' (integer tag ids need a label list)")
            token_rows.append((tokens, tags, [number] * len(tokens)))
        elif "text" in record:
            form = form or "jsonl-spans"
            sentences.append(_sentence_from_spans(record, where, needs_tags, notes, number))
        else:
            raise DataError(f"{where}: expected 'tokens' and 'tags', or 'text' and 'entities'")
    if token_rows:
        if sentences:
            raise DataError(f"{path}: mixes token/tag lines with text/entity lines; use one format per file")
        data = _normalise(path, token_rows, scheme, "jsonl-tokens")
        if not needs_tags:
            for sentence in data.sentences:
                sentence.tags = None
        return data
    return NerData(path=path, sentences=sentences, format=form or "jsonl-spans", scheme="spans", notes=notes)


def _sentence_from_spans(record: dict[str, Any], where: str, needs_tags: bool, notes: list[str], line: int) -> Sentence:
    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string")
    words, offsets = words_with_offsets(text)
    entities = record.get("entities")
    if entities is None:
        if needs_tags:
            raise DataError(f"{where}: 'text' without 'entities' (use an empty list for a sentence without any)")
        return Sentence(tokens=words, tags=None, line=line, text=text, offsets=offsets)
    if not isinstance(entities, list):
        raise DataError(f"{where}: 'entities' must be a list of {{start, end, label}} objects")
    spans = []
    for index, entity in enumerate(entities, start=1):
        if not isinstance(entity, dict) or not {"start", "end", "label"} <= set(entity):
            raise DataError(f"{where}: entity {index} needs 'start', 'end' and 'label'")
        start, end, label = entity["start"], entity["end"], entity["label"]
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
            raise DataError(f"{where}: entity {index}: 'start' and 'end' must be integers")
        if not isinstance(label, str) or not label.strip() or TAG.fullmatch(label):
            raise DataError(f"{where}: entity {index}: 'label' must be a type such as 'DRUG', got {label!r}")
        if start < 0 or end <= start:
            raise DataError(f"{where}: entity {index} ({label}): expected 0 <= start < end, got {start}-{end}")
        if end > len(text):
            raise DataError(
                f"{where}: entity {index} ({label}): end {end} is past the end of the text ({len(text)} characters)"
            )
        spans.append((start, end, label, index))
    spans.sort()
    for (s1, e1, l1, i1), (s2, e2, l2, i2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise DataError(
                f"{where}: entities {i1} '{text[s1:e1]}' ({l1}, {s1}-{e1}) and {i2} '{text[s2:e2]}' ({l2}, {s2}-{e2}) overlap"
            )
    tags = ["O"] * len(words)
    for start, end, label, index in spans:
        covered = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if not covered:
            raise DataError(f"{where}: entity {index} ({label}, {start}-{end}) covers no word of the text")
        if offsets[covered[0]][0] != start or offsets[covered[-1]][1] != end:
            notes.append(f"{where}: entity {index} '{text[start:end]}' ({label}) does not end on word boundaries; "
                         f"labelled the whole words '{text[offsets[covered[0]][0]:offsets[covered[-1]][1]]}'")
        for position, word in enumerate(covered):
            tags[word] = f"{'B' if position == 0 else 'I'}-{label}"
    return Sentence(tokens=words, tags=tags, line=line, text=text, offsets=offsets)


def _read_plain_text(path: Path) -> NerData:
    sentences = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            words, offsets = words_with_offsets(line)
            sentences.append(Sentence(tokens=words, tags=None, line=number, text=line, offsets=offsets))
    return NerData(path=path, sentences=sentences, format="text")


# -- checks and splits ---------------------------------------------------------------------------


def entity_counts(data: NerData) -> Counter:
    return Counter(tag[2:] for s in data.sentences for tag in (s.tags or []) if tag.startswith("B-"))


def check(data: NerData) -> list[Finding]:
    tokens = sum(len(s.tokens) for s in data.sentences)
    scheme = {None: "", "spans": "", "iob2": ", IOB2 tags"}.get(data.scheme, f", {str(data.scheme).upper()} tags normalised to IOB2")
    findings = [Finding("info", f"{data.path}: {len(data)} sentences, {tokens} tokens ({data.format}{scheme})")]
    if data.labelled:
        counts = entity_counts(data)
        if counts:
            findings.append(Finding("info", "entities: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                                    {"entities": dict(counts)}))
        else:
            findings.append(Finding("error", f"{data.path}: no entities at all; there is nothing to learn"))
        rare = [kind for kind, count in counts.items() if count < 5]
        if rare:
            findings.append(Finding("warning", f"entity type(s) with fewer than 5 examples: {', '.join(sorted(rare))}"))
    if data.repairs:
        shown = ", ".join(f"line {line} ({tag})" for line, tag in data.repairs[:5])
        more = f" and {len(data.repairs) - 5} more" if len(data.repairs) > 5 else ""
        findings.append(Finding(
            "warning", f"{len(data.repairs)} I- tag(s) had no entity before them and were read as the start of one (B-): {shown}{more}"
        ))
    for note in data.notes[:5]:
        findings.append(Finding("warning", note))
    if len(data.notes) > 5:
        findings.append(Finding("warning", f"{len(data.notes) - 5} more entities do not end on word boundaries"))
    return findings
