"""docs/plugins.md walks from an empty folder to a working task: its files, taken verbatim from the
guide, must make a plugin that trains and predicts through ``tasks``."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
from conftest import ROOT, fake_install

from taskzoo.cli import cli

GUIDE = ROOT / "docs" / "plugins.md"
# Each file of the walk-through is a fenced block right after a bold "**taskzoo-photos/PATH**" line.
FILE_BLOCK = re.compile(r"^\*\*taskzoo-photos/(?P<path>[^*]+)\*\*\n\n```\w*\n(?P<code>.*?)^```", re.M | re.S)
SAMPLE = ROOT / "examples" / "taskzoo-imageclass" / "taskzoo_imageclass" / "sample"


@pytest.fixture
def guide_plugin(tmp_path, monkeypatch):
    files = {m["path"]: m["code"] for m in FILE_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}
    assert set(files) == {"pyproject.toml", "taskzoo_photos/__init__.py", "taskzoo_photos/task.py",
                          "taskzoo_photos/tests/test_conformance.py"}
    project = tmp_path / "taskzoo-photos"
    for path, code in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(code, encoding="utf-8")
    (project / "taskzoo_photos" / "tests" / "__init__.py").write_text("", encoding="utf-8")
    shutil.copytree(SAMPLE, project / "taskzoo_photos" / "sample")  # step 5 of the guide
    meta = tomllib.loads(files["pyproject.toml"])["project"]
    dist = fake_install(tmp_path / "site", meta["name"], meta["version"], dict(meta["entry-points"]["taskzoo"]))
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return project, list(dist.entry_points)


def test_the_guides_plugin_trains_and_predicts_through_tasks(runner, use_host, guide_plugin, tmp_path):
    project, entry_points = guide_plugin
    sample = project / "taskzoo_photos" / "sample"
    use_host(entry_points=entry_points)
    result = runner.invoke(cli, ["plugins", "--json"])
    assert '"tasks": [\n      "photos"\n    ]' in result.stdout and '"errors": []' in result.stdout

    run_dir = tmp_path / "runs" / "photos"
    result = runner.invoke(cli, ["run", "photos", "--data", str(sample / "train"), "--epochs", "1", "--device", "cpu",
                                 "--mixed-precision", "no", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "best accuracy" in result.stdout and (run_dir / "model" / "model.safetensors").exists()

    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--data", str(sample / "test"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(list((sample / "test").rglob("*.png")))
    assert all(line.split("\t")[1] in {"background", "coin"} for line in lines)

    result = runner.invoke(cli, ["run", "photos", "--data", str(sample / "bad_one_class"), "--device", "cpu",
                                 "--output", str(tmp_path / "bad")])
    assert result.exit_code == 2
    assert "bad_one_class: found 1 class folder(s)" in result.stderr
