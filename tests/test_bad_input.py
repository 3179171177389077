"""Every task refuses bad options and bad run folders the same way: exit code 2, one line naming
the option, file or row and what was expected, and nothing written that looks like a finished run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskzoo import run_folders
from taskzoo.cli import cli
from taskzoo.plugins import PluginHost

TASKS = ("sentiment", "ner", "detection", "segmentation", "recommendation")

# (id, extra arguments, expected message; {out} is the --output folder, {file} an existing file)
SHARED = [
    ("batch-size", ["--batch-size", "0"], r"--batch-size: expected at least 1, got 0"),
    ("lr", ["--lr", "-1"], r"--lr: expected at least 0, got -1"),
    ("grad-accum", ["--grad-accum", "0"], r"--grad-accum: expected at least 1, got 0"),
    ("epochs", ["--epochs", "-1"], r"--epochs: expected at least 0, got -1"),
    ("patience", ["--patience", "0"], r"--patience: expected at least 1, got 0"),
    ("warmup", ["--warmup-ratio", "5"], r"--warmup-ratio: expected at most 1, got 5"),
    ("val-fraction", ["--val-fraction", "1.5"], r"--val-fraction: expected less than 1, got 1.5"),
    ("save-every", ["--save-every", "-2"], r"--save-every: expected at least 0, got -2"),
    ("seed", ["--seed", "x"], r"--seed: expected an integer, got 'x'"),
    ("nan-lr", ["--lr", "nan"], r"--lr: expected a finite number, got nan"),
    ("output-is-file", ["--output", "{file}"], r"--output {file}: is a file, not a folder"),
    ("resume-nothing", ["--resume", "{out}/nosuchrun"], r"--resume {out}/nosuchrun: no such run folder"),
    ("unknown-option", ["--epoch", "3"], r"task '\w+': no option --epoch; did you mean --epochs\?"),
    # Nothing close: the task's own flags are listed, and nothing of click's.
    ("unknown-option-far", ["--zzzz"], r"task '\w+': no option --zzzz; known: --[a-z][a-z0-9-]*(, --[a-z][a-z0-9-]*)*$"),
]
OWN = {
    "sentiment": [("max-length-small", ["--max-length", "0"], r"--max-length: expected at least 8, got 0"),
                  ("max-length-large", ["--max-length", "100000"],
                   r"--max-length 100000: backbone '[^']+' takes at most 512 tokens")],
    "ner": [("max-length-small", ["--max-length", "2"], r"--max-length: expected at least 8, got 2"),
            ("max-length-large", ["--max-length", "100000"],
             r"--max-length 100000: backbone '[^']+' takes at most 512 tokens")],
    "detection": [("image-size", ["--image-size", "0"], r"--image-size: expected at least 32, got 0")],
    "segmentation": [("image-size", ["--image-size", "0"], r"--image-size: expected at least 32, got 0"),
                     ("image-size-stride", ["--image-size", "100", "--arch", "deeplabv3plus"],
                      r"--image-size 100: the deeplabv3plus network on \S+ takes sides divisible by 16; use 96 or 112")],
    "recommendation": [("k", ["--k", "0"], r"--k: expected at least 1, got 0")],
}
CASES = [(task, *case) for task in TASKS for case in SHARED + OWN[task]]


@pytest.mark.parametrize(("task", "case", "arguments", "expected"), CASES,
                         ids=[f"{task}-{case}" for task, case, *_ in CASES])
def test_bad_run_options_are_one_line_and_leave_nothing(task, case, arguments, expected, runner, tmp_path):
    sample = PluginHost().task(task).sample
    existing = tmp_path / "a-file.txt"
    existing.write_text("not a folder")
    out = tmp_path / "run"
    fill = lambda text: text.replace("{out}", str(tmp_path)).replace("{file}", str(existing))  # noqa: E731
    arguments = [fill(a) for a in arguments]
    if "--output" not in arguments:
        arguments += ["--output", str(out)]
    result = runner.invoke(cli, ["run", task, "--data", str(sample.path(sample.train)), *arguments, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith(("error: ", "Error: "))]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr
    assert re.search(fill(expected), lines[0]), lines[0]
    assert not out.exists() or (run_folders.read_status(out) or {}).get("status") != "complete"
    assert existing.read_text() == "not a folder"


@pytest.mark.parametrize("task", TASKS)
def test_a_damaged_run_folder_is_one_line_for_every_task(task, runner, tmp_path):
    """predict on a run whose files are garbage names the run and what was expected there."""
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(b"\x00garbage")
    (folder / "config.yaml").write_text(f"task: {task}\n")
    (folder / "run.json").write_text('{"status": "complete"}')
    sample = PluginHost().task(task).sample
    data = sample.path(sample.predict or sample.test or sample.train)
    result = runner.invoke(cli, ["predict", "--model", str(folder), "--data", str(data), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --model {folder}: its model/ cannot be loaded")
    assert f"expected what a {task} run saves there" in result.stderr
