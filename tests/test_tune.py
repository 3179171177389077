"""tasks tune / taskzoo.tune: spaces, a real study on MiniLM, kills, and workers sharing a study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import taskzoo
from taskzoo import tuning
from taskzoo.cli import cli
from taskzoo.errors import UserError
from taskzoo.plugins import PluginHost
from taskzoo.specs import SearchParam

from conftest import write_csv

TASKS = ("sentiment", "ner", "detection", "segmentation", "recommendation")
# Short trials: 16 tokens, small batches, one or two epochs.
FAST = {"max_length": 16, "batch_size": 16, "device": "cpu", "log_every": 1}


def spec(name: str):
    return PluginHost().task(name)


# -- the space -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_a_default_space_its_options_accept(task):
    space = tuning.checked_space(spec(task), tuning.default_space(spec(task)), "the default space")
    assert space and all(not param.problems() for param in space)


def test_vision_and_recommendation_search_their_own_knobs():
    names = lambda task: {param.name for param in tuning.default_space(spec(task))}  # noqa: E731
    assert {"image-size", "arch"} <= names("segmentation")
    assert "image-size" in names("detection")
    assert {"factors", "regularization"} <= names("recommendation")
    assert {"lr", "batch-size", "weight-decay", "warmup-ratio", "epochs"} <= names("sentiment")


def test_the_learning_rate_is_searched_around_the_task_default():
    lr = next(p for p in tuning.default_space(spec("sentiment")) if p.name == "lr")
    default = spec("sentiment").defaults["lr"]
    assert lr.log and lr.low < default < lr.high


def test_a_space_file_replaces_the_default(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-5, high: 1.0e-3, log: true}\nbatch_size: [8, 16]\nscheduler: cosine\n")
    space = tuning.read_space(path, spec("sentiment"))
    assert space == [SearchParam("lr", 1e-5, 1e-3, log=True), SearchParam("batch-size", choices=(8, 16)),
                     SearchParam("scheduler", choices=("cosine",))]


@pytest.mark.parametrize("text, message", [
    ("lrr: {low: 1, high: 2}", "space.yaml: task 'sentiment': no option --lrr; did you mean --lr?"),
    ("lr: {low: 1e-3, high: 1e-5}", "space.yaml: lr: low 0.001 is above high 1e-05"),
    ("lr: {low: 0, high: 1e-3, log: true}", "space.yaml: lr: a log scale needs low above 0, got 0"),
    ("lr: {low: fast, high: 1}", "space.yaml: lr: expected a number, got 'fast'"),
    ("lr: {min: 1, max: 2}", "space.yaml: lr: expected keys low, high and optionally log, got min, max"),
    ("batch-size: [0, 8]", "space.yaml: batch-size: --batch-size: expected at least 1, got 0"),
    ("scheduler: [linear, steep]", "space.yaml: scheduler: --scheduler: expected one of linear, cosine, constant, got 'steep'"),
    ("scheduler: {low: 1, high: 2}", "space.yaml: scheduler: --scheduler takes a string: give a list of choices"),
    ("data: [a.csv, b.csv]", "space.yaml: task 'sentiment': no option --data"),
    ("- lr", "space.yaml: expected a mapping of option names to ranges"),
])
def test_a_bad_space_file_is_one_line_naming_the_parameter(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as caught:
        tuning.read_space(path, spec("sentiment"))
    assert str(caught.value).replace(str(tmp_path) + os.sep, "").startswith(message)


def test_show_space_prints_a_space_file_that_reads_back(runner, tmp_path):
    result = runner.invoke(cli, ["tune", "segmentation", "--show-space"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "space.yaml"
    path.write_text(result.output)
    assert tuning.read_space(path, spec("segmentation")) == tuning.checked_space(
        spec("segmentation"), tuning.default_space(spec("segmentation")), "default")


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400)])
def test_timeouts_read_as_durations(text, seconds):
    assert tuning.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "2x", "0", "-5m", "1h 30m"])
def test_a_bad_timeout_is_one_line(runner, text):
    result = runner.invoke(cli, ["tune", "sentiment", "--data", "x.csv", "--timeout", text])
    assert result.exit_code == 2 and "--timeout: expected" in result.output and "Traceback" not in result.output


def test_bad_data_stops_before_any_trial(runner, tmp_path):
    data = write_csv(tmp_path / "one.csv", ["review", "sentiment"], [["good", "pos"], ["fine", "pos"]])
    result = runner.invoke(cli, ["tune", "sentiment", "--data", str(data), "--output", str(tmp_path / "t")])
    assert result.exit_code == 2 and "one.csv" in result.output
    assert not (tmp_path / "t").exists()


def test_a_storage_without_its_server_is_one_line(runner, tmp_path, review_split):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(cli, ["tune", "sentiment", "--data", str(review_split[0]), "--output", str(tmp_path / "t"),
                                 "--storage", f"postgresql://me:secret@127.0.0.1:{port}/tuning"])
    assert result.exit_code == 2, result.output
    assert "cannot open the study store" in result.output and "secret" not in result.output


# -- studies of the toy task (a tiny network: trials take a second) -------------------------------


@pytest.fixture
def toy(use_host, tmp_path):
    from toy_plugin import ToyPlugin, toy_points

    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


def test_running_again_continues_to_the_total_never_adds_as_many(toy, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.01, high: 0.3, log: true}\n")
    first = taskzoo.tune("toy", toy, trials=2, space=space, output=tmp_path / "t", progress=False, device="cpu")
    assert first.summary["finished"] == 2 and first.summary["default"]["params"] == {"lr": 0.1}
    again = taskzoo.tune("toy", toy, trials=3, space=space, output=tmp_path / "t", progress=False, device="cpu")
    numbers = [trial["number"] for trial in again.summary["trials"]]
    assert again.summary["finished"] == 3 and numbers == [0, 1, 2]
    assert [t["params"] for t in again.summary["trials"][:2]] == [t["params"] for t in first.summary["trials"]]
    assert again.best.metrics["best"] == again.summary["best"]["value"]


def test_timeout_stops_the_running_trial_at_its_epoch_and_starts_no_other(toy, tmp_path):
    result = taskzoo.tune("toy", toy, trials=5, timeout="0.01", output=tmp_path / "t", progress=False, device="cpu",
                          epochs=3, no_prune=True)
    (trial,) = result.summary["trials"]
    assert trial["state"] == "pruned" and trial["stopped"] == "stopped by --timeout after epoch 1"
    assert json.loads((Path(trial["folder"]) / "metrics.json").read_text())["epochs_run"] == 1


def test_a_failing_trial_is_recorded_and_the_study_goes_on(toy, tmp_path, monkeypatch):
    from taskzoo import pipeline

    real_train = pipeline.train

    def train(spec, values, **kwargs):
        if values["lr"] > 0.2:
            raise RuntimeError("CUDA out of memory (pretend)")
        return real_train(spec, values, **kwargs)

    monkeypatch.setattr(pipeline, "train", train)
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.1, 0.5]\n")
    result = taskzoo.tune("toy", toy, trials=2, space=space, output=tmp_path / "t", progress=False, device="cpu",
                          seed=1)
    failed = [t for t in result.summary["trials"] if t["state"] == "fail"]
    assert result.summary["finished"] == 2 and failed, result.summary["trials"]
    assert all(t["error"] == "RuntimeError: CUDA out of memory (pretend)" and t["params"]["lr"] == 0.5 for t in failed)


def test_a_tune_is_an_mlflow_parent_run_with_its_trials_as_children(toy, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default store is in the working folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.01, high: 0.3, log: true}\n")
    result = taskzoo.tune("toy", toy, trials=2, space=space, output=tmp_path / "t", progress=False, device="cpu",
                          report_to=["mlflow"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("taskzoo-toy")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "taskzoo.tune_folder" in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "t" and parent.info.status == "FINISHED" and parent.data.params["trials"] == "2"
    assert sorted(run.info.run_name for run in children) == ["trial-0000", "trial-0001"]
    assert all(run.info.status == "FINISHED" for run in children)
    best = client.get_metric_history(parent.info.run_id, "best_accuracy")
    assert len(best) == 2 and best[-1].value == result.summary["best"]["value"]
    assert "summary.json" in {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}

# -- real studies --------------------------------------------------------------------------------



def test_trials_share_the_data_the_search_read_and_checkpoint_no_optimizer(toy, tmp_path, monkeypatch):
    """Reading is done once when no searched option changes it; a trial is started again, never
    resumed, after a crash, so its checkpoints skip the optimizer state a plain run keeps."""
    from toy_plugin import ToyTask

    reads = []
    real_read = ToyTask.read

    def read(self, path, **kwargs):
        reads.append(path)
        return real_read(self, path, **kwargs)

    monkeypatch.setattr(ToyTask, "read", read)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.01, high: 0.3, log: true}\n")
    result = taskzoo.tune("toy", toy, trials=3, space=space, output=tmp_path / "t", progress=False, device="cpu",
                          keep_checkpoint=True)
    assert result.summary["finished"] == 3 and len(reads) == 1
    for trial in result.summary["trials"]:
        checkpoint = Path(trial["folder"]) / "checkpoint"
        assert (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.pt").exists()
    taskzoo.train("toy", toy, output=tmp_path / "plain", progress=False, device="cpu", keep_checkpoint=True)
    assert (tmp_path / "plain" / "checkpoint" / "optimizer.pt").exists()
    # A searched option of the task's own may change what is read: then each trial reads for itself.
    space.write_text("flavour: [sweet, sour]\nlr: [0.1]\n")
    reads.clear()
    taskzoo.tune("toy", toy, trials=2, space=space, output=tmp_path / "t2", progress=False, device="cpu")
    assert len(reads) == 3

@pytest.fixture(scope="module")
def small_reviews(tmp_path_factory, review_rows):
    rows = review_rows[:60] + review_rows[-60:]  # both classes
    return write_csv(tmp_path_factory.mktemp("tune") / "reviews.csv", ["review", "sentiment"], rows)


@pytest.mark.slow
def test_a_study_finishes_prunes_the_hopeless_and_its_best_run_predicts(small_reviews, tmp_path):
    """Trial 0 is the default configuration; a learning rate of 30 cannot learn, and once two
    trials are complete the median pruner stops it after its first epoch; trials count to --trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 5.0e-5, high: 30.0, log: true}\nepochs: [2]\n")
    tune = lambda trials: taskzoo.tune("sentiment", small_reviews, trials=trials, space=space,  # noqa: E731
                                       output=tmp_path / "t", seed=3, progress=False, **FAST)
    tune(2)
    # The hopeless case, queued into the study as a second worker (or optuna itself) could.
    study = optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(tmp_path / "t" / "study.journal"))))
    study.enqueue_trial({"lr": 30.0})
    result = tune(3)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert result.summary == summary and summary["finished"] == 3
    hopeless = summary["trials"][2]
    assert hopeless["params"]["lr"] == 30.0 and hopeless["state"] == "pruned", summary["trials"]
    assert hopeless["stopped"] == "pruned after epoch 1"
    assert summary["default"]["number"] == 0 and summary["default"]["params"]["lr"] == 1e-4
    assert summary["best"]["value"] >= summary["default"]["value"] and "gain_over_default" in summary
    for picture in ("optimization_history.png", "metric_vs_lr.png"):
        assert (tmp_path / "t" / picture).stat().st_size > 10_000
    best = tmp_path / "t" / "best"
    assert best.is_symlink() and best.resolve() == Path(summary["best"]["folder"]).resolve()
    assert len(result.best.predict(["a wonderful hoppy stout", "flat, sour and stale"])) == 2
    # The same call again: the study already holds 3 finished trials, so no trial runs.
    assert len(tune(3).summary["trials"]) == len(summary["trials"])


