"""The trainer's CPU kernels (taskzoo.cpu_kernels): dropout from 16 random bits per element, the same
distribution as torch.dropout drawn from torch's generator; depthwise convolutions that would run in
bf16 computed in float32; and the trainer uses them only where it should."""

from __future__ import annotations

import math
import platform
import sys
from contextlib import nullcontext
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from taskzoo.cpu_kernels import LEVELS, CpuTrainingKernels, SharedInputProjections, dropout, keep_mask


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
        with CpuTrainingKernels():
            assert torch.equal(call(x), expected)
    with CpuTrainingKernels():
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
    with CpuTrainingKernels():
        ours = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=1e-6, scale=0.3)
    float_mask = attn_mask.float() if mask_kind == "float" else attn_mask
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=float_mask, scale=0.3)
    assert ours.dtype == dtype
    assert torch.allclose(ours.float(), reference, atol=1e-5 if dtype == torch.float32 else 2e-2)
    # With dropout, the attention weights are dropped with the mask drawn from torch's generator.
    torch.manual_seed(5)
    with CpuTrainingKernels():
        dropped = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.5, scale=0.3)
    torch.manual_seed(5)
    keep, keep_probability = keep_mask((2, 3, 5, 5), 0.5)
    scores = q.float() @ k.float().transpose(-2, -1) * 0.3
    if attn_mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    expected = (scores.softmax(-1) * keep / keep_probability) @ v.float()
    assert torch.allclose(dropped.float(), expected.to(dtype).float(), atol=1e-5 if dtype == torch.float32 else 2e-2)


def _attention_by_autograd(q, k, v, attn_mask, dropout_p, scale):
    """The composition `_AttentionWithDropout` writes out, differentiated by autograd."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(attn_mask.logical_not(), torch.finfo(torch.float32).min)
    elif attn_mask is not None:
        scores = scores + attn_mask
    keep, keep_probability = keep_mask(scores.shape, dropout_p)
    return ((scores.softmax(-1) * (keep.float() * (1.0 / keep_probability))) @ v.float()).to(v.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "learned", "learned per element", None])
def test_attention_with_dropout_has_autograds_gradient_bit_for_bit(dtype, mask_kind):
    torch.manual_seed(8)
    # Cross-attention shapes (7 queries, 5 keys, values 6 wide), heads laid out as transformers
    # views them: [batch, length, heads x width] transposed, not contiguous.
    q = torch.randn(2, 7, 3 * 8).view(2, 7, 3, 8).transpose(1, 2).to(dtype)
    k = torch.randn(2, 5, 3 * 8).view(2, 5, 3, 8).transpose(1, 2).to(dtype)
    v = torch.randn(2, 3, 5, 6, dtype=dtype)
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    padding[0, ..., 3:] = False
    attn_mask = {"bool": padding, "float": torch.zeros(padding.shape).masked_fill(~padding, -1e4).to(dtype),
                 "learned": torch.randn(1, 3, 7, 5), "learned per element": torch.randn(2, 3, 7, 5),
                 None: None}[mask_kind]
    output_gradient = torch.randn(2, 3, 7, 6, dtype=dtype)

    def gradients(attention):
        inputs = [tensor.detach().requires_grad_() for tensor in (q, k, v)]
        learned = mask_kind is not None and mask_kind.startswith("learned")
        mask = attn_mask.detach().requires_grad_() if learned else attn_mask
        torch.manual_seed(9)
        output = attention(*inputs, mask, 0.3, 0.25)
        output.backward(output_gradient)
        return [output, *(tensor.grad for tensor in inputs)] + ([mask.grad] if learned else [])

    with CpuTrainingKernels():
        ours = gradients(lambda *a: F.scaled_dot_product_attention(*a[:4], dropout_p=a[4], scale=a[5]))
    reference = gradients(_attention_by_autograd)
    assert [t.dtype for t in ours] == [t.dtype for t in reference]
    for mine, theirs in zip(ours, reference):
        assert torch.equal(mine, theirs)
    if mask_kind == "bool":  # padded keys get no gradient
        assert ours[2][0, :, 3:].abs().sum() == 0 and ours[3][0, :, 3:].abs().sum() == 0


def test_causal_attention_keeps_pytorchs_own_dropout():
    q, k, v, _ = _attention_inputs()
    torch.manual_seed(6)
    stock = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
    torch.manual_seed(6)
    with CpuTrainingKernels():
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True), stock)


def _tiny_bert(hidden_dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(10)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=0.1)
    return BertForSequenceClassification(config).train()


def _linear_calls(function) -> list[int]:
    """The output widths of the products ``F.linear`` computed in ``function()``, in order
    (autocast's linear calls itself again: counted once)."""
    with torch.profiler.profile(record_shapes=True) as profile:
        function()
    return [event.input_shapes[1][0] for event in profile.events() if event.name == "aten::linear"
            and getattr(event.cpu_parent, "name", None) != "aten::linear"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_attentions_projections_are_one_product_with_the_same_loss_and_gradients(dtype):
    model = _tiny_bert()
    projections = SharedInputProjections(model)
    assert len(projections) == 2  # one self-attention a layer
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(11))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    labels = torch.tensor([0, 1, 1])

    def step(given):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(12)  # the same dropout masks in both
        with CpuTrainingKernels(given), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    separate_loss, separate = step(None)
    fused_loss, fused = step(projections)
    # The outputs are the separate products' own; an input's gradient is summed before it is
    # rounded once, so in bf16 the gradients differ from the separate ones' by rounding.
    assert torch.equal(fused_loss, separate_loss)
    tolerance = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 0.05, "atol": 1e-3}
    for name, gradient in separate.items():
        torch.testing.assert_close(fused[name], gradient, **tolerance, msg=name)
    # Two layers of six products, then the pooler and the classifier; stacked, two fewer a layer.
    assert _linear_calls(lambda: step(None)) == [32, 32, 32, 32, 64, 32] * 2 + [32, 2]
    assert _linear_calls(lambda: step(projections)) == [96, 32, 64, 32] * 2 + [32, 2]


