"""End to end: fine-tune the real offline MiniLM on reviews, then evaluate and predict with it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import write_csv

from taskzoo import run_folders
from taskzoo.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(review_split, tmp_path_factory):
    train, test = review_split
    out = tmp_path_factory.mktemp("sentiment") / "run"
    result = CliRunner().invoke(cli, ["run", "sentiment", "--data", str(train), "--epochs", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out, train, test


def test_run_folder_is_complete(trained):
    out, _, _ = trained
    assert run_folders.read_status(out)["status"] == "complete"
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "labels.json", "README.md",
                 "training_curves.png", "confusion_matrix.png", "model/model.safetensors", "model/config.json",
                 "model/tokenizer.json", "checkpoint/trainer_state.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "metrics.json").read_text())
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    assert summary["val"]["accuracy"] == summary["best"]
    card = (out / "README.md").read_text()
    assert "| accuracy |" in card
    assert "stratified by label (seed 42)" in card.split("- validation data:")[1].splitlines()[0]


def test_fine_tuned_accuracy_on_held_out_reviews_is_far_above_majority(trained, runner):
    out, _, test = trained
    with test.open() as stream:
        labels = [row["sentiment"] for row in csv.DictReader(stream)]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    result = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(test), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["accuracy"] >= majority + 0.25, (metrics["accuracy"], majority)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(labels)
    assert (out / f"eval-{test.stem}" / "confusion_matrix.png").exists()


def test_predict_file_and_inline_text(trained, runner, tmp_path):
    out, _, test = trained
    preds = tmp_path / "preds.csv"
    result = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(test), "--output", str(preds)])
    assert result.exit_code == 0, result.output
    with preds.open() as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["review", "sentiment", "prediction", "score"]
    with test.open() as stream:
        assert [r["review"] for r in rows] == [r["review"] for r in csv.DictReader(stream)]
    agreement = sum(r["prediction"] == r["sentiment"] for r in rows) / len(rows)
    assert agreement > 0.75
    inline = runner.invoke(cli, ["predict", "--model", str(out), "--text", "the hoppy finish was wonderful",
                                 "--text", "stale, flat and overpriced; never again"])
    assert inline.exit_code == 0, inline.output
    first, second = [line.split("\t") for line in inline.stdout.strip().splitlines()]
    assert (first[0], second[0]) == ("positive", "negative")
    jsonl = tmp_path / "preds.jsonl"
    assert runner.invoke(cli, ["predict", "--model", str(out), "--data", str(test), "--output", str(jsonl)]).exit_code == 0
    record = json.loads(jsonl.read_text().splitlines()[0])
    assert set(record["scores"]) == {"negative", "positive"} and record["row"] == 1


def test_model_folder_loads_in_a_transformers_pipeline(trained):
    from transformers import pipeline

    out, _, _ = trained
    classify = pipeline("text-classification", model=str(out / "model"))
    assert classify("An absolute delight, I would buy it again tomorrow.")[0]["label"] == "positive"


def test_label_unseen_in_training_is_refused_by_evaluate(trained, runner, tmp_path):
    out, _, _ = trained
    test = write_csv(tmp_path / "test.csv", ["review", "sentiment"], [["great", "positive"], ["okay I guess", "neutral"]])
    result = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(test)])
    assert result.exit_code == 2
    assert f"error: {test}: row 2, column 'sentiment': label 'neutral' was never seen in training (known: negative, positive)" in result.output


def test_data_parallel_with_two_cpu_processes_over_gloo(review_rows, tmp_path):
    """accelerate launch starts two processes; they share one run folder and see each example once."""
    data = write_csv(tmp_path / "small.csv", ["review", "sentiment"], review_rows[:80])
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        "-m", "taskzoo", "run", "sentiment", "--data", str(data), "--epochs", "1", "--device", "cpu",
        "--output", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip().splitlines()[-1] == f"run folder: {out}"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["processes"] == 2
    # 80 rows, 20% validation: every one of the 16 is scored once, none twice.
    assert sum(map(sum, summary["val"]["confusion_matrix"])) == 16
    assert run_folders.read_status(out)["status"] == "complete"


def test_hub_id_in_the_local_hugging_face_cache_trains_without_network(review_rows, tmp_path):
    """A hub backbone already in the user's cache is used offline, without touching the network."""
    from taskzoo.weights import locate
    from taskzoo.plugins import PluginHost

    package_copy = Path(locate(PluginHost().default_backbone("sentiment")))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--minilm-copy"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        (snapshot / name).symlink_to(package_copy / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    data = write_csv(tmp_path / "small.csv", ["review", "sentiment"], review_rows[:60])
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "taskzoo", "run", "sentiment", "--data", str(data), "--epochs", "1",
               "--backbone", "someone/minilm-copy", "--output", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert resolved["backbone"] == {"name": "someone/minilm-copy", "source": "hub", "location": "someone/minilm-copy",
                                    "licence": "see its model card", "params": None}
    assert run_folders.read_status(out)["status"] == "complete"


