"""NER data: every format, every tag scheme, sub-word alignment, windows, spans, bad input."""

from __future__ import annotations

import json

import pytest

from taskzoo import DataError
from taskzoo.weights import locate
from taskzoo.plugins import PluginHost
from taskzoo_ner.data import check, read_ner
from taskzoo_ner.task import NerTask, decode_spans

CONLL = """-DOCSTART- -X- O O

Aspirin NN B-DRUG
81 CD B-DOSE
mg NN I-DOSE
at IN O
Mayo NNP B-ORG
Clinic NNP I-ORG
. . O

Patients NNS O
improved VBD O
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def tags_of(data):
    return [s.tags for s in data.sentences]


def test_conll_skips_docstart_and_reads_the_last_column(tmp_path):
    data = read_ner(write(tmp_path, "a.conll", CONLL), role="train")
    assert [s.tokens[:2] for s in data.sentences] == [["Aspirin", "81"], ["Patients", "improved"]]
    assert tags_of(data)[0] == ["B-DRUG", "B-DOSE", "I-DOSE", "O", "B-ORG", "I-ORG", "O"]
    assert data.sentences[0].line == 3 and data.scheme == "iob2"


def test_conll_tag_column_option(tmp_path):
    path = write(tmp_path, "b.conll", "Aspirin B-DRUG x\nhelps O x\n")
    assert tags_of(read_ner(path, role="train", tag_column=2)) == [["B-DRUG", "O"]]


def test_jsonl_tokens_and_spans_give_the_same_tags(tmp_path):
    tokens = write(tmp_path, "t.jsonl", json.dumps({"tokens": ["Aspirin", "81", "mg", "at", "Mayo", "Clinic"],
                                                     "tags": ["B-DRUG", "B-DOSE", "I-DOSE", "O", "B-ORG", "I-ORG"]}) + "\n")
    text = "Aspirin 81 mg at Mayo Clinic"
    spans = write(tmp_path, "s.jsonl", json.dumps({"text": text, "entities": [
        {"start": 0, "end": 7, "label": "DRUG"}, {"start": 8, "end": 13, "label": "DOSE"},
        {"start": 17, "end": 28, "label": "ORG"}]}) + "\n")
    a, b = read_ner(tokens, role="train"), read_ner(spans, role="train")
    assert tags_of(a) == tags_of(b)
    assert b.sentences[0].offsets[4] == (17, 21)


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [
        (["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], "iob1", ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]),
        (["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"], "bioes", ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC"]),
        (["U-PER", "O", "B-LOC", "L-LOC"], "bioes", ["B-PER", "O", "B-LOC", "I-LOC"]),
    ],
)
def test_schemes_are_detected_and_normalised_to_iob2(tmp_path, tags, scheme, expected):
    lines = "\n".join(f"w{i} {tag}" for i, tag in enumerate(tags))
    data = read_ner(write(tmp_path, "x.conll", lines + "\n"), role="train")
    assert data.scheme == scheme and tags_of(data) == [expected]
    assert data.repairs == []


def test_stray_inside_tag_is_repaired_and_reported_with_its_line(tmp_path):
    text = "Aspirin B-DRUG\ntoday O\n\nthen O\nMayo I-ORG\nClinic I-ORG\n\nbig B-ORG\nhospital I-ORG\n"
    data = read_ner(write(tmp_path, "r.conll", text), role="train")
    assert data.scheme == "iob2"
    assert tags_of(data)[1] == ["O", "B-ORG", "I-ORG"]
    assert data.repairs == [(5, "I-ORG")]
    warnings = [f.message for f in check(data) if f.level == "warning"]
    assert any("read as the start of one (B-): line 5 (I-ORG)" in w for w in warnings)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("u.conll", "Aspirin DRUG\n", r"line 1: tag 'DRUG' is not in a known scheme"),
        ("u.conll", "Aspirin X-DRUG\n", r"line 1: tag 'X-DRUG' is not in a known scheme"),
        ("m.conll", "Aspirin B-DRUG\nhelps\n", r"line 2: expected a token and a tag"),
        ("m.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', r"line 1: 2 tokens but 1 tags"),
        ("o.jsonl", '{"text": "aspirin tablets", "entities": [{"start": 0, "end": 7, "label": "DRUG"}, '
                    '{"start": 0, "end": 15, "label": "DOSE"}]}\n', r"line 1: entities 1 'aspirin' \(DRUG, 0-7\) and 2 'aspirin tablets' \(DOSE, 0-15\) overlap"),
        ("p.jsonl", '\n{"text": "aspirin", "entities": [{"start": 0, "end": 12, "label": "DRUG"}]}\n',
         r"line 2: entity 1 \(DRUG\): end 12 is past the end of the text \(7 characters\)"),
        ("e.conll", "-DOCSTART- O\n\n", r"no sentences found"),
        ("b.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"oops": 1}\n', r"line 2: expected 'tokens' and 'tags'"),
    ],
)
def test_bad_input_names_the_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=message) as caught:
        read_ner(path, role="train")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_test_file_with_an_entity_type_never_trained_on(tmp_path):
    path = write(tmp_path, "t.conll", "Aspirin B-DRUG\nBRCA1 B-GENE\n")
    with pytest.raises(DataError, match=r"line 2: entity type 'GENE' was never seen in training \(known: DOSE, DRUG\)"):
        read_ner(path, role="test", known_types=["DRUG", "DOSE"])


def test_span_not_on_word_boundaries_is_widened_and_reported(tmp_path):
    path = write(tmp_path, "w.jsonl", json.dumps({"text": "took Aspirin81 today", "entities": [
        {"start": 5, "end": 12, "label": "DRUG"}]}) + "\n")
    data = read_ner(path, role="train")
    assert tags_of(data) == [["O", "B-DRUG", "O"]]
    assert any("does not end on word boundaries" in f.message for f in check(data))


@pytest.fixture(scope="module")
def task():
    host = PluginHost()
    spec = host.task("ner")
    task = NerTask(spec, {"max_length": 12, "tag_scheme": "auto"})
    task.build_model(host.default_backbone("ner"), ["O", "B-DRUG", "I-DRUG", "B-ORG", "I-ORG"])
    return task


def test_only_the_first_sub_token_of_each_word_carries_its_label(task, tmp_path):
    text = "Hydrochlorothiazide B-DRUG\nat O\nMayo B-ORG\n"
    data = read_ner(write(tmp_path, "s.conll", text), role="train")
    (item,) = task.windows(data)
    pieces = task.tokenizer.convert_ids_to_tokens(item["input_ids"])
    first_pieces = [p for p, w in zip(pieces, item["word_index"]) if w >= 0]
    assert len(pieces) > 5  # the drug name is split into several sub-words
    assert first_pieces[0] == "hydro" and len(first_pieces) == 3
    labelled = [label for label in item["labels"] if label != -100]
    assert labelled == [1, 0, 3]  # B-DRUG, O, B-ORG; other sub-words and [CLS]/[SEP] are ignored
    assert item["labels"][0] == -100 and item["labels"][2] == -100


@pytest.mark.parametrize("max_length", [12, 34])
def test_long_sentences_become_windows_covering_every_word_once(task, tmp_path, max_length):
    """Each word is predicted (and trained on) in exactly one window, and windows after a cut see
    the words before it as context, which carry no label."""
    from taskzoo_ner.task import IGNORED

    task.tokenizer.model_max_length = max_length
    words = ["Aspirin B-DRUG" if i % 5 == 0 else "and O" for i in range(40)]
    data = read_ner(write(tmp_path, "long.conll", "\n".join(words) + "\n"), role="train")
    items = task.windows(data)
    assert len(items) > 1 and all(len(item["input_ids"]) <= max_length for item in items)
    covered = [w for item in items for w in item["word_index"] if w >= 0]
    assert covered == list(range(40))
    for item in items:
        predicted = [position for position, word in enumerate(item["word_index"]) if word >= 0]
        assert item["word_index"][predicted[0]] == item["start"]
        assert all((label != IGNORED) == (word >= 0) for label, word in zip(item["labels"], item["word_index"]))
    for item in items[1:]:  # context before the core: real tokens between [CLS] and the first core word
        first_core_token = next(position for position, word in enumerate(item["word_index"]) if word >= 0)
        assert first_core_token > 1
    if max_length == 34:  # a context of 4 sub-words also fits 'Aspirin' after a core (1 does not)
        assert all(item["word_index"][-2] < 0 for item in items[:-1])


def test_parts_keep_the_sentence_numbers_of_the_whole_file(task, tmp_path):
    """Metrics stitch windows back into sentences by number: parts scored one after another must
    not number their sentences from 0 again (sentences of different parts would merge)."""
    task.tokenizer.model_max_length = 12
    text = "\n".join(f"Aspirin B-DRUG\nat O\nMayo{'x' * i} B-ORG\n" for i in range(5))
    data = read_ner(write(tmp_path, "five.conll", text), role="test")
    whole = [(item["sentence"], item["start"], item["labels"]) for item in task.windows(data)]
    parted = [(item["sentence"], item["start"], item["labels"]) for part in task.parts(data, 2)
              for item in task.windows(part)]
    assert [p.first for p in task.parts(data, 2)] == [0, 2, 4]
    assert parted == whole and sorted({sentence for sentence, _, _ in parted}) == [0, 1, 2, 3, 4]


def test_decoded_spans_index_back_into_raw_text(task):
    task.options["text"] = ["Gave aspirin at St. Mary's Hospital."]
    data = task.inputs_from_options()
    sentence = data.sentences[0]
    labels = task.labels_of_model
    tags = ["O", "B-DRUG", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]
    assert len(tags) == len(sentence.tokens), sentence.tokens
    prediction = {"sentence": 0, "start": 0, "tags": [labels.index(t) for t in tags], "scores": [0.9] * len(tags)}
    (record,) = task.entities(data, [prediction])
    text = sentence.text
    assert [(e["label"], e["text"]) for e in record["entities"]] == [("DRUG", "aspirin"), ("ORG", "St. Mary's Hospital")]
    for entity in record["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"]


def test_decode_spans_rules():
    assert decode_spans(["B-A", "I-A", "O", "I-B", "B-B", "I-A"], [1, 0.5, 1, 1, 1, 1]) == [
        (0, 1, "A", 0.75), (3, 3, "B", 1.0), (4, 4, "B", 1.0), (5, 5, "A", 1.0)]


def test_default_backbone_is_offline(tmp_path):
    assert PluginHost().default_backbone("ner").offline
    assert locate(PluginHost().default_backbone("ner")).endswith("model")
