"""Segmentation from COCO polygons and RLE (CVAT, Label Studio exports): rasterised to class masks
with the categories as class names, overlaps resolved smaller-on-top, and one line per bad entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo_segmentation.data import mask_array, read_dataset


def _export(folder: Path, images: int = 6) -> tuple[Path, list[np.ndarray]]:
    """Images of a big square (category 'board', as a polygon) with a small disc on it (category
    'coin', as RLE), the masks they should give, and the COCO file CVAT would write."""
    from pycocotools import mask as coco_mask

    (folder / "images").mkdir(parents=True, exist_ok=True)
    document = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "coin"}, {"id": 3, "name": "board"}]}
    expected = []
    rng = np.random.default_rng(0)
    for index in range(images):
        height, width = 48, 64
        x0, y0 = int(rng.integers(2, 20)), int(rng.integers(2, 12))
        board = np.zeros((height, width), dtype=np.uint8)
        board[y0:y0 + 30, x0:x0 + 36] = 1
        yy, xx = np.mgrid[:height, :width]
        coin = ((yy - (y0 + 15)) ** 2 + (xx - (x0 + 18)) ** 2 <= 36).astype(np.uint8)
        pixels = np.full((height, width, 3), 40, dtype=np.uint8)
        pixels[board == 1] = (200, 180, 90)
        pixels[coin == 1] = (250, 250, 250)
        Image.fromarray(pixels).save(folder / "images" / f"p{index}.png")
        document["images"].append({"id": 100 + index, "file_name": f"p{index}.png", "width": width, "height": height})
        polygon = [x0, y0, x0 + 36, y0, x0 + 36, y0 + 30, x0, y0 + 30]
        rle = coco_mask.encode(np.asfortranarray(coin))
        rle["counts"] = rle["counts"].decode()
        document["annotations"] += [
            {"id": 2 * index, "image_id": 100 + index, "category_id": 7, "segmentation": rle, "iscrowd": 0},
            {"id": 2 * index + 1, "image_id": 100 + index, "category_id": 3, "segmentation": [polygon], "iscrowd": 0},
        ]
        truth = np.zeros((height, width), dtype=np.int64)
        truth[coco_mask.decode(coco_mask.frPyObjects([polygon], height, width)).max(-1) == 1] = 1  # board: id 3
        truth[coin == 1] = 2  # coin: id 7, drawn on top although listed first
        expected.append(truth)
    path = folder / "annotations.json"
    path.write_text(json.dumps(document))
    return path, expected


def test_polygons_and_rle_become_class_masks_with_the_smaller_shape_on_top(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))
    path, expected = _export(tmp_path / "export")
    data = read_dataset(path, role="train", images_dir=tmp_path / "export" / "images")
    assert data.classes.names == ["background", "board", "coin"]  # category ids 3, 7 in order
    assert [p.name for p in data.images] == [f"p{i}.png" for i in range(6)]
    for mask, truth in zip(data.masks, expected):
        np.testing.assert_array_equal(mask_array(mask, data.classes), truth)
    assert data.pixel_counts[2] > 0 and sum(data.pixel_counts) == 6 * 48 * 64
    # The validation file maps its categories onto the trained classes by name.
    again = read_dataset(path, role="val", known_classes=["background", "board", "coin"])
    assert again.classes.names == ["background", "board", "coin"]


@pytest.mark.slow
def test_a_run_on_a_coco_export_trains_and_evaluates(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))
    path, _ = _export(tmp_path / "export", images=8)
    result = runner.invoke(cli, ["run", "segmentation", "--data", str(path), "--images", str(tmp_path / "export" / "images"),
                                 "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu",
                                 "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["background", "board", "coin"]
    assert 0.0 <= metrics["best"] <= 1.0
    result = runner.invoke(cli, ["evaluate", "--model", str(tmp_path / "run"), "--data", str(path), "--images",
                                 str(tmp_path / "export" / "images")])
    assert result.exit_code == 0 and "mean_iou" in result.output, result.output


def _broken(tmp_path: Path, change) -> Path:
    path, _ = _export(tmp_path / "export", images=2)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][1].update(file_name="gone.png"), r"images\[1\]: image 'gone.png' is not in"),
        (lambda d: d["images"][0].update(width=640), r"images\[0\]: width/height 640x48, but .* is 64x48"),
        (lambda d: d["annotations"][1].update(image_id=999), r"annotations\[1\] \(id 1\): image_id 999 is not in 'images'"),
        (lambda d: d["annotations"][0].update(category_id=5), r"annotations\[0\] \(id 0\): category_id 5 is not in"),
        (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4]]), r"annotations\[1\] \(id 1\): a polygon needs"),
        (lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10]),
         r"annotations\[0\] \(id 0\): RLE size \[10, 10\] is not the image's \[48, 64\]"),
        (lambda d: d["annotations"][0].update(segmentation="x"), r"'segmentation' must be a list of polygons or an RLE"),
        (lambda d: d["categories"][0].update(name="background"), r"a category is named 'background'"),
        (lambda d: d.pop("categories"), r"expected COCO JSON with 'images', 'annotations' and 'categories' lists"),
    ],
)
def test_each_bad_entry_is_one_line_and_exit_code_2(tmp_path, runner, monkeypatch, change, message):
    monkeypatch.setenv("TASKZOO_CACHE", str(tmp_path / "cache"))
    path = _broken(tmp_path, change)
    with pytest.raises(DataError, match=message):
        read_dataset(path, role="train")
    result = runner.invoke(cli, ["check", "segmentation", "--data", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
