"""Reading, checking and splitting sentiment data; every bad input is one clear DataError."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import write_csv

from taskzoo import DataError
from taskzoo.helpers.splits import stratified_split
from taskzoo_sentiment.data import check, read_texts


def test_detects_review_and_stars_columns_and_orders_numeric_labels(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["id", "Review", "stars"],
                     [[1, "great", 5], [2, "bad", 1], [3, "fine", 10], [4, "meh", 2]])
    data = read_texts(path, role="train")
    assert (data.text_column, data.label_column) == ("Review", "stars")
    assert data.labels == ["5", "1", "10", "2"]
    from taskzoo_sentiment.data import sort_labels

    assert sort_labels(set(data.labels)) == ["1", "2", "5", "10"]


def test_tsv_and_jsonl_with_integer_labels(tmp_path):
    tsv = tmp_path / "r.tsv"
    tsv.write_text("sentence\tlabel\nnice, really\t1\nawful\t0\n", encoding="utf-8")
    assert read_texts(tsv, role="train").texts == ["nice, really", "awful"]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "nice", "label": 1}\n\n{"text": "awful", "label": 0}\n', encoding="utf-8")
    data = read_texts(jsonl, role="train")
    assert data.labels == ["1", "0"] and data.rows == [1, 2]


def test_explicit_columns_override_detection(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["body", "mood", "label"], [["a", "x", "p"], ["b", "y", "q"]])
    data = read_texts(path, role="train", text_column="body", label_column="mood")
    assert data.labels == ["x", "y"]


def test_empty_text_rows_are_dropped_and_reported(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["text", "label"], [["good", "pos"], ["", "neg"], ["bad", "neg"], ["good", "pos"]])
    data = read_texts(path, role="train")
    assert data.rows == [1, 3, 4] and data.dropped == [(2, "empty text")]
    messages = [f.message for f in check(data)]
    assert any("1 row(s) will be dropped (empty text): row 2" in m for m in messages)
    assert any("1 duplicate text(s)" in m for m in messages)
    assert any("classes (2): neg 1, pos 2" in m for m in messages)


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, r"missing\.csv: no such file"),
        (b"", {}, r"the file is empty"),
        (b"review,label\n", {}, r"no data rows"),
        (b"id,stars\n1,5\n2,3\n", {}, r"no text column among id, stars; expected one of text, review"),
        (b"text,score2\nhello,1\n", {}, r"no label column among text, score2"),
        (b"text,label\n12,a\n13,b\n", {}, r"column 'text' holds numbers, not text"),
        (b"text,label\ngood,pos\nbad,pos\n", {}, r"single class \('pos'\)"),
        (b"text,label\ngood,pos\nbad,\nugly,NaN\n", {}, r"column 'label' is empty or NaN on row 2, 3"),
        (b"text,label\ngood,pos\ncaf\xe9 bad,neg\n", {}, r"line 3: byte 0xe9 is not valid UTF-8"),
        (b"text,label\ngood,pos\n", {"text_column": "body"}, r"no column 'body' \(from --text-column\)"),
        (b"text,label\n\"a, b\",pos\nc,d,neg\n", {}, r"Expected 2 fields in line 3, saw 3"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, content, kwargs, message):
    path = tmp_path / "missing.csv" if content is None else tmp_path / "data.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        read_texts(path, role="train", **kwargs)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_texts(path, role="train")


def test_test_label_never_seen_in_training_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "test.csv", ["text", "label"], [["good", "pos"], ["so-so", "neutral"]])
    with pytest.raises(DataError, match=r"row 2, column 'label': label 'neutral' was never seen in training \(known: neg, pos\)"):
        read_texts(path, role="test", known_labels=["neg", "pos"])


def test_predict_role_needs_no_labels(tmp_path):
    path = write_csv(tmp_path / "new.csv", ["comment"], [["great"], ["awful"]])
    data = read_texts(path, role="predict")
    assert data.labels is None and data.texts == ["great", "awful"]


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = ["a"] * 80 + ["b"] * 20 + ["c"]
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert Counter(labels[i] for i in val) == {"a": 16, "b": 4}
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)


def test_plain_text_lines_for_prediction(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first review\n\n  second one  \n", encoding="utf-8")
    data = read_texts(path, role="predict")
    assert data.texts == ["first review", "second one"] and data.rows == [1, 3]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
def test_reading_in_parts_gives_what_reading_whole_gives(suffix, tmp_path):
    from taskzoo_sentiment.data import read_texts_in_parts

    texts = [f"review number {i}, quite good" if i % 7 else "" for i in range(1, 40)]
    if suffix == ".txt":
        path = tmp_path / "new.txt"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    elif suffix == ".tsv":
        path = tmp_path / "new.tsv"
        path.write_text("id\treview\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    else:
        path = write_csv(tmp_path / "new.csv", ["id", "review"], [[i, t] for i, t in enumerate(texts)])
    whole = read_texts(path, role="predict")
    parts = list(read_texts_in_parts(path, 5))
    assert all(len(part) <= 5 for part in parts) and len(parts) >= 7
    assert [t for p in parts for t in p.texts] == whole.texts
    assert [r for p in parts for r in p.rows] == whole.rows
    assert [r for p in parts for r in p.records] == whole.records


def test_a_bad_row_in_a_later_part_names_it(tmp_path):
    from taskzoo_sentiment.data import read_texts_in_parts

    path = tmp_path / "new.csv"
    path.write_bytes(b"review\n" + b"".join(f"text {i}\n".encode() for i in range(20)) + b"caf\xe9 au lait\n")
    with pytest.raises(DataError, match=rf"{path}: line 22: byte 0xe9 is not valid UTF-8"):
        list(read_texts_in_parts(path, 5))
    empty = write_csv(tmp_path / "empty.csv", ["review"], [[""], [""]])
    with pytest.raises(DataError, match="has no usable text"):
        list(read_texts_in_parts(empty, 5))


def test_the_metrics_match_scikit_learn_including_labels_never_seen():
    import random

    from sklearn import metrics as sk

    from taskzoo.specs import MetricContext
    from taskzoo_sentiment import metrics

    draw = random.Random(7)
    context = MetricContext(task="sentiment", labels=("a", "b", "c", "d"))  # "d" is never true nor predicted
    references = [draw.choice([0, 1, 2]) for _ in range(200)]
    predictions = [{"label": draw.choice([0, 1, 1, 2])} for _ in range(200)]
    ids = [p["label"] for p in predictions]
    labels = [0, 1, 2, 3]
    assert metrics.accuracy(predictions, references, context) == sk.accuracy_score(references, ids)
    assert abs(metrics.macro_f1(predictions, references, context)
               - sk.f1_score(references, ids, labels=labels, average="macro", zero_division=0)) < 1e-12
    precision, recall, f1, support = sk.precision_recall_fscore_support(references, ids, labels=labels, zero_division=0)
    ours = metrics.per_class(predictions, references, context)
    for i, name in enumerate(context.labels):
        assert ours[name]["support"] == support[i]
        assert abs(ours[name]["precision"] - precision[i]) + abs(ours[name]["recall"] - recall[i]) + abs(ours[name]["f1"] - f1[i]) < 1e-12
    assert metrics.confusion_matrix(predictions, references, context) == sk.confusion_matrix(references, ids, labels=labels).tolist()


@pytest.mark.parametrize("multi_label", [False, True])
def test_batches_padded_from_kept_token_ids_are_the_batches_tokenised_as_they_load(multi_label, tmp_path,
                                                                                   monkeypatch):
    """A set up to KEPT_TOKENS tokens is tokenised once and padded batch by batch; a larger one is
    tokenised again as each batch loads. Both give the same batches, in the same order."""
    import taskzoo_sentiment.task as sentiment
    from taskzoo.plugins import PluginHost

    rows = ["text,label"] + [
        f"\"{'word ' * (i % 9)}review {i}, {'good' if i % 3 else 'bad'}\",{'pos|neg' if i % 4 else 'pos'}" for i in range(45)
    ]
    path = tmp_path / "texts.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    host = PluginHost()
    task = sentiment.SentimentTask(host.task("sentiment"), {"multi_label": multi_label, "max_length": 12})
    data = task.read(path, role="train")
    task.build_model(host.default_backbone("sentiment"), task.labels(data))

    def batches(train: bool) -> list[dict]:
        return list(task.dataloader(data, batch_size=8, train=train, seed=3))

    lengths, kept = task._tokenised(data)
    assert kept is not None and kept.starts[-1] == sum(lengths)
    assert max(lengths) == 12  # truncated to --max-length as the tokenizer does
    padded = {train: batches(train) for train in (True, False)}
    monkeypatch.setattr(sentiment, "KEPT_TOKENS", sum(lengths) - 1)
    assert task._tokenised(data)[1] is None
    for train in (True, False):
        tokenised = batches(train)
        assert len(tokenised) == len(padded[train]) == 6
        for ours, theirs in zip(padded[train], tokenised):
            assert ours.keys() == theirs.keys() >= {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
            for key in theirs:
                assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
