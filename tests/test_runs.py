"""Run folders that tell the truth: one writer at a time, an honest status, damaged files named."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from toy_plugin import ToyPlugin, toy_points

import taskzoo
from taskzoo import run_folders
from taskzoo.cli import cli

HOLD = """
import sys, time
from pathlib import Path
from taskzoo import run_folders
run_folders.start_run(Path(sys.argv[1]), {"task": "toy"}, resume=len(sys.argv) > 2)
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def toy(use_host, tmp_path):
    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


def one_error(result) -> str:
    """The one error line a command stopped with (a run may have printed its data summary before)."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.output
    assert "Traceback" not in result.output, result.output
    return errors[0].removeprefix("error: ")


@pytest.fixture
def holder(tmp_path):
    """Another process writing a run folder (it holds the folder's lock until killed)."""
    started = []

    def start(folder: Path, resume: bool = False) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *(["resume"] if resume else [])],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "holding"
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_folder_another_process_writes_is_refused_and_untouched(toy, runner, tmp_path, holder):
    trained = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    before = {p.name: p.read_bytes() for p in trained.folder.iterdir() if p.is_file() and p.name != run_folders.LOCK_FILE}
    process = holder(trained.folder, resume=True)
    for args in (["--resume", trained.folder, "--epochs", 2], ["--data", toy, "--output", trained.folder]):
        message = one_error(runner.invoke(cli, ["run", "toy", *map(str, args)]))
        assert str(process.pid) in message and ("still running" in message or "another taskzoo process" in message)
    # The holder extends a complete run: its model stays usable meanwhile.
    assert run_folders.read_status(trained.folder)["extension"] == "running"
    assert runner.invoke(cli, ["predict", "--model", str(trained.folder), "--data", str(toy)]).exit_code == 0
    after = {p.name: p.read_bytes() for p in trained.folder.iterdir() if p.is_file() and p.name != run_folders.LOCK_FILE}
    assert {k: v for k, v in after.items() if k != "run.json"} == {k: v for k, v in before.items() if k != "run.json"}

    fresh = holder(tmp_path / "fresh")
    message = one_error(runner.invoke(cli, ["predict", "--model", str(tmp_path / "fresh"), "--data", str(toy)]))
    assert message == f"--model {tmp_path / 'fresh'}: the run is still running (pid {fresh.pid}); wait for it to finish"


def test_a_run_whose_process_died_is_interrupted_with_the_command_to_resume(toy, runner, tmp_path, holder):
    folder = tmp_path / "run"
    process = holder(folder)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert run_folders.read_status(folder)["status"] == "running" and run_folders.writer(folder) is None
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": "toy"}))
    message = one_error(runner.invoke(cli, ["evaluate", "--model", str(folder), "--data", str(toy)]))
    assert message == (f"--model {folder}: the run was interrupted (its process is gone); "
                       f"continue it with: tasks run toy --resume {folder}")


def test_two_runs_into_one_new_folder_one_proceeds(toy, tmp_path):
    folder = tmp_path / "shared"
    script = ("import sys, taskzoo\n"
              "from taskzoo.plugins import PluginHost, set_host\n"
              "sys.path.insert(0, sys.argv[3])\n"
              "from toy_plugin import ToyPlugin\n"
              "set_host(PluginHost(entry_points=[], plugins=[('toy', ToyPlugin())], registry_path=None))\n"
              "try:\n"
              "    taskzoo.train('toy', data=sys.argv[1], output=sys.argv[2], epochs=3, progress=False)\n"
              "    print('trained')\n"
              "except taskzoo.UserError as error:\n"
              "    print('refused', error)\n")
    tests = str(Path(__file__).parent)
    processes = [subprocess.Popen([sys.executable, "-c", script, str(toy), str(folder), tests],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted(p.communicate(timeout=300)[0].strip().split(" ", 1)[0] for p in processes)
    assert outcomes == ["refused", "trained"], outcomes
    assert run_folders.read_status(folder)["status"] == "complete"
    assert len([line for line in (folder / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["type"] == "epoch"]) == 3


def test_no_finished_epoch_is_a_failed_run_with_its_reason(toy, runner, tmp_path):
    folder = tmp_path / "run"
    message = one_error(runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(folder), "--epochs", "0"]))
    assert message == "--epochs 0: no epoch finished, so there is no model to keep; train at least one epoch"
    status = run_folders.read_status(folder)
    assert status["status"] == "failed" and status["reason"].startswith("UserError: --epochs 0: no epoch finished")
    assert "'failed' (UserError: --epochs 0" in one_error(
        runner.invoke(cli, ["predict", "--model", str(folder), "--data", str(toy)]))


def test_an_output_that_is_a_file_is_one_line(toy, runner, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    message = one_error(runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(taken)]))
    assert message == f"--output {taken}: is a file, not a folder" and taken.read_text() == "mine"
    inside = taken / "run"  # a folder that cannot be made
    message = one_error(runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(inside)]))
    assert message.startswith(f"--output {inside}: cannot create the run folder") and taken.read_text() == "mine"


