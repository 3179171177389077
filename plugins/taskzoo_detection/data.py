"""Reading detection data: COCO JSON, the YOLO layout (images/ + labels/ + a names yaml), and plain
image folders for prediction. Both annotated formats become one `DetectionData`: absolute
``x1, y1, x2, y2`` pixel boxes, class indices into ``categories``, and crowd flags."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo import DataError, Finding
from taskzoo.helpers.tables import read_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
YAML_NAMES = ("dataset.yaml", "data.yaml")
NAMES_FILES = ("classes.txt", "obj.names", "names.txt")
# A box may stick out of its image by rounding before it counts as clipped.
CLIP_TOLERANCE = 1.0
EXIF_ORIENTATION = 0x0112


@dataclass
class DetectionData:
    """Images with their boxes. ``boxes[i]`` is an (n, 4) float array of ``x1, y1, x2, y2`` in
    pixels, ``labels[i]`` indices into ``categories``, ``crowd[i]`` COCO's iscrowd flags (crowd
    regions are left out of training and ignored by evaluation, as COCO's own tools do).
    ``category_ids`` are the data set's own ids for ``categories`` (COCO ids; YOLO class numbers)."""

    root: Path
    images: list[Path]
    sizes: list[tuple[int, int]]
    image_ids: list[int]
    categories: list[str]
    category_ids: list[int]
    boxes: list[np.ndarray] | None = None
    labels: list[np.ndarray] | None = None
    crowd: list[np.ndarray] | None = None
    val: DetectionData | None = None
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def annotated(self) -> bool:
        return self.boxes is not None

    def subset(self, indices: list[int]) -> DetectionData:
        pick = (lambda values: [values[i] for i in indices] if values is not None else None)  # noqa: E731
        return replace(self, images=pick(self.images), sizes=pick(self.sizes), image_ids=pick(self.image_ids),
                       boxes=pick(self.boxes), labels=pick(self.labels), crowd=pick(self.crowd), val=None)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # PIL refuses decompression bombs here (over MAX_IMAGE_PIXELS x2)
            width, height = image.size
            # EXIF orientations 5-8 turn the picture a quarter: read_rgb shows it turned, so boxes
            # (drawn on the turned picture by annotation tools) are checked against that size.
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({' '.join(str(error).split())})") from None


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # Phones store rotation in EXIF; annotation tools draw on the rotated picture.
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({' '.join(str(error).split())})") from None


