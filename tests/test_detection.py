"""Detection: COCO and YOLO readers agree, bad input stops with one line, augmentation keeps boxes
on their objects, COCO mAP through torchmetrics, and fine-tunes through the CLI (timm backbone
under Faster R-CNN from the offline ImageNet weights; a transformers detector from a local folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo.specs import MetricContext
from taskzoo_detection.data import read_dataset
from taskzoo_detection.metrics import coco_summary
from taskzoo.pipeline import make_task

SHAPES = Path(__file__).resolve().parents[1] / "examples" / "detection" / "shapes"
CATEGORIES = ["red", "blue"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_coco(root: Path, count: int = 8, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """Images of coloured squares on noise; the same boxes as COCO JSON (root/coco.json, ids 1 and 2)
    and in the YOLO layout (root/images, root/labels, root/classes.txt). Every fourth image is empty."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)]}
    width, height = size
    for index in range(count):
        pixels = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
        lines = []
        objects = 0 if index % 4 == 3 else 2
        for number in range(objects):
            category = (index + number) % 2
            side = int(rng.integers(18, 30))
            x = 4 + number * (width // 2)
            y = int(rng.integers(2, height - side - 2))
            pixels[y:y + side, x:x + side] = COLOURS[CATEGORIES[category]]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index + 1,
                                        "category_id": category + 1, "bbox": [x, y, side, side], "iscrowd": 0})
            lines.append(f"{category} {(x + side / 2) / width:.6f} {(y + side / 2) / height:.6f} "
                         f"{side / width:.6f} {side / height:.6f}\n")
        name = f"im{index:02d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        (root / "labels" / f"im{index:02d}.txt").write_text("".join(lines))
        coco["images"].append({"id": index + 1, "file_name": name, "width": width, "height": height})
    (root / "classes.txt").write_text("\n".join(CATEGORIES) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    return root


# -- reading ----------------------------------------------------------------------------------------


def test_coco_and_yolo_give_the_same_boxes_for_the_example():
    coco = read_dataset(SHAPES / "train.json", role="train", images_dir=SHAPES / "images" / "train")
    yolo = read_dataset(SHAPES / "dataset.yaml", role="train")
    assert coco.categories == yolo.categories == ["circle", "square", "triangle"]
    assert len(coco) == len(yolo) == 72 and yolo.val is not None and len(yolo.val) == 24
    by_name = {path.name: i for i, path in enumerate(yolo.images)}
    total = 0
    for i, path in enumerate(coco.images):
        j = by_name[path.name]
        order_c, order_y = np.lexsort(coco.boxes[i].T), np.lexsort(yolo.boxes[j].T)
        np.testing.assert_allclose(coco.boxes[i][order_c], yolo.boxes[j][order_y], atol=0.01)
        assert coco.labels[i][order_c].tolist() == yolo.labels[j][order_y].tolist()
        total += len(coco.boxes[i])
    assert total == 158 and sum(len(b) == 0 for b in coco.boxes) == 9  # negatives are kept


def test_yolo_folder_with_classes_txt_matches_coco(tmp_path):
    root = make_coco(tmp_path / "d")
    coco = read_dataset(root / "coco.json", role="train")
    yolo = read_dataset(root, role="train")
    assert coco.categories == yolo.categories == CATEGORIES
    for a, b in zip(coco.boxes, yolo.boxes):
        np.testing.assert_allclose(a, b, atol=0.01)
    assert [len(b) for b in yolo.boxes].count(0) == 2


def test_crowd_flags_and_category_ids_that_are_not_contiguous(tmp_path):
    root = make_coco(tmp_path / "d", count=2)
    document = json.loads((root / "coco.json").read_text())
    document["categories"] = [{"id": 7, "name": "red"}, {"id": 3, "name": "blue"}]
    for annotation in document["annotations"]:
        annotation["category_id"] = 7 if annotation["category_id"] == 1 else 3
    document["annotations"][0]["iscrowd"] = 1
    (root / "coco.json").write_text(json.dumps(document))
    data = read_dataset(root / "coco.json", role="train")
    assert data.categories == ["blue", "red"] and data.category_ids == [3, 7]  # sorted by COCO id
    assert data.crowd[0].tolist() == [True, False]
    assert data.labels[0].tolist() == [1, 0]  # red (id 7) is index 1


def test_evaluation_data_is_mapped_onto_the_models_categories_by_name(tmp_path):
    root = make_coco(tmp_path / "d", count=2)
    data = read_dataset(root / "coco.json", role="test", known=["blue", "red", "green"])
    assert data.categories == ["blue", "red", "green"]
    assert data.labels[0].tolist() == [1, 0]
    with pytest.raises(DataError, match="categor.* red .* not among the model's: blue"):
        read_dataset(root / "coco.json", role="test", known=["blue"])


def test_partly_outside_box_is_clipped_and_reported(tmp_path, runner):
    root = make_coco(tmp_path / "d", count=4)
    document = json.loads((root / "coco.json").read_text())
    document["annotations"][0]["bbox"] = [80, 10, 40, 20]  # the image is 96 wide
    (root / "coco.json").write_text(json.dumps(document))
    data = read_dataset(root / "coco.json", role="train")
    assert data.boxes[0][0].tolist() == [80, 10, 96, 30]
    result = runner.invoke(cli, ["check", "detection", "--data", str(root / "coco.json")])
    assert result.exit_code == 0, result.output
    assert "1 box(es) extended past their image and were clipped" in result.output
    assert "annotations[0]" in result.output


def _break(root: Path, how: str) -> tuple[list[str], str]:
    """Spoil a data set one way; return the data arguments and the file the message must name."""
    coco = root / "coco.json"
    document = json.loads(coco.read_text())
    if how == "yolo label not utf-8":
        label = root / "labels" / "im01.txt"
        label.write_bytes(b"0 0.5 0.5 0.1 0.1 # caf\xe9\n")
        return [str(root)], str(label)
    if how.startswith("yolo"):
        label = root / "labels" / "im01.txt"
        label.write_text({"yolo class outside names": "5 0.5 0.5 0.1 0.1\n",
                          "yolo not numbers": "0 0.5 wide 0.1 0.1\n",
                          "yolo negative size": "0 0.5 0.5 -0.1 0.1\n"}[how])
        return [str(root)], f"{label}:1"
    if how == "malformed yaml":
        (root / "dataset.yaml").write_text("names: [red, blue\ntrain: images\n")
        return [str(root / "dataset.yaml")], str(root / "dataset.yaml")
    if how == "malformed json":
        coco.write_text(coco.read_text()[:-10])
        return [str(coco)], str(coco)
    if how == "negative width":
        document["annotations"][1]["bbox"][2] = -4
    elif how == "unknown category":
        document["annotations"][1]["category_id"] = 9
    elif how == "missing image":
        document["images"][1]["file_name"] = "gone.png"
    elif how == "annotation of unknown image":
        document["annotations"][1]["image_id"] = 99
    elif how == "box entirely outside":
        document["annotations"][1]["bbox"] = [200, 10, 20, 20]
    elif how == "bbox not numbers":
        document["annotations"][1]["bbox"] = [1, 2, "3", 4]
    coco.write_text(json.dumps(document))
    return [str(coco)], str(coco)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("negative width", r"annotations\[1\] \(id 2\): bbox .* has a negative width or height"),
        ("unknown category", r"annotations\[1\] \(id 2\): category_id 9 is not in 'categories' \(ids 1, 2\)"),
        ("missing image", r"images\[1\] \(id 2\): file 'gone.png' not found"),
        ("annotation of unknown image", r"annotations\[1\] \(id 2\): image_id 99 is not in 'images'"),
        ("box entirely outside", r"annotations\[1\] \(id 2\): box .* has no area inside its 96x80 image"),
        ("bbox not numbers", r"annotations\[1\] \(id 2\): bbox must be \[x, y, width, height\] numbers"),
        ("malformed json", r"not valid JSON \(line 1, column \d+"),
        ("malformed yaml", r"not valid YAML"),
        ("yolo class outside names", r"class 5 is outside the names list \(0-1\)"),
        ("yolo not numbers", r"expected 'class x_center y_center width height' numbers"),
        ("yolo negative size", r"negative width or height"),
        ("yolo label not utf-8", r"line 1: byte 0xe9 is not valid UTF-8"),
    ],
)
def test_bad_input_names_the_file_and_entry_and_exits_2(tmp_path, runner, how, message):
    root = make_coco(tmp_path / "d", count=4)
    arguments, culprit = _break(root, how)
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", "detection", "--data", *arguments, "--output", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert culprit in result.output
    import re

    assert re.search(message, result.output), result.output
    assert not run_dir.exists()


