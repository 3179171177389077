"""Builds examples/segmentation/coins/ (48 tiles to train on) and coins-test/ (12 more, held out for
tasks evaluate and predict): tiles of scikit-image's 'coins' photograph (Greek coins from Pompeii,
public domain, shipped in scikit-image) with masks segmented by scikit-image's classic watershed
recipe. Run from the repository root: python examples/segmentation/make_coins.py
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters, segmentation

OUT = Path(__file__).resolve().parent / "coins"
TEST = Path(__file__).resolve().parent / "coins-test"
TILE = 128


def coin_mask(image: np.ndarray) -> np.ndarray:
    elevation = filters.sobel(image)
    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    regions = segmentation.watershed(elevation, markers)
    coins = ndimage.binary_fill_holes(regions == 2)
    return ndimage.binary_opening(coins, iterations=2)


def main() -> None:
    image = data.coins()
    mask = coin_mask(image)
    rng = np.random.default_rng(0)
    height, width = image.shape
    for index in range(48 + 12):
        folder = OUT if index < 48 else TEST
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        y, x = rng.integers(0, height - TILE), rng.integers(0, width - TILE)
        tile, tile_mask = image[y:y + TILE, x:x + TILE], mask[y:y + TILE, x:x + TILE]
        turns = int(rng.integers(0, 4))
        tile, tile_mask = np.rot90(tile, turns), np.rot90(tile_mask, turns)
        if rng.random() < 0.5:
            tile, tile_mask = tile[:, ::-1], tile_mask[:, ::-1]
        # A warm, slightly noisy colour photo rather than a clean grey one.
        tint = np.array([1.0, 0.9, 0.75]) * rng.uniform(0.85, 1.1)
        rgb = np.clip(tile[..., None] * tint + rng.normal(0, 4, tile.shape + (3,)), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / "images" / f"coins_{index:02d}.png")
        Image.fromarray(tile_mask.astype(np.uint8)).save(folder / "masks" / f"coins_{index:02d}.png")
    for folder in (OUT, TEST):
        (folder / "classes.yaml").write_text("names: [background, coin]\ncolours: [[0, 0, 0], [255, 200, 0]]\n")


if __name__ == "__main__":
    main()