class _Clipping:
    """Counts boxes clipped to their image, to report them once instead of once per box."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def note(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where

    def message(self) -> list[str]:
        if not self.count:
            return []
        return [f"{self.count} box(es) extended past their image and were clipped to it (first: {self.first})"]


def _clip(x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str,
          clipping: _Clipping) -> tuple[float, float, float, float]:
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if max(abs(a - b) for a, b in zip(clipped, (x1, y1, x2, y2))) > CLIP_TOLERANCE:
        clipping.note(where)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise DataError(
            f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2) has no area inside its "
            f"{width}x{height} image"
        )
    return clipped


# -- COCO -----------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _find_image(path: Path, file_name: str, images_dir: Path | None) -> Path | None:
    candidates = [images_dir / file_name] if images_dir else [path.parent / file_name, path.parent / "images" / file_name]
    return next((c for c in candidates if c.is_file()), None)


def read_coco(path: Path, images_dir: Path | None, *, known: list[str] | None = None,
              annotated: bool = True) -> DetectionData:
    """A COCO detection file: ``images``, ``annotations`` (bbox ``[x, y, width, height]``) and
    ``categories``. Images are looked up in ``images_dir``, else beside the file or in its images/."""
    document = _load_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DataError(f"{path}: expected a COCO object with an 'images' list (and 'annotations', 'categories')")
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"--images {images_dir}: no such folder")
    categories = document.get("categories")
    if annotated and (not isinstance(categories, list) or not categories):
        raise DataError(f"{path}: expected a non-empty 'categories' list of {{id, name}}")
    names: dict[int, str] = {}
    for index, category in enumerate(categories or []):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str):
            raise DataError(f"{path}: categories[{index}]: expected {{\"id\": integer, \"name\": text}}")
        if category["id"] in names:
            raise DataError(f"{path}: categories[{index}]: id {category['id']} is used twice")
        names[category["id"]] = category["name"]
    if len(set(names.values())) != len(names):
        raise DataError(f"{path}: two categories share a name; names must be unique")
    order = sorted(names)
    categories_out = [names[i] for i in order]
    index_of = {category_id: i for i, category_id in enumerate(order)}
    if known is not None:
        unknown = [n for n in categories_out if n not in known]
        if unknown:
            raise DataError(f"{path}: categor(ies) {', '.join(unknown)} are not among the model's: {', '.join(known)}")
        index_of = {category_id: known.index(names[category_id]) for category_id in order}

    images, sizes, ids = [], [], []
    position: dict[int, int] = {}
    for index, entry in enumerate(document["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not isinstance(entry.get("file_name"), str):
            raise DataError(f"{where}: expected {{\"id\": integer, \"file_name\": text, \"width\", \"height\"}}")
        if entry["id"] in position:
            raise DataError(f"{where}: image id {entry['id']} is used twice")
        if Path(entry["file_name"]).is_absolute() or ".." in Path(entry["file_name"]).parts:
            raise DataError(f"{where} (id {entry['id']}): file_name '{entry['file_name']}' leads out of the "
                            "images folder; give a path inside it")
        found = _find_image(path, entry["file_name"], images_dir)
        if found is None:
            place = images_dir or path.parent
            raise DataError(f"{where} (id {entry['id']}): file '{entry['file_name']}' not found in {place}"
                            + ("" if images_dir else "; give the image folder with --images"))
        width, height = image_size(found)
        if _number(entry.get("width")) and _number(entry.get("height")) and (entry["width"], entry["height"]) != (width, height):
            raise DataError(f"{where} (id {entry['id']}): says {entry['width']}x{entry['height']} but "
                            f"{found} is {width}x{height}")
        position[entry["id"]] = len(images)
        images.append(found)
        sizes.append((width, height))
        ids.append(entry["id"])
    if not images:
        raise DataError(f"{path}: 'images' is empty")

    data = DetectionData(root=path, images=images, sizes=sizes, image_ids=ids,
                         categories=list(known) if known is not None else categories_out,
                         category_ids=order if known is None else [], source="COCO JSON")
    if not annotated:
        return data
    annotations = document.get("annotations")
    if not isinstance(annotations, list):
        raise DataError(f"{path}: expected an 'annotations' list")
    boxes: list[list[tuple[float, ...]]] = [[] for _ in images]
    labels: list[list[int]] = [[] for _ in images]
    crowd: list[list[bool]] = [[] for _ in images]
    clipping = _Clipping()
    for index, entry in enumerate(annotations):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: annotations[{index}]: expected an object")
        where = f"{path}: annotations[{index}]" + (f" (id {entry['id']})" if "id" in entry else "")
        if entry.get("image_id") not in position:
            raise DataError(f"{where}: image_id {entry.get('image_id')!r} is not in 'images'")
        if entry.get("category_id") not in index_of:
            raise DataError(f"{where}: category_id {entry.get('category_id')!r} is not in 'categories' "
                            f"(ids {', '.join(map(str, order))})")
        bbox = entry.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise DataError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise DataError(f"{where}: bbox {bbox} has a negative width or height")
        image = position[entry["image_id"]]
        width, height = sizes[image]
        boxes[image].append(_clip(x, y, x + w, y + h, width, height, where, clipping))
        labels[image].append(index_of[entry["category_id"]])
        crowd[image].append(bool(entry.get("iscrowd", 0)))
    data.boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
    data.labels = [np.asarray(lab, dtype=np.int64) for lab in labels]
    data.crowd = [np.asarray(c, dtype=bool) for c in crowd]
    data.notes = clipping.message()
    return data


# -- YOLO -----------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def _yolo_names(path: Path, document: Any) -> list[str]:
    names = document.get("names") if isinstance(document, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: 'names' must map every class number 0-{len(names) - 1} to a name")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DataError(f"{path}: expected 'names:' with the class names (a list, or {{0: name, 1: name}})")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: two classes share a name in 'names'")
    if isinstance(document.get("nc"), int) and document["nc"] != len(names):
        raise DataError(f"{path}: nc is {document['nc']} but 'names' lists {len(names)} classes")
    return names


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _label_file(image: Path) -> Path:
    parts = list(image.parts)
    # Ultralytics' rule: the last 'images' folder in the path becomes 'labels'.
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _yolo_split(yaml_path: Path, root: Path, entry: Any, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        if not isinstance(item, str):
            raise DataError(f"{yaml_path}: '{key}' must be a folder or a .txt list of images, got {item!r}")
        location = (root / item)
        if location.is_dir():
            images.extend(_image_files(location))
        elif location.is_file() and location.suffix == ".txt":
            for number, line in enumerate(read_text(location).splitlines(), 1):
                if line.strip():
                    image = Path(line.strip())
                    image = image if image.is_absolute() else root / image
                    if not image.is_file():
                        raise DataError(f"{location}:{number}: image {line.strip()} not found")
                    images.append(image)
        else:
            raise DataError(f"{yaml_path}: {key}: {location} is neither a folder nor a .txt list of images")
    if not images:
        raise DataError(f"{yaml_path}: {key}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root / str(entry)}")
    return images


def _read_yolo_labels(images: list[Path], names: list[str], root: Path, known: list[str] | None) -> DetectionData:
    sizes, boxes, labels = [], [], []
    clipping = _Clipping()
    missing = 0
    for image in images:
        width, height = image_size(image)
        sizes.append((width, height))
        label_file = _label_file(image)
        rows: list[tuple[float, ...]] = []
        classes: list[int] = []
        if not label_file.is_file():
            missing += 1
        else:
            for number, line in enumerate(read_text(label_file, allow_empty=True).splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{label_file}:{number}"
                try:
                    values = [float(v) for v in fields]
                except ValueError:
                    raise DataError(f"{where}: expected 'class x_center y_center width height' numbers, got {line.strip()!r}") from None
                if not all(math.isfinite(v) for v in values):
                    raise DataError(f"{where}: expected finite numbers, got {line.strip()!r}")
                if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0) or not values[0].is_integer():
                    raise DataError(f"{where}: expected 'class x_center y_center width height' (class an integer), got {line.strip()!r}")
                number_of_class = int(values[0])
                if not 0 <= number_of_class < len(names):
                    raise DataError(f"{where}: class {number_of_class} is outside the names list (0-{len(names) - 1})")
                if len(values) == 5:
                    cx, cy, w, h = values[1:]
                    if w < 0 or h < 0:
                        raise DataError(f"{where}: negative width or height ({w:g}, {h:g})")
                    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                else:  # a segmentation polygon: its box is its extent
                    xs, ys = values[1::2], values[2::2]
                    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
                rows.append(_clip(x1 * width, y1 * height, x2 * width, y2 * height, width, height, where, clipping))
                classes.append(known.index(names[number_of_class]) if known is not None else number_of_class)
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 4))
        labels.append(np.asarray(classes, dtype=np.int64))
    notes = clipping.message()
    if missing:
        notes.append(f"{missing} image(s) have no label file: read as images with no objects")
    return DetectionData(root=root, images=images, sizes=sizes, image_ids=list(range(len(images))),
                         categories=list(known) if known is not None else names,
                         category_ids=list(range(len(names))) if known is None else [], boxes=boxes, labels=labels,
                         crowd=[np.zeros(len(b), dtype=bool) for b in boxes], notes=notes, source="YOLO")


def read_yolo(path: Path, *, role: str, known: list[str] | None = None) -> DetectionData:
    """A YOLO data set from its yaml (``path``, ``train``, ``val``, ``test``, ``names``) or from a
    folder holding images/ and labels/ with a classes.txt."""
    if path.is_dir():
        found = next((path / n for n in YAML_NAMES if (path / n).is_file()), None)
        if found is None:
            names_file = next((path / n for n in NAMES_FILES if (path / n).is_file()), None)
            if names_file is None or not (path / "images").is_dir():
                raise DataError(f"{path}: expected a detection data set: a COCO .json, a YOLO dataset.yaml, or a "
                                f"folder with images/, labels/ and {NAMES_FILES[0]}")
            names = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
            return _read_yolo_labels(_image_files(path / "images"), names, path, known)
        path = found
    document = _load_yaml(path)
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a YOLO data set mapping with 'train', 'val' and 'names'")
    names = _yolo_names(path, document)
    root = path.parent / str(document.get("path") or ".")
    if not root.is_dir():
        raise DataError(f"{path}: path {document.get('path')!r} is not a folder (relative to {path.parent})")
    wanted = {"train": ("train",), "val": ("val",), "test": ("test", "val")}[role]
    key = next((k for k in wanted if document.get(k)), None)
    if key is None:
        raise DataError(f"{path}: no '{wanted[0]}' entry")
    data = _read_yolo_labels(_yolo_split(path, root, document[key], key), names, path, known)
    data.source = f"YOLO ({key})"
    if role == "train" and document.get("val"):
        data.val = _read_yolo_labels(_yolo_split(path, root, document["val"], "val"), names, path, names)
        data.val.source = "YOLO (val)"
    return data


# -- Pascal VOC ----------------------------------------------------------------------------------

VOC_ANNOTATIONS = ("Annotations", "annotations")
VOC_IMAGES = ("JPEGImages", "images", "Images")


def _voc_folders(path: Path) -> tuple[Path, Path] | None:
    """(annotations folder, images folder) of a VOC-layout folder, or None when it is not one:
    ``Annotations/`` + ``JPEGImages/`` (VOCdevkit), ``annotations/`` + ``images/`` (Raccoon and most
    exports), or XML files beside their images (LabelImg's default)."""
    for name in VOC_ANNOTATIONS:
        if (path / name).is_dir() and any((path / name).glob("*.xml")):
            images = next((path / n for n in VOC_IMAGES if (path / n).is_dir()), path)
            return path / name, images
    if any(path.glob("*.xml")):
        return path, path
    return None


def _voc_image_set(path: Path, annotations: Path, role: str) -> list[Path]:
    """The annotation files of ``role``: ImageSets/Main/<split>.txt where VOCdevkit has it, else all."""
    sets = path / "ImageSets" / "Main"
    wanted = {"train": ("train", "trainval"), "val": ("val", "test"), "test": ("test", "val")}.get(role, ())
    for name in wanted:
        listing = sets / f"{name}.txt"
        if listing.is_file():
            ids = [line.split()[0] for line in read_text(listing).splitlines() if line.strip()]
            files = [annotations / f"{image_id}.xml" for image_id in ids]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise DataError(f"{listing}: lists '{missing[0].stem}', but {missing[0]} does not exist")
            return files
    return sorted(annotations.glob("*.xml"))


def _xml_text(element: Any, tag: str, where: str, *, required: bool = True) -> str | None:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        if required:
            raise DataError(f"{where}: <{tag}> is missing")
        return None
    return found.text.strip()


def _xml_number(element: Any, tag: str, where: str) -> float:
    text = _xml_text(element, tag, where)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: <{tag}> is {text!r}, expected a finite number")
    return value


def read_voc(path: Path, *, role: str, known: list[str] | None = None, with_val: bool = True) -> DetectionData:
    """Pascal VOC XML: one file per image with ``<filename>``, ``<size>`` and ``<object>``s of a
    ``<name>``, a ``<bndbox>`` (1-based ``xmin ymin xmax ymax``, read as detectron2 and the VOC tools
    do: x1 = xmin - 1) and ``<difficult>``. The image is ``<filename>`` in the images folder (a
    ``<path>`` from the annotator's machine is ignored); its size must match ``<size>``. Difficult
    objects, like COCO's crowd regions, are left out of training and ignored by evaluation."""
    import xml.etree.ElementTree as ElementTree

    folders = _voc_folders(path)
    if folders is None:
        raise DataError(f"{path}: no Pascal VOC annotations (*.xml in Annotations/, annotations/ or the folder)")
    annotations, images_dir = folders
    files = _voc_image_set(path, annotations, role)
    if not files:
        raise DataError(f"{annotations}: no .xml annotation files")
    parsed = []
    for file in files:
        try:
            root = ElementTree.fromstring(read_text(file))
        except ElementTree.ParseError as error:
            line, column = error.position
            raise DataError(f"{file}: line {line}, column {column + 1}: malformed XML ({str(error).split(':')[0]})") from None
        if root.tag != "annotation":
            raise DataError(f"{file}: expected a Pascal VOC <annotation>, got <{root.tag}>")
        parsed.append((file, root))
    names = sorted({(_xml_text(obj, "name", str(file)) or "") for file, root in parsed for obj in root.iter("object")})
    categories = list(known) if known is not None else names
    images, sizes, boxes, labels, difficult = [], [], [], [], []
    clipping = _Clipping()
    for file, root in parsed:
        file_name = _xml_text(root, "filename", str(file), required=False)
        candidates = ([images_dir / file_name] if file_name else []) + [
            images_dir / f"{file.stem}{suffix}" for suffix in sorted(IMAGE_SUFFIXES)]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DataError(f"{file}: image '{file_name or file.stem}' is not in {images_dir}")
        width, height = image_size(image)
        size = root.find("size")
        if size is not None:
            stated = tuple(int(_xml_number(size, tag, f"{file}: <size>")) for tag in ("width", "height"))
            if all(stated) and stated != (width, height):
                raise DataError(f"{file}: <size> says {stated[0]}x{stated[1]}, but {image} is {width}x{height}")
        rows, classes, hard = [], [], []
        for number, obj in enumerate(root.iter("object"), start=1):
            where = f"{file}: object {number}"
            name = _xml_text(obj, "name", where)
            if name not in categories:
                raise DataError(f"{where}: class '{name}' was never seen in training (known: {', '.join(categories)})")
            box = obj.find("bndbox")
            if box is None:
                raise DataError(f"{where}: <bndbox> is missing")
            x1, y1, x2, y2 = (_xml_number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
            if x2 < x1 or y2 < y1:
                raise DataError(f"{where}: xmax/ymax ({x2:g}, {y2:g}) below xmin/ymin ({x1:g}, {y1:g})")
            rows.append(_clip(x1 - 1, y1 - 1, x2, y2, width, height, where, clipping))
            classes.append(categories.index(name))
            hard.append((_xml_text(obj, "difficult", where, required=False) or "0") == "1")
        images.append(image)
        sizes.append((width, height))
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 4))
        labels.append(np.asarray(classes, dtype=np.int64))
        difficult.append(np.asarray(hard, dtype=bool))
    notes = clipping.message()
    hard_count = int(sum(int(d.sum()) for d in difficult))
    if hard_count:
        notes.append(f"{hard_count} object(s) marked difficult: left out of training, ignored by evaluation (as VOC's tools do)")
    data = DetectionData(root=path, images=images, sizes=sizes, image_ids=list(range(len(images))),
                         categories=categories, category_ids=list(range(len(categories))), boxes=boxes, labels=labels,
                         crowd=difficult, notes=notes, source="Pascal VOC")
    sets = path / "ImageSets" / "Main"
    if role == "train" and with_val and (sets / "val.txt").is_file() and (sets / "train.txt").is_file():
        data.val = read_voc(path, role="val", known=categories, with_val=False)
        data.source, data.val.source = "Pascal VOC (train)", "Pascal VOC (val)"
    return data


