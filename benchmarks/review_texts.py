"""Write a larger sentiment set, made from the example reviews, for timing the trainers over more
steps and larger batches than ``examples/reviews.csv`` gives, where no public set is at hand::

    python benchmarks/review_texts.py /tmp/texts
    python benchmarks/sentiment_trainer.py --data /tmp/texts/train.tsv --val /tmp/texts/dev.tsv \\
        --epochs 1 --batch-size 32 --repeats 5

Each text is one review, or two reviews of the same label joined, with its words shuffled half of
the time; 4,000 to train and 872 to validate (the size of SST-2's validation set), in SST-2's
layout (``sentence`` and ``label`` columns, labels 0 and 1, tab-separated). The texts repeat each
other's words, so the accuracy reached on them says nothing about a recipe's quality: the set is
for speed only. Always the same files (a fixed seed).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN, DEV = 4000, 872


def texts(reviews: Path, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` (text, label) pairs made from the reviews' texts and their labels."""
    with reviews.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row["sentiment"], []).append(row["review"])
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        label = rng.choice(sorted(by_label))
        words = " ".join(rng.choice(by_label[label]) for _ in range(rng.choice([1, 1, 2]))).split()
        if rng.random() < 0.5:
            rng.shuffle(words)
        made.append((" ".join(words), label))
    return made


def write(pairs: list[tuple[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as stream:
        stream.write("sentence\tlabel\n")
        for text, label in pairs:
            stream.write(f"{text}\t{int(label == 'positive')}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where train.tsv and dev.tsv are written")
    parser.add_argument("--reviews", type=Path, default=ROOT / "examples" / "reviews.csv")
    opts = parser.parse_args()
    pairs = texts(opts.reviews, TRAIN + DEV)
    opts.folder.mkdir(parents=True, exist_ok=True)
    write(pairs[:TRAIN], opts.folder / "train.tsv")
    write(pairs[TRAIN:TRAIN + DEV], opts.folder / "dev.tsv")
    print(f"wrote {opts.folder / 'train.tsv'} ({TRAIN} texts) and {opts.folder / 'dev.tsv'} ({DEV})")


if __name__ == "__main__":
    main()
