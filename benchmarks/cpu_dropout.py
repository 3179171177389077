"""Benchmark: one training step of the text backbone with PyTorch's CPU dropout against taskzoo's.

Both arms run in this process, alternating, on the same model, batches and recipe pieces (AdamW
fused, clipping, the precision ``--mixed-precision auto`` picks for sentiment on this CPU); the only
difference is whether the forward pass runs under `taskzoo.fast_dropout.FastCpuDropout`, as the
shared trainer runs it on the CPU. Prints seconds per step (medians) and the ratio per length::

    python benchmarks/cpu_dropout.py                      # 16 texts of 32, 128 and 256 tokens
    python benchmarks/cpu_dropout.py --lengths 20 96 --steps 10

The quality of training with either dropout is measured by the trainer benchmarks over seeds
(``sentiment_trainer.py`` and ``ner_trainer.py`` with ``--seed N``; see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256], help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm and length (after one untimed)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)

    import torch

    from taskzoo.fast_dropout import FastCpuDropout
    from taskzoo.plugins import get_host
    from taskzoo.weights import resolve_backbone

    if opts.threads:
        torch.set_num_threads(opts.threads)
    host = get_host()
    _, task = _common.make_task(host, "sentiment")
    precision = _common.taskzoo_precision("sentiment", "auto")
    torch.manual_seed(0)
    backbone = resolve_backbone(host, "sentiment", None)
    network = task.build_model(backbone, ["negative", "positive"]).network
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5, fused=True)
    arms = {"pytorch": contextlib.nullcontext, "taskzoo": FastCpuDropout}
    vocabulary = network.config.vocab_size

    def step(length: int, dropout: type) -> float:
        ids = torch.randint(1000, vocabulary, (opts.batch_size, length))
        mask = torch.ones_like(ids)
        mask[: opts.batch_size // 2, length * 3 // 4:] = 0  # half the batch padded, as length grouping leaves it
        labels = torch.randint(0, 2, (opts.batch_size,))
        start = time.perf_counter()
        with dropout(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = network(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    results = []
    for length in opts.lengths:
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for arm, dropout in arms.items():
            step(length, dropout)  # untimed: first use of this shape
        for _ in range(opts.steps):
            for arm, dropout in arms.items():
                times[arm].append(step(length, dropout))
        medians = {arm: statistics.median(values) for arm, values in times.items()}
        results.append({"length": length, "batch_size": opts.batch_size, "precision": precision,
                        "seconds_per_step": medians, "ratio": medians["pytorch"] / medians["taskzoo"]})
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print(f"sentiment backbone {backbone.name}, batch {opts.batch_size}, {precision}, "
          f"torch threads {torch.get_num_threads()}, medians of {opts.steps} steps per arm")
    print("tokens  PyTorch dropout s/step  taskzoo dropout s/step  ratio")
    for row in results:
        seconds = row["seconds_per_step"]
        print(f"{row['length']:>6}  {seconds['pytorch']:>22.3f}  {seconds['taskzoo']:>22.3f}  {row['ratio']:.2f}")


if __name__ == "__main__":
    main()