def test_resume_from_another_working_folder(toy, tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "points.csv").write_text(toy.read_text())
    monkeypatch.chdir(here)
    run = taskzoo.train("toy", data="points.csv", output=tmp_path / "run", epochs=1, progress=False)
    assert run.config["data"] == "points.csv" and run.config["resolved"]["paths"]["data"] == str(here / "points.csv")
    monkeypatch.chdir(elsewhere)
    resumed = taskzoo.train("toy", resume=tmp_path / "run", epochs=2, progress=False)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the garbage, before it refuses it
@pytest.mark.parametrize("damaged", ["model/model.safetensors", "checkpoint/optimizer.pt", "checkpoint/model.safetensors",
                                     "checkpoint/trainer_state.json"])
def test_a_damaged_run_folder_file_is_one_line_naming_it(damaged, toy, runner, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    (run.folder / damaged).write_bytes(b"\x80\x04garbage, not what taskzoo wrote")
    if damaged.startswith("model/"):
        message = one_error(runner.invoke(cli, ["predict", "--model", str(run.folder), "--data", str(toy)]))
        assert message.startswith(f"--model {run.folder}: its model/ cannot be loaded")
    else:
        message = one_error(runner.invoke(cli, ["run", "toy", "--resume", str(run.folder), "--epochs", "2"]))
        assert message.startswith(f"{run.folder / damaged}: damaged or not ")


def test_files_are_replaced_whole(tmp_path):
    target = tmp_path / "metrics.json"
    run_folders.write_json(target, {"a": 1})
    run_folders.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left


def test_the_lock_is_released_when_the_run_ends(toy, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    assert run_folders.writer(run.folder) is None
    assert os.path.exists(run.folder / run_folders.LOCK_FILE)
    resumed = taskzoo.train("toy", resume=run.folder, epochs=2, progress=False)
    assert run_folders.writer(resumed.folder) is None and run_folders.read_status(run.folder)["status"] == "complete"


def test_the_lock_holder_is_named_even_while_it_starts(tmp_path, holder):
    process = holder(tmp_path / "run")
    deadline = time.monotonic() + 5
    while run_folders.writer(tmp_path / "run") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_folders.writer(tmp_path / "run") == process.pid


# -- values that used to be trained on without a word -----------------------------------------------


def test_numeric_labels_that_are_equal_are_one_class(tmp_path):
    from taskzoo_sentiment.data import read_texts

    data = tmp_path / "stars.csv"
    data.write_text("text,stars\ngreat,2\nfine,2.0\nbad,1\nawful,01\nsuperb,2.50\n")
    read = read_texts(data, role="train")
    assert read.labels == ["2", "2", "1", "1", "2.5"]
    test = tmp_path / "test.csv"
    test.write_text("text,stars\nok,2.00\n")
    assert read_texts(test, role="test", known_labels=["1", "2", "2.5"]).labels == ["2"]
    # A model trained before labels were spelled one way keeps its own spelling.
    assert read_texts(test, role="test", known_labels=["1.0", "2.0"]).labels == ["2.0"]
    data.write_text("text,stars\ngreat,2\nbad,inf\n")
    with pytest.raises(taskzoo.DataError, match=r"row 2, column 'stars': label 'inf' is not a finite number"):
        read_texts(data, role="train")


def test_a_yolo_label_that_is_not_a_finite_number_names_its_line(tmp_path):
    from PIL import Image
    from taskzoo_detection.data import read_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "a.png")
    (tmp_path / "classes.txt").write_text("thing\n")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.1 0.1\n")
    with pytest.raises(taskzoo.DataError, match=r"labels/a.txt:2: expected finite numbers, got '0 nan 0.5 0.1 0.1'"):
        read_dataset(tmp_path, role="train")


def test_a_coco_file_name_may_not_leave_the_images_folder(tmp_path):
    from taskzoo_detection.data import read_dataset

    coco = tmp_path / "train.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "../../../../etc/passwd"}], "annotations": [],
                                "categories": [{"id": 1, "name": "thing"}]}))
    with pytest.raises(taskzoo.DataError, match=r"file_name '../../../../etc/passwd' leads out of the images folder"):
        read_dataset(coco, role="train")