def test_missing_image_folder_and_unknown_layout(tmp_path, runner):
    root = make_coco(tmp_path / "d", count=2)
    result = runner.invoke(cli, ["check", "detection", "--data", str(root / "coco.json"), "--images", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--images" in result.output and "no such folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["check", "detection", "--data", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "expected a detection data set" in result.output


# -- augmentation -------------------------------------------------------------------------------


def test_augmentation_keeps_every_box_on_its_object():
    """Each object is also painted into a mask with its own id; after the training augmentation
    (zoom out, IoU crop, flip, photometric), every remaining box must frame exactly its object's
    pixels, and boxes that were cropped away must be gone together with their labels."""
    from torchvision import tv_tensors

    from taskzoo_detection.task import augmentation

    torch.manual_seed(0)
    height, width = 120, 160
    boxes = torch.tensor([[10, 10, 50, 40], [70, 20, 150, 60], [30, 70, 90, 115]], dtype=torch.float32)
    mask = torch.zeros(height, width, dtype=torch.uint8)
    for number, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        mask[y1:y2, x1:x2] = number + 1
    image = tv_tensors.Image(torch.randint(0, 255, (3, height, width), dtype=torch.uint8))
    transform = augmentation(train=True)
    changed, checked = 0, 0
    for _ in range(40):
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
                  "labels": torch.arange(3), "objects": tv_tensors.Mask(mask)}
        out_image, out = transform(image, target)
        assert out["boxes"].shape[0] == out["labels"].shape[0]
        objects = out["objects"]
        assert objects.shape[-2:] == out_image.shape[-2:]
        changed += out_image.shape[-2:] != (height, width) or not torch.equal(out["boxes"], boxes)
        for box, label in zip(out["boxes"].tolist(), out["labels"].tolist()):
            ys, xs = torch.nonzero(objects == label + 1, as_tuple=True)
            assert len(ys), "a box survived whose object was cropped away"
            extent = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            np.testing.assert_allclose(box, extent, atol=2.5)
            checked += 1
    assert changed >= 20 and checked >= 40


def test_training_items_drop_crowd_regions_and_stay_inside_the_image(tmp_path):
    from taskzoo_detection.task import ImagesAndBoxes

    root = make_coco(tmp_path / "d", count=4)
    document = json.loads((root / "coco.json").read_text())
    document["annotations"][0]["iscrowd"] = 1
    (root / "coco.json").write_text(json.dumps(document))
    data = read_dataset(root / "coco.json", role="train")
    torch.manual_seed(0)
    training, evaluation = ImagesAndBoxes(data, train=True), ImagesAndBoxes(data, train=False)
    assert evaluation[0]["crowd"].tolist() == [True, False] and len(evaluation[0]["boxes"]) == 2
    for _ in range(10):
        item = training[0]
        height, width = item["image"].shape[-2:]
        assert not item["crowd"].any() and len(item["boxes"]) <= 1
        assert (item["boxes"][:, 0::2] <= width).all() and (item["boxes"][:, 1::2] <= height).all()
        assert (item["boxes"] >= 0).all()
    assert len(training[3]["boxes"]) == 0  # a negative image goes through too


# -- metrics ------------------------------------------------------------------------------------


def _references(data) -> list[dict]:
    return [{"boxes": b.tolist(), "labels": lab.tolist(), "crowd": c.tolist()}
            for b, lab, c in zip(data.boxes, data.labels, data.crowd)]


def test_ground_truth_scored_against_itself_is_perfect_and_shifted_boxes_are_not():
    data = read_dataset(SHAPES / "val.json", role="val", images_dir=SHAPES / "images" / "val",
                        known=["circle", "square", "triangle"])
    context = MetricContext(task="detection", labels=tuple(data.categories))
    references = _references(data)
    perfect = [{"boxes": r["boxes"], "labels": r["labels"], "scores": [1.0] * len(r["labels"])} for r in references]
    summary = coco_summary(perfect, references, context)
    assert summary["map"] == pytest.approx(1.0) and summary["map_50"] == pytest.approx(1.0)
    assert summary["recall"] == pytest.approx(1.0)
    assert all(v["ap"] == pytest.approx(1.0) and v["boxes"] > 0 for v in summary["per_class"].values())
    assert set(summary["pr_curve"]) == set(data.categories)

    shifted = [{**p, "boxes": [[x1 + (x2 - x1) * 0.6, y1, x2 + (x2 - x1) * 0.6, y2] for x1, y1, x2, y2 in p["boxes"]]}
               for p in perfect]
    worse = coco_summary(shifted, references, context)
    assert worse["map_50"] < 0.05 and worse["map"] < 0.05
    wrong_class = [{**p, "labels": [(label + 1) % 3 for label in p["labels"]]} for p in perfect]
    assert coco_summary(wrong_class, references, context)["map"] < 0.05


def test_detections_inside_crowd_regions_are_not_false_positives():
    context = MetricContext(task="detection", labels=("a",))
    references = [{"boxes": [[10, 10, 30, 30], [50, 50, 90, 90]], "labels": [0, 0], "crowd": [False, True]}]
    inside_crowd = [{"boxes": [[10, 10, 30, 30], [52, 52, 70, 70]], "labels": [0, 0], "scores": [0.5, 0.9]}]
    assert coco_summary(inside_crowd, references, context)["map"] == pytest.approx(1.0)
    references_plain = [{**references[0], "crowd": [False, False]}]
    extra = [{"boxes": [[10, 10, 30, 30], [200, 200, 220, 220]], "labels": [0, 0], "scores": [0.5, 0.9]}]
    assert coco_summary(extra, references_plain, context)["map_50"] < 0.6


# -- through the CLI ----------------------------------------------------------------------------


def test_run_evaluate_predict_on_a_yolo_folder(tmp_path, runner):
    """A quick pass through every command: YOLO data in, COCO results and pictures out."""
    root = make_coco(tmp_path / "d", count=8)
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", "detection", "--data", str(root), "--epochs", "1", "--image-size", "128",
                                 "--batch-size", "4", "--val-fraction", "0.25", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["main_metric"] == "map" and 0.0 <= metrics["val"]["map"] <= 1.0
    assert set(metrics["val"]["per_class"]) == set(CATEGORIES)
    for name in ("model/model.safetensors", "model/taskzoo_detection.json", "per_class.md", "precision_recall.png",
                 "training_curves.png", "README.md", "labels.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "labels.json").read_text()) == CATEGORIES

    result = runner.invoke(cli, ["evaluate", "--model", str(run_dir), "--data", str(root / "coco.json"), "--json"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "eval-coco" / "per_class.md").read_text().count("|") > 10
    assert (run_dir / "eval-coco" / "precision_recall.png").is_file()
    assert (run_dir / "eval-coco" / "predictions.png").is_file()

    output = tmp_path / "out" / "detections.json"
    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--data", str(root / "images"),
                                 "--output", str(output), "--score-threshold", "0.0"])
    assert result.exit_code == 0, result.output
    detections = json.loads(output.read_text())
    assert detections, "an untrained-ish model with threshold 0 still returns boxes"
    for detection in detections:
        assert set(detection) >= {"image_id", "category_id", "bbox", "score"}
        assert detection["category_id"] in (0, 1) and len(detection["bbox"]) == 4 and detection["bbox"][2] >= 0
    assert len(list((tmp_path / "out" / "drawn").glob("*.jpg"))) == 8
    strict = tmp_path / "strict.json"
    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--data", str(root / "images"),
                                 "--output", str(strict), "--score-threshold", "0.99"])
    assert result.exit_code == 0, result.output
    assert all(d["score"] >= 0.99 for d in json.loads(strict.read_text()))
    assert len(json.loads(strict.read_text())) < len(detections)


