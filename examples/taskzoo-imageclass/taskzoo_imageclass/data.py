"""Reading image folders: ``DATA/<class>/*.png`` for training and evaluation, any image files for
prediction. Every image is opened once while reading, so a broken file stops the command with
its name before any training starts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from taskzoo import DataError, Finding

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSet:
    """Image paths and, for labelled data, each image's class id into ``classes``."""

    root: Path
    images: tuple[Path, ...]
    classes: tuple[str, ...]
    labels: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        labels = None if self.labels is None else tuple(self.labels[i] for i in indices)
        return ImageSet(self.root, tuple(self.images[i] for i in indices), self.classes, labels)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith(".")


def _verify(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # reads the whole file without decoding pixels: cheap, catches truncation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not a readable image ({' '.join(str(error).split())})") from None


def read_labelled(path: Path, known: Sequence[str] | None = None) -> ImageSet:
    """A folder of class folders. ``known``: the classes of a trained model (for val/test data)."""
    if not path.exists():
        raise DataError(f"{path}: no such folder; expected a folder with one sub-folder of images per class")
    if not path.is_dir():
        raise DataError(f"{path}: is a file; expected a folder with one sub-folder of images per class")
    loose = sorted(p.name for p in path.iterdir() if _is_image(p))
    if loose:
        raise DataError(f"{path}: images directly in the folder (e.g. {loose[0]}); put each image in a "
                        f"sub-folder named after its class")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path}: no class sub-folders; expected e.g. {path}/cat/1.png and {path}/dog/2.png")
    classes = tuple(folder.name for folder in folders)
    if known is None and len(classes) < 2:
        raise DataError(f"{path}: only one class ('{classes[0]}'); a classifier needs at least two class sub-folders")
    if known is not None:
        unknown = [name for name in classes if name not in known]
        if unknown:
            raise DataError(f"{path}: class '{unknown[0]}' is not one the model knows ({', '.join(known)})")
        classes = tuple(known)
    images: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        found = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not found:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(SUFFIXES)})")
        for image in found:
            _verify(image)
        images += found
        labels += [classes.index(folder.name)] * len(found)
    return ImageSet(path, tuple(images), classes, tuple(labels))


def read_unlabelled(paths: Sequence[Path], classes: Sequence[str]) -> ImageSet:
    """Image files, or folders searched for image files (class sub-folders included), to predict."""
    images: list[Path] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such image or folder")
        found = sorted(p for p in path.rglob("*") if _is_image(p)) if path.is_dir() else [path]
        if not found:
            raise DataError(f"{path}: no images in this folder ({', '.join(SUFFIXES)})")
        for image in found:
            _verify(image)
        images += found
    return ImageSet(paths[0] if paths else Path("."), tuple(images), tuple(classes))


def check(data: ImageSet) -> list[Finding]:
    """One info line with the class counts; a warning for classes too small to learn from."""
    if data.labels is None:
        return [Finding("info", f"{data.root}: {len(data)} images")]
    counts = Counter(data.labels)
    summary = ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(data.classes))
    findings = [Finding("info", f"{data.root}: {len(data)} images in {len(data.classes)} classes ({summary})",
                        {"classes": {name: counts.get(i, 0) for i, name in enumerate(data.classes)}})]
    small = [name for i, name in enumerate(data.classes) if 0 < counts.get(i, 0) < 5]
    if small:
        findings.append(Finding("warning", f"{data.root}: classes with fewer than 5 images: {', '.join(small)}"))
    return findings