def test_an_image_over_the_decompression_limit_is_one_line(tmp_path, monkeypatch):
    from PIL import Image
    from taskzoo_detection.data import image_size
    from taskzoo_segmentation.data import image_array

    picture = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(picture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 90,000 pixels: over twice the limit
    for read in (image_size, image_array):
        with pytest.raises(taskzoo.DataError, match=rf"^{picture}: unreadable image \(Image size \(90000 pixels\) exceeds limit"):
            read(picture)


def test_a_bad_timestamp_is_reported_on_its_own_row(tmp_path):
    from taskzoo_recommendation.data import read_interactions

    data = tmp_path / "log.csv"
    rows = "".join(f"u{i % 3},i{i},1,{1_700_000_000 + i}\n" for i in range(12)).splitlines(keepends=True)
    rows[10] = "u1,i10,1,inf\n"
    data.write_text("user,item,weight,timestamp\n" + "".join(rows))
    with pytest.raises(taskzoo.DataError, match=r"row 11, column 'timestamp': 'inf' is not a Unix time like the other rows"):
        read_interactions(data)


# -- stopping and going on -------------------------------------------------------------------------


def test_after_a_resume_each_step_is_logged_once(toy, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=2, log_every=2, progress=False)
    log = run.folder / "metrics.jsonl"
    # What a kill in the middle of epoch 3 leaves: its first steps' lines, and one cut short.
    log.write_text(log.read_text() + json.dumps({"type": "step", "epoch": 3, "step": 52, "loss": 0.1}) + '\n{"type": "st')
    taskzoo.train("toy", resume=run.folder, epochs=3, log_every=2, progress=False)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "step"]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_is_interrupted_and_resumes(stop, code, tmp_path):
    from taskzoo.plugins import PluginHost

    sample = PluginHost().task("sentiment").sample
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "taskzoo", "run", "sentiment", "--data", str(sample.path(sample.train)),
               "--output", str(folder), "--epochs", "40", "--max-length", "32", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch 2:"):  # epoch 1's checkpoint is written
            break
    process.send_signal(stop)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == code, errors[-2000:]
    assert re.fullmatch(rf"{re.escape(str(folder))}: interrupted; the checkpoint of (step|epoch) \d+ is kept; continue it "
                        rf"with: tasks run sentiment --resume {re.escape(str(folder))}", errors.strip().splitlines()[-1])
    assert run_folders.read_status(folder)["status"] == "interrupted" and run_folders.writer(folder) is None
    finished = subprocess.run([sys.executable, "-m", "taskzoo", "run", "sentiment", "--resume", str(folder),
                               "--epochs", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert run_folders.read_status(folder)["status"] == "complete" and (folder / "model").is_dir()


def test_ctrl_c_in_python_marks_the_run_and_says_what_is_left(toy, tmp_path, monkeypatch):
    from taskzoo.trainer import Trainer

    original = Trainer.save_checkpoint
    saved = []

    def save_then_stop(self):
        original(self)
        saved.append(self.state["epoch"])
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(taskzoo.RunInterrupted, match=r"interrupted; the checkpoint of epoch 2 is kept; "
                                                      r"continue it with: tasks run toy --resume "):
        taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=5, progress=False)
    assert run_folders.read_status(tmp_path / "run")["status"] == "interrupted"
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = taskzoo.train("toy", resume=tmp_path / "run", progress=False)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3, 4, 5]

    monkeypatch.setattr(Trainer, "_train_epochs", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(taskzoo.RunInterrupted, match=r"interrupted before its first checkpoint; run it again from "
                                                      r"the start with: tasks run toy --resume "):
        taskzoo.train("toy", data=toy, output=tmp_path / "early", epochs=5, progress=False)
    assert run_folders.read_status(tmp_path / "early")["status"] == "interrupted"
    monkeypatch.undo()
    again = taskzoo.train("toy", resume=tmp_path / "early", progress=False)
    assert [h["epoch"] for h in again.metrics["history"]] == [1, 2, 3, 4, 5]


def _signal_at(monkeypatch, forwards: set[int], signum=signal.SIGINT, times: int = 1):
    """Send this process ``signum`` (``times`` times) during the given training forward passes."""
    from toy_plugin import ToyModel

    original, calls = ToyModel.forward, [0]

    def forward(self, batch):
        if self.training:
            calls[0] += 1
            if calls[0] in forwards:
                for _ in range(times):
                    os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(ToyModel, "forward", forward)
    return calls


def _history(run) -> list:
    return [(h["epoch"], h["train_loss"], h["val"]) for h in run.metrics["history"]]


def test_a_signal_stops_at_the_next_step_and_the_resume_is_exact(toy, tmp_path, monkeypatch):
    common = dict(data=toy, epochs=3, batch_size=4, log_every=1, progress=False)
    straight = taskzoo.train("toy", output=tmp_path / "straight", **common)
    calls = _signal_at(monkeypatch, {23})
    with pytest.raises(taskzoo.RunInterrupted, match=r"interrupted; the checkpoint of step 23 is kept; continue it "
                                                      r"with: tasks run toy --resume ") as stopped:
        taskzoo.train("toy", output=tmp_path / "stopped", **common)
    assert stopped.value.signum == signal.SIGINT and calls[0] == 23  # the step it was in finished, no more
    assert run_folders.read_status(tmp_path / "stopped")["status"] == "interrupted"
    monkeypatch.undo()
    resumed = taskzoo.train("toy", resume=tmp_path / "stopped", progress=False)
    assert _history(resumed) == _history(straight)
    steps = [json.loads(line)["step"] for line in (resumed.folder / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert steps == list(range(1, len(steps) + 1))


def test_a_second_signal_stops_at_once(toy, tmp_path, monkeypatch):
    calls = _signal_at(monkeypatch, {50}, signum=signal.SIGTERM, times=2)
    with pytest.raises(taskzoo.RunInterrupted, match=r"the checkpoint of epoch 1 is kept") as stopped:
        taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=3, batch_size=4, progress=False)
    assert stopped.value.signum == signal.SIGTERM and calls[0] == 50
    assert run_folders.read_status(tmp_path / "run")["status"] == "interrupted"


def test_save_every_bounds_what_a_crash_loses(toy, tmp_path, monkeypatch):
    from taskzoo.trainer import Trainer

    common = dict(data=toy, epochs=2, batch_size=4, save_every=5, progress=False)
    straight = taskzoo.train("toy", output=tmp_path / "straight", **common)
    saved, original = [], Trainer.save_checkpoint

    def save_then_crash(self, *, epoch_end=True):
        original(self, epoch_end=epoch_end)
        saved.append(self.state["global_step"])
        if self.state["global_step"] == 35:
            raise RuntimeError("the machine went away")

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError):
        taskzoo.train("toy", output=tmp_path / "crashed", **common)
    assert saved[:3] == [5, 10, 15] and saved[-1] == 35
    monkeypatch.undo()
    assert _history(taskzoo.train("toy", resume=tmp_path / "crashed", progress=False)) == _history(straight)


def test_overwrite_replaces_a_run_and_nothing_else(toy, runner, tmp_path):
    first = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    message = one_error(runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(first.folder)]))
    assert message == (f"--output {first.folder}: holds a run already; continue it with --resume {first.folder}, "
                       "replace it with --overwrite, or choose another folder")
    (first.folder / "eval-old").mkdir()
    result = runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(first.folder), "--epochs", "2",
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (first.folder / "eval-old").exists() and taskzoo.load(first.folder).metrics["epochs_run"] == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("years of work")
    message = one_error(runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(other), "--overwrite"]))
    assert message == f"--output {other}: folder exists and is not empty (and is not a run folder); choose another"
    assert (other / "thesis.txt").read_text() == "years of work"


