"""Launches that do what they say: several processes, several machines (on loopback), and
workers that torchrun restarts after one was killed. Every server listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_faults import SETTINGS, close, history, logged_steps

from taskzoo import run_folders
from taskzoo.plugins import PluginHost

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", "--dynamo_backend", "no"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def task_arguments(task: str, output: Path, *extra: str) -> list[str]:
    sample = PluginHost().task(task).sample
    return ["-m", "taskzoo", "run", task, "--data", str(sample.path(sample.train)), *SETTINGS[task], *extra,
            "--device", "cpu", "--output", str(output)]


def finish(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_launch_that_would_start_fewer_processes_than_asked_stops(tmp_path):
    command = [*ACCELERATE, "--num_machines", "1", "--num_processes", "2", *task_arguments("sentiment", tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: accelerate launch --num_processes 2 started one process (it does without --multi_gpu "
                      "when it finds no GPU): add --multi_gpu, which starts them on the CPU too (leave out --cpu; "
                      "--device cpu after the task keeps the run on the CPU)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(SETTINGS))
def test_two_processes_train_as_one_does(task, tmp_path):
    """Half the batch on each of two processes: the same recipe as one process, within noise."""
    batch = int(SETTINGS[task][SETTINGS[task].index("--batch-size") + 1])
    one = tmp_path / "one"
    finish([sys.executable, *task_arguments(task, one)])
    two = tmp_path / "two"
    done = finish([*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--main_process_port", str(free_port()), *task_arguments(task, two, "--batch-size", str(batch // 2))])
    # Summaries and data warnings print once, not once per process.
    assert done.stdout.count("run folder:") == 1 and done.stdout.strip().endswith(f"run folder: {two}")
    single, double = (json.loads((folder / "metrics.json").read_text()) for folder in (one, two))
    assert (single["processes"], double["processes"]) == (1, 2)
    main = single["main_metric"]
    assert abs(single["best"] - double["best"]) <= 0.25, (single["best"], double["best"])
    assert run_folders.read_status(two)["status"] == "complete"
    assert double["history"][-1]["val"].keys() == single["history"][-1]["val"].keys() and main in double["val"]


@pytest.mark.slow
def test_two_machines_on_loopback_train_as_two_processes_do(tmp_path):
    task, port = "sentiment", free_port()
    together = tmp_path / "together"
    finish([*TORCHRUN, "-m", *task_arguments(task, together)[1:]])
    apart = tmp_path / "apart"
    machines = [subprocess.Popen(
        [*ACCELERATE, "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
         "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *task_arguments(task, apart)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for rank in (0, 1)]
    for machine in machines:
        _, errors = machine.communicate(timeout=600)
        assert machine.returncode == 0, errors[-3000:]
    assert json.loads((apart / "metrics.json").read_text())["processes"] == 2
    assert close(history(apart), history(together), 1e-9)


@pytest.mark.slow
def test_a_worker_killed_under_torchrun_is_restarted_and_the_run_ends_as_a_straight_one(tmp_path):
    task = "sentiment"
    straight = tmp_path / "straight"
    finish([*TORCHRUN, "-m", *task_arguments(task, straight, "--save-every", "1", "--log-every", "1")[1:]])
    total = logged_steps(straight)
    folder = tmp_path / "restarted"
    launcher = subprocess.Popen([*TORCHRUN, "--max-restarts", "1", "-m",
                                 *task_arguments(task, folder, "--save-every", "1", "--log-every", "1")[1:]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while logged_steps(folder) < total // 2:
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.02)
    workers = psutil.Process(launcher.pid).children()
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    _, errors = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, errors[-3000:]
    assert "local_rank: 1" in errors or "local_rank: 0" in errors  # torchrun saw the failure and restarted
    assert run_folders.read_status(folder)["status"] == "complete"
    assert close(history(folder), history(straight), 1e-9)


def test_under_torchrun_restarts_the_run_folder_must_be_named(monkeypatch):
    from taskzoo import UserError, pipeline

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    with pytest.raises(UserError, match=r"--output is needed under torchrun --max-restarts"):
        pipeline.resume_folder(None, None)