def test_taskzoo_train_under_accelerate_launch_is_tasks_run(review_rows, tmp_path):
    """The Python API in a script started by accelerate launch: two processes, one run folder, and
    every process gets the same Run back."""
    data = write_csv(tmp_path / "small.csv", ["review", "sentiment"], review_rows[:80])
    out = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(
        "import os, pathlib, taskzoo\n"
        f"run = taskzoo.train('sentiment', data={str(data)!r}, epochs=1, device='cpu', output={str(out)!r}, progress=False)\n"
        "line = f\"{run.folder} {run.metrics['processes']} {run.predict(['lovely'], device='cpu')[0]['prediction']}\"\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank' + os.environ['RANK']).write_text(line)\n"
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
        str(script),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Each process says what it got back (in its own file: their printed lines can interleave).
    answers = [(tmp_path / f"rank{rank}").read_text().split() for rank in (0, 1)]
    assert answers[0] == answers[1] and answers[0][:2] == [str(out), "2"]
    summary = json.loads((out / "metrics.json").read_text())
    assert sum(map(sum, summary["val"]["confusion_matrix"])) == 16
    assert run_folders.read_status(out)["status"] == "complete"


def test_predict_into_a_file_in_parts_leaves_nothing_when_a_later_part_is_bad(trained, runner, tmp_path, monkeypatch):
    from taskzoo import pipeline

    out, _, _ = trained
    monkeypatch.setattr(pipeline, "PART_SIZE", 4)
    good = tmp_path / "new.csv"
    good.write_text("review\n" + "".join(f"a lovely stout number {i}\n" for i in range(10)), encoding="utf-8")
    output = tmp_path / "preds" / "out.csv"
    result = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(good), "--output", str(output)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(output.open()))
    assert [row["review"] for row in rows] == [f"a lovely stout number {i}" for i in range(10)]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(good.read_bytes() + b"caf\xe9\n")
    output.unlink()
    result = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(bad), "--output", str(output)])
    assert result.exit_code == 2 and re.search(rf"{bad}: line 12: byte 0xe9 is not valid UTF-8",
                                               result.output), result.output
    assert list(output.parent.iterdir()) == []


def test_predict_from_parquet_into_parquet_in_parts(trained, runner, tmp_path, monkeypatch):
    """A Parquet output gets each part as a row group of the records JSON Lines would carry; a
    failure in a later part leaves no file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from taskzoo import pipeline

    out, _, _ = trained
    monkeypatch.setattr(pipeline, "PART_SIZE", 4)
    source = tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": list(range(10)), "review": [f"a lovely stout number {i}" for i in range(10)]}),
                   source, row_group_size=3)
    as_lines, as_table = tmp_path / "preds.jsonl", tmp_path / "preds" / "out.parquet"
    for output in (as_lines, as_table):
        result = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(source), "--output", str(output)])
        assert result.exit_code == 0, result.output
    written = pq.ParquetFile(as_table)
    assert written.metadata.num_row_groups == 3  # parts of 4, 4 and 2, each written as it was scored
    rows = written.read().to_pylist()
    expected = [json.loads(line) for line in as_lines.read_text(encoding="utf-8").splitlines()]
    assert [row["review"] for row in rows] == [f"a lovely stout number {i}" for i in range(10)]
    assert [(r["id"], r["prediction"], r["scores"]) for r in rows] == [
        (e["id"], e["prediction"], e["scores"]) for e in expected]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"review\n" + b"".join(f"text {i}\n".encode() for i in range(6)) + b"caf\xe9\n")
    as_table.unlink()
    result = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(bad), "--output", str(as_table)])
    assert result.exit_code == 2 and "line 8: byte 0xe9" in result.output, result.output
    assert list(as_table.parent.iterdir()) == []
