"""Item content as vectors: texts through a pretrained sentence encoder (mean of token vectors, as
sentence-transformers pools all-MiniLM-L6-v2), pictures through a pretrained timm network (pooled
ImageNet features), each L2-normalised and placed side by side. Also the closed-form map from
content into the collaborative space (`fit_projection`) that lets items nobody has interacted
with be ranked, and the encoder that ``--finetune-encoder`` trains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskzoo import BackboneSpec, UserError, progress
from taskzoo.helpers.hf import load_pretrained
from taskzoo.weights import available_offline, hub_reachable, locate

TEXT_TOKENS = 128  # item titles and descriptions: the start says what an item is
IMAGE_SIZE = 224
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TextEncoder(torch.nn.Module):
    """A transformers encoder with mean pooling over the real tokens, L2-normalised."""

    def __init__(self, network: torch.nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.network, self.tokenizer = network, tokenizer

    @property
    def dim(self) -> int:
        return int(self.network.config.hidden_size)

    def tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=TEXT_TOKENS,
                                   return_tensors="pt"))

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.network(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def train_last_layer(self) -> str:
        """Freeze everything but the last transformer layer; returns what trains, for the log."""
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        layers = _layers(self.network)
        if layers is None:
            raise UserError("--finetune-encoder: the text encoder's layers are not a list this task knows "
                            "(BERT-like encoders are); run without --finetune-encoder")
        for parameter in layers[-1].parameters():
            parameter.requires_grad_(True)
        return f"the last of {len(layers)} transformer layers"


def _layers(network: torch.nn.Module) -> Any:
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        found: Any = network
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, torch.nn.ModuleList) and len(found):
            return found
    return None


def load_text_encoder(backbone: BackboneSpec) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    def load(location: str, local_files_only: bool) -> TextEncoder:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
        network = AutoModel.from_pretrained(location, local_files_only=local_files_only)
        return TextEncoder(network, tokenizer)

    return load_pretrained(backbone, load)


def load_saved_text_encoder(folder: Path) -> TextEncoder:
    """The fine-tuned encoder a run saved (``model/text_encoder``: safetensors and tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    return TextEncoder(AutoModel.from_pretrained(folder, local_files_only=True),
                       AutoTokenizer.from_pretrained(folder, local_files_only=True))


@torch.no_grad()
def embed_texts(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    encoder.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad less
    result = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    with _bar(len(texts), "embedding item texts") as bar:
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            result[chosen] = encoder(encoder.tokens([texts[i] or " " for i in chosen])).float().numpy()
            bar.update(len(chosen))
    return result


def load_image_encoder(backbone: BackboneSpec) -> torch.nn.Module:
    """A timm network without its classifier: pooled features for one picture each."""
    import timm

    if backbone.source == "package":
        from taskzoo.helpers.timm_weights import positional_state_dict

        architecture = (backbone.upstream or backbone.name).removeprefix("timm/").split(".")[0]
        network = timm.create_model(architecture, pretrained=False)
        network.load_state_dict(positional_state_dict(Path(locate(backbone)), architecture))
        network.reset_classifier(0)
        return network.eval()
    name = backbone.location.removeprefix("timm/")
    if not available_offline(backbone) and not hub_reachable():
        raise UserError(f"--image-encoder {backbone.name}: not cached and the hub cannot be reached (no network?); "
                        "the offline default is efficientnet_lite0")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0).eval()
    except RuntimeError as error:  # timm: unknown model name
        raise UserError(f"--image-encoder {backbone.name}: {str(error).splitlines()[0]}") from None


@torch.no_grad()
def embed_images(network: torch.nn.Module, images: Sequence[Path | None], warn: Any, batch_size: int = 32) -> np.ndarray:
    """Pooled, L2-normalised features; zeros for items without a usable picture (one warning)."""
    from PIL import Image

    from taskzoo_recommendation.catalogue import image_problem

    rows = [i for i, image in enumerate(images) if image is not None]
    problems = [(i, image_problem(images[i])) for i in rows]
    broken = [(i, p) for i, p in problems if p]
    if broken:
        warn(f"{len(broken)} item image(s) cannot be used and count as no image, e.g. {broken[0][1]} "
             "(tasks check lists them)")
    usable = [i for i, p in problems if not p]
    dim = int(network.num_features)
    result = np.zeros((len(images), dim), dtype=np.float32)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    with _bar(len(usable), "embedding item images") as bar:
        for start in range(0, len(usable), batch_size):
            chosen = usable[start:start + batch_size]
            pixels = []
            for i in chosen:
                with Image.open(images[i]) as opened:
                    picture = opened.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                array = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
                pixels.append((array - mean) / std)
            features = network(torch.stack(pixels))
            result[chosen] = torch.nn.functional.normalize(features, dim=-1).numpy()
            bar.update(len(chosen))
    return result


def _bar(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="item", leave=False, dynamic_ncols=True, delay=2.0,
                disable=not progress.show())


RIDGE_GRID = np.logspace(-3, 1, 5)  # ridge strengths, relative to the content's mean squared singular value
# How much the user's content profile weighs beside the projection, in units that make both
# terms equally spread; None stands for the content profile alone.
PROFILE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, None)
FOLDS = 3


