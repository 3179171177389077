"""The recommendation task: implicit's recommenders fitted before training (`fit_before_training`),
optionally fine-tuned with a BPR loss by the shared trainer, evaluated with implicit's ranking
metrics beside a most-popular baseline, and updated with new interactions by ``--init``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from taskzoo import BackboneSpec, DataError, UserError, progress
from taskzoo.helpers.tables import delimited_text, json_lines_text, write_or_return
from taskzoo.task import Task
from taskzoo_recommendation.catalogue import Catalogue, read_catalogue
from taskzoo_recommendation.data import (IdMap, Interactions, Pairs, Queries, holdout_mask, read_interactions,
                                         read_queries, to_pairs)
from taskzoo_recommendation.models import (FACTOR_KINDS, KINDS, FactorModel, HybridModel, NeighbourModel, factors_of,
                                           fold_in, hyperparameters, make_implicit)

CONFIG = "recommender.json"
FACTORS = "factors.npz"
NEIGHBOURS = "similarity.npz"
SEEN = "seen.npz"
CONTENT = "content.npz"
TEXT_ENCODER = "text_encoder"
VISITOR = "visitor"  # the user column of --liked recommendations
# Dense scores of one evaluation batch stay below this many floats (users x items).
SCORE_BUDGET = 20_000_000


def _save_csr(path: Path, matrix: Any) -> None:
    np.savez(path, indptr=matrix.indptr, indices=matrix.indices, data=matrix.data, shape=np.array(matrix.shape))


def _load_csr(path: Path) -> Any:
    import scipy.sparse as sp

    with np.load(path, allow_pickle=False) as stored:
        return sp.csr_matrix((stored["data"], stored["indices"], stored["indptr"]), shape=tuple(stored["shape"]))


def _resize(matrix: Any, shape: tuple[int, int]) -> Any:
    matrix = matrix.tocsr().copy()
    matrix.resize(shape)
    return matrix


def _popularity(matrix: Any) -> np.ndarray:
    return np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


class RecommendationTask(Task):
    size_unit = "interactions"
    inline_input = "user"
    report_draws_predictions = False  # its tables and charts come from the metrics
    users: IdMap | None = None
    items: IdMap | None = None
    kind: str = "als"
    hyper: dict[str, Any]
    _seen: Any = None  # every training interaction: filtered from recommendations
    _fit_matrix: Any = None  # what the model was fitted on (the train part during a run)
    _init: dict[str, Any] | None = None
    _split_by_time = False  # whether the last split held out each user's latest item
    _popularity_order: Any = None  # caches of the most-popular baseline
    _popularity_cache: Any = None
    _catalogue: Catalogue | None = None  # the run's --items
    content: dict[str, Any] | None = None  # how item content was embedded (saved in recommender.json)
    _content_vectors: np.ndarray | None = None  # the items' content embeddings, in item index order
    _item_groups: torch.Tensor | None = None  # 0: warm item (has training interactions), 1: cold
    _encoders: dict[str, Any] | None = None
    _model_folder: Path | None = None
    _candidates: np.ndarray | None = None  # predict --items: rank only these
    _applied_items: tuple[str, np.ndarray] | None = None  # the --items file added, and its item indices
    _model: Any = None  # the loaded hybrid model, which --items extends
    _trained_by_gradient = False

    @property
    def k(self) -> int:
        k = int(self.options.get("k") or 10)
        if k < 1:
            raise UserError(f"--k {k}: expected a positive number of recommendations")
        return k

    @property
    def threads(self) -> int:
        return int(self.options.get("threads") or 0)

    # -- data ------------------------------------------------------------------------------------

    def _read(self, path: Path) -> Interactions:
        return read_interactions(path, user_column=self.options.get("user_column"),
                                 item_column=self.options.get("item_column"),
                                 weight_column=self.options.get("weight_column"),
                                 time_column=self.options.get("time_column"))

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> Interactions | Queries:
        if role != "train":
            self._apply_items()
        if role == "predict":
            return self._known_queries(self._predict_queries(path))
        data = self._read(path)
        if role in ("val", "test") and self.users is not None:
            data.pairs = self._pairs(data, role)  # also counts what the model cannot score, for the check
        if role == "train" and self.options.get("items"):
            data.catalogue = self._read_catalogue(Path(self.options["items"]))
        return data

    def _read_catalogue(self, path: Path) -> Catalogue:
        columns = [c.strip() for c in str(self.options.get("text_columns") or "").split(",") if c.strip()]
        item_column = self.options.get("item_column")
        try:
            return read_catalogue(path, item_column=item_column, text_columns=columns or None,
                                  image_column=self.options.get("image_column"))
        except DataError as error:
            # --item-column names the interactions' column; an items file may call its ids otherwise.
            if not item_column or f"'{item_column}' (from --item-column)" not in str(error):
                raise
        return read_catalogue(path, text_columns=columns or None, image_column=self.options.get("image_column"))

    def inputs_from_options(self) -> Queries | None:
        self._apply_items()
        users, similar = self.options.get("user") or [], self.options.get("similar_to") or []
        given = self.options.get("liked") or []
        liked = [i.strip() for value in ([given] if isinstance(given, str) else given)
                 for i in str(value).split(",") if i.strip()]
        if sum(map(bool, (users, similar, liked))) > 1:
            raise UserError("give one of --user, --similar-to and --liked")
        if given and not liked:
            raise UserError("--liked: expected item ids separated by commas, e.g. --liked 123,456")
        if liked:
            return self._liked_queries(liked)
        if users:
            return self._known_queries(Queries("--user", "users", list(users), ["--user"] * len(users)))
        if similar:
            return self._known_queries(Queries("--similar-to", "items", list(similar), ["--similar-to"] * len(similar)))
        return None

    def _predict_queries(self, path: Path) -> Queries:
        """Users to recommend for: a list of ids, or a table of interactions (user and item columns),
        whose users the model has not seen are folded in from their rows there."""
        from taskzoo.helpers.tables import find_column

        from taskzoo_recommendation.data import ITEM_COLUMNS, USER_COLUMNS, read_frame

        if path.suffix.lower() != ".txt":
            columns = list(read_frame(path)[0].columns)
            user = find_column(path, columns, self.options.get("user_column"), USER_COLUMNS, "user", "--user-column")
            item = find_column(path, columns, self.options.get("item_column"), ITEM_COLUMNS, "item", "--item-column")
            if user is not None and item is not None and self.kind in FACTOR_KINDS:
                return self._history_queries(self._read(path))
        return read_queries(path, user_column=self.options.get("user_column"))

    def _history_queries(self, data: Interactions) -> Queries:
        import scipy.sparse as sp

        known_users = self.users.lookup(data.user_ids)
        item_index = self.items.lookup(data.item_ids)[data.items]
        fold = (known_users[data.users] < 0) & (item_index >= 0)
        if ((known_users[data.users] < 0) & (item_index < 0)).any():
            self.context.warn(f"{data.path}: {int(((known_users[data.users] < 0) & (item_index < 0)).sum())} row(s) of new "
                              "users name items the model does not know; they are left out of those users' histories")
        liked = sp.csr_matrix((data.weights[fold], (data.users[fold], item_index[fold])),
                              shape=(len(data.user_ids), len(self.items)), dtype=np.float32)
        liked.sum_duplicates()
        first = np.full(len(data.user_ids), len(data.users), dtype=np.int64)
        np.minimum.at(first, data.users, np.arange(len(data.users)))
        first += 1
        return Queries(str(data.path), "users", [str(u) for u in data.user_ids], [f"row {r}" for r in first], liked=liked)

    def _liked_queries(self, liked: list[str]) -> Queries:
        """One visitor known only by the items they liked: folded in against the items' vectors."""
        if self.kind not in FACTOR_KINDS:
            raise UserError(f"--liked: backbone '{self.backbone}' (item-item kNN) has no item vectors to fold a user "
                            "into; use --similar-to, or a factor backbone (als, bpr, lmf)")
        found = self.items.lookup(liked)
        if (found < 0).any():
            missing = liked[int(np.flatnonzero(found < 0)[0])]
            more = " or describe it in --items" if self.content else ""
            raise DataError(f"--liked: item '{missing}' is not in the model's catalogue of {len(self.items)} items; "
                            f"check the id{more}")
        import scipy.sparse as sp

        liked_matrix = sp.csr_matrix((np.ones(len(found), np.float32), (np.zeros(len(found), np.int64), found)),
                                     shape=(1, len(self.items)))
        liked_matrix.sum_duplicates()
        liked_matrix.data[:] = 1.0
        return Queries("--liked", "users", [VISITOR], ["--liked"], liked=liked_matrix)

    def _known_queries(self, queries: Queries) -> Queries:
        known = (self.users if queries.kind == "users" else self.items).lookup(queries.ids)
        if queries.liked is not None:  # users with a history here are folded in, known or not
            known = np.where(np.diff(queries.liked.indptr) > 0, 0, known)
        unknown = [i for i, index in enumerate(known) if index < 0]
        if not unknown:
            return queries
        if queries.kind == "items":
            first = unknown[0]
            raise DataError(f"{queries.source}: item '{queries.ids[first]}' was never seen in training; "
                            f"the model knows {len(self.items)} items")
        if not self.options.get("popular_fallback"):
            first = unknown[0]
            where = queries.source if queries.source == "--user" else f"{queries.source}: {queries.lines[first]}"
            more = f" ({len(unknown)} unknown users in all)" if len(unknown) > 1 else ""
            raise DataError(f"{where}: user '{queries.ids[first]}' was never seen in training{more}; the model knows "
                            f"{len(self.users)} users. Add --popular-fallback to give unknown users the most popular "
                            "items, or fine-tune with --init on interactions that include them")
        self.context.warn(f"{len(unknown)} user(s) never seen in training get the most popular items "
                          "(--popular-fallback); their scores are interaction counts")
        return queries

    def labels(self, data: Interactions) -> list[str]:
        """Builds the id maps (extending the ``--init`` run's, so old ids keep their indices).
        Recommendation has no label names: the item catalogue lives in ``model/items.json``."""
        init = self.options.get("init")
        if init:
            self._load_init(Path(init))
        else:
            self.users, self.items = IdMap(), IdMap()
        self.users.extend(data.user_ids)
        self.items.extend(data.item_ids)
        self._catalogue = getattr(data, "catalogue", None)
        if self._catalogue is not None:
            if init:
                raise UserError("--items with --init: folding new interactions into a model with item content is not "
                                "supported yet; train again on all interactions with --items")
            self.items.extend(self._catalogue.ids)  # items nobody interacted with: cold, ranked from content
        return []

    def _pairs(self, data: Interactions | Pairs, role: str) -> Pairs:
        if isinstance(data, Pairs):
            return data
        cached = getattr(data, "pairs", None)
        if cached is None:
            cached = to_pairs(data, self.users, self.items, role)
            data.pairs = cached
        if not len(cached):
            raise DataError(f"{data.path}: none of its interactions is of a user and an item the model knows")
        return cached

    def size(self, data: Any) -> int:
        return len(data.pairs) if getattr(data, "pairs", None) is not None else len(data)

    def parts(self, data: Any, size: int) -> Iterator[Any]:
        if not isinstance(data, Queries):  # interactions to score are whole users' histories
            yield data
            return
        for start in range(0, len(data), size):
            yield replace(data, ids=data.ids[start:start + size], lines=data.lines[start:start + size])

    def split(self, data: Interactions, *, val_fraction: float, seed: int) -> tuple[Pairs, Pairs]:
        from taskzoo.helpers.splits import _check_fraction

        _check_fraction(val_fraction)
        if self.users is None:  # a saved model's split (export's parity check): its seen items include it
            raise UserError(f"{data.path}: a saved recommender's validation split cannot be scored again (the model "
                            "counts its interactions as seen); give held-out interactions: tasks export --model RUN "
                            "--data FILE")
        pairs = self._pairs(data, "train")
        held = holdout_mask(pairs, val_fraction=val_fraction, seed=seed)
        if not held.any():
            raise DataError(f"{data.path}: no user has two or more distinct items, so nothing can be held out for "
                            "validation; give a validation file with --val")
        self._seen = self._with_init_seen(pairs.matrix())
        self._split_by_time = pairs.times is not None
        return pairs.subset(~held, "train"), pairs.subset(held, "val")

    def describe_split(self, *, val_fraction: float, seed: int) -> str:
        if self._split_by_time:
            return "each user's latest item (leave-last-out by timestamp); users with one item are not held out"
        return (f"a random {val_fraction:.0%} of each user's items, at least one (seed {seed}); users with one item "
                "are not held out")

    def _with_init_seen(self, matrix: Any) -> Any:
        if self._init is None:
            return matrix
        return _resize(self._init["seen"], matrix.shape) + matrix

    # -- model -----------------------------------------------------------------------------------

    def _load_init(self, folder: Path) -> None:
        model = self.context.finished_run(folder, "init").model
        saved = json.loads((model / CONFIG).read_text(encoding="utf-8"))
        self.users, self.items = IdMap.load(model / "users.json"), IdMap.load(model / "items.json")
        self._init = {"folder": folder, "config": saved, "seen": _load_csr(model / SEEN)}
        if saved["kind"] in FACTOR_KINDS:
            with np.load(model / FACTORS, allow_pickle=False) as stored:
                self._init["user_factors"], self._init["item_factors"] = stored["user_factors"], stored["item_factors"]

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        if backbone.source != "implicit" or backbone.location not in KINDS.values():
            known = ", ".join(b.name for b in self.context.backbones)
            raise UserError(f"--backbone {backbone.name}: not a recommender; known: {known}")
        self.kind = next(kind for kind, location in KINDS.items() if location == backbone.location)
        if self._init is not None:
            saved = self._init["config"]
            if saved["kind"] != self.kind:
                raise UserError(f"--init {self._init['folder']}: that run's recommender is {saved['kind']}; fine-tune it "
                                f"with --backbone {saved['backbone']} (this run asked for {backbone.name})")
            if self.kind in ("bpr", "lmf"):
                raise UserError(f"--init: implicit can fold new interactions into ALS only (partial fit); retrain "
                                f"{self.kind} on all interactions, or start from an als run")
            self.hyper = dict(saved["hyperparameters"])
        else:
            self.hyper = hyperparameters(self.kind, self.options)
        self.backbone = backbone.name
        if self._catalogue is not None:
            return self._build_hybrid()
        if self.options.get("finetune_encoder"):
            raise UserError("--finetune-encoder needs --items: the encoder embeds the items' texts")
        if self.kind in FACTOR_KINDS:
            return self._with_fold_in(FactorModel(len(self.users), len(self.items), int(self.hyper["factors"]),
                                                  self.threads))
        return NeighbourModel(len(self.items))

    def _with_fold_in(self, model: FactorModel) -> FactorModel:
        model.regularization = float(self.hyper.get("regularization", 10.0))
        model.alpha = float(self.hyper.get("alpha", 1.0))
        return model

    # -- item content (--items) ------------------------------------------------------------------

    def _build_hybrid(self) -> HybridModel:
        if self.kind not in FACTOR_KINDS:
            raise UserError(f"--items: backbone '{self.backbone}' (item-item kNN) cannot rank items without "
                            "interactions; use a factor backbone (als, the default; bpr, lmf)")
        from taskzoo.plugins import get_host
        from taskzoo.weights import resolve_backbone

        catalogue = self._catalogue
        host = get_host()
        text = resolve_backbone(host, self.name, self.options.get("text_encoder"), "text encoder", "--text-encoder")
        image = (resolve_backbone(host, self.name, self.options.get("image_encoder"), "image encoder", "--image-encoder")
                 if catalogue.image_column else None)
        if self.options.get("image_encoder") and image is None:
            raise UserError(f"--image-encoder: {catalogue.path} has no image column (name it with --image-column)")
        self.content = {"text_encoder": text.name, "image_encoder": image.name if image else None,
                        "text_columns": catalogue.text_columns, "image_column": catalogue.image_column,
                        "finetuned": bool(self.options.get("finetune_encoder")), "items_file": str(catalogue.path)}
        self._encoders = {"text_spec": text, "image_spec": image}
        described = self._embed(catalogue)
        self.content["dims"] = {"text": int(self._text_encoder().dim), "image": int(described.shape[1]) - int(self._text_encoder().dim)}
        vectors = np.zeros((len(self.items), described.shape[1]), dtype=np.float32)
        vectors[self.items.lookup(catalogue.ids)] = described
        self._content_vectors = vectors
        model = HybridModel(len(self.users), len(self.items), int(self.hyper["factors"]), vectors.shape[1], self.threads)
        model.set_content(vectors, np.zeros(len(self.items), bool), np.zeros((vectors.shape[1], int(self.hyper["factors"])),
                                                                            np.float32),
                          np.zeros((len(self.items), int(self.hyper["factors"])), np.float32))
        if self.content["finetuned"]:
            encoder = self._text_encoder()
            self.content["finetuned_part"] = encoder.train_last_layer()
            texts = [""] * len(self.items)
            for item, text_of_item in zip(self.items.lookup(catalogue.ids), catalogue.texts):
                texts[item] = text_of_item
            model.text_encoder = encoder
            model.item_tokens = encoder.tokens([t or " " for t in texts])
        return self._with_fold_in(model)

    def _text_encoder(self) -> Any:
        encoders = self._encoders
        if "text" not in encoders:
            from taskzoo_recommendation.content import load_saved_text_encoder, load_text_encoder

            saved = self._model_folder / TEXT_ENCODER if self._model_folder else None
            encoders["text"] = (load_saved_text_encoder(saved) if saved is not None and saved.is_dir()
                                else load_text_encoder(encoders["text_spec"]))
        return encoders["text"]

    def _embed(self, catalogue: Catalogue) -> np.ndarray:
        """Content vectors of the catalogue's items: text embedding, then image embedding if the
        model has one (zeros where an item has no usable image)."""
        from taskzoo_recommendation.content import embed_images, embed_texts, load_image_encoder

        parts = [embed_texts(self._text_encoder(), catalogue.texts)]
        if self.content.get("image_encoder"):
            if catalogue.image_column is None:
                self.context.warn(f"{catalogue.path}: no image column; the model was trained with images, so these "
                                  "items are ranked from their text alone")
                parts.append(np.zeros((len(catalogue), self.content["dims"]["image"]), np.float32))
            else:
                if "image" not in self._encoders:
                    self._encoders["image"] = load_image_encoder(self._encoders["image_spec"])
                parts.append(embed_images(self._encoders["image"], catalogue.images, self.context.warn))
        return np.hstack(parts).astype(np.float32)

    def _apply_items(self) -> None:
        """``--items`` of this predict or evaluate call (the loaded model serves many calls): items
        the model has never seen are embedded and added as cold items, kept for later calls; at
        predict, only the file's items are ranked."""
        given = self.options.get("items")
        self._candidates = None
        if not given:
            return
        if self.content is None:
            raise UserError(f"--items {given}: this run was trained without --items, so it cannot rank items from "
                            "their content; train with --items")
        if self._applied_items is None or self._applied_items[0] != str(given):
            self._applied_items = (str(given), self._extend_catalogue(self._model, Path(given)))
        self._candidates = self._applied_items[1]

    def _extend_catalogue(self, model: HybridModel, path: Path) -> np.ndarray:
        catalogue = self._read_catalogue(path)
        found = self.items.lookup(catalogue.ids)
        new = catalogue.subset(found < 0)
        if len(new):
            embedded = self._embed(new)
            model.add_items(embedded)
            self._content_vectors = np.vstack([self._content_vectors, embedded])
            self.items.extend(new.ids)
            self._seen = _resize(self._seen, (self._seen.shape[0], len(self.items)))
            self._item_groups = torch.cat([self._item_groups, torch.ones(len(new), dtype=torch.long)])
        return self.items.lookup(catalogue.ids)

    def fit_before_training(self, model: torch.nn.Module, train_data: Any) -> bool:
        """Fit the implicit model on the training part (or fold new interactions into the --init model)."""
        pairs = self._pairs(train_data, "train")
        matrix = pairs.matrix()
        if self._seen is None:  # --val given: the whole --data file is the training part
            self._seen = self._with_init_seen(matrix)
        fitted = self._with_init_seen(matrix)
        self._fit_matrix = fitted
        seed = torch.initial_seed() % 2**31  # the run's --seed: the trainer has just called set_seed
        # implicit's advice (and its warning otherwise): its own threads, each with one BLAS thread.
        # Importing its models first loads the BLAS they use (scipy's), so the limit reaches it.
        import implicit.cpu.als  # noqa: F401
        import implicit.nearest_neighbours  # noqa: F401

        with threadpool_limits(1, user_api="blas"):
            self._fit_implicit(model, pairs, fitted, seed)
        if isinstance(model, HybridModel):
            self._item_groups = (~model.warm).long().cpu()
            self.content["cold_scoring"] = model.fit_report
        return True

    def _fit_implicit(self, model: torch.nn.Module, pairs: Pairs, fitted: Any, seed: int) -> None:
        if isinstance(model, NeighbourModel):
            recommender = make_implicit(self.kind, self.hyper, seed=seed, threads=self.threads)
            with warnings.catch_warnings():
                # BM25Recommender hands its own COO-weighted matrix on and warns about it; the user's was CSR.
                warnings.filterwarnings("ignore", message="Method expects CSR input")
                recommender.fit(fitted, show_progress=progress.show())
            model.similarity = recommender.similarity.tocsr()
            model.popularity = torch.as_tensor(_popularity(fitted), device=model.popularity.device)
            return
        if self._init is not None:
            users = np.unique(pairs.users).astype(np.int32)
            items = np.unique(pairs.items).astype(np.int32)
            user_factors, item_factors = fold_in(self._init["user_factors"], self._init["item_factors"], fitted,
                                                 users, items, self.hyper, self.threads)
        else:
            recommender = make_implicit(self.kind, self.hyper, seed=seed, threads=self.threads)
            recommender.fit(fitted, show_progress=progress.show())
            user_factors, item_factors = factors_of(recommender)
        if isinstance(model, HybridModel):
            model.fit_hybrid(user_factors, item_factors, _popularity(fitted), fitted, model.regularization, model.alpha,
                             seed)
        else:
            model.set_factors(user_factors, item_factors, _popularity(fitted))

    @property
    def labels_of_model(self) -> list[str]:
        return []

    # -- batches ---------------------------------------------------------------------------------

    def dataloader(self, data: Any, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        if isinstance(data, Queries):
            return self._query_loader(data, batch_size)
        pairs = self._pairs(data, "train" if train else "test")
        if train:
            return self._triples_loader(pairs, batch_size, seed)
        # Validation during a run scores against the training part; evaluation of a saved model
        # against everything it was trained on. Held-out pairs already seen there cannot be hit.
        seen = self._fit_matrix if self._fit_matrix is not None else self._seen
        if seen is None:
            raise RuntimeError("build the training loader or load a model before evaluating")
        seen = _resize(seen, (pairs.n_users, pairs.n_items))
        already = np.asarray(seen[pairs.users, pairs.items]).ravel() > 0
        targets = pairs.subset(~already, pairs.role) if already.any() else pairs
        if not len(targets):
            raise DataError(f"{pairs.path}: every interaction in it is already in the training data; nothing to predict")
        target_matrix = targets.matrix()
        users = np.unique(targets.users)
        collate = _EvalCollate(users, seen, target_matrix, self.k, groups=lambda: self._item_groups)
        size = max(1, min(batch_size, SCORE_BUDGET // max(1, pairs.n_items)))
        return DataLoader(_Indices(len(users)), batch_size=size, shuffle=False, collate_fn=collate)

    def _triples_loader(self, pairs: Pairs, batch_size: int, seed: int) -> DataLoader:
        matrix = _resize(self._with_init_seen(pairs.matrix()), (pairs.n_users, pairs.n_items))
        self._fit_matrix = matrix
        self._trained_by_gradient = True
        collate = _TripleCollate(pairs.users, pairs.items, matrix, seed)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(_Indices(len(pairs)), batch_size=batch_size, shuffle=True, generator=generator,
                          collate_fn=collate)

    def _query_loader(self, queries: Queries, batch_size: int) -> DataLoader:
        candidates = None if self._candidates is None else torch.as_tensor(self._candidates)
        size = max(1, min(batch_size, SCORE_BUDGET // max(1, len(self.items))))
        if queries.kind == "items":
            items = torch.as_tensor(self.items.lookup(queries.ids))
            k = torch.tensor(self.k)

            def similar(idx: list[int]) -> dict[str, torch.Tensor]:
                batch = {"query_items": items[idx], "index": torch.as_tensor(idx), "top_k": k}
                return batch if candidates is None else {**batch, "candidates": candidates}

            return DataLoader(_Indices(len(items)), batch_size=size, collate_fn=similar)
        users = self.users.lookup(queries.ids)
        seen, rows = self._seen, None
        if queries.liked is not None:  # histories given with the query: those users are folded in
            import scipy.sparse as sp

            folded = np.diff(queries.liked.indptr) > 0
            users = np.where(folded, -2, users)
            known = sp.diags((users >= 0).astype(np.float32)) @ self._seen[np.clip(users, 0, None)]
            seen, rows = (known + _resize(queries.liked, (len(users), len(self.items)))).tocsr(), np.arange(len(users))
        collate = _EvalCollate(users, seen, None, self.k, rows=rows, candidates=candidates)
        return DataLoader(_Indices(len(users)), batch_size=size, shuffle=False, collate_fn=collate)

    def predictions(self, batch: Mapping[str, torch.Tensor], output: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        ids, scores = output["ids"].cpu().numpy(), output["scores"].cpu().numpy()
        found = np.isfinite(scores)
        complete = found.all()

        def lists(values: np.ndarray) -> list[list[Any]]:
            # One tolist() per batch: per-row conversions cost more than the ranking itself at 100k users.
            return values.tolist() if complete else [row[keep].tolist() for row, keep in zip(values, found)]

        indices, id_lists = batch["index"].tolist(), lists(ids)
        if "target_rows" not in batch:
            return [{"index": index, "items": items, "scores": values}
                    for index, items, values in zip(indices, id_lists, lists(scores))]
        popular = self._popular_unseen(batch, ids.shape[1], len(indices)).tolist()
        n_items = len(self.items)
        found = [{"index": index, "items": items, "popular": best, "n_items": n_items}
                 for index, items, best in zip(indices, id_lists, popular)]
        if "warm_ids" in output and "item_group" in batch:
            self._add_group_rankings(found, batch, output, ids.shape[1])
        return found

    def _add_group_rankings(self, found: list[dict[str, Any]], batch: Mapping[str, torch.Tensor],
                            output: Mapping[str, torch.Tensor], k: int) -> None:
        """Warm and cold items apart: each user's held-out items of each group, the model's ranking
        among each group's items, and the cold items' baselines (content only, random)."""
        from taskzoo_recommendation.content import content_profile_scores

        groups = batch["item_group"].cpu()
        cold = groups.numpy() == 1
        for user, refs in enumerate(self.references(batch)):
            found[user]["warm_refs"] = [i for i in refs if not cold[i]]
            found[user]["cold_refs"] = [i for i in refs if cold[i]]
        for name in ("warm", "cold"):
            values = output[f"{name}_scores"].cpu().numpy()
            for user, (row, keep) in enumerate(zip(output[f"{name}_ids"].cpu().numpy(), np.isfinite(values))):
                found[user][name] = row[keep].tolist()
        if not cold.any():
            return
        rows, cols = batch["seen_rows"].cpu(), batch["seen_cols"].cpu()
        content = torch.as_tensor(self._content_vectors) if self._content_vectors is not None else None
        blocked = torch.as_tensor(~cold)
        users = len(found)
        for name in ("content", "random"):
            if name == "content" and content is not None:
                scores = content_profile_scores(content, rows, cols, batch["seen_weights"].cpu(), users)
            else:
                seed = [int(i) for i in batch["index"].tolist()[:1]]
                scores = torch.from_numpy(np.random.default_rng([20240501, *seed]).random((users, len(groups)),
                                                                                          dtype=np.float32))
            scores[rows, cols] = float("-inf")
            scores[:, blocked] = float("-inf")
            values, best = torch.topk(scores, min(k, int(cold.sum())), dim=1)
            for user in range(users):
                found[user][name] = best[user][torch.isfinite(values[user])].tolist()

    def _popular_unseen(self, batch: Mapping[str, torch.Tensor], k: int, users: int) -> np.ndarray:
        """The most-popular baseline's top k per user: the most popular items the user has not
        seen. Only the first k + (most items any user in the batch has seen) popular items can be
        chosen, so the baseline costs users x that many checks instead of users x all items."""
        popularity = self._popularity_values.numpy()
        cached = self._popularity_order
        if cached is None or cached[0] is not popularity:
            self._popularity_order = (popularity, np.argsort(-popularity, kind="stable"))
        order = self._popularity_order[1]
        seen_rows, seen_cols = batch["seen_rows"].cpu().numpy(), batch["seen_cols"].cpu().numpy()
        most_seen = int(np.bincount(seen_rows, minlength=users).max(initial=0))
        candidates = order[: k + most_seen]
        position = np.full(len(order), -1, dtype=np.int64)
        position[candidates] = np.arange(len(candidates))
        hit = position[seen_cols]
        blocked = np.zeros((users, len(candidates)), dtype=bool)
        blocked[seen_rows[hit >= 0], hit[hit >= 0]] = True
        return candidates[np.argsort(blocked, axis=1, kind="stable")[:, :k]]

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[list[int]]:
        rows, cols = batch["target_rows"].cpu().numpy(), batch["target_cols"].cpu().numpy()
        count = len(batch["index"])
        # One pass over the batch's held-out items instead of one scan per user.
        order = np.argsort(rows, kind="stable")
        ends = np.cumsum(np.bincount(rows, minlength=count)).tolist()
        flat = cols[order].tolist()
        return [flat[start:end] for start, end in zip([0] + ends[:-1], ends)]

    # -- saving ----------------------------------------------------------------------------------

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(model, FactorModel):
            # implicit's own ALS .npz layout: AlternatingLeastSquares.load(path) reads it.
            users = torch.arange(len(self.users), device=model.user_factors.device)
            np.savez(folder / FACTORS, user_factors=model.stored_user_vectors(users).detach().float().cpu().numpy(),
                     item_factors=model.item_factors.detach().float().cpu().numpy(),
                     popularity=model.popularity.cpu().numpy())
        else:
            similarity = model.similarity
            np.savez(folder / NEIGHBOURS, indptr=similarity.indptr, indices=similarity.indices, data=similarity.data,
                     shape=np.array(similarity.shape), popularity=model.popularity.cpu().numpy())
        _save_csr(folder / SEEN, self._seen)
        self.users.save(folder / "users.json")
        self.items.save(folder / "items.json")
        if isinstance(model, HybridModel):
            self._save_content(model, folder)
        config = {"format": 1, "kind": self.kind, "backbone": self.backbone, "implicit_class": KINDS[self.kind],
                  "hyperparameters": self.hyper, "users": len(self.users), "items": len(self.items),
                  "interactions": int(self._seen.nnz),
                  "init": str(self._init["folder"]) if self._init else None, "content": self.content}
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def _save_content(self, model: HybridModel, folder: Path) -> None:
        if self.content.get("finetuned"):
            if not self._trained_by_gradient:
                self.context.warn("--finetune-encoder: no gradient epochs ran (--epochs 0), so the text encoder was "
                                  "not trained; give --epochs 1 or more")
            encoder = model.text_encoder
            encoder.network.save_pretrained(folder / TEXT_ENCODER, safe_serialization=True)
            encoder.tokenizer.save_pretrained(folder / TEXT_ENCODER)
        arrays = {name: getattr(model, name).detach().float().cpu().numpy()
                  for name in ("content", "projection", "id_factors", "basis", "centre", "profile_weight", "user_profiles")}
        np.savez(folder / CONTENT, warm=model.warm.cpu().numpy(), **arrays)

    def load(self, folder: Path) -> torch.nn.Module:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        self.kind, self.backbone, self.hyper = config["kind"], config["backbone"], config["hyperparameters"]
        self.users, self.items = IdMap.load(folder / "users.json"), IdMap.load(folder / "items.json")
        self._seen = _load_csr(folder / SEEN)
        self._model_folder, self.content = folder, config.get("content")
        if self.content:
            self._model = self._load_hybrid(folder)
            return self._model
        if self.kind in FACTOR_KINDS:
            with np.load(folder / FACTORS, allow_pickle=False) as stored:
                model = FactorModel(len(self.users), len(self.items), stored["user_factors"].shape[1], self.threads)
                model.set_factors(stored["user_factors"], stored["item_factors"], stored["popularity"])
            return self._with_fold_in(model)
        model = NeighbourModel(len(self.items))
        model.similarity = _load_csr(folder / NEIGHBOURS)
        with np.load(folder / NEIGHBOURS, allow_pickle=False) as stored:
            model.popularity = torch.as_tensor(stored["popularity"])
        return model

    def _load_hybrid(self, folder: Path) -> HybridModel:
        from taskzoo.plugins import get_host
        from taskzoo.weights import resolve_backbone

        host = get_host()
        self._encoders = {"text_spec": resolve_backbone(host, self.name, self.content["text_encoder"], "text encoder",
                                                        "--text-encoder")}
        if self.content.get("image_encoder"):
            self._encoders["image_spec"] = resolve_backbone(host, self.name, self.content["image_encoder"],
                                                            "image encoder", "--image-encoder")
        with np.load(folder / FACTORS, allow_pickle=False) as factors, np.load(folder / CONTENT, allow_pickle=False) as content:
            rank = content["projection"].shape[1]
            model = HybridModel(len(self.users), len(self.items), rank, content["content"].shape[1], self.threads,
                                profile_dims=content["basis"].shape[1])
            model.set_content(content["content"], content["warm"], content["projection"], content["id_factors"],
                              **{name: content[name] for name in ("basis", "centre", "profile_weight", "user_profiles")})
            with torch.no_grad():
                # factors.npz holds the users' whole vectors (implicit's layout); the factors come first.
                model.user_factors.data = torch.as_tensor(np.ascontiguousarray(factors["user_factors"][:, :rank]))
                model.popularity = torch.as_tensor(factors["popularity"])
            self._content_vectors = content["content"]
            self._item_groups = torch.as_tensor(~content["warm"]).long()
        return self._with_fold_in(model)

    def export_graph(self, model: torch.nn.Module) -> Any:
        from taskzoo_recommendation.models import export_graph

        def id_maps(folder: Path) -> None:
            self.users.save(folder / "users.json")
            self.items.save(folder / "items.json")

        graph = export_graph(model, self.backbone, {
            "users": "users.json beside the graph: user ids in row order (an unknown user: -1, served the most "
                     "popular items)", "items": "items.json beside the graph: item ids in column order"})
        graph.files = id_maps
        return graph

    def answer(self, prediction: Mapping[str, Any]) -> Any:
        return prediction["items"]

    @property
    def _popularity_values(self) -> torch.Tensor:
        matrix = self._fit_matrix if self._fit_matrix is not None else self._seen
        cached = self._popularity_cache
        if cached is None or cached[0] is not matrix:
            self._popularity_cache = (matrix, torch.as_tensor(_popularity(matrix)))
        return self._popularity_cache[1]

    # -- outputs ---------------------------------------------------------------------------------

    def records(self, data: Queries, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per recommended item: the user (or item, for --similar-to), the item, its score and rank."""
        query_column = "user" if data.kind == "users" else "item"
        result_column = "item" if data.kind == "users" else "similar_item"
        rows = []
        for prediction in sorted(predictions, key=lambda p: p["index"]):
            query = data.ids[prediction["index"]]
            for rank, (item, score) in enumerate(zip(prediction["items"], prediction["scores"]), start=1):
                rows.append({query_column: query, result_column: self.items.ids[item], "score": round(float(score), 6),
                             "rank": rank})
        return rows

    def write_predictions(self, data: Queries, predictions: list[dict[str, Any]], output: Path | None) -> str:
        query_column = "user" if data.kind == "users" else "item"
        result_column = "item" if data.kind == "users" else "similar_item"
        rows = self.records(data, predictions)
        suffix = output.suffix.lower() if output else ".txt"
        if suffix == ".jsonl":
            text = json_lines_text(rows)
        elif suffix in (".csv", ".tsv", ".txt"):
            text = delimited_text(rows, [query_column, result_column, "score", "rank"], tabs=suffix != ".csv")
        else:
            raise UserError(f"--output {output}: unknown file type; use .csv, .tsv or .jsonl")
        return write_or_return(text, output)

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        names = ["precision_at_k", "map_at_k", "ndcg_at_k", "auc_at_k"]
        if any(f"popular_{name}" not in metrics for name in names):
            return []
        from taskzoo_recommendation.pictures import metrics_against_baseline

        baseline = {name: metrics[f"popular_{name}"] for name in names}
        k = metrics.get("k")
        lines = [f"| metric (k={k}) | {self.kind} | most popular |", "|---|---|---|"]
        lines += [f"| {name} | {metrics[name]:.4f} | {baseline[name]:.4f} |" for name in names]
        for group, arms in (("warm", ("warm", "warm_popular")), ("cold", ("cold", "cold_content", "cold_random"))):
            if f"{group}_users" in metrics:
                lines += ["", f"| {group} items (k={k}, {metrics[f'{group}_users']} users) | "
                          + " | ".join(arm.replace("_", " ") for arm in arms) + " |", "|---" * (len(arms) + 1) + "|"]
                lines += [f"| {name} | " + " | ".join(f"{metrics[f'{arm}_{name}_at_k']:.4f}" for arm in arms) + " |"
                          for name in ("precision", "recall", "ndcg", "map")]
        (folder / "ranking_metrics.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        pictures = [metrics_against_baseline(metrics, baseline, names, k, self.kind, folder / "ranking_metrics.png")]
        if "warm_users" in metrics or "cold_users" in metrics:
            from taskzoo_recommendation.pictures import warm_and_cold

            pictures.append(warm_and_cold(metrics, k, self.kind, folder / "warm_and_cold.png"))
        if isinstance(metrics.get("recall_by_k"), Mapping) and len(metrics["recall_by_k"]["k"]) > 1:
            from taskzoo_recommendation.pictures import recall_curves

            pictures.append(recall_curves(metrics["recall_by_k"], self.kind, folder / "recall_at_k.png"))
        return pictures

    def model_card_usage(self, run_folder: Path) -> str:
        model = run_folder / "model"
        return (
            "Recommend, find similar items, or fold in new interactions:\n\n```\n"
            f"tasks predict --model {run_folder} --user USER_ID --k 10\n"
            f"tasks predict --model {run_folder} --data users.txt --output recs.csv\n"
            f"tasks predict --model {run_folder} --similar-to ITEM_ID --k 10\n"
            + (f"tasks predict --model {run_folder} --data users.txt --items new_items.csv --k 10   # rank only these\n"
               f"tasks predict --model {run_folder} --liked ITEM_ID,ITEM_ID --k 10                  # a visitor\n"
               if self.content else f"tasks run recommendation --data new_interactions.csv --init {run_folder}\n")
            + "```\n\n"
            "The files are plain arrays (no pickle): `users.json` / `items.json` map row and column numbers to "
            "your ids, `seen.npz` holds the training interactions (a CSR matrix) and `factors.npz` the factors:\n\n"
            "```python\nimport json, numpy as np\n"
            f"factors = np.load(\"{model / FACTORS}\", allow_pickle=False)\n"
            f"items = json.load(open(\"{model / 'items.json'}\"))\n"
            "scores = factors[\"user_factors\"][0] @ factors[\"item_factors\"].T   # user 0's scores\n```\n"
        )


class _EvalCollate:
    """Batches of users with the items to exclude (seen) and, for evaluation, the held-out items.
    ``seen`` rows are the users' own, or ``rows`` says which row of ``seen`` belongs to each query
    (queries that bring their own history). ``candidates``: the only items to rank (predict
    --items); ``groups()``: warm (0) or cold (1) per item, to evaluate them apart (known once the
    model is fitted, after the loader is made)."""

    def __init__(self, users: np.ndarray, seen: Any, targets: Any | None, k: int, *, rows: np.ndarray | None = None,
                 candidates: torch.Tensor | None = None, groups: Callable[[], torch.Tensor | None] | None = None) -> None:
        self.users, self.seen, self.targets = np.asarray(users, dtype=np.int64), seen, targets
        self.k = torch.tensor(k)
        self.rows, self.candidates, self.groups = rows, candidates, groups

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        users = self.users[indices]
        known = np.clip(users, 0, None) if self.rows is None else self.rows[indices]
        seen = self.seen[known]
        seen_rows = np.repeat(np.arange(len(users)), np.diff(seen.indptr))
        keep = users[seen_rows] != -1  # unknown users (popular fallback) have seen nothing
        batch = {
            "users": torch.as_tensor(users),
            "index": torch.as_tensor(indices),
            "seen_rows": torch.as_tensor(seen_rows[keep]),
            "seen_cols": torch.as_tensor(seen.indices[keep].astype(np.int64)),
            "seen_weights": torch.as_tensor(seen.data[keep].astype(np.float32)),
            "top_k": self.k,
        }
        if self.candidates is not None:
            batch["candidates"] = self.candidates
        groups = self.groups() if self.groups is not None else None
        if groups is not None and self.targets is not None:
            batch["item_group"] = groups
        if self.targets is not None:
            target = self.targets[users]
            batch["target_rows"] = torch.as_tensor(np.repeat(np.arange(len(users)), np.diff(target.indptr)))
            batch["target_cols"] = torch.as_tensor(target.indices.astype(np.int64))
        return batch


class _TripleCollate:
    """(user, item the user interacted with, item the user did not) for the BPR loss. Negatives are
    drawn uniformly from a generator seeded by the run's seed and the batch's examples (which the
    sampler shuffles anew each epoch), not from the global random state: a run resumed in the middle
    of an epoch, or loaded by other workers, draws the same negatives as one that ran straight."""

    def __init__(self, users: np.ndarray, items: np.ndarray, matrix: Any, seed: int = 0) -> None:
        self.users, self.items, self.seed = users.astype(np.int64), items.astype(np.int64), seed
        self.n_items = matrix.shape[1]
        coo = matrix.tocoo()
        self.positive_keys = np.sort(coo.row.astype(np.int64) * self.n_items + coo.col)

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        found = np.searchsorted(self.positive_keys, keys)
        found = np.clip(found, 0, len(self.positive_keys) - 1)
        return self.positive_keys[found] == keys

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        users, positives = self.users[indices], self.items[indices]
        random = np.random.default_rng([self.seed, *indices])
        negatives = random.integers(self.n_items, size=len(indices), dtype=np.int64)
        for _ in range(3):  # resample the few negatives that are in fact positives
            clash = self._is_positive(users, negatives)
            if not clash.any():
                break
            negatives[clash] = random.integers(self.n_items, size=int(clash.sum()), dtype=np.int64)
        return {"users": torch.as_tensor(users), "positives": torch.as_tensor(positives),
                "negatives": torch.as_tensor(negatives), "index": torch.as_tensor(indices)}
