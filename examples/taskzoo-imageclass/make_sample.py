"""Builds taskzoo_imageclass/sample/: 48 x 48 crops of scikit-image's 'coins' photograph (public
domain), sorted into coin/ (a coin in the middle) and background/ (no coin in the middle): train/
(12 of each), test/ (4 of each), and two data sets the task must refuse: bad_one_class/ (a single
class) and bad_broken_image/ (a file that is not an image). Run: timeout 60 python make_sample.py
(needs scikit-image; deterministic, a second or two).
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters, segmentation

OUT = Path(__file__).resolve().parent / "taskzoo_imageclass" / "sample"
SIZE = 48
COUNTS = {"train": 12, "test": 4}
# The coins lie so close together that no 48 px window is nearly coin-free (the emptiest still
# holds ~9% coin), so a "background" crop is one whose middle has no coin and that is mostly
# empty around it; a strict share like < 8% is never met and the search would never end.
BACKGROUND_SHARE = 0.25
CENTRE = 8  # half-side of the middle square that decides the label


def main() -> None:
    if OUT.exists():  # start clean so that a change of counts leaves no stale crops behind
        shutil.rmtree(OUT)
    image = data.coins()
    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30], markers[image > 150] = 1, 2
    coins = ndimage.binary_fill_holes(segmentation.watershed(filters.sobel(image), markers) == 2)
    rng = np.random.default_rng(0)
    height, width = image.shape
    seen: set[tuple[int, int]] = set()
    for part, wanted in COUNTS.items():
        counts = {"coin": 0, "background": 0}
        for _ in range(100_000):  # bounded: give up loudly instead of spinning forever
            if min(counts.values()) >= wanted:
                break
            y, x = int(rng.integers(0, height - SIZE)), int(rng.integers(0, width - SIZE))
            share = coins[y:y + SIZE, x:x + SIZE].mean()
            middle = coins[y + SIZE // 2 - CENTRE:y + SIZE // 2 + CENTRE, x + SIZE // 2 - CENTRE:x + SIZE // 2 + CENTRE]
            label = ("coin" if middle.all() and share > 0.5
                     else "background" if not middle.any() and share < BACKGROUND_SHARE else None)
            if label is None or counts[label] >= wanted or (y // 8, x // 8) in seen:
                continue
            seen.add((y // 8, x // 8))
            crop = np.repeat(image[y:y + SIZE, x:x + SIZE, None], 3, axis=2)
            folder = OUT / part / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(folder / f"{label}_{counts[label]:02d}.png")
            counts[label] += 1
        if min(counts.values()) < wanted:
            raise SystemExit(f"{part}: found only {counts} crops of {SIZE}px; loosen the thresholds")
    one_class = OUT / "bad_one_class" / "coin"
    one_class.mkdir(parents=True, exist_ok=True)
    broken = OUT / "bad_broken_image"
    for label in ("coin", "background"):
        (broken / label).mkdir(parents=True, exist_ok=True)
        for path in sorted((OUT / "train" / label).glob("*.png"))[:2]:
            (broken / label / path.name).write_bytes(path.read_bytes())
            if label == "coin":
                (one_class / path.name).write_bytes(path.read_bytes())
    (broken / "coin" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")


if __name__ == "__main__":
    main()