def _ridge_maps(content: np.ndarray, factors: np.ndarray, weights: np.ndarray,
                strengths: Sequence[float]) -> list[np.ndarray]:
    """Ridge maps W (content dims x factors), content @ W closest to factors, each item weighted,
    for every strength (relative), from one SVD."""
    scale = np.sqrt(weights.astype(np.float64))[:, None]
    u, s, vt = np.linalg.svd(content.astype(np.float64) * scale, full_matrices=False)
    uty = u.T @ (factors.astype(np.float64) * scale)
    reference = float(np.mean(s ** 2)) if len(s) else 1.0
    return [(vt.T @ ((s / (s ** 2 + strength * reference))[:, None] * uty)).astype(np.float32)
            for strength in strengths]


def user_profiles(matrix: Any, normed_content: np.ndarray) -> np.ndarray:
    """Each user's content profile: the weighted mean of the normalised content of their items."""
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (np.asarray(matrix @ normed_content) / np.maximum(totals, 1e-12)[:, None]).astype(np.float32)


def _ndcg(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = (np.take_along_axis(relevant, order, axis=1) * discounts).sum(1)
    ideal = np.cumsum(discounts)[np.minimum(relevant.sum(1).astype(np.int64), k) - 1]
    return float(np.mean(gains / ideal))


PROFILE_DIMS = 64  # the content profile term works in the items' first principal components


@dataclass
class HybridFit:
    """How items without interactions are scored: ``content @ projection`` against the user's
    factors, plus ``profile_weight`` x the user's content profile against the item's content,
    both in the principal components ``basis`` of the centred, normalised content."""

    projection: np.ndarray  # content dims x factors
    basis: np.ndarray  # content dims x profile dims
    centre: np.ndarray  # content dims
    profile_weight: float
    strength: float
    content_only: bool
    validation: dict[str, Any]


def normalised(content: np.ndarray) -> np.ndarray:
    return content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)


