"""The recommenders as PyTorch modules, so the shared trainer evaluates, checkpoints and (for
factor models) fine-tunes them like any other task's model; implicit fits them.

- `FactorModel`: user and item factors (ALS, BPR, logistic MF). ``forward`` gives the top
  ``batch["top_k"]`` items for a batch of users (seen items excluded) or the most similar items to
  ``query_items``, or, for a batch of (user, positive, negative) triples, the BPR loss the trainer
  descends.
- `NeighbourModel`: implicit's item-item kNN (cosine, BM25); no parameters, nothing to fine-tune.

Both return their rankings as ``{"ids": (rows, k) item indices, "scores": (rows, k)}``, best first;
a slot with nothing left to recommend has score -inf.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from taskzoo import UserError

KINDS = {
    "als": "implicit.als:AlternatingLeastSquares",
    "bpr": "implicit.bpr:BayesianPersonalizedRanking",
    "lmf": "implicit.lmf:LogisticMatrixFactorization",
    "knn-cosine": "implicit.nearest_neighbours:CosineRecommender",
    "knn-bm25": "implicit.nearest_neighbours:BM25Recommender",
}
FACTOR_KINDS = ("als", "bpr", "lmf")


def _mask_seen(scores: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "seen_rows" in batch and batch["seen_rows"].numel():
        scores[batch["seen_rows"], batch["seen_cols"]] = float("-inf")
    return scores


def top_k(scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The ``k`` best of dense ``scores`` per row."""
    values, ids = torch.topk(scores.float(), min(k, scores.shape[1]), dim=1)
    return {"ids": ids, "scores": values}


