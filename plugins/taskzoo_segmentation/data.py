"""Reading segmentation data sets: a folder with ``images/`` and ``masks/`` (matching stems), an
optional ``classes.yaml``, and optional ``train/`` and ``val/`` sub-folders of the same layout."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo import DataError, Finding

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}
# Colours for classes that classes.yaml gives none for: background black, then distinct hues.
DEFAULT_COLOURS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                   (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


@dataclass
class Classes:
    names: list[str]
    colours: list[tuple[int, int, int]]
    ignore_index: int | None = None
    from_file: bool = False


@dataclass
class SegmentationData:
    root: Path
    images: list[Path]
    masks: list[Path] | None
    classes: Classes
    sizes: list[tuple[int, int]]
    # Masks stored as 0/255 with two classes: 255 means class 1.
    binary_255: bool = False
    val: SegmentationData | None = None
    notes: list[str] = field(default_factory=list)
    pixel_counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int]) -> SegmentationData:
        return replace(
            self, images=[self.images[i] for i in indices],
            masks=[self.masks[i] for i in indices] if self.masks is not None else None,
            sizes=[self.sizes[i] for i in indices], val=None,
        )


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)  # PIL refuses decompression bombs here (over MAX_IMAGE_PIXELS x2)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({' '.join(str(error).split())})") from None


def read_classes(folder: Path) -> Classes | None:
    import yaml

    path = folder / "classes.yaml"
    if not path.exists():
        return None
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if isinstance(document, list):
        document = {"names": document}
    names = document.get("names") if isinstance(document, dict) else None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: expected 'names:' with a list of at least two class names (background first)")
    colours = document.get("colours", document.get("colors"))
    if colours is None:
        colours = DEFAULT_COLOURS[: len(names)] + [
            tuple(int(c) for c in np.random.default_rng(i).integers(0, 256, 3)) for i in range(len(DEFAULT_COLOURS), len(names))
        ]
    elif (not isinstance(colours, list) or len(colours) != len(names)
          or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)):
        raise DataError(f"{path}: 'colours' must list one [r, g, b] (0-255) per class name ({len(names)})")
    ignore = document.get("ignore_index")
    if ignore is not None and (not isinstance(ignore, int) or 0 <= ignore < len(names)):
        raise DataError(f"{path}: 'ignore_index' must be an integer outside the class ids 0-{len(names) - 1}, e.g. 255")
    return Classes(names=names, colours=[tuple(c) for c in colours], ignore_index=ignore, from_file=True)


def _files(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise DataError(f"{path}: two files share the stem '{path.stem}' ({files[path.stem].name}, {path.name})")
            files[path.stem] = path
    return files


def mask_array(path: Path, classes: Classes | None, binary_255: bool = False) -> np.ndarray:
    """A mask file as class ids (H x W, int64): palette and grey masks as they are, RGB through the
    palette of classes.yaml."""
    image = _open(path)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if classes is None or not classes.from_file:
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                values = rgb[..., 0].astype(np.int64)
                return np.where(values == 255, 1, values) if binary_255 else values
            raise DataError(f"{path}: an RGB mask needs 'colours' in classes.yaml to map colours to classes")
        ids = np.full(rgb.shape[:2], -1, dtype=np.int64)
        for index, colour in enumerate(classes.colours):
            ids[(rgb == np.array(colour, dtype=rgb.dtype)).all(axis=-1)] = index
        if (ids < 0).any():
            y, x = map(int, np.argwhere(ids < 0)[0])
            raise DataError(
                f"{path}: colour {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y} is not in the palette of classes.yaml"
            )
        return ids
    values = np.asarray(image.convert("L") if image.mode in ("1", "LA") else image).astype(np.int64)
    if values.ndim != 2:
        raise DataError(f"{path}: expected a single-channel mask of class ids, got mode {image.mode}")
    return np.where(values == 255, 1, values) if binary_255 else values


def read_dataset(path: Path, *, role: str, known_classes: list[str] | None = None) -> SegmentationData:
    """Read a data-set folder (or, for ``predict``, a folder of images or one image)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such folder")
    if role == "predict":
        return _read_images_only(path)
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder with images/ and masks/ (and optionally classes.yaml)")
    if (path / "train").is_dir() and not (path / "images").is_dir():
        train = _read_pairs(path / "train", read_classes(path) or read_classes(path / "train"), known_classes)
        if (path / "val").is_dir():
            train.val = _read_pairs(path / "val", train.classes if train.classes.from_file else None, train.classes.names)
        return train
    return _read_pairs(path, read_classes(path), known_classes)