def test_a_complete_run_keeps_what_it_needs_and_nothing_twice(toy, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=2, progress=False)
    assert sorted(p.name for p in (run.folder / "checkpoint").iterdir()) == ["rng.pt", "trainer_state.json"]
    contents = {}
    for path in run.folder.rglob("*"):
        if path.is_file() and path.stat().st_size > 200:
            assert path.read_bytes() not in contents, f"{path} repeats {contents.get(path.read_bytes())}"
            contents[path.read_bytes()] = path
    kept = taskzoo.train("toy", data=toy, output=tmp_path / "kept", epochs=2, keep_checkpoint=True, progress=False)
    assert {"optimizer.pt", "model.safetensors"} <= {p.name for p in (kept.folder / "checkpoint").iterdir()}


@pytest.mark.parametrize("kept", [False, True], ids=["lean", "kept"])
def test_extending_a_complete_run(kept, toy, runner, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=2, keep_checkpoint=kept, progress=False)
    message = one_error(runner.invoke(cli, ["run", "toy", "--resume", str(run.folder)]))
    assert message == (f"--resume {run.folder}: the run is complete after 2 epoch(s); give --epochs more than 2 to "
                       "train it further")
    longer = taskzoo.train("toy", resume=run.folder, epochs=4, progress=False)
    assert [h["epoch"] for h in longer.metrics["history"]] == [1, 2, 3, 4]
    assert longer.config["epochs"] == 4 and run_folders.read_status(run.folder)["status"] == "complete"
    assert "extension" not in run_folders.read_status(run.folder)


