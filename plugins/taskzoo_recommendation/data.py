"""Reading interaction logs (who read, bought or played what), mapping ids to matrix rows and
columns, and holding interactions out for validation. Everything is vectorised (pandas, numpy),
so a file of a few million interactions loads in seconds."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo import DataError, Finding
from taskzoo.helpers.tables import find_column, is_number, read_text

USER_COLUMNS = ("user", "user_id", "userid", "users", "customer", "customer_id", "customerid", "client_id",
                "visitor", "visitorid", "visitor_id", "member_id", "account_id", "reader", "reader_id", "uid",
                "session", "session_id")
ITEM_COLUMNS = ("item", "item_id", "itemid", "items", "product", "product_id", "productid", "sku", "article",
                "article_id", "news_id", "newsid", "movie", "movie_id", "movieid", "track", "track_id", "song",
                "song_id", "book", "book_id", "isbn", "asin", "artist", "artist_id", "content_id", "video_id",
                "course_id", "recipe_id", "business_id", "anime_id", "iid")
WEIGHT_COLUMNS = ("weight", "rating", "ratings", "count", "counts", "plays", "play_count", "playcount", "quantity",
                  "clicks", "views", "score", "value", "confidence", "book_rating")
TIME_COLUMNS = ("timestamp", "time", "ts", "date", "datetime", "event_time", "created_at", "time_stamp",
                "unix_timestamp")
PARQUET = (".parquet", ".pq")
RECBOLE_TYPE = re.compile(r":(token|token_seq|float|float_seq)$")


@dataclass
class Interactions:
    """Interactions read from one file, one entry per data row (rows are 1-based; a header is not a row).

    ``users``/``items`` are codes into ``user_ids``/``item_ids``, the file's distinct original ids
    (as text) in order of first appearance. ``known_*`` are filled when a trained model's ids are
    known (evaluation data), for the data check to report what the model cannot score.
    """

    path: Path
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    times: np.ndarray | None
    columns: dict[str, str | None]
    headerless: bool = False
    zero_weight_rows: int = 0
    unknown: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Pairs:
    """Distinct (user, item) pairs in a model's id space, weights of duplicates summed."""

    path: Path
    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    times: np.ndarray | None
    n_users: int
    n_items: int
    role: str = "train"

    def __len__(self) -> int:
        return len(self.users)

    def matrix(self) -> Any:
        """The user x item CSR matrix of weights (float32), as implicit expects."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.weights.astype(np.float32), (self.users, self.items)),
                             shape=(self.n_users, self.n_items))

    def subset(self, mask: np.ndarray, role: str) -> Pairs:
        return Pairs(self.path, self.users[mask], self.items[mask], self.weights[mask],
                     None if self.times is None else self.times[mask], self.n_users, self.n_items, role)


@dataclass
class Queries:
    """Users to recommend for, or items to find similar items to, from ``--data``, ``--user``,
    ``--similar-to`` or ``--liked``. ``lines`` say where each came from (line numbers, or the option)."""

    source: str
    kind: str  # "users" or "items"
    ids: list[str]
    lines: list[str]
    liked: Any = None  # users x items CSR: the items each user liked, for users folded in (--liked, histories)

    def __len__(self) -> int:
        return len(self.ids)


class IdMap:
    """Original ids (text) <-> matrix indices. New ids are only ever appended, so an id keeps its
    index across fine-tuning runs."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        import pandas as pd

        self.ids = [str(i) for i in ids]
        self._index = pd.Index(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Indices of ``ids``; -1 for ids never seen."""
        return self._index.get_indexer(np.asarray(ids, dtype=object)).astype(np.int64)

    def extend(self, ids: Sequence[str] | np.ndarray) -> int:
        """Append the ids not known yet, in the order given; returns how many were new."""
        import pandas as pd

        ids = np.asarray(ids, dtype=object)
        new = ids[self.lookup(ids) < 0]
        if len(new):
            new = pd.unique(new)
            self.ids.extend(str(i) for i in new)
            self._index = pd.Index(self.ids)
        return len(new)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> IdMap:
        ids = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ids, list):
            raise DataError(f"{path}: expected a JSON list of ids")
        return cls(ids)


# -- reading -------------------------------------------------------------------------------------


def _rows_text(rows: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _separator(path: Path, first_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab") or "\t" in first_line:
        return "\t"
    if "::" in first_line:  # MovieLens .dat files
        return "::"
    for candidate in (",", ";", "|"):
        if candidate in first_line:
            return candidate
    return r"\s+"


def read_frame(path: Path, id_columns: Sequence[str | None] = ()) -> tuple[Any, bool]:
    """The file as a DataFrame of text cells, and whether it had no header row.

    CSV, TSV, MovieLens-style ``::`` and whitespace-separated text (any suffix), or Parquet. A
    first row of numbers only is taken as data, not as a header (``u.data``, ``ratings.dat``).
    """
    import pandas as pd

    if path.suffix.lower() in PARQUET:
        if not path.exists():
            raise DataError(f"{path}: no such file")
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or save the file as CSV)") from None
        except Exception as error:  # pyarrow raises its own types for broken files
            raise DataError(f"{path}: not a readable Parquet file: {' '.join(str(error).split())}") from None
        if frame.empty:
            raise DataError(f"{path}: no data rows")
        return frame, False
    text = read_text(path)
    first_line = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    separator = _separator(path, first_line)
    if separator == "::":
        text, first_line, separator = text.replace("::", "\t"), first_line.replace("::", "\t"), "\t"
    cells = [c.strip().strip('"') for c in (first_line.split() if separator == r"\s+" else first_line.split(separator))]
    headerless = bool(cells) and all(is_number(c) for c in cells if c)
    # Ids are text ('007' is not '7'); other columns are parsed as numbers by the C parser (fast),
    # falling back to text that `_numbers` checks cell by cell.
    named = {c.lower() for c in id_columns if c} | set(USER_COLUMNS) | set(ITEM_COLUMNS)
    text_columns = [0, 1] if headerless else [c for c in cells if plain_column_name(c).lower() in named
                                              or plain_column_name(c) in id_columns]
    try:
        frame = pd.read_csv(io.StringIO(text), sep=separator, dtype={c: str for c in text_columns},
                            keep_default_na=False, index_col=False, header=None if headerless else 0, engine="c",
                            skipinitialspace=True)
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: malformed file: {' '.join(str(error).split())}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    if frame.empty:
        raise DataError(f"{path}: no data rows (only a header?)")
    if headerless:
        names = ["user", "item", "weight", "timestamp"]
        if frame.shape[1] > len(names):
            raise DataError(f"{path}: {frame.shape[1]} columns and no header; expected user, item[, weight][, timestamp] "
                            "or a header row naming the columns")
        frame.columns = names[: frame.shape[1]]
    frame.columns = [plain_column_name(c) for c in frame.columns]
    return frame, headerless


def plain_column_name(name: Any) -> str:
    """The column's name without RecBole's type suffix (``user_id:token`` is ``user_id``), so its
    atomic files (``.inter``, ``.item``) are read as they are published."""
    return RECBOLE_TYPE.sub("", str(name).strip())


def _numbers(path: Path, frame: Any, column: str, what: str) -> np.ndarray:
    import pandas as pd

    raw = frame[column]
    if raw.dtype.kind in "iuf":
        values = raw.astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if not bad.any():
            return values.to_numpy()
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        shown = str(raw.iloc[row])
        raise DataError(f"{path}: row {row + 1}, column '{column}': {repr(shown) if shown.strip() else 'empty'} is not "
                        f"a number; expected {what} ({int(bad.sum())} such row(s))")
    return values.to_numpy(dtype=np.float64)


def _times(path: Path, frame: Any, column: str) -> np.ndarray:
    """Seconds since 1970 from numbers (Unix time) or date/time text."""
    import pandas as pd

    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(numbers)
    if finite.all():
        return numbers
    if finite.mean() >= 0.5:  # Unix times, some of them not: name the first of those
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{path}: row {row + 1}, column '{column}': {str(raw.iloc[row])!r} is not a Unix time like "
                        f"the other rows ({int((~finite).sum())} such row(s))")
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {row + 1}, column '{column}': {str(raw.iloc[row])!r} is neither a Unix time nor a "
                        "date/time (e.g. 2024-05-01 12:30:00)")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def read_interactions(
    path: Path,
    *,
    user_column: str | None = None,
    item_column: str | None = None,
    weight_column: str | None = None,
    time_column: str | None = None,
) -> Interactions:
    """Read user-item interactions; a `DataError` names the file, row and column at fault."""
    import pandas as pd

    path = Path(path)
    frame, headerless = read_frame(path, (user_column, item_column))
    columns = list(frame.columns)
    user = find_column(path, columns, user_column, USER_COLUMNS, "user", "--user-column")
    item = find_column(path, columns, item_column, ITEM_COLUMNS, "item", "--item-column")
    for found, candidates, what, option in ((user, USER_COLUMNS, "user", "--user-column"),
                                            (item, ITEM_COLUMNS, "item", "--item-column")):
        if found is None:
            raise DataError(f"{path}: no {what} column among {', '.join(columns)}; expected one of "
                            f"{', '.join(candidates[:8])}... or name it with {option}")
    if user == item:
        raise DataError(f"{path}: the user and item columns are both '{user}'")
    weight = find_column(path, columns, weight_column, WEIGHT_COLUMNS, "weight", "--weight-column")
    time = find_column(path, columns, time_column, TIME_COLUMNS, "time", "--time-column")

    ids = {}
    for role, column in (("user", user), ("item", item)):
        values = frame[column].astype(str)
        empty = (values == "").to_numpy()
        if empty.any():
            rows = (np.flatnonzero(empty) + 1).tolist()
            raise DataError(f"{path}: column '{column}' is empty on row {_rows_text(rows)}; every interaction needs a "
                            "user and an item")
        codes, uniques = pd.factorize(values, sort=False)
        ids[role] = (codes.astype(np.int64), np.asarray(uniques, dtype=object))

    weights = np.ones(len(frame), dtype=np.float64)
    if weight is not None:
        weights = _numbers(path, frame, weight, "a weight (a count, rating or duration)")
        negative = np.flatnonzero(weights < 0)
        if len(negative):
            row = int(negative[0])
            raise DataError(f"{path}: row {row + 1}, column '{weight}': weight {frame[weight].iloc[row]} is negative; "
                            f"weights are confidences and must be 0 or more ({len(negative)} negative row(s))")
    times = _times(path, frame, time) if time is not None else None
    keep = weights > 0
    zero_rows = int((~keep).sum())
    if zero_rows:
        weights = weights[keep]
        times = times[keep] if times is not None else None
    if not keep.any():
        raise DataError(f"{path}: every row has weight 0 in column '{weight}'; nothing to learn from")
    return Interactions(
        path=path, user_ids=ids["user"][1], item_ids=ids["item"][1],
        users=ids["user"][0][keep], items=ids["item"][0][keep], weights=weights.astype(np.float32), times=times,
        columns={"user": user, "item": item, "weight": weight, "time": time}, headerless=headerless,
        zero_weight_rows=zero_rows,
    )


def read_queries(path: Path, *, user_column: str | None = None) -> Queries:
    """Users to recommend for: a text file with one id per line, or a table with a user column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        ids, lines = [], []
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if line.strip():
                ids.append(line.strip())
                lines.append(f"line {number}")
        if not ids:
            raise DataError(f"{path}: no user ids (expected one per line)")
        return Queries(str(path), "users", ids, lines)
    frame, _ = read_frame(path)
    columns = list(frame.columns)
    user = find_column(path, columns, user_column, USER_COLUMNS, "user", "--user-column")
    if user is None:
        if len(columns) != 1:
            raise DataError(f"{path}: no user column among {', '.join(columns)}; name it with --user-column")
        user = columns[0]
    values = frame[user].astype(str).str.strip()
    first = ~values.duplicated().to_numpy() & (values != "").to_numpy()
    rows = np.flatnonzero(first) + 1
    return Queries(str(path), "users", values[first].tolist(), [f"row {r}" for r in rows])


# -- pairs and splits ----------------------------------------------------------------------------


def to_pairs(data: Interactions, users: IdMap, items: IdMap, role: str) -> Pairs:
    """The distinct (user, item) pairs of ``data`` in the maps' indices (weights summed, time the
    latest). Pairs with a user or item the maps do not know are left out; ``data.unknown`` counts them."""
    user_index = users.lookup(data.user_ids)[data.users]
    item_index = items.lookup(data.item_ids)[data.items]
    known = (user_index >= 0) & (item_index >= 0)
    if not known.all():
        data.unknown = {"interactions": int((~known).sum()),
                        "users": int(len(np.unique(data.users[user_index < 0]))),
                        "items": int(len(np.unique(data.items[item_index < 0])))}
    user_index, item_index = user_index[known], item_index[known]
    weights = data.weights[known]
    times = data.times[known] if data.times is not None else None
    key = user_index * max(len(items), 1) + item_index
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=np.int64)
    return Pairs(
        path=data.path, users=user_index[order][starts], items=item_index[order][starts],
        weights=np.add.reduceat(weights[order], starts) if len(key) else weights,
        times=np.maximum.reduceat(times[order], starts) if times is not None and len(key) else times,
        n_users=len(users), n_items=len(items), role=role,
    )