def _read_images_only(path: Path) -> SegmentationData:
    folder = path / "images" if (path / "images").is_dir() else path
    if path.is_file():
        images = [path]
    else:
        images = list(_files(folder, IMAGE_SUFFIXES).values())
    if not images:
        raise DataError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    sizes = [_open(image).size for image in images]
    return SegmentationData(root=path, images=images, masks=None, classes=Classes(["?"], [(0, 0, 0)]), sizes=sizes)


def _read_pairs(folder: Path, classes: Classes | None, known_classes: list[str] | None) -> SegmentationData:
    for part in ("images", "masks"):
        if not (folder / part).is_dir():
            raise DataError(f"{folder}: no {part}/ folder; expected images/ and masks/ with matching file names")
    images, masks = _files(folder / "images", IMAGE_SUFFIXES), _files(folder / "masks", MASK_SUFFIXES)
    for stem, mask in masks.items():
        if stem not in images:
            raise DataError(f"{mask}: mask without an image (no images/{stem}.*)")
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"{image}: image without a mask (no masks/{stem}.png)")
    if not images:
        raise DataError(f"{folder / 'images'}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    stems = sorted(images)
    sizes, arrays = [], []
    for stem in stems:
        image, mask = _open(images[stem]), _open(masks[stem])
        if image.size != mask.size:
            raise DataError(
                f"{masks[stem]}: mask is {mask.size[0]}x{mask.size[1]} but its image {images[stem].name} is "
                f"{image.size[0]}x{image.size[1]}"
            )
        sizes.append(image.size)
        arrays.append(mask_array(masks[stem], classes))
    values = np.unique(np.concatenate([np.unique(a) for a in arrays]))
    notes = []
    binary_255 = False
    ignore = classes.ignore_index if classes else None
    ids = [int(v) for v in values if v != ignore]
    if set(ids) <= {0, 255} and 255 in ids and (classes is None or len(classes.names) == 2):
        binary_255 = True
        notes.append("masks hold 0 and 255: read as two classes, 255 = class 1")
        ids = [0 if v == 0 else 1 for v in ids]
    if classes is None:
        count = max(max(ids) + 1, 2)
        names = known_classes or ["background"] + [f"class_{i}" for i in range(1, count)]
        classes = Classes(names=list(names), colours=DEFAULT_COLOURS[: len(names)] + [(128, 128, 128)] * max(0, len(names) - len(DEFAULT_COLOURS)))
    limit = len(known_classes or classes.names)
    for stem, array in zip(stems, arrays):
        array = np.where(array == 255, 1, array) if binary_255 else array
        bad = array[(array >= limit) & (array != (ignore if ignore is not None else -1))]
        if bad.size:
            source = "classes.yaml" if classes.from_file else ("the trained model's classes" if known_classes else "the classes")
            raise DataError(
                f"{masks[stem]}: class id {int(bad[0])} is outside {source} (ids 0-{limit - 1}"
                + (f", ignore index {ignore}" if ignore is not None else "") + ")"
            )
    counts = np.bincount(np.concatenate([np.where(a == 255, 1, a).ravel() if binary_255 else a.ravel() for a in arrays]).clip(0, limit), minlength=limit + 1)
    return SegmentationData(
        root=folder, images=[images[s] for s in stems], masks=[masks[s] for s in stems], classes=classes,
        sizes=sizes, binary_255=binary_255, notes=notes, pixel_counts=[int(c) for c in counts[:limit]],
    )


def check(data: SegmentationData) -> list[Finding]:
    findings = [Finding("info", f"{data.root}: {len(data)} images" + (
        f" with masks; {len(data.classes.names)} classes: {', '.join(data.classes.names)}" if data.masks else ""))]
    if data.val is not None:
        findings.append(Finding("info", f"validation: {data.val.root}, {len(data.val)} images"))
    widths = sorted({w for w, _ in data.sizes})
    heights = sorted({h for _, h in data.sizes})
    findings.append(Finding("info", f"image sizes: width {widths[0]}-{widths[-1]}, height {heights[0]}-{heights[-1]}"))
    if data.pixel_counts:
        total = sum(data.pixel_counts) or 1
        shares = ", ".join(f"{name} {count / total:.1%}" for name, count in zip(data.classes.names, data.pixel_counts))
        findings.append(Finding("info", f"pixel shares: {shares}"))
        absent = [name for name, count in zip(data.classes.names, data.pixel_counts) if count == 0]
        if absent:
            findings.append(Finding("warning", f"class(es) never present in the masks: {', '.join(absent)}"))
    for note in data.notes:
        findings.append(Finding("warning", note))
    return findings


def image_array(path: Path) -> np.ndarray:
    return np.asarray(_open(path).convert("RGB"))


def describe(data: SegmentationData) -> dict[str, Any]:
    return {"images": len(data), "classes": data.classes.names}
