#!/usr/bin/env bash
# Every task's training throughput on a CUDA GPU against the field's anchors, as one table:
# samples (or images) per second, peak GPU memory and model-FLOPs utilisation of taskzoo's trainer
# beside transformers.Trainer (sentiment, NER) or a plain PyTorch loop (segmentation, detection),
# and LoRA 16 beside full fine-tuning; the quality of each arm beside its speed. Short runs of the
# benchmarks in this folder (about four minutes on one GPU, most of it loading models):
#
#     bash benchmarks/gpu.sh                  # on a machine with a CUDA GPU
#     ALLOW_CPU=1 bash benchmarks/gpu.sh      # try the script itself on the CPU (slow; no MFU)
#
# Recommendation is left out: implicit's PyPI wheels train ALS on the CPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import os, sys, torch
if not torch.cuda.is_available() and not os.environ.get("ALLOW_CPU"):
    sys.exit("no CUDA GPU here: benchmarks/gpu.sh measures GPUs (ALLOW_CPU=1 runs it on the CPU anyway)")
PY
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
step() { echo "== $1" >&2; }
step "FLOPs per training example";  python benchmarks/flops.py --batches 3 | tail -n 1 > "$results/flops.json"
step "sentiment vs transformers.Trainer";  python benchmarks/sentiment_trainer.py --epochs 2 --json > "$results/sentiment.json"
step "NER vs transformers.Trainer";  python benchmarks/ner_trainer.py --epochs 2 --json > "$results/ner.json"
step "segmentation vs a plain loop";  python benchmarks/segmentation_trainer.py --epochs 3 --json > "$results/segmentation.json"
step "detection vs a plain loop";  python benchmarks/detection_trainer.py --epochs 2 --json > "$results/detection.json"
step "LoRA 16 vs full fine-tuning";  python benchmarks/lora.py --seeds 1 --json > "$results/lora.json"
python benchmarks/gpu_table.py "$results"
