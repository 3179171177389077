"""Synthetic street scenes for the segmentation recipe study: 11 classes in CamVid's roles (sky,
building, pole, road, pavement, tree, sign, fence, car, pedestrian, cyclist) at CamVid's 360 x 480,
drawn with textures and noise so colour alone does not give a class, thin poles and small people
among large road and sky. Seeded; written as images/ + masks/ (grey class ids) + classes.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "cyclist"]
HEIGHT, WIDTH = 360, 480


def _colour(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 40) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def scene(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    mask = Image.new("L", (WIDTH, HEIGHT))
    paint, label = ImageDraw.Draw(image), ImageDraw.Draw(mask)

    def draw(kind: str, shape: str, box: list, fill: tuple[int, int, int]) -> None:
        getattr(paint, shape)(box, fill=fill)
        getattr(label, shape)(box, fill=CLASSES.index(kind))

    horizon = int(rng.integers(150, 200))
    draw("sky", "rectangle", [0, 0, WIDTH, horizon], _colour(rng, (150, 180, 220)))
    x = 0
    while x < WIDTH:  # a skyline of buildings down to the horizon
        width = int(rng.integers(40, 120))
        top = int(rng.integers(20, horizon - 30))
        draw("building", "rectangle", [x, top, x + width, horizon + 20], _colour(rng, (140, 120, 110), 60))
        for wy in range(top + 8, horizon, 18):  # windows, in the building's class
            for wx in range(x + 6, x + width - 10, 16):
                paint.rectangle([wx, wy, wx + 7, wy + 9], fill=_colour(rng, (90, 100, 120), 30))
        x += width
    for _ in range(int(rng.integers(1, 4))):  # trees over the buildings
        cx, cy, r = int(rng.integers(0, WIDTH)), int(rng.integers(horizon - 80, horizon)), int(rng.integers(25, 60))
        draw("tree", "ellipse", [cx - r, cy - r, cx + r, cy + r], _colour(rng, (60, 120, 50), 30))
    road_top = horizon + 20
    draw("pavement", "rectangle", [0, road_top, WIDTH, HEIGHT], _colour(rng, (170, 165, 150), 25))
    left, right = int(rng.integers(140, 200)), int(rng.integers(280, 340))
    draw("road", "polygon", [(left, road_top), (right, road_top), (WIDTH + 60, HEIGHT), (-60, HEIGHT)],
         _colour(rng, (90, 90, 95), 20))
    for y in range(road_top + 10, HEIGHT, 30):  # lane marks belong to the road
        paint.rectangle([WIDTH // 2 - 2, y, WIDTH // 2 + 2, y + 12], fill=(230, 230, 230))
    if rng.random() < 0.7:
        y = road_top - int(rng.integers(10, 25))
        fx = int(rng.integers(0, WIDTH // 2))
        draw("fence", "rectangle", [fx, y, fx + int(rng.integers(80, 200)), road_top + 5], _colour(rng, (120, 90, 60), 30))
    for _ in range(int(rng.integers(1, 4))):  # thin poles with signs
        px = int(rng.choice([rng.integers(10, left - 20), rng.integers(right + 20, WIDTH - 10)]))
        top = int(rng.integers(horizon - 110, horizon - 30))
        draw("pole", "rectangle", [px, top, px + int(rng.integers(3, 6)), road_top + 40], _colour(rng, (70, 70, 70), 20))
        if rng.random() < 0.6:
            draw("sign", "rectangle", [px - 10, top - 18, px + 14, top + 2], _colour(rng, (200, 40, 40), 50))
    for _ in range(int(rng.integers(1, 4))):  # cars on the road, nearer is larger
        y = int(rng.integers(road_top + 10, HEIGHT - 30))
        size = 0.4 + (y - road_top) / (HEIGHT - road_top)
        w, h = int(90 * size), int(40 * size)
        cx = int(rng.integers(left - 40, right + 40))
        draw("car", "rectangle", [cx - w // 2, y - h, cx + w // 2, y], _colour(rng, (60, 60, 160), 90))
        paint.rectangle([cx - w // 3, y - h + 4, cx + w // 3, y - h // 2], fill=_colour(rng, (40, 50, 60), 15))
    for _ in range(int(rng.integers(1, 5))):  # people on the pavement
        x = int(rng.choice([rng.integers(5, max(6, left - 40)), rng.integers(min(right + 40, WIDTH - 6), WIDTH - 5)]))
        y = int(rng.integers(road_top + 20, HEIGHT - 5))
        h = int(30 + 40 * (y - road_top) / (HEIGHT - road_top))
        draw("pedestrian", "ellipse", [x - h // 6, y - h, x + h // 6, y], _colour(rng, (150, 90, 120), 70))
    if rng.random() < 0.5:  # a cyclist on the road
        y = int(rng.integers(road_top + 30, HEIGHT - 10))
        x = int(rng.integers(left, right))
        draw("cyclist", "polygon", [(x, y - 45), (x + 12, y - 20), (x + 25, y), (x - 25, y), (x - 12, y - 20)],
             _colour(rng, (200, 160, 40), 50))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8))).astype(np.int16)
    pixels = pixels + rng.normal(0, 12, pixels.shape).astype(np.int16)  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), mask


def write_scenes(folder: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for number in range(count):
        image, mask = scene(rng)
        image.save(folder / "images" / f"scene_{number:03d}.png")
        mask.save(folder / "masks" / f"scene_{number:03d}.png")
    (folder / "classes.yaml").write_text(f"names: [{', '.join(CLASSES)}]\n", encoding="utf-8")
    return folder
