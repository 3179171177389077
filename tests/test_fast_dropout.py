"""CPU dropout from 16 random bits per element (taskzoo.fast_dropout): the same distribution as
torch.dropout, drawn from torch's generator, and the trainer uses it only where it should."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from taskzoo.fast_dropout import LEVELS, FastCpuDropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_keep_each_element_with_the_asked_probability(p):
    torch.manual_seed(0)
    count = 2_000_000
    keep, keep_probability = keep_mask((count,), p)
    assert keep.dtype == torch.bool and keep.shape == (count,)
    assert keep_probability == 1 - round(p * LEVELS) / LEVELS
    assert abs(keep_probability - (1 - p)) <= 0.5 / LEVELS
    sigma = math.sqrt(keep_probability * (1 - keep_probability) / count)
    assert abs(keep.float().mean().item() - keep_probability) < 5 * sigma
    # Neighbours are independent: the four elements of one 64-bit draw are not alike.
    pairs = keep[: count // 4 * 4].view(-1, 4)
    both = (pairs[:, 0] & pairs[:, 1]).float().mean().item()
    assert abs(both - keep_probability**2) < 10 * sigma


@pytest.mark.parametrize("p", [0.1, 0.5, 1 / 3])
def test_an_element_is_kept_exactly_when_its_16_random_bits_reach_the_drop_level(p):
    # Enough elements that each of the 65536 levels comes up about 64 times, the threshold's own too;
    # an odd count leaves the last draw's last elements over.
    count = 1 << 22 | 3
    torch.manual_seed(2)
    keep, _ = keep_mask((count,), p)
    torch.manual_seed(2)
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    # Each element's own 16 bits, as a number from 0 to 65535 (the signed value, offset).
    level = torch.from_numpy(words.numpy().view("<i2")[:count].astype("int32")) + LEVELS // 2
    assert torch.equal(keep, level >= round(p * LEVELS))


def test_dropout_keeps_the_expectation_and_its_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.full((1000, 1000), 3.0, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0.74 < kept.float().mean().item() < 0.76
    assert torch.allclose(y[kept], torch.tensor(3.0 / 0.75))  # 0.25 * 65536 is whole: exact
    assert abs(y.mean().item() - 3.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)


def test_the_same_seed_draws_the_same_masks():
    masks = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        masks.append(keep_mask((64, 64), 0.3)[0])
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_the_mode_replaces_dropout_layers_and_calls_only_while_training():
    x = torch.randn(32, 48)
    torch.manual_seed(3)
    expected = dropout(x, 0.2)
    layer = torch.nn.Dropout(0.2)
    for call in (layer, lambda t: F.dropout(t, 0.2), lambda t: torch.dropout(t, 0.2, True)):
        torch.manual_seed(3)
        with FastCpuDropout():
            assert torch.equal(call(x), expected)
    with FastCpuDropout():
        assert torch.equal(layer.eval()(x), x)
        assert torch.equal(F.dropout(x, 0.0), x)
        inplace = x.clone()
        torch.manual_seed(3)
        F.dropout(inplace, 0.2, inplace=True)
    assert torch.equal(inplace, expected)


def _attention_inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=dtype) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False  # the first sequence's last two keys are padding
    return q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["bool", "float", None])
def test_attention_with_dropout_computes_what_pytorch_does(dtype, mask_kind):
    q, k, v, mask = _attention_inputs(dtype)
    attn_mask = {"bool": mask, "float": torch.zeros(mask.shape).masked_fill(~mask, -1e4).to(dtype), None: None}[mask_kind]
    # A drop probability below 1/65536 keeps everything: the result is attention without dropout.
    with FastCpuDropout():
        ours = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=1e-6, scale=0.3)
    float_mask = attn_mask.float() if mask_kind == "float" else attn_mask
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=float_mask, scale=0.3)
    assert ours.dtype == dtype
    assert torch.allclose(ours.float(), reference, atol=1e-5 if dtype == torch.float32 else 2e-2)
    # With dropout, the attention weights are dropped with the mask drawn from torch's generator.
    torch.manual_seed(5)
    with FastCpuDropout():
        dropped = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.5, scale=0.3)
    torch.manual_seed(5)
    keep, keep_probability = keep_mask((2, 3, 5, 5), 0.5)
    scores = q.float() @ k.float().transpose(-2, -1) * 0.3
    if attn_mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    expected = (scores.softmax(-1) * keep / keep_probability) @ v.float()
    assert torch.allclose(dropped.float(), expected.to(dtype).float(), atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_causal_attention_keeps_pytorchs_own_dropout():
    q, k, v, _ = _attention_inputs()
    torch.manual_seed(6)
    stock = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
    torch.manual_seed(6)
    with FastCpuDropout():
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True), stock)