@functools.cache
def _thread_pool(threads: int) -> Any:
    """One pool per size for the process: starting threads for every batch costs more than the work."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="taskzoo-top-k")


def _cpu_top_k(user_vectors: torch.Tensor, item_factors: torch.Tensor, k: int, batch: Mapping[str, torch.Tensor],
               threads: int) -> dict[str, torch.Tensor]:
    """`top_k` of the masked scores on the CPU, the way implicit's own ``recommend`` works: the
    users are cut into one slice per thread (0: as many as torch uses, which ``accelerate launch``
    divides between processes), and each slice is scored through
    numpy's BLAS (one BLAS thread each) and reduced to its top k in parallel, since neither a
    multithreaded matmul nor ``torch.topk`` keeps the cores busy on a tall, thin product like this.
    numpy's BLAS also gives implicit's exact numbers and on this AMD EPYC machine is about twice as
    fast as torch's matmul (38 ms against 84 ms for 1024 users x 20,000 items x 64 factors)."""
    from threadpoolctl import threadpool_limits

    vectors = user_vectors.detach().float().numpy()
    items = item_factors.detach().float().numpy()
    seen_rows, seen_cols = batch["seen_rows"].numpy(), batch["seen_cols"].numpy()  # rows ascending
    slices = max(1, min(threads or torch.get_num_threads(), len(vectors) // 64))
    bounds = np.linspace(0, len(vectors), slices + 1).astype(np.int64)
    starts = np.searchsorted(seen_rows, bounds)

    def best_of_slice(part: int) -> dict[str, torch.Tensor]:
        first, last = bounds[part], bounds[part + 1]
        scores = vectors[first:last] @ items.T
        seen = slice(starts[part], starts[part + 1])
        scores[seen_rows[seen] - first, seen_cols[seen]] = -np.inf
        return top_k(torch.from_numpy(scores), k)

    with threadpool_limits(1, user_api="blas"):
        if slices == 1:
            parts = [best_of_slice(0)]
        else:
            parts = list(_thread_pool(slices).map(best_of_slice, range(slices)))
    return {key: torch.cat([part[key] for part in parts]) for key in ("ids", "scores")}


class FactorModel(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int, threads: int = 0, item_factors: bool = True) -> None:
        super().__init__()
        self.user_factors = torch.nn.Parameter(torch.zeros(n_users, factors))
        if item_factors:  # the hybrid model computes its items' vectors instead
            self.item_factors = torch.nn.Parameter(torch.zeros(n_items, factors))
        # Distinct users per item in the fitted data: the most-popular baseline and fallback.
        self.register_buffer("popularity", torch.zeros(n_items))
        self.threads = threads  # CPU threads for scoring (the task's --threads; 0: torch's thread count)
        self.regularization = 10.0  # of the fold-in of users given by their liked items (the task sets it)
        self.alpha = 1.0

    def set_factors(self, user_factors: np.ndarray, item_factors: np.ndarray, popularity: np.ndarray) -> None:
        with torch.no_grad():
            self.user_factors.data = torch.as_tensor(np.ascontiguousarray(user_factors), dtype=torch.float32,
                                                     device=self.user_factors.device)
            self.item_factors.data = torch.as_tensor(np.ascontiguousarray(item_factors), dtype=torch.float32,
                                                     device=self.item_factors.device)
            self.popularity = torch.as_tensor(popularity, dtype=torch.float32, device=self.popularity.device)

    def item_vectors(self) -> torch.Tensor:
        """Every item's vector in the users' space (the hybrid model adds content here)."""
        return self.item_factors

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_factors[users] * self.item_factors[items]).sum(-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        if "positives" in batch:
            margin = self.pair_scores(batch["users"], batch["positives"]) - self.pair_scores(batch["users"], batch["negatives"])
            return {"loss": -torch.nn.functional.logsigmoid(margin).mean(), "output": margin}
        k = int(batch["top_k"])
        items = self.item_vectors()
        if "query_items" in batch:
            similarity = self.similarity(batch["query_items"], items)
            if "candidates" in batch:  # predict --items: only those items
                outside = torch.ones(similarity.shape[1], dtype=torch.bool, device=similarity.device)
                outside[batch["candidates"]] = False
                similarity[:, outside] = float("-inf")
            return {"loss": None, "output": most_similar(similarity, batch["query_items"], k)}
        users = batch["users"]
        vectors = self.user_vectors(batch, items)
        best = rank(vectors, items, k, batch, self.threads)
        best = popular_for_unknown(best, users, self.popularity, k)
        if "item_group" in batch:  # evaluation: also the rankings among warm and among cold items
            best.update(self.group_rankings(vectors, items, k, batch))
        return {"loss": None, "output": best}

    def user_vectors(self, batch: Mapping[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """The batch's users' vectors: trained ones, or folded in from the items they liked
        (users marked -2: ``--liked`` or a history of a user the model has not seen)."""
        users = batch["users"]
        vectors = self.stored_user_vectors(users.clamp(min=0))
        folded = users == -2
        if folded.any():
            vectors = vectors.clone()
            vectors[folded] = self.fold_in(batch, items, len(users))[folded]
        return vectors

    def stored_user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors[users]

    def fold_in(self, batch: Mapping[str, torch.Tensor], items: torch.Tensor, users: int) -> torch.Tensor:
        return fold_in_users(items, batch["seen_rows"], batch["seen_cols"], batch["seen_weights"], users,
                             self.regularization, self.alpha)

    def group_rankings(self, vectors: torch.Tensor, items: torch.Tensor, k: int,
                       batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = {}
        for name, group in (("warm", 0), ("cold", 1)):
            outside = batch["item_group"] != group
            best = rank(vectors, items, k, batch, self.threads, blocked=outside)
            result[f"{name}_ids"], result[f"{name}_scores"] = best["ids"], best["scores"]
        return result

    def similarity(self, query_items: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity of each query item's vector to every item's."""
        normed = torch.nn.functional.normalize(self.item_vectors() if items is None else items, dim=-1)
        return normed[query_items] @ normed.T


class HybridModel(FactorModel):
    """Items described by content as well as by interactions (``--items``).

    An item's vector has two blocks. The first is its content embedding projected into the users'
    factor space plus a learned id vector where the item has interactions; the second, for items
    without interactions only, is its content in the catalogue's principal components. A user's
    vector is their factors beside ``profile_weight`` x their content profile (the mean content of
    the items they interacted with) in the same components. Fitted after ALS (`fit_hybrid`: the
    projection by ridge regression, the profile weight chosen on items held out as if cold), the
    id vector makes a warm item's score exactly its ALS score (warm items lose nothing) and a cold
    item's score comes from its content. Gradient epochs (BPR) train the projection, the id
    vectors and the users' factors together, dropping items' id vectors at random so the
    projection learns to rank items from content alone."""

    def __init__(self, n_users: int, n_items: int, factors: int, content_dim: int, threads: int = 0,
                 profile_dims: int = 64, id_dropout: float = 0.5) -> None:
        super().__init__(n_users, n_items, factors, threads, item_factors=False)
        self.projection = torch.nn.Parameter(torch.zeros(content_dim, factors))
        self.id_factors = torch.nn.Parameter(torch.zeros(n_items, factors))
        self.register_buffer("content", torch.zeros(n_items, content_dim))
        self.register_buffer("warm", torch.zeros(n_items, dtype=torch.bool))
        self.register_buffer("basis", torch.zeros(content_dim, profile_dims))
        self.register_buffer("centre", torch.zeros(content_dim))
        self.register_buffer("profile_weight", torch.zeros(()))
        self.register_buffer("user_profiles", torch.zeros(n_users, profile_dims))
        self.id_dropout = id_dropout
        self.text_encoder: Any = None  # set by --finetune-encoder: the text part of content trains too
        self.item_tokens: dict[str, torch.Tensor] = {}
        self.fit_report: dict[str, Any] = {}

    def set_content(self, content: np.ndarray, warm: np.ndarray, projection: np.ndarray, id_factors: np.ndarray,
                    **profile: np.ndarray) -> None:
        """Load the content part; ``profile`` holds basis, centre, profile_weight and user_profiles."""
        with torch.no_grad():
            device = self.projection.device
            tensor = lambda array: torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)  # noqa: E731
            self.content, self.warm = tensor(content), torch.as_tensor(warm, dtype=torch.bool, device=device)
            self.projection.data, self.id_factors.data = tensor(projection), tensor(id_factors)
            for name, value in profile.items():
                setattr(self, name, tensor(value))

    def fit_hybrid(self, user_factors: np.ndarray, item_factors: np.ndarray, popularity: np.ndarray, matrix: Any,
                   regularization: float, alpha: float, seed: int) -> None:
        """Take ALS's (or BPR's) factors and fit the content part (`fit_hybrid`); the warm items'
        id vectors make their vectors their factors."""
        from taskzoo_recommendation.content import fit_hybrid, normalised, user_profiles

        content = self.content.cpu().numpy()
        warm = np.asarray(popularity) > 0
        if (warm & (np.abs(content).sum(1) > 0)).sum() < 2:
            raise UserError("--items: fewer than two described items have interactions in the training part, so "
                            "nothing links content to behaviour; describe the items of the interactions in --items")
        fit = fit_hybrid(content, user_factors, item_factors, matrix, regularization, alpha, seed)
        ids = np.where(warm[:, None], item_factors - content @ fit.projection, 0.0).astype(np.float32)
        with torch.no_grad():
            self.user_factors.data = torch.as_tensor(np.ascontiguousarray(user_factors), dtype=torch.float32,
                                                     device=self.user_factors.device)
            self.popularity = torch.as_tensor(popularity, dtype=torch.float32, device=self.popularity.device)
        self.set_content(content, warm, fit.projection, ids, basis=fit.basis, centre=fit.centre,
                         profile_weight=np.float32(fit.profile_weight),
                         user_profiles=user_profiles(matrix, normalised(content)) @ fit.basis)
        self.fit_report = {"ridge_strength": fit.strength, "profile_weight": round(fit.profile_weight, 6),
                           "content_only": fit.content_only, "validation": fit.validation}

    def train(self, mode: bool = True) -> HybridModel:
        # The encoder being fine-tuned changes every item's text embedding: refresh them for scoring.
        if not mode and self.training and self.text_encoder is not None:
            self._refresh_text_content()
        return super().train(mode)

    @torch.no_grad()
    def _refresh_text_content(self) -> None:
        encoder, tokens = self.text_encoder, self.item_tokens
        was_training = encoder.training
        encoder.eval()
        parts = []
        for start in range(0, len(self.content), 64):
            chunk = {name: values[start:start + 64] for name, values in tokens.items()}
            longest = int(chunk["attention_mask"].sum(1).max())
            chunk = {name: values[:, :longest].to(self.content.device) for name, values in chunk.items()}
            parts.append(encoder(chunk))
        text = torch.cat(parts)
        self.content[:, : text.shape[1]] = text.to(self.content.dtype)
        encoder.train(was_training)

    def add_items(self, content: np.ndarray) -> None:
        """Items the model has never seen (``--items`` at predict or evaluate time): cold, ranked from content."""
        with torch.no_grad():
            extra = torch.as_tensor(content, dtype=torch.float32, device=self.content.device)
            self.content = torch.cat([self.content, extra])
            self.warm = torch.cat([self.warm, torch.zeros(len(extra), dtype=torch.bool, device=self.warm.device)])
            self.id_factors.data = torch.cat([self.id_factors.data, self.id_factors.new_zeros(len(extra), self.id_factors.shape[1])])
            self.popularity = torch.cat([self.popularity, self.popularity.new_zeros(len(extra))])

    @property
    def factors(self) -> int:
        return self.user_factors.shape[1]

    def content_profile(self, content: torch.Tensor) -> torch.Tensor:
        """Content in the principal components of the catalogue's centred, normalised content."""
        return (torch.nn.functional.normalize(content, dim=-1) - self.centre) @ self.basis

    def item_vectors(self, items: torch.Tensor | None = None, drop_ids: bool = False) -> torch.Tensor:
        content = self.content if items is None else self.content[items]
        if self.text_encoder is not None and self.training and items is not None:
            content = self._encoded_content(items, content)
        ids = self.id_factors if items is None else self.id_factors[items]
        warm = (self.warm if items is None else self.warm[items]).to(ids.dtype)[:, None]
        kept = warm * (torch.rand_like(warm) >= self.id_dropout).to(warm.dtype) if drop_ids else warm
        return torch.cat([content @ self.projection + kept * ids, (1 - kept) * self.content_profile(content)], dim=1)

    def stored_user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.user_factors[users], self.profile_weight * self.user_profiles[users]], dim=1)

    def fold_in(self, batch: Mapping[str, torch.Tensor], items: torch.Tensor, users: int) -> torch.Tensor:
        rows, cols, weights = batch["seen_rows"], batch["seen_cols"], batch["seen_weights"]
        factors = fold_in_users(items[:, : self.factors], rows, cols, weights, users, self.regularization, self.alpha)
        profile = torch.zeros(users, self.basis.shape[0], dtype=items.dtype, device=items.device)
        profile.index_add_(0, rows, torch.nn.functional.normalize(self.content[cols], dim=-1) * weights[:, None])
        profile = profile / weights.new_zeros(users).index_add_(0, rows, weights).clamp(min=1e-12)[:, None]
        return torch.cat([factors, self.profile_weight * (profile @ self.basis)], dim=1)

    def _encoded_content(self, items: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """The text part of the items' content from the encoder being fine-tuned (the picture part stays)."""
        unique, inverse = torch.unique(items, return_inverse=True)
        tokens = {name: values[unique.cpu()].to(content.device) for name, values in self.item_tokens.items()}
        longest = int(tokens["attention_mask"].sum(1).max())
        text = self.text_encoder({name: values[:, :longest] for name, values in tokens.items()})[inverse]
        return torch.cat([text.to(content.dtype), content[:, text.shape[1]:]], dim=1)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.stored_user_vectors(users) * self.item_vectors(items, drop_ids=self.training)).sum(-1)

    @property
    def item_factors(self) -> torch.Tensor:  # implicit's name, for saving and exporting the combined vectors
        return self.item_vectors()


def rank(vectors: torch.Tensor, items: torch.Tensor, k: int, batch: Mapping[str, torch.Tensor], threads: int,
         blocked: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The top ``k`` items per user vector, seen items excluded, and ``blocked`` items (a mask over
    items) or items outside ``batch["candidates"]`` (``predict --items``) never ranked."""
    candidates = batch.get("candidates")
    if candidates is not None:
        inside = torch.zeros(len(items), dtype=torch.bool, device=items.device)
        inside[candidates] = True
        blocked = ~inside if blocked is None else blocked | ~inside
    if blocked is None and vectors.device.type == "cpu":
        return _cpu_top_k(vectors, items, k, batch, threads)
    scores = _mask_seen(vectors @ items.T, batch)
    if blocked is not None:
        scores[:, blocked] = float("-inf")
    return top_k(scores, k)


def fold_in_users(items: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, users: int,
                  regularization: float, alpha: float) -> torch.Tensor:
    """Users' vectors from the items they liked, as ALS solves a user with the items fixed
    (Hu, Koren, Volinsky 2008; implicit's ``recalculate_user``): confidence alpha x weight on the
    liked items, preference 0 elsewhere."""
    items = items.detach().double()
    gram = items.T @ items + regularization * torch.eye(items.shape[1], dtype=items.dtype, device=items.device)
    confidence = (alpha * weights.double()).clamp(min=1e-6)
    systems = gram.expand(users, -1, -1).clone()
    liked = items[cols]
    outer = (confidence - 1)[:, None, None] * liked[:, :, None] * liked[:, None, :]
    systems.index_add_(0, rows, outer)
    targets = torch.zeros(users, items.shape[1], dtype=items.dtype, device=items.device)
    targets.index_add_(0, rows, confidence[:, None] * liked)
    return torch.linalg.solve(systems, targets).float()


def most_similar(similarity: torch.Tensor, query_items: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The ``k`` items most similar to each query item, the item itself left out."""
    similarity[torch.arange(len(query_items), device=similarity.device), query_items] = float("-inf")
    return top_k(similarity, k)


def popular_for_unknown(best: dict[str, torch.Tensor], users: torch.Tensor, popularity: torch.Tensor,
                        k: int) -> dict[str, torch.Tensor]:
    """Unknown users (index -1) get the most popular items (predict --popular-fallback)."""
    unknown = users == -1  # -2: folded in from liked items, not unknown
    if unknown.any():
        popular = top_k(popularity[None].to(best["scores"].device), k)
        best["ids"][unknown], best["scores"][unknown] = popular["ids"], popular["scores"].to(best["scores"].dtype)
    return best


class _FactorScores(torch.nn.Module):
    """A factor model as an ONNX graph: every item's score for each user, and each query item's
    similarity to every item. Seen items, the top k and the popular fallback are applied to these
    outputs by the same functions as in `FactorModel.forward`."""

    def __init__(self, model: FactorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, query_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.model.item_vectors()
        scores = self.model.stored_user_vectors(users.clamp(min=0)) @ items.T
        return scores, self.model.similarity(query_items, items)


def export_graph(model: torch.nn.Module, backbone: str, preprocessing: dict[str, Any]) -> Any:
    from taskzoo.export import Graph

    if not isinstance(model, FactorModel):
        raise UserError(f"backbone '{backbone}' (item-item kNN) has no ONNX export: its scores come from a sparse "
                        "similarity matrix; use --runtime torch, or train a factor backbone (als, bpr, lmf)")
    empty = np.zeros(0, dtype=np.int64)

    def feeds(batch: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
        if "candidates" in batch or ("users" in batch and bool((batch["users"] == -2).any())):
            raise UserError("the ONNX export ranks the saved catalogue for known users; --liked, new users' histories "
                            "and predict --items need --runtime torch")
        return [{"users": batch["users"].cpu().numpy() if "users" in batch else empty,
                 "query_items": batch["query_items"].cpu().numpy() if "query_items" in batch else empty}]

    def ranked(batch: Mapping[str, Any], results: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
        scores, similarity = (torch.from_numpy(array) for array in results[0])
        k = int(batch["top_k"])
        if "query_items" in batch:
            return most_similar(similarity, batch["query_items"], k)
        return popular_for_unknown(top_k(_mask_seen(scores, batch), k), batch["users"], model.popularity, k)

    return Graph(network=_FactorScores(model), input_names=("users", "query_items"), output_names=("scores", "similarity"),
                 dynamic_axes={"users": {0: "users"}, "query_items": {0: "queries"}, "scores": {0: "users"},
                               "similarity": {0: "queries"}},
                 feeds=feeds, output=ranked,
                 preprocessing={**preprocessing, "output": "scores: users x items (mask the user's seen items, "
                                "then take the top k); similarity: query items x items (cosine)"})


class NeighbourModel(torch.nn.Module):
    """Scores are the user's weighted interactions times implicit's item-item similarity matrix,
    exactly what implicit's own ``recommend`` computes."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.similarity: Any = None  # scipy CSR, item x item; saved by the task, not in state_dict
        self.register_buffer("popularity", torch.zeros(n_items))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        import scipy.sparse as sp

        if "positives" in batch:
            raise UserError("item-item kNN has no parameters to train by gradient steps; use --epochs 0 (the default) "
                            "or a factor backbone (als, bpr, lmf)")
        n_items = self.similarity.shape[0]
        if "query_items" in batch:
            queries = batch["query_items"].cpu().numpy()
            scores = self.similarity[queries].toarray()
            scores[scores == 0] = -np.inf
            scores[np.arange(len(queries)), queries] = -np.inf
            return {"loss": None, "output": top_k(torch.from_numpy(scores.astype(np.float32)), int(batch["top_k"]))}
        users = batch["users"]
        rows, cols = batch["seen_rows"].cpu().numpy(), batch["seen_cols"].cpu().numpy()
        liked = sp.csr_matrix((batch["seen_weights"].cpu().numpy(), (rows, cols)), shape=(len(users), n_items))
        scores = torch.from_numpy(np.asarray((liked @ self.similarity).todense(), dtype=np.float32)).to(self.popularity.device)
        unknown = users < 0
        if unknown.any():
            scores[unknown] = self.popularity
        return {"loss": None, "output": top_k(_mask_seen(scores, batch), int(batch["top_k"]))}


def make_implicit(kind: str, hyper: Mapping[str, Any], *, seed: int, threads: int) -> Any:
    """A fresh implicit model; implicit picks its GPU implementation when CUDA is there (ALS, BPR)."""
    import implicit.gpu

    if kind == "als":
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=hyper["factors"], regularization=hyper["regularization"],
                                       alpha=hyper["alpha"], iterations=hyper["iterations"], random_state=seed,
                                       num_threads=threads, use_gpu=implicit.gpu.HAS_CUDA)
    if kind == "bpr":
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=hyper["factors"], learning_rate=hyper["factor_lr"],
                                           regularization=hyper["regularization"], iterations=hyper["iterations"],
                                           random_state=seed, num_threads=threads, use_gpu=implicit.gpu.HAS_CUDA)
    if kind == "lmf":
        from implicit.lmf import LogisticMatrixFactorization

        return LogisticMatrixFactorization(factors=hyper["factors"], learning_rate=hyper["factor_lr"],
                                           regularization=hyper["regularization"], iterations=hyper["iterations"],
                                           neg_prop=hyper["neg_prop"], random_state=seed, num_threads=threads)
    from implicit import nearest_neighbours

    if kind == "knn-cosine":
        return nearest_neighbours.CosineRecommender(K=hyper["neighbours"], num_threads=threads)
    if kind == "knn-bm25":
        return nearest_neighbours.BM25Recommender(K=hyper["neighbours"], num_threads=threads)
    raise UserError(f"unknown recommender kind '{kind}'; known: {', '.join(KINDS)}")


def factors_of(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors) as float32 numpy arrays, from the CPU or GPU implementation."""
    if hasattr(model, "to_cpu"):
        model = model.to_cpu()
    return np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)


# implicit's own defaults per model (factors, regularization, iterations, SGD rate) where the user
# gives none; the others apply to one model each.
IMPLICIT_DEFAULTS = {
    # implicit's own ALS defaults (100 factors, regularization 0.01) overfit small data sets badly (NDCG@10
    # 0.04 against 0.27 on the example); stronger regularisation costs little on large ones.
    "als": {"factors": 64, "regularization": 10.0, "iterations": 15},
    "bpr": {"factors": 100, "regularization": 0.01, "iterations": 100, "factor_lr": 0.01},
    "lmf": {"factors": 30, "regularization": 0.6, "iterations": 30, "factor_lr": 1.0},
    "knn-cosine": {},
    "knn-bm25": {},
}


def hyperparameters(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(IMPLICIT_DEFAULTS[kind])
    for key in ("factors", "regularization", "iterations", "factor_lr"):
        if options.get(key) is not None and key in values:
            values[key] = options[key]
    if kind == "als":
        values["alpha"] = float(options.get("alpha") if options.get("alpha") is not None else 1.0)
    if kind == "lmf":
        values["neg_prop"] = int(options.get("neg_prop") or 30)
    if kind.startswith("knn"):
        values["neighbours"] = int(options.get("neighbours") or 20)
    if values.get("factors") is not None and values["factors"] < 1:
        raise UserError(f"--factors {values['factors']}: expected a positive number")
    return values


def fold_in(user_factors: np.ndarray, item_factors: np.ndarray, matrix: Any, users: np.ndarray, items: np.ndarray,
            hyper: Mapping[str, Any], threads: int, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """New and changed users and items solved against the others' fixed factors with implicit's
    ALS partial fit; untouched users keep their factors exactly. ``matrix`` holds every
    interaction (old and new) in the grown id space; ``users``/``items`` are the touched ones."""
    from implicit.cpu.als import AlternatingLeastSquares

    n_users, n_items = matrix.shape
    als = AlternatingLeastSquares(factors=user_factors.shape[1], regularization=hyper["regularization"],
                                  alpha=hyper.get("alpha", 1.0), num_threads=threads)
    grow = lambda factors, rows: np.vstack([factors, np.zeros((rows - len(factors), factors.shape[1]), np.float32)])  # noqa: E731
    als.user_factors = grow(np.asarray(user_factors, np.float32), n_users)
    als.item_factors = grow(np.asarray(item_factors, np.float32), n_items)
    item_users = matrix.T.tocsr()
    for _ in range(rounds):
        als.partial_fit_users(users, matrix[users])
        als.partial_fit_items(items, item_users[items])
    als.partial_fit_users(users, matrix[users])
    return als.user_factors, als.item_factors