# -- entry points ---------------------------------------------------------------------------------


def read_dataset(path: Path, *, role: str, images_dir: Path | None = None, known: list[str] | None = None) -> DetectionData:
    """Read ``path`` for ``role`` (train, val, test, predict): a COCO .json, a YOLO .yaml or
    folder, or (for predict) a folder of images or one image."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".json":
        return read_coco(path, images_dir, known=known, annotated=role != "predict")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = read_yolo(path, role="test" if role == "predict" else role, known=known)
        return replace(data, boxes=None, labels=None, crowd=None) if role == "predict" else data
    if role == "predict" and not (path.is_dir() and _voc_folders(path) is not None):
        images = [path] if path.is_file() else _image_files(path)
        if not images:
            raise DataError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return DetectionData(root=path, images=images, sizes=[image_size(i) for i in images],
                             image_ids=list(range(len(images))), categories=list(known or []), category_ids=[],
                             source="images")
    if path.is_file():
        raise DataError(f"{path}: expected a COCO .json, a YOLO dataset .yaml, a YOLO folder or a Pascal VOC folder")
    if _voc_folders(path) is not None:
        data = read_voc(path, role=role, known=known)
        return replace(data, boxes=None, labels=None, crowd=None, val=None) if role == "predict" else data
    return read_yolo(path, role=role, known=known)


def check(data: DetectionData) -> list[Finding]:
    findings = [Finding("info", f"{data.root}: {len(data)} images ({data.source})")]
    if data.annotated:
        counts = np.bincount(np.concatenate(data.labels), minlength=len(data.categories)) if data.labels else []
        total = int(sum(len(b) for b in data.boxes))
        crowd = int(sum(int(c.sum()) for c in data.crowd))
        empty = sum(1 for b in data.boxes if len(b) == 0)
        findings.append(Finding("info", f"{total} boxes in {len(data.categories)} categories: "
                                + ", ".join(f"{n} {int(c)}" for n, c in zip(data.categories, counts))))
        if empty:
            findings.append(Finding("info", f"{empty} image(s) without boxes (kept as negatives)"))
        if crowd:
            findings.append(Finding("info", f"{crowd} crowd region(s): left out of training, ignored by evaluation"))
        if total:
            all_boxes = np.concatenate(data.boxes)
            sides = np.sqrt((all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1]))
            findings.append(Finding("info", f"box size (square root of area): {sides.min():.0f}-{sides.max():.0f} px, "
                                    f"median {np.median(sides):.0f}"))
        else:
            findings.append(Finding("error", f"{data.root}: no boxes at all; nothing to learn from"))
        absent = [n for n, c in zip(data.categories, counts) if c == 0]
        if absent and total:
            findings.append(Finding("warning", f"categor(ies) with no boxes: {', '.join(absent)}"))
    if data.val is not None:
        findings.append(Finding("info", f"validation: {len(data.val)} images ({data.val.source})"))
        findings.extend(Finding("warning", f"validation: {note}") for note in data.val.notes)
    findings.extend(Finding("warning", note) for note in data.notes)
    return findings