def test_transformers_detector_from_a_local_folder(tmp_path, runner):
    """The transformers family end to end, on a tiny randomly initialised YOLOS (no hub here):
    the processor's annotations, the loss, post-processing, save_pretrained with our categories."""
    from transformers import AutoModelForObjectDetection, YolosConfig, YolosForObjectDetection, YolosImageProcessor

    checkpoint = tmp_path / "tiny-yolos"
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[96, 96], num_detection_tokens=10, num_labels=91)
    YolosForObjectDetection(config).save_pretrained(checkpoint)
    YolosImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(checkpoint)
    root = make_coco(tmp_path / "d", count=8)
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", "detection", "--data", str(root / "coco.json"), "--backbone", str(checkpoint),
                                 "--epochs", "2", "--batch-size", "4", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all("loss" in h["val"] for h in history)
    saved = AutoModelForObjectDetection.from_pretrained(run_dir / "model" / "transformers")
    assert saved.config.id2label == {0: "red", 1: "blue"}
    output = tmp_path / "preds.json"
    result = runner.invoke(cli, ["predict", "--model", str(run_dir), "--data", str(root / "images" / "im00.png"),
                                 "--output", str(output), "--score-threshold", "0"])
    assert result.exit_code == 0, result.output
    assert all(d["category"] in CATEGORIES for d in json.loads(output.read_text()))
    assert (tmp_path / "preds" / "im00.jpg").is_file()


