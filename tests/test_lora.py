"""--lora: low-rank adapters through peft on the offline text backbone; model/ is a plain merged
checkpoint a transformers pipeline loads and that predicts what tasks predict predicts, with the
adapter kept beside it; tasks whose model is no transformers classifier refuse it in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskzoo.cli import cli

SAMPLE = Path(__file__).resolve().parents[1] / "plugins"


@pytest.mark.slow
def test_a_lora_run_saves_a_merged_checkpoint_that_predicts_what_tasks_predict_does(tmp_path, runner, review_split):
    from safetensors.numpy import load_file
    from transformers import pipeline as hf_pipeline

    train, test = review_split
    run = tmp_path / "run"
    result = runner.invoke(cli, ["run", "sentiment", "--data", str(train), "--val", str(test), "--lora", "8",
                                 "--epochs", "4", "--lr", "1e-3", "--max-length", "48", "--batch-size", "16",
                                 "--device", "cpu", "--output", str(run)])
    assert result.exit_code == 0, result.output
    assert "LoRA rank 8 on query, value:" in result.output and "parameters train" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"] > 0.75  # the adapters learn the reviews, not just the head
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and sorted(adapter["target_modules"]) == ["query", "value"]
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert not any("lora" in name or "base_layer" in name for name in weights)  # merged: plain names only

    texts = ["the hoppy finish was wonderful", "flat, sour and watery: a drain pour"]
    result = runner.invoke(cli, ["predict", "--model", str(run), "--data", str(test), "--output",
                                 str(tmp_path / "preds.jsonl")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    classify = hf_pipeline("text-classification", model=str(run / "model"), top_k=None)
    for record in records[:10] + [{"review": t} for t in texts]:
        text = record.get("review") or record.get("text")
        scores = classify(text, truncation=True)  # as tasks predict does, at the run's --max-length
        scores = scores[0] if isinstance(scores[0], list) else scores
        best = max(scores, key=lambda s: s["score"])
        if "prediction" in record:
            assert best["label"] == record["prediction"] and abs(best["score"] - record["score"]) < 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "segmentation", "--data", str(SAMPLE / "taskzoo_segmentation" / "sample" / "train"), "--lora", "4"],
         "--lora: this task's model (Segmenter) is not a transformers text classifier"),
        (["run", "sentiment", "--data", str(SAMPLE / "taskzoo_sentiment" / "sample" / "train.csv"), "--lora", "4",
          "--lora-targets", "no_such_layer"], "--lora-targets: "),
        (["run", "sentiment", "--data", str(SAMPLE / "taskzoo_sentiment" / "sample" / "train.csv"), "--lora", "0"],
         "--lora: expected at least 1, got 0"),
    ],
)
def test_bad_lora_options_are_one_line(tmp_path, runner, args, message):
    result = runner.invoke(cli, [*args, "--epochs", "1", "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run" / "model").exists()
