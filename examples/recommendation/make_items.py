"""Write the item descriptions of the recommendation example: a headline and a standfirst for
every article (``items.csv``, including the 40 articles first read in ``new_week.csv``, which a
model trained on ``interactions.csv`` has never seen read), a picture for a few of them, and
``todays_items.csv``: 20 articles published this morning that nobody has read yet. Seeded: the
files never change.

    python examples/recommendation/make_items.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent
WORDS = {
    "pol": (("Parliament", "The minister", "The opposition", "Voters", "The senate", "The coalition"),
            ("votes on", "rejects", "debates", "backs", "delays", "rewrites"),
            ("the budget bill", "election reform", "the tax plan", "a new constitution", "the pension law", "party funding"),
            "Politics"),
    "spo": (("The striker", "The champions", "The keeper", "The coach", "The rookie", "The captain"),
            ("wins", "loses", "scores in", "is injured before", "celebrates", "is sent off in"),
            ("the cup final", "the derby", "the league decider", "extra time", "the penalty shoot-out", "the marathon"),
            "Sport"),
    "sci": (("Astronomers", "Biologists", "Physicists", "A new study", "Researchers", "The telescope"),
            ("discover", "measure", "map", "explain", "sequence", "observe"),
            ("a distant galaxy", "the genome of a fern", "dark matter", "an ancient virus", "quantum entanglement", "a new exoplanet"),
            "Science"),
    "cul": (("The festival", "A debut novel", "The orchestra", "The museum", "A young painter", "The film"),
            ("opens", "premieres", "celebrates", "tours", "restores", "wins praise for"),
            ("a lost opera", "its new gallery", "the summer season", "a retrospective", "the poetry prize", "a silent classic"),
            "Culture"),
    "bus": (("Shares", "The central bank", "Investors", "The retailer", "Start-ups", "The carmaker"),
            ("fall after", "rally on", "cut jobs after", "raise prices after", "bet on", "report profits from"),
            ("interest rates", "quarterly earnings", "the merger", "inflation data", "the bond market", "export tariffs"),
            "Business"),
    "tra": (("A weekend", "Backpackers", "The island", "A rail journey", "The old town", "Hikers"),
            ("discover", "explore", "fall for", "cross", "return to", "escape to"),
            ("the fjords", "the alpine lakes", "a desert oasis", "the coastal path", "a volcanic island", "the night train"),
            "Travel"),
    "foo": (("A chef", "Home cooks", "The bakery", "A street market", "The vineyard", "A family kitchen"),
            ("perfects", "reinvents", "shares", "serves", "tastes", "bakes"),
            ("sourdough bread", "a spicy curry", "a summer salad", "the perfect risotto", "chocolate tart", "fresh pasta"),
            "Food"),
    "tec": (("The startup", "Engineers", "The phone maker", "Hackers", "A new chip", "The app"),
            ("launch", "unveil", "patch", "break", "speed up", "open-source"),
            ("an AI assistant", "a folding phone", "the battery", "encryption keys", "the search engine", "a robot arm"),
            "Tech"),
}
COLOURS = {"pol": (180, 40, 40), "spo": (40, 140, 60), "sci": (40, 70, 170), "cul": (150, 60, 160),
           "bus": (200, 150, 30), "tra": (30, 150, 170), "foo": (210, 100, 40), "tec": (90, 90, 90)}


def describe(rng: np.random.Generator, item: str) -> tuple[str, str, str]:
    subjects, verbs, objects, section = WORDS[item[:3]]
    headline = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
    standfirst = f"{section}: {rng.choice(subjects).lower()} and {rng.choice(objects)}, in depth"
    return headline, standfirst, section


def picture(item: str, path: Path, rng: np.random.Generator) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 64), COLOURS[item[:3]])
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, 80)), int(rng.integers(0, 48))
        draw.ellipse((x, y, x + 16, y + 16), fill=(255, 255, 255))
    image.save(path)


def ids_in(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as stream:
        return sorted({row["item_id"] for row in csv.DictReader(stream)})


def write(path: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["item_id", "headline", "standfirst", "section", "image"])
        writer.writerows(rows)


def main() -> None:
    rng = np.random.default_rng(7)
    known = sorted(set(ids_in(FOLDER / "interactions.csv")) | set(ids_in(FOLDER / "new_week.csv")),
                   key=lambda item: int(item[4:]))
    (FOLDER / "images").mkdir(exist_ok=True)
    rows = []
    for position, item in enumerate(known):
        image = ""
        if position % 25 == 0:  # a few articles come with a picture
            image = f"images/{item}.png"
            picture(item, FOLDER / image, rng)
        rows.append((item, *describe(rng, item), image))
    write(FOLDER / "items.csv", rows)
    sections = list(WORDS)
    today = [f"{sections[i % len(sections)]}-{340 + i:04d}" for i in range(20)]
    write(FOLDER / "todays_items.csv", [(item, *describe(rng, item), "") for item in today])


if __name__ == "__main__":
    main()
