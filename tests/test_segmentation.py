"""Segmentation: folders and masks, bad input, augmentation that keeps masks aligned, and an
end-to-end fine-tune from the offline ImageNet encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo.plugins import PluginHost
from taskzoo_segmentation.data import read_dataset
from taskzoo.pipeline import make_task

COINS = Path(__file__).resolve().parents[1] / "examples" / "segmentation" / "coins"


def make_dataset(root: Path, count: int = 4, size=(32, 24), mask_values=(0, 1), mode="L") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / f"im{i}.jpg")
        mask = rng.choice(mask_values, (size[1], size[0])).astype(np.uint8)
        Image.fromarray(mask, mode="L").convert(mode).save(root / "masks" / f"im{i}.png")
    return root


def test_reads_pairs_infers_classes_and_maps_0_255_binary_masks(tmp_path):
    data = read_dataset(make_dataset(tmp_path / "d", mask_values=(0, 255)), role="train")
    assert len(data) == 4 and data.classes.names == ["background", "class_1"] and data.binary_255


def test_classes_yaml_and_rgb_masks_through_the_palette(tmp_path):
    root = make_dataset(tmp_path / "d", mask_values=(0, 1))
    (root / "classes.yaml").write_text("names: [ground, tree]\ncolours: [[0, 0, 0], [0, 255, 0]]\nignore_index: 255\n")
    rgb = np.zeros((24, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (0, 255, 0)
    Image.fromarray(rgb).save(root / "masks" / "im0.png")
    from taskzoo_segmentation.data import mask_array

    data = read_dataset(root, role="train")
    assert data.classes.names == ["ground", "tree"] and data.classes.ignore_index == 255
    ids = mask_array(root / "masks" / "im0.png", data.classes)
    assert (ids[:, :16] == 1).all() and (ids[:, 16:] == 0).all()


def test_train_and_val_sub_folders(tmp_path):
    make_dataset(tmp_path / "d" / "train")
    make_dataset(tmp_path / "d" / "val", count=2)
    data = read_dataset(tmp_path / "d", role="train")
    assert len(data) == 4 and len(data.val) == 2


def _corrupt(root: Path, how: str) -> Path:
    if how == "mask without image":
        (root / "images" / "im1.jpg").unlink()
        return root / "masks" / "im1.png"
    if how == "image without mask":
        (root / "masks" / "im2.png").unlink()
        return root / "images" / "im2.jpg"
    if how == "size mismatch":
        Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "masks" / "im0.png")
        return root / "masks" / "im0.png"
    if how == "class outside classes.yaml":
        (root / "classes.yaml").write_text("names: [background, coin]\n")
        Image.fromarray(np.full((24, 32), 7, dtype=np.uint8)).save(root / "masks" / "im3.png")
        return root / "masks" / "im3.png"
    if how == "rgb off palette":
        (root / "classes.yaml").write_text("names: [background, coin]\ncolours: [[0, 0, 0], [255, 200, 0]]\n")
        Image.fromarray(np.full((24, 32, 3), (9, 9, 200), dtype=np.uint8)).save(root / "masks" / "im0.png")
        return root / "masks" / "im0.png"
    if how == "unreadable":
        (root / "images" / "im0.jpg").write_bytes(b"not a jpeg")
        return root / "images" / "im0.jpg"
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("mask without image", "mask without an image"),
        ("image without mask", "image without a mask"),
        ("size mismatch", "mask is 10x10 but its image im0.jpg is 32x24"),
        ("class outside classes.yaml", "class id 7 is outside classes.yaml (ids 0-1)"),
        ("rgb off palette", "colour (9, 9, 200) at x=0, y=0 is not in the palette of classes.yaml"),
        ("unreadable", "unreadable image"),
    ],
)
def test_bad_input_names_the_file_and_exits_2(tmp_path, runner, how, message):
    root = make_dataset(tmp_path / "d")
    culprit = _corrupt(root, how)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_dataset(root, role="train")
    assert str(culprit) in str(caught.value)
    result = runner.invoke(cli, ["run", "segmentation", "--data", str(root), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment", ["crop", "flip", "none"])
def test_augmentation_moves_masks_with_images(tmp_path, augment):
    """A mask that is exactly 'red channel is bright' stays so after random crops and flips."""
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        mask = np.zeros((96, 128), dtype=np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 80), rng.integers(0, 110)
            mask[y:y + 16, x:x + 18] = 1
        image = np.zeros((96, 128, 3), dtype=np.uint8)
        image[..., 0] = mask * 255
        image[..., 1] = np.arange(128, dtype=np.uint8)[None, :]  # an asymmetric pattern makes flips visible
        Image.fromarray(image).save(root / "images" / f"a{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    host = PluginHost()
    spec = host.task("segmentation")
    task = make_task(spec, {"image_size": 64, "augment": augment}, host)
    data = task.read(root, role="train")
    task.labels(data)
    loader = task.dataloader(data, batch_size=3, train=True, seed=0)
    mean, std = 0.485, 0.229
    for _ in range(5):
        batch = next(iter(loader))
        red = batch["image"][:, 0] * std + mean
        assert batch["mask"].shape == (3, 64, 64) and batch["mask"].dtype.is_floating_point is False
        agreement = ((red > 0.5) == (batch["mask"] == 1)).float().mean()
        assert agreement > 0.97, float(agreement)


def test_scores_are_counted_at_each_images_own_size():
    """Validation masks keep their images' own sizes (a list when they differ); the logits are
    resized to each, so every pixel a user drew is scored once, thin structures included."""
    import torch

    from taskzoo_segmentation.task import _collate

    host = PluginHost()
    task = make_task(host.task("segmentation"), {"image_size": 4}, host)
    task._previews = {}
    items = [{"index": 0, "image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long),
              "full_mask": torch.ones(6, 8, dtype=torch.long)},
             {"index": 1, "image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long),
              "full_mask": torch.zeros(3, 5, dtype=torch.long)}]
    batch = _collate(items)
    assert isinstance(batch["full_mask"], list) and batch["mask"].shape == (2, 4, 4)
    logits = torch.zeros(2, 2, 4, 4)
    logits[0, 1] = 5.0  # image 0: class 1 everywhere; image 1: class 0 everywhere
    first, second = (torch.tensor(result["confusion"]) for result in task.predictions(batch, logits))
    assert first.sum() == 48 and first[1, 1] == 48  # 6 x 8 pixels, all right
    assert second.sum() == 15 and second[0, 0] == 15


@pytest.mark.slow
def test_fine_tune_from_offline_imagenet_encoder_beats_all_background(tmp_path, runner):
    data = tmp_path / "coins"
    shutil.copytree(COINS, data)
    out = tmp_path / "run"
    result = runner.invoke(cli, ["run", "segmentation", "--data", str(data), "--epochs", "3", "--image-size", "128",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    background_share = summary["val"]["per_class"]["background"]["pixels"] / sum(
        v["pixels"] for v in summary["val"]["per_class"].values())
    all_background_miou = background_share / 2  # IoU background = its share, coin = 0
    assert summary["val"]["mean_iou"] > all_background_miou + 0.3, (summary["val"]["mean_iou"], all_background_miou)
    for name in ("model/model.safetensors", "model/taskzoo_segmentation.json", "predictions.png", "confusion_matrix.png"):
        assert (out / name).exists(), name

    evaluated = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(data), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["mean_iou"] > 0.6
    assert (out / "eval-coins" / "predictions.png").exists() and (out / "eval-coins" / "per_class.md").exists()

    masks = tmp_path / "masks"
    predicted = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(data / "images"), "--output", str(masks)])
    assert predicted.exit_code == 0, predicted.output
    first = Image.open(masks / "coins_00.png")
    assert first.size == Image.open(data / "images" / "coins_00.png").size and first.mode == "P"
    assert set(np.unique(np.asarray(first))) <= {0, 1}
    assert (masks / "coins_00_overlay.png").exists()


def test_timm_encoder_without_network_fails_fast_naming_the_offline_one(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = make_dataset(tmp_path / "d")
    result = runner.invoke(cli, ["run", "segmentation", "--data", str(root), "--backbone", "resnet34",
                                 "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "backbone 'resnet34'" in result.output and "work offline: efficientnet_lite0" in result.output
    assert not (tmp_path / "run").exists()
