"""Data where users keep it (taskzoo.storage): the same run from a local file and from S3 (a moto
server on loopback, started and stopped here), predictions written back to the bucket, the local
cache refreshed only when the object changes, folders, and one line for every failure."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
import yaml

from taskzoo import DataError, UserError, storage
from taskzoo.cli import cli

SAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "taskzoo_sentiment" / "sample"
QUICK = ["--epochs", "1", "--max-length", "32", "--batch-size", "8", "--seed", "3", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    pytest.importorskip("s3fs", reason="the [cloud] extra is not installed")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, tmp_path):
    import boto3

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "TASKZOO_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"reviews-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.mark.slow
def test_a_run_from_s3_is_the_run_from_the_local_files(bucket, tmp_path, runner):
    client, name = bucket
    for part in ("train", "test"):
        client.upload_file(str(SAMPLE / f"{part}.csv"), name, f"reviews/{part}.csv")
    local = runner.invoke(cli, ["run", "sentiment", "--data", str(SAMPLE / "train.csv"), "--val",
                                str(SAMPLE / "test.csv"), "--output", str(tmp_path / "local"), *QUICK])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(cli, ["run", "sentiment", "--data", f"s3://{name}/reviews/train.csv", "--val",
                                 f"s3://{name}/reviews/test.csv", "--output", str(tmp_path / "remote"), *QUICK])
    assert remote.exit_code == 0, remote.output
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("local", "remote")]
    assert metrics[0]["val"] == metrics[1]["val"] and metrics[0]["best"] == metrics[1]["best"]
    config = yaml.safe_load((tmp_path / "remote" / "config.yaml").read_text())
    assert config["data"] == f"s3://{name}/reviews/train.csv"  # the run says where its data was

    # Predictions from the bucket into the bucket, the same rows as from and into local files.
    result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "remote"), "--data",
                                 f"s3://{name}/reviews/test.csv", "--output", f"s3://{name}/out/preds.csv"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "remote"), "--data", str(SAMPLE / "test.csv"),
                                 "--output", str(tmp_path / "preds.csv")])
    assert result.exit_code == 0, result.output
    uploaded = client.get_object(Bucket=name, Key="out/preds.csv")["Body"].read().decode()
    assert uploaded == (tmp_path / "preds.csv").read_text() and len(list(csv.reader(uploaded.splitlines()))) > 5


def test_the_cache_is_used_again_until_the_object_changes(bucket, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="a.csv", Body=b"text,label\ngood,pos\n")
    first = storage.fetch(f"s3://{name}/a.csv")
    assert first.read_text() == "text,label\ngood,pos\n" and str(first).startswith(str(tmp_path / "cache"))
    stamp = first.stat().st_mtime_ns
    assert storage.fetch(f"s3://{name}/a.csv").stat().st_mtime_ns == stamp  # not copied again
    client.put_object(Bucket=name, Key="a.csv", Body=b"text,label\nbad,neg\nfine,pos\n")
    assert storage.fetch(f"s3://{name}/a.csv").read_text() == "text,label\nbad,neg\nfine,pos\n"


def test_a_folder_is_copied_with_its_layout(bucket):
    client, name = bucket
    for key in ("tiles/images/a.png", "tiles/images/b.png", "tiles/masks/a.png"):
        client.put_object(Bucket=name, Key=key, Body=key.encode())
    folder = storage.fetch(f"s3://{name}/tiles")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == [
        "images/a.png", "images/b.png", "masks/a.png"]
    assert (folder / "masks" / "a.png").read_text() == "tiles/masks/a.png"
    untouched = (folder / "images" / "a.png").stat().st_mtime_ns
    client.put_object(Bucket=name, Key="tiles/masks/a.png", Body=b"redrawn")
    client.put_object(Bucket=name, Key="tiles/images/c.png", Body=b"new")
    again = storage.fetch(f"s3://{name}/tiles")
    assert again == folder and (folder / "masks" / "a.png").read_text() == "redrawn"
    assert (folder / "images" / "c.png").read_text() == "new"
    assert (folder / "images" / "a.png").stat().st_mtime_ns == untouched  # only what changed is fetched again
    assert not list(folder.rglob("*.partial"))


def test_remote_failures_are_one_line_naming_the_url(bucket, runner, monkeypatch, tmp_path):
    client, name = bucket
    with pytest.raises(DataError, match=f"s3://{name}/: the folder is empty"):
        storage.fetch(f"s3://{name}/")
    client.put_object(Bucket=name, Key="big/part.csv", Body=b"x" * 100)
    result = runner.invoke(cli, ["run", "sentiment", "--data", f"s3://{name}/missing.csv", "--output",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2 and f"s3://{name}/missing.csv: no such file or folder" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=r"s3://no-such-bucket-here/x.csv: (no such file|access denied|cannot be read)"):
        storage.fetch("s3://no-such-bucket-here/x.csv")
    monkeypatch.setenv("TASKZOO_CACHE_LIMIT_GB", "0.000000001")
    with pytest.raises(DataError, match="above the 1e-09 GB local cache limit"):
        storage.fetch(f"s3://{name}/")


def test_a_missing_driver_names_the_extra(monkeypatch):
    import fsspec

    def missing(url, **options):
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(UserError, match=r"gs://bucket/train.csv: reading gs:// needs gcsfs: pip install 'taskzoo\[cloud\]'"):
        storage.fetch("gs://bucket/train.csv")
    assert storage.fetch("data/train.csv") == Path("data/train.csv")  # local paths never touch fsspec
    assert storage.location("s3://b/k.csv") == "s3://b/k.csv" and storage.location("x/y.csv") == Path("x/y.csv")


# -- Parquet and Hugging Face datasets ------------------------------------------------------------


def _sample_frames():
    import pandas as pd

    return pd.read_csv(SAMPLE / "train.csv", dtype=str), pd.read_csv(SAMPLE / "test.csv", dtype=str)


@pytest.mark.slow
def test_csv_parquet_and_a_datasets_folder_give_the_same_run(tmp_path, runner, monkeypatch):
    import datasets

    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))
    train, test = _sample_frames()
    train.to_parquet(tmp_path / "train.parquet", index=False)
    test.to_parquet(tmp_path / "test.parquet", index=False)
    labels = sorted(train["sentiment"].unique())
    features = datasets.Features({"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=labels)})
    folder = tmp_path / "reviews_ds"
    datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"review": list(frame["review"]),
                                          "sentiment": [labels.index(v) for v in frame["sentiment"]]}, features=features)
        for name, frame in (("train", train), ("validation", test))
    }).save_to_disk(str(folder))
    runs = {"csv": ["--data", SAMPLE / "train.csv", "--val", SAMPLE / "test.csv"],
            "parquet": ["--data", tmp_path / "train.parquet", "--val", tmp_path / "test.parquet"],
            "datasets": ["--data", folder, "--val", folder]}
    for name, args in runs.items():
        result = runner.invoke(cli, ["run", "sentiment", *map(str, args), "--output", str(tmp_path / name), *QUICK])
        assert result.exit_code == 0, result.output
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs}
    assert metrics["csv"]["val"] == metrics["parquet"]["val"] == metrics["datasets"]["val"]
    # ClassLabel ids come back as their names, as the CSV holds them.
    assert json.loads((tmp_path / "datasets" / "labels.json").read_text()) == \
        json.loads((tmp_path / "csv" / "labels.json").read_text())

    # Predict from Parquet in parts: the same predictions as from the CSV file.
    for source, out in ((SAMPLE / "test.csv", "from_csv.csv"), (tmp_path / "test.parquet", "from_parquet.csv")):
        result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "csv"), "--data", str(source), "--output",
                                     str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "from_csv.csv").read_text() == (tmp_path / "from_parquet.csv").read_text()

    result = runner.invoke(cli, ["check", "sentiment", "--data", str(folder), "--split", "test"])
    assert result.exit_code == 2 and "no split 'test'; its splits are train, validation (choose one with --split)" \
        in result.output
    result = runner.invoke(cli, ["check", "sentiment", "--data", str(SAMPLE / "train.csv"), "--split", "train"])
    assert result.exit_code == 2 and "is not a Hugging Face dataset" in result.output


def test_ner_reads_tokens_and_tags_from_parquet_and_a_hub_dataset_without_network_is_one_line(tmp_path, runner,
                                                                                              monkeypatch):
    import pandas as pd

    frame = pd.DataFrame({"tokens": [["Alice", "visited", "Paris"], ["Bob", "left"]],
                          "tags": [["B-PER", "O", "B-LOC"], ["B-PER", "O"]]})
    frame.to_parquet(tmp_path / "ner.parquet", index=False)
    result = runner.invoke(cli, ["check", "ner", "--data", str(tmp_path / "ner.parquet")])
    assert result.exit_code == 0, result.output
    assert "2 sentences" in result.output or "sentences" in result.output
    bad = pd.DataFrame({"tokens": [["Alice", "visited"]], "tags": [["B-PER"]]})
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    result = runner.invoke(cli, ["check", "ner", "--data", str(tmp_path / "bad.parquet")])
    assert result.exit_code == 2 and "bad.parquet: row 1: 2 tokens but 1 tags" in result.output

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(cli, ["run", "sentiment", "--data", "hf:someone/not-cached-here", "--output",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2 and "hf:someone/not-cached-here: not in the local datasets cache and the hub " \
        "cannot be reached" in result.output and "Traceback" not in result.output
