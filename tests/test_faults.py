"""Kill -9 at random steps, resume, and end where a run that was never stopped ends: every task.

Each task trains on its bundled sample with a checkpoint every few steps (``--save-every``); the
process is killed with SIGKILL after a random logged step (it may be in the middle of writing a
checkpoint), the folder must still open and say how to go on, and ``--resume`` finishes the run.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskzoo import run_folders
from taskzoo.plugins import PluginHost

SETTINGS = {  # a few steps per epoch on each task's sample, so the kills land inside epochs
    "sentiment": ["--max-length", "32", "--batch-size", "8", "--epochs", "2"],
    "ner": ["--max-length", "32", "--batch-size", "8", "--epochs", "2"],
    "detection": ["--image-size", "96", "--batch-size", "4", "--epochs", "2"],
    "segmentation": ["--image-size", "64", "--batch-size", "4", "--epochs", "2"],
    "recommendation": ["--batch-size", "64", "--epochs", "2"],
}


def command(task: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "taskzoo", "run", task, *args, "--device", "cpu"]


def logged_steps(folder: Path) -> int:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:
            pass
    return max(steps)


def kill_after(process: subprocess.Popen, folder: Path, step: int, timeout: float = 300) -> bool:
    """SIGKILL the run once it has logged ``step``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if logged_steps(folder) >= step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"step {step} was not reached in {timeout} s")


def history(folder: Path) -> list[tuple]:
    summary = json.loads((folder / "metrics.json").read_text())
    return [(h["epoch"], h["train_loss"], h["val"]) for h in summary["history"]]


def close(a, b, tolerance: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    return a == b


def arguments(task: str) -> list[str]:
    sample = PluginHost().task(task).sample
    return ["--data", str(sample.path(sample.train)), *SETTINGS[task], "--save-every", "2", "--log-every", "1"]


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """Each task's run that nobody stopped, made once for all kill seeds."""
    made: dict[str, Path] = {}

    def straight(task: str) -> Path:
        if task not in made:
            folder = tmp_path_factory.mktemp(task) / "straight"
            finished = subprocess.run(command(task, *arguments(task), "--output", str(folder)), capture_output=True,
                                      text=True, timeout=600)
            assert finished.returncode == 0, finished.stderr[-3000:]
            made[task] = folder
        return made[task]

    return straight


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("task", sorted(SETTINGS))
def test_killed_at_random_steps_and_resumed_ends_as_a_straight_run(task, seed, straight_runs, tmp_path):
    data = arguments(task)
    straight = straight_runs(task)
    total = logged_steps(straight)
    assert total >= 4, f"{task}: too few steps ({total}) to kill inside"

    folder = tmp_path / "killed"
    kills = sorted(random.Random(f"{task}-{seed}").sample(range(1, total), 2))
    process = subprocess.Popen(command(task, *data, "--output", str(folder)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    for number, step in enumerate(kills):
        if not kill_after(process, folder, step):
            break
        status = run_folders.read_status(folder)
        assert status["status"] in ("running", "complete"), status
        if status["status"] == "running":  # killed: the folder says so, and how to go on
            with pytest.raises(taskzoo_user_error(), match=rf"the run was interrupted \(its process is gone\); "
                                                           rf"continue it with: tasks run {task} --resume "):
                run_folders.open_run(folder)
        resume = command(task, "--resume", str(folder))
        process = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]
    assert run_folders.read_status(folder)["status"] == "complete"
    # Exactly on the CPU; implicit's ALS (recommendation's epoch 0) runs multithreaded.
    tolerance = 1e-4 if task == "recommendation" else 1e-9
    assert close(history(folder), history(straight), tolerance), (history(folder), history(straight))
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert steps == sorted(set(steps)), "a step was logged twice after the resumes"


def taskzoo_user_error():
    from taskzoo import UserError

    return UserError
