"""Reading ``--items``: what each item is (its texts and, optionally, a picture), including items
nobody has interacted with yet. The content encoders (`taskzoo_recommendation.content`) turn
these into vectors; this module only reads and checks the file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo import DataError, Finding
from taskzoo.helpers.tables import TABLE_FORMATS, find_column, read_table
from taskzoo_recommendation.data import ITEM_COLUMNS, plain_column_name, read_frame

# An items file often names its id column just "id".
CATALOGUE_ID_COLUMNS = (*ITEM_COLUMNS, "id")
IMAGE_COLUMNS = ("image", "image_path", "image_file", "photo", "picture", "thumbnail", "poster", "cover", "img")
# Text columns are taken in this order when present; other text columns follow in file order.
TEXT_COLUMNS_FIRST = ("title", "name", "headline", "description", "summary", "text", "genres", "genre", "category",
                      "categories", "tags", "keywords", "brand", "author", "artist")


@dataclass
class Catalogue:
    """Items as the user described them, one per row of ``--items`` (rows are 1-based data rows)."""

    path: Path
    ids: list[str]
    texts: list[str]
    images: list[Path | None]  # resolved paths; None where the row has no image
    id_column: str
    text_columns: list[str]
    image_column: str | None
    rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> Catalogue:
        chosen = np.flatnonzero(keep)
        return Catalogue(self.path, [self.ids[i] for i in chosen], [self.texts[i] for i in chosen],
                         [self.images[i] for i in chosen], self.id_column, self.text_columns, self.image_column,
                         [self.rows[i] for i in chosen])


def _frame(path: Path) -> Any:
    if path.suffix.lower() not in TABLE_FORMATS:  # RecBole's .item, MovieLens-style text: sniffed as the interactions are
        frame, _ = read_frame(path, CATALOGUE_ID_COLUMNS)
        return frame.astype(str).replace({"nan": ""})
    frame = read_table(path)  # CSV, TSV, JSON Lines and Parquet, with the shared reader's errors
    frame.columns = [plain_column_name(c) for c in frame.columns]
    # JSON Lines and Parquet cells may be lists (genres, tags): one text each.
    return frame.apply(lambda column: column.map(_cell_text))


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def read_catalogue(path: Path, *, item_column: str | None = None, text_columns: Sequence[str] | None = None,
                   image_column: str | None = None) -> Catalogue:
    """Read an items file (CSV, TSV, JSON Lines or Parquet); a `DataError` names the file, row and
    column at fault. Text columns default to every column of text other than the id and image."""
    path = Path(path)
    frame = _frame(path)
    columns = list(frame.columns)
    id_column = find_column(path, columns, item_column, CATALOGUE_ID_COLUMNS, "item", "--item-column")
    if id_column is None:
        raise DataError(f"{path}: no item id column among {', '.join(columns)}; expected one of item_id, id, movieId, "
                        "product_id... or name it with --item-column")
    image = find_column(path, columns, image_column, IMAGE_COLUMNS, "image", "--image-column")
    if text_columns:
        missing = [c for c in text_columns if c not in columns]
        if missing:
            raise DataError(f"{path}: no column '{missing[0]}' (from --text-columns); columns are: {', '.join(columns)}")
        chosen = list(text_columns)
    else:
        chosen = _text_columns(frame, [id_column, image])
        if not chosen:
            raise DataError(f"{path}: no text column besides the id '{id_column}'"
                            + (f" and the image '{image}'" if image else "")
                            + "; items need a title or description (name them with --text-columns)")
    if id_column in chosen:
        raise DataError(f"{path}: --text-columns names the item id column '{id_column}'; give the columns that "
                        "describe items")
    ids = frame[id_column].astype(str).str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise DataError(f"{path}: row {empty[0] + 1}, column '{id_column}': empty item id; every item needs one")
    repeated = ids.duplicated(keep="first").to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero((ids == ids.iloc[row]).to_numpy())[0])
        raise DataError(f"{path}: row {row + 1}, column '{id_column}': item '{ids.iloc[row]}' is already described on "
                        f"row {first + 1}; give each item one row")
    texts = [". ".join(part.strip() for part in parts if part.strip())
             for parts in zip(*(frame[c].astype(str).tolist() for c in chosen))]
    images: list[Path | None] = [None] * len(frame)
    if image is not None:
        folder = path.parent
        images = [(folder / cell.strip()) if cell.strip() else None for cell in frame[image].astype(str).tolist()]
    return Catalogue(path, ids.tolist(), texts, images, id_column, chosen, image, list(range(1, len(frame) + 1)))


def _text_columns(frame: Any, exclude: Sequence[str | None]) -> list[str]:
    """Columns holding words: not ids, not numbers, not file names."""
    import pandas as pd

    candidates = [c for c in frame.columns if c not in exclude]
    texts = []
    for column in candidates:
        values = frame[column].astype(str).str.strip()
        filled = values[values != ""]
        if filled.empty or pd.to_numeric(filled, errors="coerce").notna().mean() > 0.5:
            continue
        texts.append(column)
    first = {name: position for position, name in enumerate(TEXT_COLUMNS_FIRST)}
    return sorted(texts, key=lambda c: (first.get(c.lower(), len(first)), list(frame.columns).index(c)))


def catalogue_findings(catalogue: Catalogue, interaction_items: Sequence[str]) -> list[Finding]:
    """What `tasks check` says about ``--items`` beside the interactions: items nobody has
    interacted with (cold, ranked from content), interactions with items the file does not
    describe, empty texts, and images that are missing or do not decode."""
    path = catalogue.path
    described = set(catalogue.ids)
    interacted = set(str(i) for i in interaction_items)
    cold = [i for i in catalogue.ids if i not in interacted]
    undescribed = [i for i in interaction_items if str(i) not in described]
    image_note = f", images from '{catalogue.image_column}'" if catalogue.image_column else ", no image column"
    findings = [Finding("info", f"{path}: {len(catalogue)} items; id column '{catalogue.id_column}', text from "
                        f"{', '.join(repr(c) for c in catalogue.text_columns)}{image_note}",
                        {"items": len(catalogue), "cold_items": len(cold)})]
    if cold:
        findings.append(Finding("info", f"{path}: {len(cold)} item(s) have no interactions (cold, ranked from their "
                                f"content), e.g. {', '.join(cold[:3])}"))
    if undescribed:
        findings.append(Finding("warning", f"{path}: {len(undescribed)} item(s) in the interactions are not described "
                                f"in it, e.g. '{undescribed[0]}'; they are ranked from their interactions only"))
    for row, item, text in zip(catalogue.rows, catalogue.ids, catalogue.texts):
        if not text:
            findings.append(Finding("warning", f"{path}: row {row}: item '{item}' has no text in "
                                    f"{', '.join(catalogue.text_columns)}"))
    for row, item, image in zip(catalogue.rows, catalogue.ids, catalogue.images):
        problem = image_problem(image)
        if problem:
            findings.append(Finding("warning", f"{path}: row {row}, column '{catalogue.image_column}': item '{item}': "
                                    f"{problem}"))
    return findings


def image_problem(image: Path | None) -> str | None:
    """Why the image cannot be used (one phrase), or None when it decodes (or there is none)."""
    if image is None:
        return None
    if not image.is_file():
        return f"image {image} does not exist"
    from PIL import Image

    try:
        with Image.open(image) as opened:
            opened.verify()
    except Exception as error:  # PIL raises many types for broken files
        return f"image {image} does not decode ({type(error).__name__})"
    return None
