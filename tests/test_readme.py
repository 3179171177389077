"""Every command block of the README runs as written (with small settings), so it cannot drift.

Each ``tasks ...`` line of a ``bash`` block runs in order, in a scratch folder that sees the
repository's ``examples/``; ``runs/<id>`` (or a concrete ``runs/TASK-DATE-TIME``) stands for the
latest run of the task the command is about. ``tasks run`` lines get one epoch and small inputs
appended (flags given later win). A line marked ``# needs the hub`` must stop, offline, with the
one-line message that the hub cannot be reached. Each ``python`` block runs as it is.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskzoo.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_ID = re.compile(r"runs/(?:<id>|[a-z]+-\d{8}-\d{6})")
QUICK = {
    "sentiment": ["--epochs", "1", "--max-length", "32", "--batch-size", "32"],
    "ner": ["--epochs", "1", "--max-length", "48", "--batch-size", "32"],
    "segmentation": ["--epochs", "1", "--image-size", "64"],
    "detection": ["--epochs", "1", "--image-size", "128"],
    "recommendation": [],
}


def blocks(language: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text(encoding="utf-8")) if kind == language]


def tasks_commands() -> list[str]:
    commands = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip().startswith("tasks "):
                commands.append(line.strip())
    return commands


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network, whatever this one has
    return tmp_path


def test_the_readme_has_commands_for_every_bundled_task():
    commands = tasks_commands()
    for task in QUICK:
        assert any(c.startswith(f"tasks run {task} ") for c in commands), f"no 'tasks run {task}' in the README"
    assert sum(c.startswith(("tasks predict", "tasks evaluate")) for c in commands) >= 10
    assert blocks("python"), "the README has no Python example"


@pytest.mark.slow
def test_every_readme_command_runs(scratch: Path):
    runner = CliRunner()
    latest: dict[str, str] = {}  # task -> its latest run folder
    last_task = ""
    ran = 0
    for number, line in enumerate(tasks_commands()):
        needs_hub = line.endswith("# needs the hub")
        args = shlex.split(line, comments=True)[1:]
        if args[0] == "run":
            last_task = args[1]
            args += QUICK[last_task] + ["--output", f"runs/readme-{number}"]
        if args[0] == "tune" and "--show-space" not in args:  # one trial: the default configuration
            args += QUICK[args[1]] + ["--trials", "1"] + ([] if "--output" in args else ["--output", f"tunes/readme-{number}"])
        # --init and the commands after a run refer to the latest run of their task.
        task = last_task if args[0] not in ("run", "tune") else args[1]
        args = [RUN_ID.sub(latest.get(task, "runs/<none>"), arg) for arg in args]
        result = runner.invoke(cli, args, catch_exceptions=True)
        if needs_hub:
            assert result.exit_code == 2, f"{line}\n{result.output}"
            assert "cannot be reached" in result.output and "Traceback" not in result.output, result.output
            continue
        assert result.exit_code == 0, f"README command failed: {line}\nran as: tasks {shlex.join(args)}\n" \
                                      f"{result.output}\n{result.exception!r}"
        if args[0] == "run":
            assert f"run folder: runs/readme-{number}" in result.output
            latest[task] = f"runs/readme-{number}"
        ran += 1
    assert ran >= 20 and set(latest) == set(QUICK)
    # The files the README says predict writes are there.
    for written in ("preds.csv", "entities.jsonl", "masks", "out/detections.json", "out/drawn", "recs.csv"):
        assert (scratch / written).exists(), f"the README's predict did not write {written}"


@pytest.mark.slow
def test_readme_python_blocks_run(scratch: Path):
    for body in blocks("python"):
        namespace: dict[str, object] = {}
        exec(compile(body, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (scratch / "preds.csv").exists()
    assert os.listdir(scratch / "runs")
