"""Where training on the CPU is slow in PyTorch's kernels and glibc's allocator, and what the shared
trainer does instead.

While the shared trainer trains on the CPU, its forward passes run under `CpuTrainingKernels`, a
torch function mode that replaces three kinds of calls and leaves every other one to PyTorch;
its gradients are clipped by `clip_grad_norm_`.

Dropout. PyTorch draws a CPU dropout mask with ``bernoulli_``: one Mersenne Twister draw per
element, on one thread (pytorch/pytorch#138199). On two cores that was over a quarter of a MiniLM
training step, more than the attention's matrix products. Under the mode the same Bernoulli masks
are drawn from 16 random bits per element, four elements to each 64-bit draw of torch's own
generator (seeds, and resumed runs, stay exact), at about a third of the time per mask. The drop
probability is quantised to 1/65536 (``p=0.1`` drops 6554/65536 = 0.100006 of the elements) and
what is kept is scaled by the exact inverse of its keep probability, so the expected output is the
input, as with ``torch.dropout``. Attention with dropout on the CPU runs PyTorch's math path already
(its fused CPU kernel has no dropout); under the mode it is computed the same way, in float32, with
the mask drawn as above and the gradient written out, as autograd would take it but without its
copies. GPUs draw masks with a fast counter-based generator of their own and are
left alone, as are compiled models (inductor generates its own random numbers).

Depthwise convolutions in bf16. oneDNN has no depthwise kernel for a bf16 convolution's weight
gradient (nor for the data gradient of a strided one): it runs them as a generic grouped
convolution, one channel per group, three to seven times slower than in float32 (a Unet on
EfficientNet-Lite0 spent two fifths of its bf16 training step there). Under the mode a depthwise
``conv2d`` that would compute in bf16 computes in float32, from the same bf16 input and the float32
weights autocast would have rounded, and hands back bf16 as autocast would: the rest of the network
sees the dtype it expects, with a result at least as precise.

RoIAlign's gradient. torchvision's CPU ``roi_align`` backward walks every region, channel, bin and
sample in one thread, scattering into a channels-first gradient: two fifths of a Faster R-CNN
training step at 320 px on two cores. Under the mode, with a fixed sampling ratio (torchvision's
detectors use 2), the forward pass is torchvision's own and the backward pass multiplies the output
gradient by the sparse matrix of the same bilinear weights (16 to a bin for ratio 2), about eight
times faster; adaptive sampling keeps torchvision's kernel.

An attention's projections. The query, key and value projections of an attention module take the
same input through three ``nn.Linear`` layers; under autocast each casts that input to bf16 again,
and the backward pass rounds three input gradients to bf16, casts each back and adds them. Given
`SharedInputProjections`, the mode computes the three as one product over their stacked weights,
as PyTorch's ``nn.MultiheadAttention`` keeps them (one ``in_proj_weight``): one cast, one wider
product, and one input gradient summed in the product's float32 accumulator and rounded once.

Gradient clipping. `clip_grad_norm_` takes the norm of large gradients as BLAS dot products, up
to three times faster than PyTorch's CPU norm and closer to the exact value, and leaves gradients
under the limit untouched instead of multiplying them by one: a tenth of a MiniLM step at 20 tokens
was clipping.

Memory. glibc's malloc hands every block above its mmap threshold (at most 32 MiB while it adjusts
it itself) straight back to the kernel when freed, and trims the top of its heap the same way; the
next step then faults the same memory in again, page by page, zeroed by the kernel. A training step
frees and reallocates the same large blocks every time (a MiniLM's 47 MiB embedding gradient, a
Unet's activations): a fifteenth of a MiniLM step at 20 tokens, a tenth of a Unet step at 256 px.
`keep_freed_memory_for_reuse` raises both thresholds, so freed blocks stay in the process for the
next step, as the jemalloc or tcmalloc that PyTorch's CPU tuning guide preloads would keep them.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

LEVELS = 1 << 16  # the resolution of a drop probability: 16 random bits per element
_active = threading.local()  # the CpuTrainingKernels modes this thread is inside (``modes``), innermost last


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` keeping each element with probability ``1 - p`` (quantised to
    1/65536), drawn from torch's default generator; returns it and the exact keep probability."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    levels = words.view(torch.int16)[:count].view(shape)  # uniform over -32768..32767
    threshold = round(p * LEVELS)
    return levels >= threshold - LEVELS // 2, 1.0 - threshold / LEVELS


def kept_scale(like: torch.Tensor, p: float) -> torch.Tensor:
    """`keep_mask`'s mask for a tensor like ``like``, in its dtype: the inverse of the keep
    probability where an element is kept, zero where it is dropped (what dropout multiplies by)."""
    keep, keep_probability = keep_mask(like.shape, p, like.device)
    return keep.to(like.dtype).mul_(1.0 / keep_probability)


def dropout(input: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """``torch.dropout(input, p, train=True)`` with the mask of `keep_mask`."""
    scaled = kept_scale(input, p)
    return input.mul_(scaled) if inplace else input * scaled


class _AttentionWithDropout(torch.autograd.Function):
    """`F.scaled_dot_product_attention` as PyTorch's math path computes it on the CPU (reduced
    precision inputs in float32), with the attention weights dropped by `keep_mask`'s mask, and its
    gradient written out: the same products, softmax gradient and rounding as autograd takes through
    that composition (the tests compare them bit for bit), without the copies autograd makes of the
    heads' transposed layouts and of the scores for each elementwise step, a fifth of the
    attention's time at 40 tokens. A query row whose keys are all masked attends to all of them
    evenly (transformers' eager attention does so) where the math path gives zeros: such rows are
    padding, and neither is NaN."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None, dropout_p: float, scale: float) -> torch.Tensor:
        *batch, query_length, width = query.shape
        key_length, value_width = key.shape[-2], value.shape[-1]
        heads = math.prod(batch)

        def as_float(tensor: torch.Tensor, length: int, columns: int) -> torch.Tensor:
            # One pass converts the dtype and lays the heads out contiguously, which the products need
            # (a float32 tensor comes back as it is from ``to``, hence ``contiguous``).
            return tensor.to(torch.float32, memory_format=torch.contiguous_format).contiguous().view(heads, length, columns)

        q, k, v = as_float(query, query_length, width), as_float(key, key_length, width), as_float(value, key_length, value_width)
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale).view(*batch, query_length, key_length)
        masked_out = None
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            masked_out = attn_mask.logical_not()
            scores.masked_fill_(masked_out, torch.finfo(scores.dtype).min)
        elif attn_mask is not None:
            scores.add_(attn_mask)
        weights = scores.softmax(dim=-1)
        scaled = kept_scale(weights, dropout_p)
        dropped = (weights * scaled).view(heads, query_length, key_length)
        ctx.save_for_backward(q, k, v, weights, scaled, dropped, masked_out)
        ctx.scale, ctx.mask_shape, ctx.dtypes = scale, None if attn_mask is None else attn_mask.shape, (
            query.dtype, key.dtype, value.dtype, None if attn_mask is None else attn_mask.dtype)
        return torch.bmm(dropped, v).view(*batch, query_length, value_width).to(value.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, weights, scaled, dropped, masked_out = ctx.saved_tensors
        query_dtype, key_dtype, value_dtype, mask_dtype = ctx.dtypes
        heads, query_length, key_length = dropped.shape
        batch = weights.shape[:-2]
        need_query, need_key, need_value, need_mask = ctx.needs_input_grad[:4]
        grad = grad_output.to(torch.float32, memory_format=torch.contiguous_format).contiguous()
        grad = grad.view(heads, query_length, -1)
        grad_value = torch.bmm(dropped.transpose(1, 2), grad) if need_value else None
        grad_weights = torch.bmm(grad, v.transpose(1, 2)).view(weights.shape).mul_(scaled)
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, torch.float32)
        if masked_out is not None:
            grad_scores.masked_fill_(masked_out, 0)
        grad_mask = grad_scores.sum_to_size(ctx.mask_shape).to(mask_dtype) if need_mask else None
        # In place only where no mask's gradient can be a view of it (a mask as large as the scores).
        grad_products = (grad_scores * ctx.scale if need_mask else grad_scores.mul_(ctx.scale)).view(
            heads, query_length, key_length)
        grad_query = torch.bmm(grad_products, k) if need_query else None
        grad_key = torch.bmm(grad_products.transpose(1, 2), q) if need_key else None

        def shaped(gradient: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if gradient is None else gradient.view(*batch, *gradient.shape[1:]).to(dtype)

        return (shaped(grad_query, query_dtype), shaped(grad_key, key_dtype), shaped(grad_value, value_dtype),
                grad_mask, None, None)


def _dropout_call(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    if training and 0 < p < 1 and input.device.type == "cpu":
        return dropout(input, p, inplace)
    return None


def _torch_dropout_call(input: torch.Tensor, p: float, train: bool) -> Any:
    return _dropout_call(input, p, train)


def _attention_call(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, *, enable_gqa: bool = False,
) -> Any:
    simple = not (is_causal or enable_gqa or query.is_nested) and query.dim() >= 3
    # Heads broadcast against each other keep PyTorch's own path too.
    simple = simple and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]
    if dropout_p > 0 and query.device.type == "cpu" and simple:
        scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
        with torch.autocast(query.device.type, enabled=False):  # autocast would take the products back to bf16
            return _AttentionWithDropout.apply(query, key, value, attn_mask, dropout_p, scale)
    return None  # causal, grouped-query and nested attention keep PyTorch's own path


def _computes_in_bf16(input: torch.Tensor) -> bool:
    if input.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _conv2d_call(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0,
    dilation: Any = 1, groups: int = 1,
) -> Any:
    depthwise = groups > 1 and weight.shape[1] == 1
    if not (depthwise and input.device.type == "cpu" and _computes_in_bf16(input)):
        return None
    with torch.autocast("cpu", enabled=False):
        output = F.conv2d(input.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                          dilation, groups)
    return output.to(torch.bfloat16)


def _bilinear_axis(
    start: torch.Tensor, size: torch.Tensor, bins: int, samples: int, length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of RoIAlign's bilinear sampling, as torchvision's CPU kernel computes it: for each
    region, bin and sample, the two neighbouring pixel indices [R, bins, samples, 2] and their
    weights (zero for a sample outside the feature map)."""
    bin_size = size / bins
    at = (start[:, None, None] + torch.arange(bins, dtype=start.dtype)[None, :, None] * bin_size[:, None, None]
          + (torch.arange(samples, dtype=start.dtype) + 0.5)[None, None, :] * (bin_size / samples)[:, None, None])
    inside = (at >= -1.0) & (at <= length)
    at = at.clamp(min=0)
    low = at.long()
    last = low >= length - 1
    low = torch.where(last, length - 1, low)
    high = torch.where(last, length - 1, low + 1)
    fraction = torch.where(last, torch.zeros_like(at), at - low)
    weights = torch.stack([1 - fraction, fraction], -1) * inside[..., None]
    return torch.stack([low, high], -1), weights


class _RoiAlignSparseBackward(torch.autograd.Function):
    """torchvision's ``roi_align`` forward; its input gradient as one sparse-dense product."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
                pooled_width: int, sampling_ratio: int, aligned: bool) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.shape, ctx.dtype = input.shape, input.dtype
        ctx.setup = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        return torch.ops.torchvision.roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                               aligned)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_height, pooled_width, samples, aligned = ctx.setup
        images, channels, height, width = ctx.shape
        rois = rois.double()  # weights at least as exact as the kernel's own, whatever the training dtype
        offset = 0.5 if aligned else 0.0
        start_x, start_y = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
        size_x, size_y = rois[:, 3] * spatial_scale - offset - start_x, rois[:, 4] * spatial_scale - offset - start_y
        if not aligned:
            size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
        ys, y_weights = _bilinear_axis(start_y, size_y, pooled_height, samples, height)
        xs, x_weights = _bilinear_axis(start_x, size_x, pooled_width, samples, width)
        regions = rois.shape[0]
        dtype = torch.float64 if ctx.dtype == torch.float64 else torch.float32  # sparse products: not in bf16
        # Every (region, bin) row: samples x samples x 4 neighbours, in the order (iy, ix, y corner, x corner).
        pixel = (rois[:, 0].long()[:, None, None, None, None, None, None] * (height * width)
                 + ys[:, :, None, :, None, :, None] * width + xs[:, None, :, None, :, None, :])
        weight = y_weights[:, :, None, :, None, :, None] * x_weights[:, None, :, None, :, None, :] / (samples * samples)
        shape = (regions, pooled_height, pooled_width, samples, samples, 2, 2)
        per_bin = samples * samples * 4
        rows = regions * pooled_height * pooled_width
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            bins_to_pixels = torch.sparse_csr_tensor(
                torch.arange(0, rows * per_bin + 1, per_bin), pixel.expand(shape).reshape(-1),
                weight.expand(shape).reshape(-1).to(dtype), (rows, images * height * width),
            )
            per_bin_gradient = grad_output.to(dtype).permute(0, 2, 3, 1).reshape(rows, channels)
            gradient = torch.sparse.mm(bins_to_pixels.t(), per_bin_gradient)  # [images x height x width, channels]
        return (gradient.view(images, height, width, channels).permute(0, 3, 1, 2).to(ctx.dtype),
                None, None, None, None, None, None)