class _CrossAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(self.query(x)[:, None], self.key(encoded)[:, None],
                                              self.value(encoded)[:, None])


def test_projections_of_different_inputs_stay_separate_products():
    torch.manual_seed(13)
    module = _CrossAttention()
    x, encoded = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    expected = module(x, encoded)
    projections = SharedInputProjections(module)
    assert len(projections) == 1
    # The first pass stacks, then finds the keys' input differs; from then on no stacked product.
    for widths in ([24, 8, 8], [8, 8, 8]):
        with CpuTrainingKernels(projections):
            assert _linear_calls(lambda: torch.testing.assert_close(module(x, encoded), expected)) == widths
    assert not projections._waiting and len(projections) == 0


def test_layers_that_are_not_plain_linear_projections_are_not_stacked():
    module = _CrossAttention()
    module.value = torch.nn.Linear(4, 8)  # another input width
    assert len(SharedInputProjections(module)) == 0
    module.value = torch.nn.Sequential(torch.nn.Linear(8, 8))  # not an nn.Linear (as a LoRA wrapper is not)
    assert len(SharedInputProjections(module)) == 0


def _depthwise(stride: int = 1) -> tuple[torch.nn.Conv2d, torch.Tensor]:
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(24, 48, 5, stride=stride, padding=2, groups=24).to(memory_format=torch.channels_last)
    image = torch.randn(2, 24, 16, 16).contiguous(memory_format=torch.channels_last)
    return conv, image


@pytest.mark.parametrize("stride", [1, 2])
def test_a_depthwise_convolution_under_bf16_autocast_computes_in_float32_and_returns_bf16(stride):
    conv, image = _depthwise(stride)
    bf16_input = image.to(torch.bfloat16)  # what the previous layer hands on under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = conv(bf16_input)
        with CpuTrainingKernels():
            ours = conv(bf16_input.clone().requires_grad_())
    assert ours.dtype == stock.dtype == torch.bfloat16
    # Float32 arithmetic on the same bf16 input and the unrounded weights, rounded once at the end.
    exact = F.conv2d(bf16_input.double(), conv.weight.double(), conv.bias.double(), stride, 2, 1, 24)
    assert torch.equal(ours, exact.to(torch.bfloat16)) or torch.allclose(ours.double(), exact, rtol=8e-3, atol=1e-5)
    assert (ours.double() - exact).abs().mean() < (stock.double() - exact).abs().mean()
    # The gradients reach the input in its dtype and the weights in float32, as with autocast.
    ours.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0


def test_the_float32_depthwise_gradients_are_the_exact_ones():
    conv, image = _depthwise()
    bf16_input = image.to(torch.bfloat16)
    upstream = torch.randn(2, 48, 16, 16).to(torch.bfloat16)  # gradients reach a bf16 output in bf16

    def weight_gradient(kernels) -> torch.Tensor:
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16), kernels:
            (conv(bf16_input) * upstream).float().sum().backward()
        return conv.weight.grad.double()

    ours, stock = weight_gradient(CpuTrainingKernels()), weight_gradient(nullcontext())
    weight = conv.weight.detach().double().requires_grad_()
    F.conv2d(bf16_input.double(), weight, None, 1, 2, 1, 24).mul(upstream.double()).sum().backward()
    assert torch.allclose(ours, weight.grad, rtol=1e-5, atol=1e-5)
    assert (ours - weight.grad).abs().max() * 10 < (stock - weight.grad).abs().max()  # bf16's is rounded


