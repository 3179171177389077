"""Builds examples/detection/shapes/: circles, squares and triangles painted on crops of scikit-image's
photographs (public domain), labelled twice with the same boxes: COCO JSON (train.json, val.json, test.json)
and the YOLO layout (dataset.yaml, labels/). Some images hold no shape at all (negatives).
Run from the repository root: python examples/detection/make_shapes.py
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

OUT = Path(__file__).resolve().parent / "shapes"
CATEGORIES = ["circle", "square", "triangle"]
PHOTOS = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(),
          np.stack([data.camera()] * 3, axis=-1), np.stack([data.moon()] * 3, axis=-1), data.immunohistochemistry()]


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    photo = PHOTOS[int(rng.integers(len(PHOTOS)))]
    side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2])))
    y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
    return Image.fromarray(photo[y:y + side, x:x + side]).resize((width, height))


def paint(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = box
    outline = tuple(max(0, c - 90) for c in colour)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=outline, width=2)
    elif shape == "square":
        draw.rectangle(box, fill=colour, outline=outline, width=2)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour, outline=outline, width=2)


def make_split(name: str, count: int, rng: np.random.Generator) -> None:
    (OUT / "images" / name).mkdir(parents=True, exist_ok=True)
    (OUT / "labels" / name).mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]}
    for index in range(count):
        width, height = (224, 224) if rng.random() < 0.6 else (256, 192)
        image = background(rng, width, height)
        draw = ImageDraw.Draw(image)
        file_name = f"{name}_{index:03d}.jpg"
        coco["images"].append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        lines, placed = [], []
        shapes = 0 if rng.random() < 0.08 else int(rng.integers(1, 5))
        for _ in range(shapes):
            for _attempt in range(20):
                side = int(rng.integers(22, 80))
                x1, y1 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
                box = (x1, y1, x1 + side, y1 + side)
                if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                    break
            else:
                continue
            placed.append(box)
            category = int(rng.integers(len(CATEGORIES)))
            paint(draw, CATEGORIES[category], box, tuple(int(c) for c in rng.integers(40, 256, 3)))
            x1, y1, x2, y2 = box[0], box[1], box[2] + 1, box[3] + 1
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index + 1,
                                        "category_id": category + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            lines.append(f"{category} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                         f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        image.save(OUT / "images" / name / file_name, quality=90)
        (OUT / "labels" / name / f"{name}_{index:03d}.txt").write_text("".join(f"{line}\n" for line in lines))
    (OUT / f"{name}.json").write_text(json.dumps(coco, indent=1) + "\n")


def main() -> None:
    rng = np.random.default_rng(0)
    make_split("train", 72, rng)
    make_split("val", 24, rng)
    make_split("test", 16, rng)  # held out: for tasks evaluate and predict, never trained or validated on
    (OUT / "dataset.yaml").write_text(
        "# YOLO layout: the same boxes as train.json / val.json / test.json\npath: .\ntrain: images/train\n"
        "val: images/val\ntest: images/test\n"
        "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(CATEGORIES))
    )


if __name__ == "__main__":
    main()
