"""Multi-label text classification (--multi-label): label sets from a separator or a list column,
sigmoid outputs with per-label thresholds chosen on validation data, micro/macro F1 beside the
most-common-set baseline, the per-label picture, and predictions written as label sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo_sentiment.data import read_texts
from taskzoo_sentiment.metrics import best_thresholds

PHRASES = {
    "billing": ["I was charged twice on my invoice", "the refund for my payment never arrived",
                "my card was billed the wrong amount", "why is there an extra fee on my bill"],
    "login": ["I cannot sign in to my account", "the password reset link does not work",
              "two-factor code never comes so I am locked out", "my username is not recognised at login"],
    "shipping": ["the parcel has not been delivered", "the courier left my package at the wrong address",
                 "tracking says the order is stuck in transit", "delivery is two weeks late"],
    "urgent": ["please help right now", "this is extremely urgent", "I need this fixed today",
               "asap, our whole team is blocked"],
}


def make_tickets(path: Path, count: int, seed: int, *, lists: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    names = list(PHRASES)
    rows = []
    for _ in range(count):
        chosen = sorted(rng.choice(names[:3], rng.integers(1, 3), replace=False).tolist())
        if rng.random() < 0.4:
            chosen.append("urgent")
        parts = [str(rng.choice(PHRASES[label])) for label in chosen]
        rng.shuffle(parts)
        rows.append((". ".join(parts) + ".", chosen))
    if lists:
        path.write_text("".join(json.dumps({"text": text, "labels": labels}) + "\n" for text, labels in rows))
        return path
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["text", "labels"])
        writer.writerows((text, "|".join(labels)) for text, labels in rows)
    return path


def test_label_sets_are_read_from_a_separator_or_a_list(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,labels\na,urgent | billing\nb,billing|billing\nc,login\n")
    data = read_texts(path, role="train", label_separator="|")
    assert data.labels == ["billing|urgent", "billing", "login"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "labels": ["urgent", "billing"]}\n{"text": "b", "labels": ["login"]}\n')
    assert read_texts(jsonl, role="train", label_separator="|").labels == ["billing|urgent", "login"]
    path.write_text("text,labels\na,billing\nb, | \n")
    with pytest.raises(DataError, match=r"t.csv: row 2, column 'labels': no label in"):
        read_texts(path, role="train", label_separator="|")
    path.write_text("text,labels\na,billing\nb,refunds\n")
    with pytest.raises(DataError, match=r"row 2, column 'labels': label 'refunds' was never seen in training"):
        read_texts(path, role="val", label_separator="|", known_labels=["billing"])


def test_thresholds_maximise_each_labels_f1():
    probabilities = np.array([[0.9, 0.2], [0.6, 0.35], [0.4, 0.3], [0.1, 0.1]])
    truth = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    low, high = best_thresholds(probabilities, truth)
    assert low == pytest.approx(0.5)  # halfway between the negative 0.4 and the positive 0.6
    assert high == pytest.approx(0.15)  # keeps both positives (0.2, 0.35) at the cost of the negative 0.3: F1 0.8
    assert best_thresholds(probabilities, np.zeros_like(truth)) == [0.5, 0.5]


@pytest.mark.slow
def test_a_multi_label_run_learns_the_sets_far_above_the_most_common_set(tmp_path, runner):
    from transformers import pipeline as hf_pipeline

    train = make_tickets(tmp_path / "train.csv", 160, 0)
    val = make_tickets(tmp_path / "val.jsonl", 48, 1, lists=True)
    test = make_tickets(tmp_path / "test.csv", 48, 2)
    result = runner.invoke(cli, ["run", "sentiment", "--data", str(train), "--val", str(val), "--multi-label",
                                 "--epochs", "6", "--max-length", "48", "--batch-size", "16", "--lr", "3e-4",
                                 "--device", "cpu", "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["evaluate", "--model", str(tmp_path / "run"), "--data", str(test)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())
    assert metrics["micro_f1"] > 0.85 and metrics["micro_f1"] > metrics["most_common_set_micro_f1"] + 0.3
    assert set(metrics["per_class"]) == set(PHRASES) and "confusion_matrix" not in metrics
    assert (tmp_path / "run" / "eval-test" / "per_label.png").stat().st_size > 10_000
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and set(config["label_thresholds"]) == set(PHRASES)

    result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "run"), "--text",
                                 "the parcel has not been delivered, this is extremely urgent", "--all-scores"])
    assert result.exit_code == 0, result.output
    assert result.output.split("\t")[0] == "shipping|urgent", result.output
    result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "run"), "--data", str(test), "--output",
                                 str(tmp_path / "preds.jsonl")])
    records = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert all(set(r["labels"]) <= set(PHRASES) and r["prediction"] == "|".join(r["labels"]) for r in records)
    # The model folder is a plain transformers checkpoint; its sigmoid scores are taskzoo's.
    scores = hf_pipeline("text-classification", model=str(tmp_path / "run" / "model"), top_k=None,
                         function_to_apply="sigmoid")(records[0]["text"])
    scores = scores[0] if isinstance(scores[0], list) else scores  # one text: some versions still nest it
    by_label = {s["label"]: s["score"] for s in scores}
    assert all(abs(by_label[label] - records[0]["scores"][label]) < 1e-4 for label in PHRASES)
