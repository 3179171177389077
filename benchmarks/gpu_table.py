"""The table `gpu.sh` prints, from the JSON the benchmarks it runs wrote into one folder.

    python benchmarks/gpu_table.py FOLDER

Model-FLOPs utilisation = FLOPs per training example (`flops.py`, forward + backward) x training
examples per second / the device's dense bf16 peak (a table of common GPUs below; "-" for others)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s, by a name fragment.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "V100": 125e12,
             "T4": 65e12}


def device() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "CPU (" + str(torch.get_num_threads()) + " threads)", None
    name = torch.cuda.get_device_name()
    peak = next((value for fragment, value in PEAK_BF16.items() if fragment in name), None)
    return name, peak


def _read(folder: Path, name: str) -> Any:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows(folder: Path, peak: float | None) -> list[tuple[str, ...]]:
    flops = _read(folder, "flops") or {}

    def mfu(task: str, per_second: float | None) -> str:
        if peak is None or per_second is None or task not in flops:
            return "-"
        return f"{100 * flops[task] * per_second / peak:.1f}%"

    def mib(value: Any) -> str:
        return f"{value:,.0f}" if isinstance(value, (int, float)) and value else "-"

    table = []
    for task, metric in (("sentiment", "accuracy"), ("ner", "f1")):
        result = _read(folder, task)
        if result is None:
            continue
        tz, hf = result["taskzoo"], result["transformers"]
        quality = f"{tz.get('val_' + metric, float('nan')):.3f} / {hf.get('val_' + metric, float('nan')):.3f}"
        table.append((task, "transformers.Trainer", f"{tz['samples_per_second']:.1f} / {hf['samples_per_second']:.1f}",
                      f"{result['ratio_samples_per_second']:.2f}x", f"{mib(tz.get('peak_cuda_mib'))} / "
                      f"{mib(hf.get('peak_cuda_mib'))}", f"{mfu(task, tz['samples_per_second'])} / "
                      f"{mfu(task, hf['samples_per_second'])}", f"{metric} {quality}"))
    for task, metric in (("segmentation", "mean_iou"), ("detection", "map")):
        result = _read(folder, task)
        if result is None:
            continue
        tz, plain = result["taskzoo"], result["plain"]
        table.append((task, "plain PyTorch loop", f"{tz['images_per_second']:.1f} / {plain['images_per_second']:.1f}",
                      f"{result['ratio']:.2f}x", f"{mib(tz.get('peak_cuda_mib'))} / {mib(plain.get('peak_cuda_mib'))}",
                      f"{mfu(task, tz['images_per_second'])} / {mfu(task, plain['images_per_second'])}",
                      f"{metric} {tz['final_' + metric]:.3f} / {plain['final_' + metric]:.3f}"))
    lora = _read(folder, "lora")
    if lora:
        adapters, full = lora["lora16"][0], lora["full"][0]
        table.append(("sentiment --lora 16", "full fine-tuning", f"{adapters['samples_s']:.1f} / {full['samples_s']:.1f}",
                      f"{adapters['samples_s'] / full['samples_s']:.2f}x",
                      f"{mib(adapters['peak_gpu_mib'])} / {mib(full['peak_gpu_mib'])}", "-",
                      f"accuracy {adapters['accuracy']:.3f} / {full['accuracy']:.3f}"))
    return table


def main() -> None:
    folder = Path(sys.argv[1])
    name, peak = device()
    header = ("task", "anchor", "examples/s (taskzoo / anchor)", "ratio", "peak GPU MiB", "MFU", "quality")
    table = [header, *rows(folder, peak)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"device: {name}" + (f", bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
