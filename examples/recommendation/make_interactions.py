"""Write the recommendation example: a small news site's reading log with real structure.

Readers follow two or three of eight sections (politics, sport, science...), read mostly there,
more often the popular articles, and come back several times; some articles are simply read by
everyone. Weeks 1-3 are ``interactions.csv`` (train on it), week 4 is ``new_week.csv`` (new
readers and new articles as well: fine-tune with ``--init``), week 5 is ``holdout.csv`` (evaluate
on it), and ``users.txt`` lists a few readers to recommend for. Seeded: the files never change.

    python examples/recommendation/make_interactions.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SECTIONS = ("politics", "sport", "science", "culture", "business", "travel", "food", "tech")
FOLDER = Path(__file__).resolve().parent
WEEK = 7 * 24 * 3600
START = 1_714_521_600  # 2024-05-01


def articles(rng: np.random.Generator, first: int, count: int) -> list[tuple[str, int, float]]:
    """(id, section, appeal): appeal is heavy-tailed, as article popularity is."""
    sections = rng.integers(0, len(SECTIONS), count)
    appeal = rng.pareto(1.5, count) + 0.2
    return [(f"{SECTIONS[s][:3]}-{first + i:04d}", int(s), float(a)) for i, (s, a) in enumerate(zip(sections, appeal))]


def readers(rng: np.random.Generator, first: int, count: int) -> list[tuple[str, np.ndarray, float]]:
    """(id, taste over sections, activity)."""
    result = []
    for i in range(count):
        taste = np.full(len(SECTIONS), 0.03)
        taste[rng.choice(len(SECTIONS), rng.integers(2, 4), replace=False)] = 1.0
        result.append((f"reader{first + i:04d}", taste / taste.sum(), float(rng.lognormal(2.4, 0.5))))
    return result


def week_of_reading(rng, people, catalogue, week: int, share_active: float) -> list[tuple[str, str, int, int]]:
    sections = np.array([s for _, s, _ in catalogue])
    appeal = np.array([a for _, _, a in catalogue])
    rows = []
    for reader, taste, activity in people:
        if rng.random() > share_active:
            continue
        weights = taste[sections] * appeal
        weights /= weights.sum()
        reads = rng.poisson(activity / 3) + 1
        for article in rng.choice(len(catalogue), reads, p=weights):
            seconds = START + week * WEEK + int(rng.integers(0, WEEK))
            rows.append((reader, catalogue[article][0], int(rng.integers(1, 4)), seconds))
    rows.sort(key=lambda row: row[3])
    return rows


def write(path: Path, rows: list[tuple[str, str, int, int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["user_id", "item_id", "weight", "timestamp"])
        writer.writerows(rows)


def main() -> None:
    rng = np.random.default_rng(2024)
    catalogue = articles(rng, 0, 300)
    people = readers(rng, 0, 400)
    history = [row for week in range(3) for row in week_of_reading(rng, people, catalogue, week, 0.8)]
    write(FOLDER / "interactions.csv", history)
    catalogue_later = catalogue + articles(rng, 300, 40)
    newcomers = readers(rng, 400, 60)
    write(FOLDER / "new_week.csv", week_of_reading(rng, people[:150] + newcomers, catalogue_later, 3, 0.9))
    write(FOLDER / "holdout.csv", week_of_reading(rng, people, catalogue, 4, 0.5))
    (FOLDER / "users.txt").write_text("\n".join(reader for reader, _, _ in people[:5]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
