from __future__ import annotations

import csv
import importlib.metadata
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskzoo.plugins import PluginHost, set_host

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REVIEWS = ROOT / "examples" / "reviews.csv"


@pytest.fixture(autouse=True)
def fresh_host():
    """Each test starts with plugins unloaded, so a test's fake plugins never leak into another."""
    set_host(None)
    yield
    set_host(None)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def use_host():
    """Install a PluginHost built by the test as the process-wide one."""

    def install(**kwargs) -> PluginHost:
        host = PluginHost(**kwargs)
        set_host(host)
        return host

    return install


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def review_rows() -> list[list[str]]:
    with EXAMPLE_REVIEWS.open(encoding="utf-8") as stream:
        return [row for row in csv.reader(stream)][1:]


@pytest.fixture(scope="session")
def review_split(review_rows, tmp_path_factory) -> tuple[Path, Path]:
    """A train file and a held-out test file drawn from the example reviews, no overlap."""
    rows = list(review_rows)
    random.Random(7).shuffle(rows)
    folder = tmp_path_factory.mktemp("reviews")
    train = write_csv(folder / "train.csv", ["review", "sentiment"], rows[:240])
    test = write_csv(folder / "test.csv", ["review", "sentiment"], rows[240:320])
    return train, test


def fake_install(site: Path, name: str, version: str, entry_points: dict[str, str]) -> importlib.metadata.Distribution:
    """What ``pip install`` leaves behind for entry-point discovery: a .dist-info with metadata."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[taskzoo]\n{lines}", encoding="utf-8")
    return importlib.metadata.PathDistribution(info)
