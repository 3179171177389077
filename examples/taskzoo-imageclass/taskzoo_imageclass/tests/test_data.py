"""What the conformance kit cannot know: this task's own reading rules and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from taskzoo import DataError
from taskzoo.specs import MetricContext
from taskzoo_imageclass.data import check, read_labelled, read_unlabelled
from taskzoo_imageclass.metrics import accuracy, macro_f1


def image(path: Path, shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
    return path


def test_classes_are_sorted_folder_names_and_labels_follow_them(tmp_path: Path) -> None:
    for name in ("dog/a.png", "dog/b.jpg", "cat/c.png", "cat/nested/d.png"):
        image(tmp_path / name)
    data = read_labelled(tmp_path)
    assert data.classes == ("cat", "dog")
    assert [(p.name, label) for p, label in zip(data.images, data.labels)] == [
        ("c.png", 0), ("d.png", 0), ("a.png", 1), ("b.jpg", 1)]
    assert "cat 2, dog 2" in check(data)[0].message


def test_loose_images_and_empty_class_folders_are_refused(tmp_path: Path) -> None:
    image(tmp_path / "loose" / "x.png")
    image(tmp_path / "loose" / "cat" / "y.png")
    with pytest.raises(DataError, match="x.png.*sub-folder named after its class"):
        read_labelled(tmp_path / "loose")
    image(tmp_path / "gap" / "cat" / "y.png")
    (tmp_path / "gap" / "dog").mkdir()
    with pytest.raises(DataError, match=r"gap/dog: class folder holds no images"):
        read_labelled(tmp_path / "gap")


def test_test_data_may_not_bring_a_class_the_model_does_not_know(tmp_path: Path) -> None:
    image(tmp_path / "cat" / "a.png")
    image(tmp_path / "fox" / "b.png")
    with pytest.raises(DataError, match="class 'fox' is not one the model knows"):
        read_labelled(tmp_path, known=["cat", "dog"])
    # A test set with only some of the known classes is fine; ids follow the model's order.
    (tmp_path / "fox" / "b.png").unlink()
    (tmp_path / "fox").rmdir()
    assert read_labelled(tmp_path, known=["dog", "cat"]).labels == (1,)


def test_a_broken_image_is_named(tmp_path: Path) -> None:
    image(tmp_path / "cat" / "a.png")
    broken = tmp_path / "dog" / "b.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"dog/b.png: not a readable image"):
        read_labelled(tmp_path)
    with pytest.raises(DataError, match=r"b.png: not a readable image"):
        read_unlabelled([broken], ["cat", "dog"])


def test_metrics_count_every_known_class() -> None:
    context = MetricContext(task="imageclass", labels=("a", "b", "c"))
    predictions = [{"label": 0}, {"label": 0}, {"label": 1}, {"label": 1}]
    references = [0, 1, 1, 1]
    assert accuracy(predictions, references, context) == 0.75
    # F1: a 2/3, b 0.8, c 0 (never seen, never predicted) -> mean 0.4889
    assert macro_f1(predictions, references, context) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
