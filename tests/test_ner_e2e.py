"""End to end: fine-tune the offline MiniLM on the example clinical notes, then evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskzoo import run_folders
from taskzoo.cli import cli

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ner"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ner") / "run"
    result = CliRunner().invoke(cli, ["run", "ner", "--data", str(EXAMPLES / "train.conll"),
                                      "--val", str(EXAMPLES / "dev.conll"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_run_folder_and_validation_f1(trained):
    assert run_folders.read_status(trained)["status"] == "complete"
    for name in ("model/model.safetensors", "model/tokenizer.json", "confusion_matrix.png", "per_type_f1.png",
                 "training_curves.png", "metrics.json"):
        assert (trained / name).exists(), name
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["main_metric"] == "f1"
    assert set(summary["val"]["per_type"]) == {"CONDITION", "DOSE", "DRUG", "ORG"}


def test_entity_f1_on_the_held_out_test_file_is_clearly_above_zero(trained, runner):
    result = runner.invoke(cli, ["evaluate", "--model", str(trained), "--data", str(EXAMPLES / "test.conll"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["f1"] > 0.5, metrics
    assert 0 < metrics["precision"] <= 1 and 0 < metrics["recall"] <= 1


def test_evaluate_on_span_annotated_jsonl(trained, runner):
    result = runner.invoke(cli, ["evaluate", "--model", str(trained), "--data", str(EXAMPLES / "spans.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["f1"] > 0.3


def test_predict_raw_notes_to_jsonl_with_offsets_into_each_note(trained, runner, tmp_path):
    out = tmp_path / "entities.jsonl"
    result = runner.invoke(cli, ["predict", "--model", str(trained), "--data", str(EXAMPLES / "notes.txt"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    notes = [line for line in (EXAMPLES / "notes.txt").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in records] == notes
    assert sum(len(r["entities"]) for r in records) >= len(notes)
    for record in records:
        for entity in record["entities"]:
            assert record["text"][entity["start"]:entity["end"]] == entity["text"]
            assert entity["label"] in {"CONDITION", "DOSE", "DRUG", "ORG"} and 0 < entity["score"] <= 1


def test_predict_inline_text_finds_the_drug(trained, runner):
    result = runner.invoke(cli, ["predict", "--model", str(trained), "--text", "Aspirin 81 mg was prescribed at Mayo Clinic"])
    assert result.exit_code == 0, result.output
    assert "DRUG\tAspirin\t0-7" in result.stdout


def test_run_folder_loads_in_a_transformers_pipeline(trained):
    from transformers import pipeline

    ner = pipeline("token-classification", model=str(trained / "model"), aggregation_strategy="first")
    groups = {entity["entity_group"] for entity in ner("Metformin 500 mg twice daily was started for type 2 diabetes.")}
    assert "DRUG" in groups


def test_unseen_entity_type_in_test_file_is_refused(trained, runner, tmp_path):
    test = tmp_path / "test.conll"
    test.write_text("BRCA1 B-GENE\nmutation O\n", encoding="utf-8")
    result = runner.invoke(cli, ["evaluate", "--model", str(trained), "--data", str(test)])
    assert result.exit_code == 2
    assert f"error: {test}: line 1: entity type 'GENE' was never seen in training" in result.output