def _roi_align_call(
    input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
    sampling_ratio: int, aligned: bool,
) -> Any:
    if input.device.type != "cpu" or sampling_ratio <= 0 or not (input.requires_grad and torch.is_grad_enabled()):
        return None  # adaptive sampling has a varying number of samples a bin: torchvision's kernel
    return _RoiAlignSparseBackward.apply(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                         aligned)


# The names transformers' encoders give an attention's three projections of one input.
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"),
                    ("query_proj", "key_proj", "value_proj"))


class SharedInputProjections:
    """The attention projections of ``model`` (plain ``nn.Linear`` children named as in
    `PROJECTION_NAMES`, with the same input width, dtype and bias or none), computed as one product
    when a forward pass calls them in order on the same input tensor.

    The first projection's call computes all three over their weights stacked for that pass (they
    stay three parameters: checkpoints, optimizers and adapters see the model as it was) and keeps
    the others' outputs for their own calls. A projection called on another input (a
    cross-attention's keys and values come from the encoder) or out of order turns fusing off for
    its group: those run as before from then on. The outputs are the separate products' values; the
    gradients differ only in rounding, the input's being summed before it is rounded once."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._group_of: dict[torch.Tensor, tuple[int, tuple[torch.nn.Linear, ...]]] = {}
        for module in model.modules():
            for names in PROJECTION_NAMES:
                layers = tuple(getattr(module, name, None) for name in names)
                if all(type(layer) is torch.nn.Linear for layer in layers) and _stackable(layers):
                    for index, layer in enumerate(layers):
                        self._group_of[layer.weight] = (index, layers)
        self._waiting: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        """How many groups of projections are stacked."""
        return len({layers for _, layers in self._group_of.values()})

    def linear(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Any:
        """``F.linear(input, weight, bias)`` for a projection of a group; None for any other call."""
        found = self._group_of.get(weight)
        if found is None:
            return None
        index, layers = found
        if bias is not layers[index].bias:
            return None
        if index == 0:
            stacked_bias = None if bias is None else torch.cat([layer.bias for layer in layers])
            outputs = F.linear(input, torch.cat([layer.weight for layer in layers]), stacked_bias).split(
                [layer.out_features for layer in layers], dim=-1)
            for layer, output in zip(layers[1:], outputs[1:]):
                self._waiting[layer.weight] = (input, output)
            return outputs[0]
        waiting = self._waiting.pop(weight, None)
        if waiting is None or waiting[0] is not input:  # not one input: the group runs separately from now on
            for layer in layers:
                self._group_of.pop(layer.weight, None)
                self._waiting.pop(layer.weight, None)
            return None
        return waiting[1]

    def forget(self) -> None:
        """Drop outputs kept for calls that did not come (a forward pass ended early)."""
        self._waiting.clear()


def _stackable(layers: tuple[Any, ...]) -> bool:
    first = layers[0]
    return all(layer.in_features == first.in_features and layer.weight.dtype == first.weight.dtype
               and layer.weight.device == first.weight.device and (layer.bias is None) == (first.bias is None)
               for layer in layers)


_REPLACEMENTS: dict[Callable[..., Any], Callable[..., Any]] = {
    F.dropout: _dropout_call,
    torch.dropout: _torch_dropout_call,
    F.scaled_dot_product_attention: _attention_call,
    F.conv2d: _conv2d_call,  # the same function as torch.conv2d
}


class CpuTrainingKernels(TorchFunctionMode):
    """While active, CPU dropout (``nn.Dropout``, ``F.dropout``, ``torch.dropout`` and attention's
    ``dropout_p``) draws its masks with `keep_mask`, depthwise ``conv2d`` that would compute in bf16
    computes in float32, torchvision's ``roi_align`` takes its gradient as a sparse product, and
    the attention projections of ``projections`` (a `SharedInputProjections` of the model trained)
    are one product; everything else runs as usual.

    Activation checkpointing recomputes a forward pass during the backward one, where no mode is
    active: a checkpoint taken under this mode must recompute under it too (`checkpoint_contexts`),
    or the recomputation would drop other elements than the forward pass did."""

    def __init__(self, projections: SharedInputProjections | None = None) -> None:
        super().__init__()
        self.projections = projections

    def __enter__(self) -> CpuTrainingKernels:
        # torchvision's operators exist only once it is imported, as a detector's model imports it;
        # importing it here would cost every text run 1.6 s.
        if "torchvision" in sys.modules:
            _REPLACEMENTS.setdefault(torch.ops.torchvision.roi_align, _roi_align_call)
        _active.modes = [*getattr(_active, "modes", []), self]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        _active.modes = _active.modes[:-1]
        if self.projections is not None:
            self.projections.forget()
        super().__exit__(*exc)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and self.projections is not None:
            result = self.projections.linear(*args, **kwargs)
            if result is not None:
                return result
        replacement = _REPLACEMENTS.get(func)
        if replacement is not None:
            result = replacement(*args, **kwargs)
            if result is not None:
                return result
        return func(*args, **kwargs)


def checkpoint_contexts() -> tuple[AbstractContextManager[Any], AbstractContextManager[Any]]:
    """``context_fn`` for `torch.utils.checkpoint.checkpoint` (non-reentrant): the recomputation
    runs under `CpuTrainingKernels` when the forward pass did, and replays its masks from the generator
    state the checkpoint restores."""
    modes = getattr(_active, "modes", [])
    return nullcontext(), (CpuTrainingKernels(modes[-1].projections) if modes else nullcontext())


def _flat_view(gradient: torch.Tensor) -> torch.Tensor | None:
    """``gradient`` as one dimension without a copy (default or channels-last layout), or None."""
    if gradient.is_contiguous():
        return gradient.view(-1)
    if gradient.dim() == 4 and gradient.is_contiguous(memory_format=torch.channels_last):
        return gradient.permute(0, 2, 3, 1).reshape(-1)  # contiguous in this order: a view
    return None


_DOT_FROM_ELEMENTS = 1 << 15  # below it one call for all the small gradients is faster than a dot each


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (the 2-norm over all gradients) for gradients on the CPU,
    with each large float32 gradient's sum of squares taken as a BLAS dot product of it with itself
    and the sums added in float64. Returns the total norm, as torch's does.

    PyTorch's CPU ``vector_norm`` reduces a float32 tensor up to three times slower than ``dot`` (a
    MiniLM's gradients: 8.1 against 2.9 ms of a 117 ms step), and less precisely: over 11.7M normal
    values (its word-embedding gradient's size) it was 5e-4 off the float64 norm, ``dot`` 7e-6.
    Gradients are multiplied only when the norm is above ``max_norm``: torch multiplies them by 1.0
    otherwise, a pass over every gradient that changes nothing. A non-finite norm scales them as
    torch's would (to zero or NaN).

    A sparse gradient (`taskzoo.sparse_rows`) is coalesced in place first, its repeated rows summed
    once, and counts and is scaled through its values."""
    gradients = []
    for parameter in parameters:
        gradient = parameter.grad
        if gradient is not None and gradient.is_sparse:
            parameter.grad = gradient = gradient.coalesce()
            gradient = gradient.values()  # a view: scaling it scales the gradient
        if gradient is not None:
            gradients.append(gradient)
    if not gradients:
        return torch.tensor(0.0)
    squares, others = [], []
    for gradient in gradients:
        large = gradient.numel() >= _DOT_FROM_ELEMENTS and gradient.dtype in (torch.float32, torch.float64)
        flat = _flat_view(gradient) if large else None
        if flat is not None:
            squares.append(torch.dot(flat, flat).to(torch.float64))
        else:
            others.append(gradient)
    if others:  # small ones (one call for all, as torch's own clipping), other dtypes and layouts
        norms = torch.stack([norm.float() for norm in torch._foreach_norm(others)])
        squares.append(norms.to(torch.float64).square().sum())
    total = torch.stack(squares).sum().sqrt().to(torch.float32)
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if not float(coefficient) >= 1.0:
        torch._foreach_mul_(gradients, coefficient)
    return total


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
KEPT_BLOCK_BYTES = 1 << 30  # blocks up to this size are kept for reuse when freed


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc malloc's mmap and trim thresholds to `KEPT_BLOCK_BYTES` for this process, so that
    memory freed by one training step is reused by the next instead of returned to the kernel and
    faulted in again. Returns whether it did: not on other C libraries, nor where the user set
    malloc's thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``)
    or preloaded another allocator (``LD_PRELOAD``) themselves. Peak memory grows a little (4% to 6%
    in the benchmarks); what is freed after training stays with the process until it ends or reuses
    it."""
    thresholds_set = os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if thresholds_set or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False  # the user's own choice (jemalloc, tcmalloc and mimalloc all name themselves so)
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BLOCK_BYTES))
