"""Item content as vectors: texts through a pretrained sentence encoder (mean of token vectors, as
sentence-transformers pools all-MiniLM-L6-v2), pictures through a pretrained timm network (pooled
ImageNet features), each L2-normalised and placed side by side. Also the closed-form map from
content into the collaborative space (`fit_projection`) that lets items nobody has interacted
with be ranked, and the encoder that ``--finetune-encoder`` trains."""

from __future__ import annotations

from collections.abc import Sequence
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


def fit_projection(content: np.ndarray, factors: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """The linear map W (content dims x factors) with content @ W closest to the items' factors,
    ridge-regularised, each item weighted (more interactions: more trusted factors). The ridge
    strength is chosen by leave-one-out error over a grid, in closed form from one SVD. Returns W
    and the chosen strength."""
    scale = np.sqrt(weights.astype(np.float64))[:, None]
    x, y = content.astype(np.float64) * scale, factors.astype(np.float64) * scale
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    best: tuple[float, float, np.ndarray] | None = None
    reference = float(np.mean(s ** 2)) if len(s) else 1.0
    for strength in reference * np.logspace(-4, 2, 13):
        shrink = s / (s ** 2 + strength)
        fitted = u @ ((s * shrink)[:, None] * uty)
        leverage = np.einsum("ij,j,ij->i", u, s * shrink, u)
        residual = (y - fitted) / np.clip(1.0 - leverage, 1e-6, None)[:, None]
        error = float(np.mean(residual ** 2))
        if best is None or error < best[0]:
            best = (error, float(strength), shrink)
    assert best is not None
    _, strength, shrink = best
    projection = vt.T @ (shrink[:, None] * uty)
    return projection.astype(np.float32), strength


def content_profile_scores(content: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor,
                           users: int) -> torch.Tensor:
    """The content-only baseline: each item's cosine similarity to the user's history, summed over
    the items the user interacted with (item-kNN on content, every history item a neighbour)."""
    normed = torch.nn.functional.normalize(content, dim=-1)
    profile = torch.zeros(users, content.shape[1], dtype=content.dtype, device=content.device)
    profile.index_add_(0, rows, normed[cols] * weights[:, None].to(content.dtype))
    return profile @ normed.T