def test_other_convolutions_and_float32_training_keep_pytorchs_kernels(monkeypatch):
    from taskzoo import cpu_kernels

    calls = []
    monkeypatch.setattr(cpu_kernels, "_computes_in_bf16", lambda input: calls.append(input.dtype) or False)
    conv, image = _depthwise()
    with CpuTrainingKernels():
        assert torch.equal(conv(image), conv(image))
    assert calls == [torch.float32, torch.float32]  # asked, and declined: float32 stays PyTorch's
    monkeypatch.undo()
    dense = torch.nn.Conv2d(24, 8, 3, padding=1)
    grouped = torch.nn.Conv2d(24, 24, 3, padding=1, groups=6)  # four channels a group: not depthwise
    for layer in (dense, grouped):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = layer(image)
            with CpuTrainingKernels():
                assert torch.equal(layer(image), stock)
    with torch.autocast("cpu", dtype=torch.bfloat16), CpuTrainingKernels():
        assert conv(image).dtype == torch.bfloat16  # float32 input under bf16 autocast: replaced


_FREED_RSS = """
import sys, psutil, torch
from taskzoo.cpu_kernels import keep_freed_memory_for_reuse
if sys.argv[1] == "keep":
    assert keep_freed_memory_for_reuse()
process = psutil.Process()
for _ in range(3):  # a training step's large block: allocated, written, freed, again
    block = torch.ones(64 << 18)  # 64 MiB
    held = process.memory_info().rss
    del block
    print(held - process.memory_info().rss)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_blocks_stay_for_the_next_step_once_kept(tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}

    def returned_mib(mode: str) -> list[float]:
        done = subprocess.run([sys.executable, "-c", _FREED_RSS, mode], capture_output=True, text=True, env=env, check=True)
        return [int(line) / 2**20 for line in done.stdout.split()]

    assert min(returned_mib("default")) > 60  # glibc hands a freed 64 MiB block straight back to the kernel
    assert max(returned_mib("keep")) < 4  # kept: the next step reuses it without faulting it in again


@pytest.mark.parametrize("setting", [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
                                     {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}])
def test_a_users_own_allocator_settings_are_left_alone(monkeypatch, setting):
    from taskzoo import cpu_kernels

    calls = []
    monkeypatch.setattr(cpu_kernels.ctypes, "CDLL", lambda name: calls.append(name))
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert cpu_kernels.keep_freed_memory_for_reuse() is False and calls == []


def _regions(count: int = 60, images: int = 2, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps of two images (channels-last, as the trainer keeps them) and regions over them,
    some reaching past the map's edges and some smaller than a bin."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(images, 8, 12, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    corner = torch.rand(count, 2, generator=generator) * 150 - 20
    size = torch.rand(count, 2, generator=generator) * 80 + 0.5
    batch = torch.randint(0, images, (count, 1), generator=generator).float()
    return features, torch.cat([batch, corner, corner + size], 1)


def _roi_align_gradient(features: torch.Tensor, rois: torch.Tensor, kernels: Any, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    leaf = features.clone().requires_grad_()
    with kernels:
        output = torchvision.ops.roi_align(leaf, rois, (5, 4), 1 / 8, **options)
    output.backward(torch.arange(output.numel(), dtype=output.dtype).reshape(output.shape).sin())
    return output, leaf.grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_roi_align_gradients_are_torchvisions(aligned, sampling_ratio):
    features, rois = _regions()
    stock_output, stock = _roi_align_gradient(features, rois, nullcontext(), sampling_ratio=sampling_ratio, aligned=aligned)
    output, ours = _roi_align_gradient(features, rois, CpuTrainingKernels(), sampling_ratio=sampling_ratio, aligned=aligned)
    assert torch.equal(output, stock_output)  # the forward pass is torchvision's own
    assert stock.abs().sum() > 0 and torch.allclose(ours, stock, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_roi_align_gradient_passes_gradcheck():
    import torchvision

    features, rois = _regions(count=6)
    features = features[:, :2].double().requires_grad_()

    def align(x: torch.Tensor) -> torch.Tensor:
        with CpuTrainingKernels():
            return torchvision.ops.roi_align(x, rois.double(), (3, 2), 1 / 8, sampling_ratio=2, aligned=True)

    assert torch.autograd.gradcheck(align, (features,))


def test_roi_align_keeps_torchvisions_kernel_for_adaptive_sampling_and_handles_no_regions(monkeypatch):
    from taskzoo import cpu_kernels

    features, rois = _regions()
    calls = []
    monkeypatch.setattr(cpu_kernels._RoiAlignSparseBackward, "apply", lambda *args: calls.append(args))
    _, stock = _roi_align_gradient(features, rois, nullcontext(), sampling_ratio=0)
    _, ours = _roi_align_gradient(features, rois, CpuTrainingKernels(), sampling_ratio=0)
    assert calls == [] and torch.equal(ours, stock)
    monkeypatch.undo()
    _, none = _roi_align_gradient(features, rois[:0], CpuTrainingKernels(), sampling_ratio=2)
    assert none is None or not none.any()


# -- gradient clipping ---------------------------------------------------------------------------


def _parameters_with_gradients(scale: float) -> list[torch.nn.Parameter]:
    """A word-embedding-sized gradient, a dense layer's, a bias, a channels-last convolution's, a
    transposed one (which does not flatten without a copy), a bf16 one and a parameter without any."""
    torch.manual_seed(0)
    shapes_and_layouts = [((30522, 384), None), ((1536, 384), None), ((384,), None), ((32, 64, 5, 5), "channels_last"),
                          ((384, 96), "transposed"), ((64, 32), "bf16")]
    parameters = []
    for shape, layout in shapes_and_layouts:
        gradient = torch.randn(shape) * scale
        if layout == "channels_last":
            gradient = gradient.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            gradient = torch.randn(shape[::-1]).t() * scale
        elif layout == "bf16":
            gradient = gradient.to(torch.bfloat16)
        parameter = torch.nn.Parameter(torch.zeros(shape, dtype=gradient.dtype))
        parameter.grad = gradient
        parameters.append(parameter)
    parameters.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient
    return parameters


def test_clipping_scales_the_gradients_as_exact_arithmetic_would():
    from taskzoo.cpu_kernels import clip_grad_norm_

    parameters = _parameters_with_gradients(scale=0.01)
    originals = [p.grad.double() for p in parameters if p.grad is not None]
    exact_norm = torch.sqrt(sum((g * g).sum() for g in originals))
    assert exact_norm > 1.0  # so the gradients are clipped
    total = clip_grad_norm_(parameters, max_norm=1.0)
    assert total.dtype == torch.float32
    assert abs(total.double() - exact_norm) / exact_norm < 1e-5
    coefficient = 1.0 / (exact_norm + 1e-6)
    for parameter, original in zip((p for p in parameters if p.grad is not None), originals):
        tolerance = 1e-2 if parameter.grad.dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(parameter.grad.double(), original * coefficient, rtol=tolerance, atol=1e-9)
    clipped = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in parameters if p.grad is not None))
    assert clipped == pytest.approx(1.0, rel=1e-4)
    # The same total as PyTorch's clipping, which rounds its larger sums less precisely.
    reference = _parameters_with_gradients(scale=0.01)
    assert torch.nn.utils.clip_grad_norm_(reference, 1.0).item() == pytest.approx(total.item(), rel=1e-3)


def test_gradients_under_the_limit_are_left_as_they_are():
    from taskzoo.cpu_kernels import clip_grad_norm_

    parameters = _parameters_with_gradients(scale=1e-5)
    before = [(p.grad.data_ptr(), p.grad.clone()) for p in parameters if p.grad is not None]
    total = clip_grad_norm_(parameters, max_norm=1.0)
    assert 0 < total.item() < 1.0
    after = [(p.grad.data_ptr(), p.grad) for p in parameters if p.grad is not None]
    assert [pointer for pointer, _ in after] == [pointer for pointer, _ in before]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(after, before))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_gradient_is_clipped_as_pytorch_clips_it(bad):
    from taskzoo.cpu_kernels import clip_grad_norm_

    ours, torchs = _parameters_with_gradients(scale=0.01), _parameters_with_gradients(scale=0.01)
    for parameters in (ours, torchs):
        parameters[1].grad[3, 7] = bad
    total = clip_grad_norm_(ours, max_norm=1.0)
    reference = torch.nn.utils.clip_grad_norm_(torchs, max_norm=1.0)
    assert not math.isfinite(total.item()) and (math.isnan(total.item()) == math.isnan(reference.item()))
    for a, b in zip(ours, torchs):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, equal_nan=True)


def test_no_gradients_is_a_zero_norm():
    from taskzoo.cpu_kernels import clip_grad_norm_

    assert clip_grad_norm_([torch.nn.Parameter(torch.ones(2))], 1.0).item() == 0.0