def test_a_failed_or_killed_extension_leaves_the_run_complete(toy, runner, tmp_path, monkeypatch):
    from taskzoo.trainer import Trainer

    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, lr=0.5, progress=False)
    model = (run.folder / "model" / "model.safetensors").read_bytes()
    config = (run.folder / "config.yaml").read_text()
    expected = run.predict(str(toy))
    original = Trainer._end_epoch

    def fail_after_an_epoch(self, epoch, *args):
        original(self, epoch, *args)
        raise taskzoo.UserError("the disk is full")

    monkeypatch.setattr(Trainer, "_end_epoch", fail_after_an_epoch)
    message = one_error(runner.invoke(cli, ["run", "toy", "--resume", str(run.folder), "--epochs", "3"]))
    assert message == (f"the disk is full; the run stays complete with its earlier model; retry the extension with: "
                       f"tasks run toy --resume {run.folder} --epochs 3")
    status = run_folders.read_status(run.folder)
    assert status["status"] == "complete" and status["extension"] == "failed"

    def stop_after_an_epoch(self, epoch, *args):
        original(self, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_an_epoch)
    with pytest.raises(taskzoo.RunInterrupted, match=r"the extension was interrupted; the run stays complete with "
                                                      r"its earlier model; continue the extension with: tasks run toy"):
        taskzoo.train("toy", resume=run.folder, epochs=3, progress=False)
    status = run_folders.read_status(run.folder)
    assert status["status"] == "complete" and status["extension"] == "interrupted"
    assert (run.folder / "model" / "model.safetensors").read_bytes() == model
    assert (run.folder / "config.yaml").read_text() == config
    assert taskzoo.load(run.folder).predict(str(toy)) == expected
    monkeypatch.undo()
    extended = taskzoo.train("toy", resume=run.folder, epochs=3, progress=False)  # retried: goes on
    assert extended.metrics["epochs_run"] == 3 and "extension" not in run_folders.read_status(run.folder)


def test_a_model_swap_cut_short_is_undone(toy, tmp_path):
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, progress=False)
    (run.folder / "model").rename(run.folder / "model.previous")  # killed between the two renames
    assert taskzoo.load(run.folder).predict(str(toy)) and (run.folder / "model").is_dir()


