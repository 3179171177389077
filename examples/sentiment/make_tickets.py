"""Write the multi-label example: support tickets that are about billing, login or shipping (one
or two of them) and sometimes urgent, labelled as sets ("billing|urgent"). Seeded: the files never
change.

    python examples/sentiment/make_tickets.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent
PHRASES = {
    "billing": ["I was charged twice on my invoice", "the refund for my payment never arrived",
                "my card was billed the wrong amount", "why is there an extra fee on my bill",
                "the subscription price went up without notice", "I need a copy of last month's receipt"],
    "login": ["I cannot sign in to my account", "the password reset link does not work",
              "two-factor code never comes so I am locked out", "my username is not recognised at login",
              "the app logs me out every few minutes", "single sign-on fails with an error"],
    "shipping": ["the parcel has not been delivered", "the courier left my package at the wrong address",
                 "tracking says the order is stuck in transit", "delivery is two weeks late",
                 "the box arrived damaged", "I was never told the shipping date"],
    "urgent": ["please help right now", "this is extremely urgent", "I need this fixed today",
               "asap, our whole team is blocked", "this is critical for our launch tomorrow"],
}


def tickets(count: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    topics = ["billing", "login", "shipping"]
    rows = []
    for _ in range(count):
        labels = sorted(rng.choice(topics, rng.integers(1, 3), replace=False).tolist())
        if rng.random() < 0.35:
            labels.append("urgent")
        parts = [str(rng.choice(PHRASES[label])) for label in labels]
        rng.shuffle(parts)
        rows.append((". ".join(parts).capitalize() + ".", "|".join(labels)))
    return rows


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["text", "labels"])
        writer.writerows(rows)


if __name__ == "__main__":
    write(FOLDER / "tickets.csv", tickets(240, 0))
    write(FOLDER / "tickets_test.csv", tickets(60, 1))