def fit_hybrid(content: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray, matrix: Any,
               regularization: float, alpha: float, seed: int) -> HybridFit:
    """Choose and fit how items without interactions are scored, on the items that have them.

    The described items with interactions are cut into folds; each fold in turn is treated as
    cold: the users are re-solved without its items (as ALS solves a user with the items fixed),
    the projection is fitted on the other items, and every (ridge strength, profile weight) ranks
    the fold's items for the users who interacted with them. The pair with the best NDCG@10 over
    the folds is then fitted on all of them. Content alone (the profile only) is among the choices,
    so the model is not meant to rank cold items worse than plain content similarity."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    counts = np.diff(matrix.tocsc().indptr)
    usable = np.flatnonzero((counts > 0) & (np.abs(content).sum(1) > 0))
    normed = normalised(content)
    centre = normed[usable].mean(0)
    _, _, vt = np.linalg.svd(normed[usable] - centre, full_matrices=False)
    basis = np.zeros((content.shape[1], PROFILE_DIMS), dtype=np.float32)  # fixed width: zero columns add nothing
    basis[:, : min(PROFILE_DIMS, len(vt))] = vt[:PROFILE_DIMS].T
    reduced = (normed - centre) @ basis
    folds = np.array_split(np.random.default_rng(seed).permutation(len(usable)), FOLDS) if len(usable) >= 30 else []
    totals = np.zeros((len(RIDGE_GRID), len(PROFILE_GRID)))
    evaluated = 0
    for fold in folds:
        held = usable[fold]
        kept = np.setdiff1d(usable, held)
        hidden = np.zeros(len(content), dtype=bool)
        hidden[held] = True
        visible = (matrix @ sp.diags((~hidden).astype(np.float32))).tocsr()
        visible.eliminate_zeros()
        targets = (matrix[:, held] > 0).toarray()
        users = np.flatnonzero(targets.any(1) & (np.diff(visible.indptr) > 0))
        if not len(users):
            continue
        solver = AlternatingLeastSquares(factors=user_factors.shape[1], regularization=regularization, alpha=alpha,
                                         num_threads=1)
        solver.item_factors = np.ascontiguousarray(np.where(hidden[:, None], 0.0, item_factors), dtype=np.float32)
        refitted = solver.recalculate_user(users, visible[users])
        content_part = (user_profiles(visible[users], normed) @ basis) @ reduced[held].T
        spread_content = float(content_part.std()) or 1.0
        relevant = targets[users].astype(np.float64)
        for row, projection in enumerate(_ridge_maps(content[kept], item_factors[kept], np.log1p(counts[kept]),
                                                     RIDGE_GRID)):
            factor_part = refitted @ (content[held] @ projection).T
            spread = float(factor_part.std()) or 1.0
            for column, weight in enumerate(PROFILE_GRID):
                scores = content_part if weight is None else factor_part + weight * spread / spread_content * content_part
                totals[row, column] += _ndcg(scores, relevant) * len(users)
        evaluated += len(users)
    if evaluated:
        row, column = np.unravel_index(int(np.argmax(totals)), totals.shape)
        ndcg = totals / evaluated
        validation = {"folds": len(folds), "users": evaluated, "ndcg_at_10": round(float(ndcg[row, column]), 4),
                      "projection_only_ndcg_at_10": round(float(ndcg[:, 0].max()), 4),
                      "content_only_ndcg_at_10": round(float(ndcg[0, -1]), 4)}
    else:  # too few items to validate on: the projection alone, moderately regularised
        row, column, validation = 2, 0, {"folds": 0}
    weight = PROFILE_GRID[column]
    projection = _ridge_maps(content[usable], item_factors[usable], np.log1p(counts[usable]), [RIDGE_GRID[row]])[0]
    factor_part = user_factors @ (content[usable] @ projection).T
    content_part = (user_profiles(matrix, normed) @ basis) @ reduced[usable].T
    ratio = (float(factor_part.std()) or 1.0) / (float(content_part.std()) or 1.0)
    return HybridFit(projection=np.zeros_like(projection) if weight is None else projection, basis=basis,
                     centre=centre.astype(np.float32), profile_weight=float(ratio * (1.0 if weight is None else weight)),
                     strength=float(RIDGE_GRID[row]), content_only=weight is None, validation=validation)


def content_profile_scores(content: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor,
                           users: int) -> torch.Tensor:
    """The content-only baseline: each item's cosine similarity to the user's history, summed over
    the items the user interacted with (item-kNN on content, every history item a neighbour)."""
    normed = torch.nn.functional.normalize(content, dim=-1)
    profile = torch.zeros(users, content.shape[1], dtype=content.dtype, device=content.device)
    profile.index_add_(0, rows, normed[cols] * weights[:, None].to(content.dtype))
    return profile @ normed.T
