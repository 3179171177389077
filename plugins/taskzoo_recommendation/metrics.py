"""Ranking metrics at k, computed by `implicit.evaluation.ranking_metrics_at_k` on the top-k lists
the task produced, for the model and for the most-popular baseline on the same users.

Each prediction is ``{"items": [...], "popular": [...], "n_items": N}`` (top-k item indices, seen
items already excluded); each reference is the list of held-out item indices of that user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taskzoo.specs import MetricContext

NAMES = {"precision": "precision_at_k", "map": "map_at_k", "ndcg": "ndcg_at_k", "auc": "auc_at_k"}
# The five metrics of one evaluation share one computation per ranking.
_last: list[Any] = [None, None, {}]


def _replay(ids: np.ndarray) -> Any:
    """An implicit recommender that returns precomputed top-k lists, so implicit's own metric code
    scores rankings made elsewhere (the shared trainer's evaluation loop)."""
    from implicit.recommender_base import RecommenderBase

    class Replay(RecommenderBase):
        def fit(self, user_items: Any, show_progress: bool = True, callback: Any = None) -> None:
            raise NotImplementedError

        def recommend(self, userid: Any, user_items: Any, N: int = 10, **_: Any) -> tuple[np.ndarray, np.ndarray]:
            return ids[userid][:, :N], np.zeros((len(userid), N), dtype=np.float32)

        def similar_users(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def similar_items(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def save(self, file: Any) -> None:
            raise NotImplementedError

    return Replay()


def ranking(predictions: Sequence[dict[str, Any]], references: Sequence[Sequence[int]], key: str = "items") -> dict[str, float]:
    """precision, map, ndcg, auc and recall at k (k = the length of the lists) for ``predictions[i][key]``."""
    if _last[0] is predictions and _last[1] is references and key in _last[2]:
        return _last[2][key]
    if _last[0] is not predictions or _last[1] is not references:
        _last[:] = [predictions, references, {}]
    if not predictions:
        raise ValueError("no users to evaluate")
    values = scores([p[key] for p in predictions], references, int(predictions[0]["n_items"]),
                    len(predictions[0][key]))
    _last[2][key] = values
    return values


def scores(lists: Sequence[Sequence[int]], references: Sequence[Sequence[int]], n_items: int, k: int) -> dict[str, float]:
    """The ranking metrics of top-k ``lists`` against held-out ``references`` (implicit's, and recall)."""
    import scipy.sparse as sp
    from implicit.evaluation import ranking_metrics_at_k

    if all(len(found) == k for found in lists):
        ids = np.array(lists, dtype=np.int32).reshape(len(lists), k)
    else:  # some users had fewer than k items left to recommend: -1 pads, as implicit pads
        ids = np.full((len(lists), k), -1, dtype=np.int32)
        for row, found in enumerate(lists):
            ids[row, : len(found)] = found
    lengths = [len(r) for r in references]
    rows = np.repeat(np.arange(len(references)), lengths)
    columns = np.fromiter((i for r in references for i in r), dtype=np.int64, count=sum(lengths))
    test = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), (rows, columns)), shape=(len(references), n_items))
    train = sp.csr_matrix((len(references), n_items), dtype=np.float32)
    result = ranking_metrics_at_k(_replay(ids), train, test, K=k, show_progress=False, num_threads=1)
    values = {name: float(result[name]) for name in NAMES}
    hits = np.asarray(test[np.arange(len(references))[:, None], np.clip(ids, 0, None)].todense()) * (ids >= 0)
    values["recall"] = float(np.mean(hits.sum(1) / np.maximum(lengths, 1)))
    return values


# The metrics of one evaluation share one computation per group and ranking.
_group_cache: list[Any] = [None, {}]


def group_ranking(predictions: Sequence[dict[str, Any]], group: str, key: str) -> dict[str, Any] | None:
    """Metrics of ``predictions[i][key]`` (a ranking among the ``group``'s items: warm or cold)
    against each user's held-out items of that group, over the users who have some; None when the
    evaluation has no such users (or the model no content)."""
    if _group_cache[0] is not predictions:
        _group_cache[:] = [predictions, {}]
    cached = _group_cache[1]
    if (group, key) in cached:
        return cached[(group, key)]
    chosen = [p for p in predictions if p.get(f"{group}_refs")]
    result = None
    if chosen and key in chosen[0]:
        result = scores([p[key] for p in chosen], [p[f"{group}_refs"] for p in chosen], int(chosen[0]["n_items"]),
                        len(chosen[0]["items"]))
        result["users"] = len(chosen)
    cached[(group, key)] = result
    return result


