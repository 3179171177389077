"""Pascal VOC detection data as LabelImg, CVAT and the VOC sets publish it: the Raccoon-style layout
(images/ + annotations/), VOCdevkit (JPEGImages/, Annotations/, ImageSets/Main/), difficult
objects, and one line naming the file for every malformed annotation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo_detection.data import read_dataset

SAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "taskzoo_detection" / "sample"


def test_the_voc_sample_reads_the_boxes_of_the_yolo_sample():
    voc = read_dataset(SAMPLE / "voc", role="train")
    yolo = read_dataset(SAMPLE / "test", role="train")
    assert voc.source == "Pascal VOC" and voc.categories == sorted(yolo.categories)
    assert [p.name for p in voc.images] == [p.name for p in yolo.images] and voc.sizes == yolo.sizes
    for image in range(len(voc)):
        names = sorted(zip([voc.categories[i] for i in voc.labels[image]], voc.boxes[image].tolist()))
        expected = sorted(zip([yolo.categories[i] for i in yolo.labels[image]], yolo.boxes[image].tolist()))
        assert [n for n, _ in names] == [n for n, _ in expected]
        np.testing.assert_allclose([b for _, b in names], [b for _, b in expected], atol=1.0)  # pixel rounding
    assert not any(flags.any() for flags in voc.crowd)


def _vocdevkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    shutil.copytree(SAMPLE / "voc" / "images", root / "JPEGImages")
    shutil.copytree(SAMPLE / "voc" / "annotations", root / "Annotations")
    (root / "ImageSets" / "Main" / "train.txt").write_text("im00\nim01\nim02\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("im03\n")
    return root


def test_vocdevkit_reads_its_train_and_val_lists_and_difficult_objects_are_ignored(tmp_path, runner):
    root = _vocdevkit(tmp_path)
    xml = root / "Annotations" / "im00.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    data = read_dataset(root, role="train")
    assert [p.stem for p in data.images] == ["im00", "im01", "im02"] and [p.stem for p in data.val.images] == ["im03"]
    assert data.crowd[0].tolist() == [True, False] and "1 object(s) marked difficult" in " ".join(data.notes)
    test = read_dataset(root, role="test", known=data.categories)
    assert [p.stem for p in test.images] == ["im03"]
    result = runner.invoke(cli, ["check", "detection", "--data", str(root)])
    assert result.exit_code == 0 and "Pascal VOC (train)" in result.output, result.output


def _break(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "voc"
    shutil.copytree(SAMPLE / "voc", folder)
    edit(folder)
    return folder


def _replace(name: str, old: str, new: str):
    def edit(folder: Path) -> None:
        path = folder / "annotations" / name
        path.write_text(path.read_text().replace(old, new, 1))
    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_replace("im01.xml", "</annotation>", "<annotation>"), r"im01.xml: line \d+, column \d+: malformed XML"),
        (lambda folder: (folder / "images" / "im01.png").unlink(), r"im01.xml: image 'im01.png' is not in .*images"),
        (_replace("im01.xml", "<width>96</width>", "<width>640</width>"), r"im01.xml: <size> says 640x\d+, but .* is 96x"),
        (_replace("im01.xml", "<xmax>", "<xmax>-"), r"im01.xml: object 1: xmax/ymax .* below xmin/ymin"),
        (_replace("im01.xml", "<ymin>", "<ymin>x"), r"im01.xml: object 1: <ymin> is 'x\d+', expected a number"),
        (lambda folder: _replace("im01.xml", "</bndbox>", "</box>")(folder) or _replace("im01.xml", "<bndbox>", "<box>")(folder),
         r"im01.xml: object 1: <bndbox> is missing"),
        (lambda folder: (folder / "annotations" / "im02.xml").write_text("<root/>"),
         r"im02.xml: expected a Pascal VOC <annotation>, got <root>"),
    ],
)
def test_each_malformed_annotation_is_one_line_naming_the_file(tmp_path, runner, edit, message):
    folder = _break(tmp_path, edit)
    with pytest.raises(DataError, match=message):
        read_dataset(folder, role="train")
    result = runner.invoke(cli, ["check", "detection", "--data", str(folder)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_the_annotators_path_is_ignored_and_xml_beside_images_is_read(tmp_path):
    folder = tmp_path / "labelimg"
    folder.mkdir()
    for source in (SAMPLE / "voc" / "images").glob("*.png"):
        shutil.copy(source, folder / source.name)
        shutil.copy(SAMPLE / "voc" / "annotations" / f"{source.stem}.xml", folder / f"{source.stem}.xml")
    data = read_dataset(folder, role="train")
    assert len(data) == 4 and all(image.parent == folder for image in data.images)
    root = _vocdevkit(tmp_path)
    (root / "ImageSets" / "Main" / "val.txt").write_text("im03\nim09\n")
    with pytest.raises(DataError, match=r"val.txt: lists 'im09', but .*im09.xml does not exist"):
        read_dataset(root, role="test")
