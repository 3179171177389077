"""Peak memory of ``tasks predict`` as the input grows: in parts (taskzoo) against all at once.

Trains a small run (or takes ``--model``), writes input files of N lines, and runs ``tasks predict
--data FILE --output preds.csv`` on each in a subprocess of its own, reading the child's peak
resident memory from the kernel (``wait4``). ``--task sentiment`` (default): N review lines for a
MiniLM run. ``--task recommendation``: N user ids, each asking for 10 items, for an ALS run on
synthetic interactions of 100,000 users and 5,000 items. Two arms on the same files:

- ``parts``: taskzoo as shipped; inputs are encoded, scored and written `PART_SIZE` at a time;
- ``whole``: the same command with the part size set above N, i.e. everything encoded, scored and
  held before anything is written (what ``tasks predict`` did before).

The outputs of both arms are compared byte for byte (the quality check: parts change nothing).

    python benchmarks/predict_memory.py                          # 10k and 100k lines, both arms
    python benchmarks/predict_memory.py --sizes 10000 100000 1000000     # whole arm up to 100k lines
    python benchmarks/predict_memory.py --task recommendation --sizes 1000 100000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARM = """
import sys
from taskzoo import pipeline
from taskzoo.cli import main
if sys.argv.pop(1) == "whole":
    pipeline.PART_SIZE = 10**12
sys.argv[0] = "tasks"
main()
"""


USERS, ITEMS = 100_000, 5_000


def train(task: str, folder: Path, max_length: int) -> Path:
    import taskzoo

    if task == "recommendation":
        return taskzoo.train("recommendation", data=write_interactions(folder.parent / "interactions.csv"),
                             output=folder, progress=False, device="cpu").folder
    return taskzoo.train("sentiment", data=ROOT / "examples" / "reviews.csv", epochs=1, max_length=max_length,
                         output=folder, progress=False, device="cpu").folder


def write_interactions(path: Path) -> Path:
    """Eight interactions per user, items drawn with a heavy-tailed popularity; seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    popularity = rng.pareto(1.2, ITEMS) + 0.1
    items = rng.choice(ITEMS, size=(USERS, 8), p=popularity / popularity.sum())
    with path.open("w", encoding="utf-8") as target:
        target.write("user_id,item_id\n")
        for user, row in enumerate(items):
            target.writelines(f"u{user},i{item}\n" for item in row)
    return path


def write_users(path: Path, lines: int) -> Path:
    with path.open("w", encoding="utf-8") as target:
        target.writelines(f"u{number % USERS}\n" for number in range(lines))
    return path


def write_inputs(path: Path, lines: int) -> Path:
    with (ROOT / "examples" / "reviews.csv").open(encoding="utf-8") as source:
        texts = [row["review"] for row in csv.DictReader(source)]
    with path.open("w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(["review"])
        for number in range(lines):
            writer.writerow([f"{texts[number % len(texts)]} ({number})"])
    return path


def run_arm(arm: str, model: Path, data: Path, output: Path, threads: int, batch_size: int | None) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", ARM, arm, "predict", "--model", str(model), "--data", str(data),
               "--output", str(output), "--device", "cpu", *(["--batch-size", str(batch_size)] if batch_size else [])]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: progress bars would fill a pipe and block
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"{arm} arm failed on {data}: {errors.read().decode()[-2000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("sentiment", "recommendation"), default="sentiment")
    parser.add_argument("--model", type=Path, help="a complete run of --task (default: train one, ~1 min)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--arms", nargs="+", choices=("parts", "whole"), default=["parts", "whole"])
    parser.add_argument("--whole-up-to", type=int, default=100_000,
                        help="run the whole arm only up to this many lines (it holds everything: slow and large)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="predict's --batch-size in both arms (default: the run's, doubled)")
    parser.add_argument("--max-length", type=int, default=16,
                        help="tokens per text of the run trained when --model is not given (short: the benchmark "
                             "is about memory, and a million lines take long enough)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = args.model or train(args.task, scratch / "run", args.max_length)
        results = []
        for size in args.sizes:
            data = (write_users(scratch / f"users-{size}.txt", size) if args.task == "recommendation"
                    else write_inputs(scratch / f"lines-{size}.csv", size))
            outputs = {}
            for arm in args.arms:
                if arm == "whole" and size > args.whole_up_to:
                    continue
                outputs[arm] = scratch / f"{arm}-{size}.csv"
                figures = run_arm(arm, model, data, outputs[arm], args.threads, args.batch_size)
                results.append({"lines": size, "arm": arm, **figures})
                print(f"{size:>9} lines  {arm:<5}  peak RSS {figures['peak_rss_mib']:7.0f} MiB  "
                      f"{figures['seconds']:7.1f} s  ({size / figures['seconds']:.0f} lines/s)", flush=True)
            if len(outputs) == 2:
                same = outputs["parts"].read_bytes() == outputs["whole"].read_bytes()
                print(f"{size:>9} lines  outputs identical: {same}", flush=True)
                results.append({"lines": size, "identical_outputs": same})
            data.unlink()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