def _grouped(group: str, key: str, name: str):
    def compute(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> Any:
        found = group_ranking(predictions, group, key)
        return None if found is None else found[name]

    return compute


def recall_at_k(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> float:
    return ranking(predictions, references)["recall"]


def coverage_at_k(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> float:
    """Share of the catalogue that appears in at least one evaluated user's top k."""
    if not predictions:
        return 0.0
    shown = {item for p in predictions for item in p["items"]}
    return len(shown) / max(1, int(predictions[0]["n_items"]))


# Warm and cold items apart (--items): each ranking beside its baselines.
GROUP_RANKINGS = {
    "warm": {"warm": "model", "popular": "popular"},
    "cold": {"cold": "model", "content": "content", "random": "random"},
}
GROUP_METRICS = ("precision", "recall", "ndcg", "map")


def group_metrics() -> list[tuple[str, Any, str]]:
    """(name, compute, description) of every warm/cold metric."""
    found = []
    describe = {"model": "the model", "popular": "the most-popular baseline",
                "content": "the content-only baseline (cosine similarity of item embeddings to the user's history)",
                "random": "a seeded random ranking"}
    for group, rankings in GROUP_RANKINGS.items():
        for key, arm in rankings.items():
            prefix = group if arm == "model" else f"{group}_{arm}"
            for metric in GROUP_METRICS:
                found.append((f"{prefix}_{metric}_at_k", _grouped(group, key, metric),
                              f"{metric} at k of {describe[arm]} ranking only {group} items, against the held-out "
                              f"{group} items ({'items with' if group == 'warm' else 'items without'} training "
                              "interactions; with --items)"))
        found.append((f"{group}_users", _grouped(group, group, "users"),
                      f"Users with held-out {group} items (with --items)."))
    return found


def _metric(name: str):
    def compute(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> float:
        return ranking(predictions, references)[name]

    compute.__name__ = NAMES[name]
    return compute


precision_at_k = _metric("precision")
map_at_k = _metric("map")
ndcg_at_k = _metric("ndcg")
auc_at_k = _metric("auc")


def _popular(name: str):
    def compute(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> float:
        return ranking(predictions, references, "popular")[name]

    compute.__name__ = "popular_" + NAMES[name]
    return compute


# The most-popular baseline: the popular items each user has not seen, scored the same way.
popular_precision_at_k = _popular("precision")
popular_map_at_k = _popular("map")
popular_ndcg_at_k = _popular("ndcg")
popular_auc_at_k = _popular("auc")


def k(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> int:
    return len(predictions[0]["items"]) if predictions else 0


def evaluated_users(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> int:
    return len(predictions)


def _recall_curve(lists: Sequence[Sequence[int]], references: Sequence[Sequence[int]], k: int) -> list[float]:
    """Recall at 1..k of top-k ``lists`` (prefixes of the same rankings)."""
    hits = np.zeros((len(lists), k))
    for row, (found, held) in enumerate(zip(lists, references)):
        held = set(held)
        hits[row, : len(found)] = [item in held for item in found[:k]]
    sizes = np.maximum([len(r) for r in references], 1)[:, None]
    return np.round((np.cumsum(hits, axis=1) / sizes).mean(0), 6).tolist()


def recall_by_k(predictions: Sequence[Any], references: Sequence[Any], context: MetricContext) -> dict[str, Any] | None:
    """Recall at every k up to the evaluation's, for the model and each baseline (warm and cold
    items apart when they were scored apart): the curves of ``recall_at_k.png``."""
    if not predictions:
        return None
    k = len(predictions[0]["items"])
    curves: dict[str, Any] = {"k": list(range(1, k + 1)),
                              "model": _recall_curve([p["items"] for p in predictions], references, k),
                              "popular": _recall_curve([p["popular"] for p in predictions], references, k)}
    for group, rankings in GROUP_RANKINGS.items():
        chosen = [p for p in predictions if p.get(f"{group}_refs")]
        if chosen and group in chosen[0]:
            for key, arm in rankings.items():
                name = group if arm == "model" else f"{group}_{arm}"
                curves[name] = _recall_curve([p[key] for p in chosen], [p[f"{group}_refs"] for p in chosen], k)
    return curves
