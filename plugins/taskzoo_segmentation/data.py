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


def read_dataset(path: Path, *, role: str, known_classes: list[str] | None = None,
                 images_dir: Path | None = None) -> SegmentationData:
    """Read a data-set folder or COCO JSON (or, for ``predict``, a folder of images or one image)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such folder")
    if path.suffix.lower() == ".json" and role != "predict":
        return read_coco_masks(path, images_dir, known_classes=known_classes)
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


# -- COCO polygons and RLE ----------------------------------------------------------------------------


def _coco_image(json_path: Path, file_name: str, images_dir: Path | None) -> Path | None:
    candidates = ([images_dir / file_name] if images_dir else
                  [json_path.parent / file_name, json_path.parent / "images" / file_name])
    return next((c for c in candidates if c.is_file()), None)


def read_coco_masks(path: Path, images_dir: Path | None, *, known_classes: list[str] | None = None) -> SegmentationData:
    """COCO instance annotations (CVAT, Label Studio, Roboflow exports) as class masks: class 0 is
    background, then the categories in the order of their ids (named as in the file). Each
    annotation's polygons or RLE are rasterised by pycocotools; where annotations overlap, the
    smaller one is drawn last and wins, so an object inside a larger one stays visible. The
    masks are written once, as PNG files of class ids, into taskzoo's cache."""
    import hashlib
    import json

    from pycocotools import mask as coco_mask

    from taskzoo.helpers.tables import read_text
    from taskzoo.storage import cache_root

    text = read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in ("images", "annotations",
                                                                                                 "categories")):
        raise DataError(f"{path}: expected COCO JSON with 'images', 'annotations' and 'categories' lists")
    categories = sorted(document["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not category.get("name"):
            raise DataError(f"{path}: categories[{index}]: expected an integer 'id' and a 'name'")
    names = [str(c["name"]) for c in categories]
    if known_classes is not None:
        unknown = [n for n in names if n not in known_classes]
        if unknown:
            raise DataError(f"{path}: category '{unknown[0]}' was never seen in training (known: {', '.join(known_classes[1:])})")
        class_names = list(known_classes)
    else:
        if "background" in names:
            raise DataError(f"{path}: a category is named 'background'; class 0 is the background of every mask")
        class_names = ["background", *names]
    class_of = {int(c["id"]): class_names.index(str(c["name"])) for c in categories}
    images: dict[int, tuple[Path, int, int]] = {}
    for index, entry in enumerate(document["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not entry.get("file_name"):
            raise DataError(f"{where}: expected an integer 'id' and a 'file_name'")
        image = _coco_image(path, str(entry["file_name"]), images_dir)
        if image is None:
            raise DataError(f"{where}: image '{entry['file_name']}' is not in {images_dir or path.parent}")
        width, height = _open(image).size
        stated = (entry.get("width"), entry.get("height"))
        if all(isinstance(v, int) for v in stated) and stated != (width, height):
            raise DataError(f"{where}: width/height {stated[0]}x{stated[1]}, but {image} is {width}x{height}")
        images[int(entry["id"])] = (image, width, height)
    if not images:
        raise DataError(f"{path}: no images")
    shapes: dict[int, list[tuple[float, int, Any]]] = {image_id: [] for image_id in images}
    for index, annotation in enumerate(document["annotations"]):
        where = f"{path}: annotations[{index}]" + (f" (id {annotation.get('id')})" if isinstance(annotation, dict) and
                                                     "id" in annotation else "")
        if not isinstance(annotation, dict):
            raise DataError(f"{where}: expected an object")
        if annotation.get("image_id") not in images:
            raise DataError(f"{where}: image_id {annotation.get('image_id')!r} is not in 'images'")
        if annotation.get("category_id") not in class_of:
            raise DataError(f"{where}: category_id {annotation.get('category_id')!r} is not in 'categories'")
        _, width, height = images[annotation["image_id"]]
        segmentation = annotation.get("segmentation")
        try:
            if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
                if any(len(polygon) < 6 or len(polygon) % 2 for polygon in segmentation):
                    raise DataError(f"{where}: a polygon needs at least three x, y points")
                rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
                if list(segmentation["size"]) != [height, width]:
                    raise DataError(f"{where}: RLE size {segmentation['size']} is not the image's [{height}, {width}]")
                rle = (coco_mask.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list)
                       else segmentation)
            else:
                raise DataError(f"{where}: 'segmentation' must be a list of polygons or an RLE with counts and size")
            area = float(coco_mask.area(rle))
        except DataError:
            raise
        except Exception as error:  # pycocotools raises TypeError/ValueError for malformed shapes
            raise DataError(f"{where}: unreadable segmentation ({' '.join(str(error).split())})") from None
        shapes[annotation["image_id"]].append((area, class_of[annotation["category_id"]], rle))
    key = hashlib.sha256(text.encode() + str(images_dir).encode() + "|".join(class_names).encode()).hexdigest()[:20]
    folder = cache_root() / "coco-masks" / key
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    ordered = sorted(images)
    masks, counts = [], np.zeros(len(class_names), dtype=np.int64)
    for image_id in ordered:
        image, width, height = images[image_id]
        target = folder / f"{image_id}.png"
        mask = np.zeros((height, width), dtype=np.uint8)
        for _, class_id, rle in sorted(shapes[image_id], key=lambda shape: -shape[0]):  # larger first, smaller on top
            mask[coco_mask.decode(rle).astype(bool)] = class_id
        if not target.exists():
            Image.fromarray(mask, mode="L").save(target)
        counts += np.bincount(mask.ravel(), minlength=len(class_names))[: len(class_names)]
        masks.append(target)
    colours = DEFAULT_COLOURS[: len(class_names)] + [(128, 128, 128)] * max(0, len(class_names) - len(DEFAULT_COLOURS))
    return SegmentationData(root=path, images=[images[i][0] for i in ordered], masks=masks,
                            classes=Classes(class_names, colours), sizes=[images[i][1:] for i in ordered],
                            notes=[], pixel_counts=[int(c) for c in counts])


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
