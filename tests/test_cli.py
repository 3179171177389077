"""The CLI as a user meets it: listings, and one clear line with exit code 2 for every mistake."""

from __future__ import annotations

import json
import time

import pytest
from conftest import EXAMPLE_REVIEWS, write_csv

from taskzoo.cli import cli


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_list_backbones_and_plugins_text_and_json(runner):
    listed = runner.invoke(cli, ["list"])
    assert listed.exit_code == 0 and "sentiment" in listed.output and "all-minilm-l6-v2" in listed.output
    rows = {row["name"]: row for row in json.loads(runner.invoke(cli, ["list", "--json"]).output)}
    assert list(rows) == ["detection", "ner", "recommendation", "segmentation", "sentiment"]
    assert rows["sentiment"]["data_formats"] == ["csv", "tsv", "jsonl", "parquet", "datasets folder, hf:NAME"] and rows["ner"]["main_metric"] == "f1"
    assert json.loads(runner.invoke(cli, ["list", "nothing*", "--json"]).output) == []
    backbones = json.loads(runner.invoke(cli, ["backbones", "sentiment", "--json"]).output)
    by_name = {b["name"]: b for b in backbones}
    assert by_name["all-minilm-l6-v2"]["offline_now"] and by_name["all-minilm-l6-v2"]["default"]
    assert by_name["roberta-base"]["source"] == "hub" and not by_name["roberta-base"]["offline_now"]
    text = runner.invoke(cli, ["backbones", "sentiment"]).output
    assert "all-minilm-l6-v2 (default)" in text and "22.7M" in text


def test_unknown_task_lists_known_ones(runner):
    result = runner.invoke(cli, ["run", "sentimnt", "--data", "x.csv"])
    assert result.exit_code == 2
    assert "unknown task 'sentimnt'; known tasks: detection, ner, recommendation, segmentation, sentiment" in result.output
    assert_user_error(runner.invoke(cli, ["backbones", "sentimnt"]), "unknown task 'sentimnt'")


def test_run_help_shows_task_options(runner):
    result = runner.invoke(cli, ["run", "sentiment", "--help"])
    assert result.exit_code == 0
    for option in ("--text-column", "--label-column", "--max-length", "--backbone", "--epochs", "--resume", "--config"):
        assert option in result.output


def test_check_summarises_the_example_reviews(runner):
    result = runner.invoke(cli, ["check", "sentiment", "--data", str(EXAMPLE_REVIEWS)])
    assert result.exit_code == 0, result.output
    assert "320 usable rows; text column 'review', label column 'sentiment'" in result.output
    assert "classes (2): negative 160, positive 160" in result.output
    assert "ready for 'tasks run sentiment'" in result.output


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ("no such file",)),
        (b"", ("the file is empty",)),
        (b"id,stars\n1,5\n2,4\n", ("no text column",)),
        (b"text,label\ngreat,pos\nfine,pos\n", ("single class ('pos')",)),
        (b"text,label\ngreat,pos\nawful,\n", ("column 'label' is empty or NaN on row 2",)),
        (b"text,label\ngreat,pos\nna\xefve,neg\n", ("line 3", "not valid UTF-8")),
    ],
)
def test_bad_training_data_is_one_line_exit_2_and_leaves_no_run(runner, tmp_path, content, fragments):
    data = tmp_path / "reviews.csv"
    if content is not None:
        data.write_bytes(content)
    out = tmp_path / "run"
    for command in (["run", "sentiment"], ["check", "sentiment"]):
        result = runner.invoke(cli, [*command, "--data", str(data), "--output", str(out)] if command[0] == "run"
                               else [*command, "--data", str(data)])
        assert_user_error(result, str(data), *fragments)
    assert not out.exists()


def test_unreachable_hub_backbone_fails_fast_naming_offline_ones(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = write_csv(tmp_path / "r.csv", ["text", "label"], [["good", "pos"], ["bad", "neg"]] * 5)
    started = time.monotonic()
    result = runner.invoke(cli, ["run", "sentiment", "--data", str(data), "--backbone", "distilbert-base-uncased",
                                 "--output", str(tmp_path / "run")])
    assert time.monotonic() - started < 30
    assert_user_error(result, "'distilbert-base-uncased'", "cannot be reached", "work offline: all-minilm-l6-v2")
    typo = runner.invoke(cli, ["run", "sentiment", "--data", str(data), "--backbone", "minilm"])
    assert_user_error(typo, "'minilm' is not a sentiment backbone in the catalog", "work offline: all-minilm-l6-v2")
    assert not (tmp_path / "run").exists()


def test_predict_and_evaluate_refuse_a_folder_that_is_not_a_run(runner, tmp_path):
    assert_user_error(runner.invoke(cli, ["predict", "--model", str(tmp_path), "--text", "hi"]), "not a taskzoo run folder")
    assert_user_error(runner.invoke(cli, ["evaluate", "--model", str(tmp_path / "nope"), "--data", "x.csv"]), "no such run folder")


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("bad.conll", "Aspirin B-DRUG\nhelps\n", ("line 2: expected a token and a tag",)),
        ("bad.conll", "Aspirin DRUG\n", ("line 1: tag 'DRUG' is not in a known scheme",)),
        ("bad.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', ("line 1: 2 tokens but 1 tags",)),
        ("bad.jsonl", '{"text": "abc", "entities": [{"start": 0, "end": 9, "label": "X"}]}\n', ("past the end of the text",)),
        ("none.conll", "a O\nb O\n", ("no entities at all",)),
    ],
)
def test_bad_ner_data_is_one_line_exit_2(runner, tmp_path, name, content, fragments):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    result = runner.invoke(cli, ["run", "ner", "--data", str(data), "--output", str(tmp_path / "run")])
    assert_user_error(result, str(data), *fragments)
    assert not (tmp_path / "run").exists()