@pytest.mark.slow
def test_fine_tune_from_offline_imagenet_weights_beats_the_untrained_head(tmp_path, runner):
    """mAP@.5 on the example's validation images: the freshly built detector (ImageNet backbone,
    untrained heads) against the same detector after three epochs of fine-tuning."""
    from taskzoo.weights import resolve_backbone
    from taskzoo.plugins import get_host
    from taskzoo.trainer import evaluate, make_accelerator

    arguments = ["--data", str(SHAPES / "train.json"), "--images", str(SHAPES / "images" / "train"),
                 "--val", str(SHAPES / "val.json"), "--val-images", str(SHAPES / "images" / "val")]
    host = get_host()
    spec = host.task("detection")
    task = make_task(spec, {"image_size": 320, "images": str(SHAPES / "images" / "val")}, host)
    val = task.read(SHAPES / "val.json", role="val", labels=["circle", "square", "triangle"])
    torch.manual_seed(42)
    model = task.build_model(resolve_backbone(host, "detection", None), ["circle", "square", "triangle"])
    accelerator = make_accelerator("cpu")
    loader = task.dataloader(val, batch_size=8, train=False, seed=0)
    context = MetricContext(task="detection", labels=("circle", "square", "triangle"))
    untrained, _ = evaluate(accelerator, model, loader, task, host.metrics("detection"), context)

    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", "detection", *arguments, "--epochs", "3", "--image-size", "320",
                                 "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    trained = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert trained["map_50"] >= untrained["map_50"] + 0.4, (untrained["map_50"], trained["map_50"])
    assert trained["map"] > untrained["map"]
    assert (run_dir / "predictions.png").is_file() and (run_dir / "precision_recall.png").is_file()


def test_sizes_follow_exif_rotation_like_the_pixels(tmp_path):
    """A phone photo stored landscape with 'rotate 90' in EXIF is annotated (and read) upright."""
    from taskzoo_detection.data import image_size, read_rgb

    image = Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert read_rgb(tmp_path / "phone.jpg").shape[:2] == (100, 40)
    assert image_size(tmp_path / "phone.jpg") == (40, 100)