def holdout_mask(pairs: Pairs, *, val_fraction: float, seed: int) -> np.ndarray:
    """Which pairs to hold out for validation, per user, never a user's only pair.

    With timestamps: each user's latest item (leave-last-out). Without: a seeded random share
    ``val_fraction`` of each user's items (at least one).
    """
    n = len(pairs)
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(n)
    keys = (tiebreak, pairs.users) if pairs.times is None else (tiebreak, pairs.times, pairs.users)
    order = np.lexsort(keys)
    users_sorted = pairs.users[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    if pairs.times is not None:
        held = (position == size - 1) & (size >= 2)
    else:
        take = np.clip(np.rint(size * val_fraction), 1, size - 1)
        held = (position < take) & (size >= 2)
    mask = np.zeros(n, dtype=bool)
    mask[order[held]] = True
    return mask


# -- the data check ------------------------------------------------------------------------------


def check(data: Interactions) -> list[Finding]:
    if isinstance(data, Queries):
        return [Finding("info", f"{data.source}: {len(data)} {data.kind}")]
    path = data.path
    per_user = np.bincount(data.users, minlength=len(data.user_ids))
    density = len(data) / max(1, len(data.user_ids) * len(data.item_ids))
    columns = ", ".join(f"{role} '{name}'" for role, name in data.columns.items() if name)
    findings = [
        Finding("info", f"{path}: {len(data)} interactions, {len(data.user_ids)} users, {len(data.item_ids)} items "
                f"(density {density:.2%}); columns: {columns}" + (" (no header: by position)" if data.headerless else ""),
                {"interactions": len(data), "users": len(data.user_ids), "items": len(data.item_ids)}),
        Finding("info", f"interactions per user: min {per_user.min()}, median {np.median(per_user):g}, max {per_user.max()}; "
                + ("validation holds out each user's latest item" if data.times is not None
                   else "no timestamps: validation holds out a seeded random share of each user's items")),
    ]
    key = data.users * max(1, len(data.item_ids)) + data.items
    duplicates = len(key) - len(np.unique(key))
    if duplicates:
        findings.append(Finding("warning", f"{duplicates} repeated user-item interaction(s): their weights are summed"))
    if data.zero_weight_rows:
        findings.append(Finding("warning", f"{data.zero_weight_rows} row(s) with weight 0 are dropped"))
    single = int((per_user == 1).sum())
    if single:
        findings.append(Finding("warning", f"{single} user(s) have a single interaction: they are trained on but "
                                "never held out for validation"))
    catalogue = getattr(data, "catalogue", None)
    if catalogue is not None:
        from taskzoo_recommendation.catalogue import catalogue_findings

        findings += catalogue_findings(catalogue, list(data.item_ids))
    if data.unknown:
        u = data.unknown
        findings.append(Finding("warning", f"{u['interactions']} interaction(s) with {u['users']} user(s) or {u['items']} "
                                "item(s) the model never saw are skipped: it cannot score them (fine-tune with --init "
                                "to add them)"))
    return findings
