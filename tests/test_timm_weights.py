"""The offline EfficientNet-Lite0 weights, converted to timm's layout, really are ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from taskzoo.weights import locate  # noqa: E402
from taskzoo.plugins import PluginHost  # noqa: E402
from taskzoo.helpers.timm_weights import load_matching, positional_state_dict  # noqa: E402

IMAGENET_TABBY_CAT = 281
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def weights():
    backbone = PluginHost().default_backbone("segmentation")
    return positional_state_dict(Path(locate(backbone)), backbone.name)


def test_converted_network_classifies_the_chelsea_photo_as_a_cat(weights):
    from skimage import data

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(weights)
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    from PIL import Image

    image = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        top5 = model(image).softmax(-1)[0].topk(5).indices.tolist()
    assert top5[0] in IMAGENET_CATS, top5


def test_features_only_encoder_takes_the_matching_subset(weights):
    encoder = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True)
    loaded = load_matching(encoder, weights)
    assert loaded == len(encoder.state_dict()) < len(weights)
    assert torch.equal(encoder.state_dict()["conv_stem.weight"], weights["conv_stem.weight"])