def _tune_command(data: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "taskzoo", "tune", "sentiment", "--data", str(data), "--output", str(output),
            "--max-length", "16", "--batch-size", "16", "--device", "cpu", "--log-every", "1", *extra]


@pytest.mark.slow
def test_a_tune_killed_mid_trial_continues_to_exactly_n_trials(small_reviews, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 5.0e-5, high: 3.0e-4, log: true}\nepochs: [1]\n")
    command = _tune_command(small_reviews, tmp_path / "t", "--trials", "3", "--space", str(space), "--no-prune")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "t" / "trials" / "trial-0001" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (second.exists() and second.stat().st_size > 0):  # the second trial has taken steps
        assert process.poll() is None and time.monotonic() < deadline, "the tune ended before the second trial"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "trial 1 was cut off" in finished.stdout
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    states = [t["state"] for t in summary["trials"]]
    assert summary["finished"] == 3 and states.count("complete") == 3, summary["trials"]
    killed = next(t for t in summary["trials"] if t["number"] == 1)
    assert killed["state"] == "fail" and "died" in killed["error"]
    retry = next(t for t in summary["trials"] if t.get("retry_of") == 1)
    assert retry["state"] == "complete" and retry["params"] == killed["params"]


@pytest.mark.slow
def test_two_workers_share_one_journal_study(small_reviews, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 5.0e-5, high: 3.0e-4, log: true}\nepochs: [1]\n")
    journal = tmp_path / "shared.journal"
    workers = [subprocess.Popen(_tune_command(small_reviews, tmp_path / f"worker{i}", "--trials", "4", "--space",
                                              str(space), "--storage", str(journal), "--study", "reviews"),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in (1, 2)]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _assert_shared_study(JournalStorage(JournalFileBackend(str(journal))), tmp_path)


def _assert_shared_study(storage: object, tmp_path: Path) -> None:
    """The study in the shared storage holds exactly 4 finished trials, none left running, run by
    both workers into their own tune folders."""
    import optuna

    study = optuna.load_study(study_name="reviews", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and "RUNNING" not in states, states
    assert {Path(t.user_attrs["folder"]).parent.parent.name for t in study.trials} == {"worker1", "worker2"}
    assert study.user_attrs["task"] == "sentiment"
    last = max((json.loads((tmp_path / f"worker{i}" / "summary.json").read_text()) for i in (1, 2)),
               key=lambda summary: summary["finished"])
    assert last["finished"] == 4


def _postgres_binaries() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A real PostgreSQL server of the machine's postgresql package: initdb into a temporary
    folder, a free loopback port, stopped after the test."""
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    data = Path(tempfile.mkdtemp(prefix="taskzoo-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's postgres user
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data / "db"), "-U", "tuner", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tuner",
                        "tuning"], check=True, capture_output=True)
        yield f"postgresql://tuner@127.0.0.1:{port}/tuning"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(small_reviews, tmp_path, postgres):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 5.0e-5, high: 3.0e-4, log: true}\nepochs: [1]\n")
    workers = [subprocess.Popen(_tune_command(small_reviews, tmp_path / f"worker{i}", "--trials", "4", "--space",
                                              str(space), "--storage", postgres, "--study", "reviews"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    outputs = [worker.communicate(timeout=900) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    _assert_shared_study(tuning._with_driver(postgres), tmp_path)
