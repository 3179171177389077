"""Benchmark: one training step with PyTorch's CPU kernels against the trainer's (taskzoo.cpu_kernels).

Both arms run in this process, alternating, on the same model, batches and recipe pieces (AdamW
fused, clipping to a norm of 1, the precision ``--mixed-precision auto`` picks for the task on this
CPU); the only differences are whether the forward pass runs under
`taskzoo.cpu_kernels.CpuTrainingKernels`, whether the gradients are clipped by
`taskzoo.cpu_kernels.clip_grad_norm_` or by ``torch.nn.utils.clip_grad_norm_``, and whether the
text model's word embeddings train by rows (`taskzoo.sparse_rows`), as the shared trainer trains
on the CPU. Prints seconds per step (medians) and the ratio per shape, and for the text model a
third arm, taskzoo's with the vocabulary's gradient dense, for what the rows alone are worth::

    python benchmarks/cpu_kernels.py                            # text: 16 texts of 32, 128 and 256 tokens
    python benchmarks/cpu_kernels.py --lengths 20 96 --steps 10
    python benchmarks/cpu_kernels.py --model unet --sizes 128 256  # segmentation: 8 images a batch
    python benchmarks/cpu_kernels.py --model detector --sizes 512  # detection: 4 example images (default 320 px)
    python benchmarks/cpu_kernels.py --model unet --keep-freed-memory  # with the trainer's allocator setting
    python benchmarks/cpu_kernels.py --clipping --model unet        # clipping alone: one batch's gradients

``--clipping`` times only the clipping of one batch's gradients (of the first shape), torch's
``clip_grad_norm_`` against `taskzoo.cpu_kernels.clip_grad_norm_`, with a limit twice the norm
(nothing to scale) and half of it (every gradient scaled), and how far each returned norm is from
the norm computed in float64.

``--keep-freed-memory`` applies `taskzoo.cpu_kernels.keep_freed_memory_for_reuse` to this process
first, as the trainer does on the CPU: it changes both arms, so compare two runs, with and without.

The text backbone (sentiment's) gains from the dropout masks, the clipping and the rows, the Unet on EfficientNet-Lite0
(segmentation's) from its depthwise convolutions in bf16, Faster R-CNN (detection's) from RoIAlign's
gradient. The quality of training with either kernel is
measured by the trainer benchmarks over seeds (``sentiment_trainer.py``, ``ner_trainer.py`` and
``segmentation_trainer.py`` with ``--seed N``; see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


Steps = tuple[str, list[int], Any, Callable[[int], Callable[[], Any]]]  # title, shapes, model, batch of a shape


def text_steps(opts: argparse.Namespace) -> Steps:
    """The sentiment task's backbone: each step on new text of each length, half the batch padded.
    The texts are windows of the example reviews' tokens, so the vocabulary rows the steps reach
    grow as real text's do (1,562 distinct tokens in all)."""
    import csv

    import torch

    from taskzoo.plugins import get_host
    from taskzoo.weights import resolve_backbone

    host = get_host()
    _, task = _common.make_task(host, "sentiment")
    backbone = resolve_backbone(host, "sentiment", None)
    network = task.build_model(backbone, ["negative", "positive"]).network
    with (_common.ROOT / "examples" / "reviews.csv").open(encoding="utf-8") as stream:
        reviews = [row["review"] for row in csv.DictReader(stream)]
    tokens = torch.tensor([t for ids in task.tokenizer(reviews, add_special_tokens=False)["input_ids"] for t in ids])
    windows = torch.Generator().manual_seed(0)

    def batch(length: int) -> Callable[[], Any]:
        mask = torch.ones(opts.batch_size, length, dtype=torch.long)
        mask[: opts.batch_size // 2, length * 3 // 4:] = 0  # as length grouping leaves a batch
        labels = torch.randint(0, 2, (opts.batch_size,))

        def loss() -> Any:
            starts = torch.randint(0, len(tokens) - length, (opts.batch_size, 1), generator=windows)
            ids = tokens[starts + torch.arange(length)]
            return network(input_ids=ids, attention_mask=mask, labels=labels).loss

        return loss

    return f"sentiment backbone {backbone.name}, tokens", opts.lengths, network, batch


def unet_steps(opts: argparse.Namespace) -> Steps:
    """The segmentation task's Unet, channels-last as the trainer keeps it: a step on random images."""
    import torch

    from taskzoo.plugins import get_host
    from taskzoo.weights import resolve_backbone

    host = get_host()
    _, task = _common.make_task(host, "segmentation")
    backbone = resolve_backbone(host, "segmentation", None)
    model = task.build_model(backbone, ["background", "coin"]).to(memory_format=torch.channels_last)

    def batch(size: int) -> Callable[[], Any]:
        images = torch.randn(opts.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
        masks = torch.randint(0, 2, (opts.batch_size, size, size))
        return lambda: model({"image": images, "mask": masks})["loss"]

    return f"segmentation Unet on {backbone.name}, pixels a side", opts.sizes, model, batch


def detector_steps(opts: argparse.Namespace) -> Steps:
    """The detection task's Faster R-CNN, channels-last as the trainer keeps it: a step on the first
    batch of the example shapes (real boxes, so the detector samples real regions). The network
    resizes images to the size it was built for, so this takes one ``--sizes``."""
    import torch

    from taskzoo import options as schema
    from taskzoo import pipeline
    from taskzoo.plugins import get_host

    if len(opts.sizes) != 1:
        sys.exit("--model detector: give one image size (--sizes 320); the network is built for it")
    spec = get_host().task("detection")
    shapes = _common.ROOT / "examples" / "detection" / "shapes"
    values = schema.resolve(spec, "run", [("benchmark", {"data": str(shapes / "train.json"), "image_size": opts.sizes[0],
                                                          "images": str(shapes / "images" / "train")})])
    prepared = pipeline.prepare(spec, values)
    model = prepared.model.to(memory_format=torch.channels_last)
    images = next(iter(prepared.task.dataloader(prepared.train, batch_size=opts.batch_size, train=True, seed=0)))
    return "detection Faster R-CNN on efficientnet_lite0, pixels a side", opts.sizes, model, lambda size: lambda: model(images)["loss"]


# What --model names: the task whose model it is, how its steps are made, its default batch size
# and image sizes (text takes --lengths).
MODELS: dict[str, tuple[str, Callable[[argparse.Namespace], Steps], int, list[int]]] = {
    "text": ("sentiment", text_steps, 16, []),
    "unet": ("segmentation", unet_steps, 8, [128, 256]),
    "detector": ("detection", detector_steps, 4, [320]),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="text")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256], help="text: tokens per text")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="unet, detector: image side in pixels "
                        "(default 128 256 for unet, 320 for detector)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 texts, 8 images (unet), 4 (detector)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm and shape (after one untimed)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep-freed-memory", action="store_true", help="raise malloc's thresholds first, as the trainer does")
    parser.add_argument("--clipping", action="store_true", help="time only the gradient clipping of one batch")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    task_name, steps, batch_size, sizes = MODELS[opts.model]
    opts.batch_size = opts.batch_size or batch_size
    opts.sizes = opts.sizes or sizes

    import torch

    from taskzoo.cpu_kernels import CpuTrainingKernels, SharedInputProjections, clip_grad_norm_, keep_freed_memory_for_reuse
    from taskzoo.sparse_rows import RowSparseAdamW, sparse_gradients, vocabulary_embeddings

    kept = opts.keep_freed_memory and keep_freed_memory_for_reuse()
    if opts.keep_freed_memory and not kept:
        sys.exit("--keep-freed-memory: not applied (not glibc, or malloc's thresholds or LD_PRELOAD are set)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    precision = _common.taskzoo_precision(task_name, "auto")
    torch.manual_seed(0)
    title, shapes, model, make_batch = steps(opts)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    # Each arm: its forward-pass kernels, its clipping, its AdamW (on the same weights) and the
    # tables it trains by rows (the text model's vocabulary, in taskzoo's arm).
    tables = vocabulary_embeddings(model)
    vocabularies = bool(tables)
    adamw = lambda kind: kind(parameters, lr=1e-5, weight_decay=0.01, fused=True)  # noqa: E731
    # taskzoo's mode, as the trainer enters it: with the model's attention projections stacked.
    kernels = functools.partial(CpuTrainingKernels, SharedInputProjections(model))
    arms = {"pytorch": (contextlib.nullcontext, torch.nn.utils.clip_grad_norm_, adamw(torch.optim.AdamW), []),
            "taskzoo": (kernels, clip_grad_norm_, adamw(RowSparseAdamW), tables)}
    if vocabularies and not opts.clipping:  # what the rows alone are worth: taskzoo's arm with dense gradients
        arms["dense vocabulary"] = (kernels, clip_grad_norm_, adamw(torch.optim.AdamW), [])
    if opts.clipping:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = make_batch(shapes[0])()
        loss.backward()
        clipping(opts, title, shapes[0], parameters, {arm: clip for arm, (_, clip, _, _) in arms.items()})
        return

    def step(loss_of: Callable[[], Any], arm: tuple[Callable[[], Any], Callable[..., Any], Any, list[Any]]) -> float:
        mode, clip, optimizer, tables = arm
        start = time.perf_counter()
        with sparse_gradients(tables):
            with mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_of()
            loss.backward()
        clip(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    results = []
    for shape in shapes:
        loss_of = make_batch(shape)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for kernels in arms.values():
            step(loss_of, kernels)  # untimed: first use of this shape
        for _ in range(opts.steps):
            for arm, kernels in arms.items():
                times[arm].append(step(loss_of, kernels))
        medians = {arm: statistics.median(values) for arm, values in times.items()}
        results.append({"model": opts.model, "shape": shape, "batch_size": opts.batch_size, "precision": precision,
                        "freed_memory_kept": kept,
                        "seconds_per_step": medians, "ratio": medians["pytorch"] / medians["taskzoo"],
                        **({"rows_ratio": medians["dense vocabulary"] / medians["taskzoo"]} if vocabularies else {})})
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{title.split(',')[0]}, batch {opts.batch_size}, {precision}, torch threads {torch.get_num_threads()}, "
          f"medians of {opts.steps} steps per arm{', freed memory kept' if kept else ''}")
    rows_header = "  taskzoo's, vocabulary dense s/step  rows' own ratio" if vocabularies else ""
    print(f"{title.split(', ')[1]:>18}  PyTorch's kernels s/step  taskzoo's s/step  ratio{rows_header}")
    for row in results:
        seconds = row["seconds_per_step"]
        rows_columns = f"  {seconds['dense vocabulary']:>34.3f}  {row['rows_ratio']:>15.2f}" if vocabularies else ""
        print(f"{row['shape']:>18}  {seconds['pytorch']:>24.3f}  {seconds['taskzoo']:>16.3f}  {row['ratio']:>5.2f}{rows_columns}")


def clipping(opts: argparse.Namespace, title: str, shape: int, parameters: list[Any],
             clips: dict[str, Callable[..., Any]]) -> None:
    """Each arm's clipping of the same gradients (restored before every call), under and over the limit."""
    import torch

    gradients = [(p, p.grad.clone()) for p in parameters if p.grad is not None]
    exact = float(torch.sqrt(sum((g.double() ** 2).sum() for _, g in gradients)))
    results = []
    for case, limit in (("under the limit", 2 * exact), ("clipped", exact / 2)):
        row: dict[str, Any] = {"case": case, "max_norm": limit, "norm_float64": exact}
        for arm, clip in clips.items():
            times = []
            for _ in range(opts.steps + 1):
                for parameter, gradient in gradients:
                    parameter.grad.copy_(gradient)
                start = time.perf_counter()
                norm = float(clip(parameters, limit))
                times.append(time.perf_counter() - start)
            row[arm] = {"seconds": statistics.median(times[1:]), "norm_relative_error": abs(norm - exact) / exact}
        results.append(row)
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    count = sum(g.numel() for _, g in gradients)
    print(f"{title.split(',')[0]} at {shape}: clipping {count / 1e6:.1f}M gradients in {len(gradients)} tensors, "
          f"medians of {opts.steps}")
    print(f"{'':>16}  PyTorch ms  taskzoo ms  ratio  norm's distance from float64: PyTorch, taskzoo")
    for row in results:
        torch_arm, ours = row["pytorch"], row["taskzoo"]
        print(f"{row['case']:>16}  {torch_arm['seconds'] * 1e3:>10.2f}  {ours['seconds'] * 1e3:>10.2f}  "
              f"{torch_arm['seconds'] / ours['seconds']:>5.2f}  {torch_arm['norm_relative_error']:.1e}, "
              f"{ours['norm_relative_error']:.1e}")


if __name__ == "__main__":
    main()