def test_a_checkpoint_swap_never_deletes_the_live_checkpoint_and_one_cut_short_is_undone(toy, tmp_path, monkeypatch):
    """A checkpoint is swapped in as model/ is (two renames): the live one is never deleted in
    place, where a kill halfway through would leave its progress without its weights."""
    import shutil

    from taskzoo.trainer import Trainer

    removed = []
    rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: (removed.append(Path(path).name), rmtree(path, *a, **k)))
    original = Trainer._end_epoch

    def stop_after_epoch_2(self, epoch, *args):
        original(self, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_epoch_2)
    folder = tmp_path / "run"
    with pytest.raises(taskzoo.RunInterrupted):
        taskzoo.train("toy", data=toy, output=folder, epochs=3, progress=False)
    assert "checkpoint.previous" in removed and "checkpoint" not in removed
    (folder / "checkpoint").rename(folder / "checkpoint.previous")  # killed between the two renames
    trained = []

    def recording(self, epoch, *args):
        trained.append(epoch)
        original(self, epoch, *args)

    monkeypatch.setattr(Trainer, "_end_epoch", recording)
    resumed = taskzoo.train("toy", resume=folder, epochs=3, progress=False)
    assert trained == [3] and [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]  # went on from epoch 2
    assert not (folder / "checkpoint.previous").exists()


