"""Training data held as memory-mapped Arrow columns, not Python lists: the `Column`/`Spool`
helper, and the sentiment reader that spools a labelled file part by part."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_csv

from taskzoo import DataError
from taskzoo.helpers.columns import Column, Spool, spool_folder


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))


def _spooled(values: list[str], parts: int = 3) -> Column:
    spool = Spool({"text": pa.string()})
    size = -(-len(values) // parts)
    for start in range(0, len(values), size):
        spool.append(text=values[start:start + size])
    return spool.finish()["text"]


def test_a_column_reads_like_the_list_it_was_written_from():
    values = [f"text {i}" for i in range(100)]
    column = _spooled(values)
    assert len(column) == 100 and column[0] == "text 0" and column[-1] == "text 99" and column[57] == "text 57"
    assert column == values and list(column) == values and column != values[:-1]
    assert column[10:20] == values[10:20] and column[::-7] == values[::-7]
    picked = column.take([5, 3, 99, 3])
    assert picked == ["text 5", "text 3", "text 99", "text 3"]
    assert picked.take([2, 0]) == ["text 99", "text 5"]  # indices compose; values are never copied
    assert [len(batch) for batch in column.batches(40)] == [40, 40, 20]
    with pytest.raises(IndexError):
        column[100]


def test_distinct_values_positions_and_new_spellings_are_computed_in_arrow():
    column = _spooled(["b", "a", "b", "c", "a"], parts=2)
    assert column.distinct() == ["b", "a", "c"] and column.index("c") == 3 and column.index("a") == 1
    with pytest.raises(ValueError):
        column.index("z")
    taken = column.take([4, 3, 2])
    assert taken.distinct() == ["a", "c", "b"] and taken.index("b") == 2
    assert column.respelled({"b": "B", "c": "a"}) == ["B", "a", "B", "a", "a"]
    assert taken.respelled({"a": "A"}) == ["A", "c", "b"]


def test_the_spooled_file_is_mapped_and_leaves_nothing_behind():
    column = _spooled([f"row {i}" for i in range(1000)])
    assert list(spool_folder().iterdir()) == []  # unlinked once mapped; the mapping keeps it readable
    assert column[999] == "row 999"
    assert pa.total_allocated_bytes() < 10_000  # the strings are in the mapped file, not in Arrow's pool
    spool = Spool({"row": pa.int64()})
    spool.append(row=[1, 2, 3])
    spool.discard()
    assert list(spool_folder().iterdir()) == []
    numbers = Spool({"row": pa.int64()})
    numbers.append(row=[4, 5, 6])
    assert numbers.finish()["row"].take([2, 0]).to_numpy().tolist() == [6, 4]


def test_a_spool_refuses_columns_of_different_lengths():
    spool = Spool({"text": pa.string(), "row": pa.int64()})
    with pytest.raises(ValueError, match="one length"):
        spool.append(text=["a", "b"], row=[1])
    spool.discard()


# -- the sentiment reader ---------------------------------------------------------------------------


def test_labelled_texts_are_columns_and_reading_in_parts_changes_nothing(tmp_path, monkeypatch):
    from taskzoo_sentiment import data as sentiment

    rng = random.Random(0)
    rows = [[f"review {i} " + rng.choice(["good", "bad", "fine"]), rng.choice(["1", "2", "2.0", "02"])]
            for i in range(60)]
    rows[13][0] = ""  # dropped, named
    path = write_csv(tmp_path / "r.csv", ["text", "label"], rows)
    whole = sentiment.read_texts(path, role="train")
    monkeypatch.setattr(sentiment, "PART_ROWS", 7)
    parted = sentiment.read_texts(path, role="train")
    for data in (whole, parted):
        assert isinstance(data.texts, Column) and isinstance(data.labels, Column) and isinstance(data.rows, Column)
    assert parted.texts == whole.texts and parted.labels == whole.labels and parted.rows == whole.rows
    assert parted.dropped == whole.dropped == [(14, "empty text")]
    assert len(whole) == 59 and whole.rows[13] == 15
    assert set(whole.labels) == {"1", "2"}  # 2, 2.0 and 02 are one class, whichever part they are in
    subset = whole.subset([3, 1])
    assert subset.texts == [whole.texts[3], whole.texts[1]] and subset.rows == [4, 2]


@pytest.mark.parametrize(
    ("bad_row", "label", "known", "message"),
    [
        (45, "maybe", ["neg", "pos"], r"row 45, column 'label': label 'maybe' was never seen in training"),
        (33, "inf", None, r"row 33, column 'label': label 'inf' is not a finite number"),
    ],
)
def test_an_error_in_a_later_part_names_its_row(tmp_path, monkeypatch, bad_row, label, known, message):
    from taskzoo_sentiment import data as sentiment

    numeric = known is None
    rows = [[f"text {i}", (str(i % 2) if numeric else ["neg", "pos"][i % 2])] for i in range(50)]
    rows[bad_row - 1][1] = label
    rows[bad_row + 2][1] = label  # a later row with the same fault is not the one named
    path = write_csv(tmp_path / "r.csv", ["text", "label"], rows)
    monkeypatch.setattr(sentiment, "PART_ROWS", 8)
    with pytest.raises(DataError, match=message):
        sentiment.read_texts(path, role="val" if known else "train", known_labels=known)


def test_duplicate_and_conflicting_texts_are_found_without_a_dictionary_of_texts(tmp_path):
    from taskzoo_sentiment.data import check, read_texts

    rows = [["Great  film", "pos"], ["awful", "neg"], ["great film", "pos"], ["AWFUL", "pos"], ["fine", "pos"],
            ["awful", "neg"]]
    data = read_texts(write_csv(tmp_path / "r.csv", ["text", "label"], rows), role="train")
    messages = [finding.message for finding in check(data)]
    assert "2 duplicate text(s), kept: row 3, 6" in messages
    assert "1 text(s) appear with different labels: rows 2/4" in messages


def test_reading_a_large_training_file_holds_neither_its_texts_nor_their_tokens(tmp_path, monkeypatch):
    """A 35 MB training file: after reading, Python and Arrow hold a few bytes a row (row numbers,
    dropped rows), not the texts; a loader batch is tokenised when it is asked for."""
    import tracemalloc

    from taskzoo_sentiment import data as sentiment

    words = ["good", "bad", "plot", "actor", "scene", "boring", "great", "music"]
    path = tmp_path / "big.csv"
    rng = np.random.default_rng(0)
    with path.open("w", encoding="utf-8") as stream:
        stream.write("text,label\n")
        for i in range(200_000):
            stream.write(" ".join(words[j] for j in rng.integers(0, 8, 30)) + f" {i},{'pos' if i % 3 else 'neg'}\n")
    size = path.stat().st_size
    assert size > 30e6
    sentiment.read_texts(write_csv(tmp_path / "small.csv", ["text", "label"], [["a", "x"], ["b", "y"]]), role="train")
    tracemalloc.start()  # after a small read: the modules it imports are not what is measured
    arrow_before = pa.total_allocated_bytes()
    data = sentiment.read_texts(path, role="train")
    held_by_python, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held_by_arrow = pa.total_allocated_bytes() - arrow_before
    assert len(data) == 200_000 and data.texts[199_999].endswith(" 199999") and data.labels[2] == "pos"
    assert held_by_python < size / 20, f"Python holds {held_by_python / 1e6:.1f} MB of a {size / 1e6:.0f} MB file"
    assert held_by_arrow < size / 20, f"Arrow holds {held_by_arrow / 1e6:.1f} MB of a {size / 1e6:.0f} MB file"