def test_tasks_runs_lists_compares_and_filters_run_folders(runner, toy, tmp_path, holder):
    root = tmp_path / "runs"
    for name, lr in (("slow", "0.001"), ("fast", "0.05")):
        result = runner.invoke(cli, ["run", "toy", "--data", str(toy), "--output", str(root / name), "--epochs", "2",
                                     "--lr", lr])
        assert result.exit_code == 0, result.output
    crashed = root / "crashed"
    run_folders.start_run(crashed, {"task": "toy"})
    run_folders._unlock(crashed)  # its process died: nobody holds the lock
    live = holder(root / "live")
    rows = taskzoo.runs(root, sort="value")
    by_name = {Path(row["folder"]).name: row for row in rows}
    assert set(by_name) == {"slow", "fast", "crashed", "live"}
    assert by_name["crashed"]["status"] == "interrupted" and by_name["live"]["status"] == "running"
    metrics = {name: json.loads((root / name / "metrics.json").read_text())["best"] for name in ("slow", "fast")}
    assert [Path(r["folder"]).name for r in rows[:2]] == sorted(metrics, key=metrics.get, reverse=True)
    assert by_name["fast"]["main_metric"] == "accuracy" and by_name["fast"]["task"] == "toy"
    result = runner.invoke(cli, ["runs", str(root), "--status", "complete"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["folder", "task", "backbone", "status", "best", "started"] and len(lines) == 3
    assert all("complete" in line and "accuracy 0." in line for line in lines[1:])
    listed = json.loads(runner.invoke(cli, ["runs", str(root), "--json", "--status", "interrupted"]).output)
    assert [Path(row["folder"]).name for row in listed] == ["crashed"]
    live.kill()
    assert runner.invoke(cli, ["runs", str(tmp_path / "nowhere")]).exit_code == 2


def test_checkpoints_are_written_from_a_snapshot_while_training_goes_on(toy, tmp_path, monkeypatch):
    import threading

    import torch
    from safetensors.torch import load_file

    from taskzoo.trainer import Trainer

    at_save, written = {}, []
    original_save, original_write = Trainer.save_checkpoint, Trainer._write_checkpoint

    def save(self, *, epoch_end=True):
        model = self.accelerator.unwrap_model(self.model)
        at_save[self.state["epoch"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        original_save(self, epoch_end=epoch_end)

    def slow_write(self, state, best_now):
        epoch = json.loads(state["trainer"])["epoch"]
        time.sleep(0.5)  # the next epoch trains meanwhile, changing the live weights
        original_write(self, state, best_now)
        saved = load_file(str(self.run_dir / "checkpoint" / "model.safetensors"))
        written.append((epoch, threading.current_thread().name, sorted(k for k in state if k != "weights"),
                        all(torch.equal(saved[k], at_save[epoch][k]) for k in saved)))

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    monkeypatch.setattr(Trainer, "_write_checkpoint", slow_write)
    monkeypatch.setattr(Trainer, "_save_in_background", lambda self, state: True)  # as on a GPU
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=3, batch_size=4, lr=0.05, progress=False)
    assert [w[0] for w in written] == [1, 2, 3]
    assert all(name.startswith("taskzoo-checkpoint") for _, name, _, _ in written)
    assert all(same for *_, same in written), "a checkpoint holds weights from after its epoch"
    # The last epoch leaves out the optimizer state, which a complete run drops anyway.
    assert [keys for _, _, keys, _ in written] == [["optimizer", "random", "scheduler", "trainer"]] * 2 + [
        ["random", "trainer"]]
    assert run.metrics["epochs_run"] == 3 and run_folders.read_status(run.folder)["status"] == "complete"

    written.clear()
    taskzoo.train("toy", data=toy, output=tmp_path / "kept", epochs=2, keep_checkpoint=True, progress=False)
    assert [keys for _, _, keys, _ in written] == [["optimizer", "random", "scheduler", "trainer"]] * 2


def test_checkpoints_written_in_place_or_in_the_background_are_the_same(toy, tmp_path, monkeypatch):
    """On the CPU (and for a model too big to copy) checkpoints are written in place; on a GPU from
    a snapshot on a background thread. Either way the same files."""
    import threading

    from safetensors.torch import load_file

    from taskzoo import trainer as trainer_module

    common = dict(data=toy, epochs=2, batch_size=4, lr=0.05, keep_checkpoint=True, device="cpu", progress=False)
    threads, original = [], trainer_module.Trainer._write_checkpoint
    monkeypatch.setattr(trainer_module.Trainer, "_write_checkpoint",
                        lambda self, *a: (threads.append(threading.current_thread().name), original(self, *a)))
    in_place = taskzoo.train("toy", output=tmp_path / "in_place", **common)
    assert threads == ["MainThread", "MainThread"]
    assert not trainer_module.fits_in_memory(10**15)  # a petabyte model is never copied
    threads.clear()
    monkeypatch.setattr(trainer_module.Trainer, "_save_in_background", lambda self, state: True)
    copied = taskzoo.train("toy", output=tmp_path / "copied", **common)
    assert [name.startswith("taskzoo-checkpoint") for name in threads] == [True, True]
    a = load_file(str(copied.folder / "checkpoint" / "model.safetensors"))
    b = load_file(str(in_place.folder / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert (in_place.folder / "checkpoint" / "optimizer.pt").read_bytes() == (
        copied.folder / "checkpoint" / "optimizer.pt").read_bytes()


@pytest.mark.parametrize("background", [True, False], ids=["background", "in-place"])
def test_a_checkpoint_that_cannot_be_written_fails_the_run(background, toy, tmp_path, monkeypatch):
    from taskzoo import trainer as trainer_module

    def full_disk(weights, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_weights", full_disk)
    monkeypatch.setattr(trainer_module.Trainer, "_save_in_background", lambda self, state: background)
    with pytest.raises(OSError, match="No space left on device"):
        taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=3, progress=False)
    status = run_folders.read_status(tmp_path / "run")
    assert status["status"] == "failed" and "No space left on device" in status["reason"]
    assert not (tmp_path / "run" / "model").exists()


def test_tied_weights_are_snapshotted_and_saved_once(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_model

    from taskzoo.snapshots import cpu_copy, save_weights

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    snapshot = cpu_copy(model.state_dict())
    assert snapshot["embed.weight"] is snapshot["head.weight"]
    assert snapshot["embed.weight"].data_ptr() != model.embed.weight.data_ptr()  # a copy, not the live tensor
    path = tmp_path / "w.safetensors"
    save_weights(snapshot, path)
    with safe_open(str(path), "pt") as saved:
        assert list(saved.keys()) == ["embed.weight"] and saved.metadata() == {"head.weight": "embed.weight"}
    fresh = Tied()
    load_model(fresh, str(path))  # strict: every name accounted for
    assert torch.equal(fresh.head.weight, model.embed.weight)
