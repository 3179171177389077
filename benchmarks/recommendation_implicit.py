"""Benchmark: the recommendation plugin against calling implicit directly, on the same matrix.

Three measurements in one run, on a synthetic interaction log with real structure (users follow
a few of many topics, items have heavy-tailed popularity) or on your own file (``--data``):

1. load: the plugin's reader (``task.read`` + id maps + the user x item CSR matrix, validation
   included) against the minimum a user of implicit writes (``pandas.read_csv``, ``factorize``,
   ``scipy.sparse.csr_matrix``), and the plugin's load time in seconds;
2. fit + evaluate: ``Trainer.fit()`` with ``--epochs 0`` (implicit's ALS fitted in
   ``fit_before_training``, NDCG/precision/MAP/AUC@k through the shared trainer's evaluation loop,
   checkpoint and saved model included) against ``AlternatingLeastSquares.fit`` +
   ``implicit.evaluation.ranking_metrics_at_k`` on the very same train and validation matrices,
   same hyperparameters, seed and threads; overhead ratio = plugin seconds / implicit seconds
   (target at most 1.05), and a check that both reach the same metrics;
3. with ``--mf-epochs N``: the gradient fine-tune (BPR loss, from the ALS factors, through the
   shared trainer) against plain ALS, on validation NDCG@k.

    python benchmarks/recommendation_implicit.py                       # 2M interactions
    python benchmarks/recommendation_implicit.py --rows 200000 --mf-epochs 3
    python benchmarks/recommendation_implicit.py --data ratings.csv --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice: BLAS threads fight its own

import numpy as np


def synthetic(path: Path, rows: int, seed: int) -> None:
    """A log of ``rows`` interactions: user,item,weight,timestamp."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users, items, topics = max(100, rows // 20), max(100, rows // 100), 40
    activity = rng.pareto(1.2, users) + 1
    user = rng.choice(users, rows, p=activity / activity.sum())
    favourite = rng.integers(0, topics, (users, 2))
    topic = np.where(rng.random(rows) < 0.85, favourite[user, rng.integers(0, 2, rows)], rng.integers(0, topics, rows))
    per_topic = items // topics
    rank = np.minimum((rng.pareto(1.0, rows) * per_topic / 20).astype(np.int64), per_topic - 1)
    item = topic * per_topic + rank
    frame = pd.DataFrame({"user_id": "u" + pd.Series(user).astype(str), "item_id": "i" + pd.Series(item).astype(str),
                          "weight": rng.integers(1, 4, rows), "timestamp": rng.integers(1_700_000_000, 1_710_000_000, rows)})
    frame.to_csv(path, index=False)


def reference_load(path: Path) -> Any:
    import pandas as pd
    import scipy.sparse as sp

    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    users, _ = pd.factorize(frame["user_id"])
    items, _ = pd.factorize(frame["item_id"])
    return sp.csr_matrix((frame["weight"].to_numpy(np.float32), (users, items)))


def make_task(threads: int, options: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    from taskzoo.pipeline import make_task as pipeline_task
    from taskzoo.plugins import get_host

    host = get_host()
    spec = host.task("recommendation")
    values = {option.key: option.default for option in spec.options}
    values.update({"threads": threads, **(options or {})})
    return host, spec, pipeline_task(spec, values, host)


def plugin_load(path: Path, threads: int) -> tuple[Any, Any]:
    _, _, task = make_task(threads)
    data = task.read(path, role="train")
    task.labels(data)
    pairs = task._pairs(data, "train")
    return task, pairs.matrix()


def fit_plugin(task: Any, host: Any, spec: Any, train: Any, val: Any, seed: int, epochs: int = 0) -> tuple[float, dict]:
    from _common import taskzoo_trainer
    from taskzoo.weights import resolve_backbone

    model = task.build_model(resolve_backbone(host, "recommendation", None), [])
    with tempfile.TemporaryDirectory(prefix="rec-bench-") as run_dir:
        trainer = taskzoo_trainer(spec, task, model, train, val, Path(run_dir), epochs=epochs, batch_size=1024,
                                  lr=1e-3, weight_decay=0.0, seed=seed, log_every=50, device="cpu",
                                  mixed_precision="no")
        start = time.perf_counter()
        summary = trainer.fit()
        return time.perf_counter() - start, summary


def fit_implicit(train: Any, val: Any, hyper: dict[str, Any], seed: int, threads: int, k: int) -> tuple[float, dict]:
    from implicit.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    start = time.perf_counter()
    model = AlternatingLeastSquares(factors=hyper["factors"], regularization=hyper["regularization"], alpha=hyper["alpha"],
                                    iterations=hyper["iterations"], random_state=seed, num_threads=threads)
    model.fit(train, show_progress=False)
    metrics = ranking_metrics_at_k(model, train, val, K=k, show_progress=False, num_threads=threads)
    return time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an interactions file (default: a synthetic one of --rows)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="implicit's threads in both arms")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mf-epochs", type=int, default=0, help="also fine-tune with a BPR loss for N epochs")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")
    import torch

    torch.set_num_threads(max(1, opts.threads))
    # The first optimizer a process creates imports torch's compiler stack (about 2 s, once per
    # process); the implicit arm never pays it, so it is paid here, before anything is timed.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with tempfile.TemporaryDirectory(prefix="rec-data-") as folder:
        path = opts.data
        if path is None:
            path = Path(folder) / "interactions.csv"
            print(f"writing {opts.rows} synthetic interactions ...", file=sys.stderr)
            synthetic(path, opts.rows, opts.seed)
        load_plugin, load_reference, fit_ours, fit_theirs = [], [], [], []
        for repeat in range(opts.repeats):
            # Alternate which arm goes first, so drift in machine load hits both.
            for arm in (("plugin", "reference") if repeat % 2 == 0 else ("reference", "plugin")):
                start = time.perf_counter()
                if arm == "plugin":
                    task, matrix = plugin_load(path, opts.threads)
                    load_plugin.append(time.perf_counter() - start)
                else:
                    reference_load(path)
                    load_reference.append(time.perf_counter() - start)
            host, spec, task = make_task(opts.threads)
            data = task.read(path, role="train")
            task.labels(data)
            train, val = task.split(data, val_fraction=0.2, seed=opts.seed)
            train_matrix, val_matrix = train.matrix(), val.matrix()
            from taskzoo_recommendation.models import hyperparameters

            hyper = hyperparameters("als", task.options)
            for arm in (("plugin", "implicit") if repeat % 2 == 0 else ("implicit", "plugin")):
                torch.manual_seed(opts.seed)
                if arm == "plugin":
                    seconds, summary = fit_plugin(task, host, spec, train, val, opts.seed)
                    fit_ours.append(seconds)
                    ours = summary["val"]
                else:
                    seconds, theirs = fit_implicit(train_matrix, val_matrix, hyper, opts.seed, opts.threads, task.k)
                    fit_theirs.append(seconds)
        result: dict[str, Any] = {
            "interactions": int(len(data)), "users": int(matrix.shape[0]), "items": int(matrix.shape[1]),
            "threads": opts.threads, "repeats": opts.repeats,
            "load_seconds_plugin": statistics.median(load_plugin),
            "load_seconds_reference": statistics.median(load_reference),
            "fit_eval_seconds_plugin": statistics.median(fit_ours),
            "fit_eval_seconds_implicit": statistics.median(fit_theirs),
            "metrics_plugin": {k: ours[f"{k}_at_k"] for k in ("precision", "map", "ndcg", "auc")},
            "metrics_implicit": {k: float(v) for k, v in theirs.items()},
            "popular": {k: ours[f"popular_{k}_at_k"] for k in ("precision", "map", "ndcg", "auc")},
        }
        result["load_ratio"] = result["load_seconds_plugin"] / result["load_seconds_reference"]
        result["overhead_ratio"] = result["fit_eval_seconds_plugin"] / result["fit_eval_seconds_implicit"]
        result["overhead_ratio_per_repeat"] = [ours / theirs for ours, theirs in zip(fit_ours, fit_theirs)]
        result["same_metrics"] = all(abs(result["metrics_plugin"][k] - result["metrics_implicit"][k]) < 1e-6
                                     for k in result["metrics_implicit"])
        if opts.mf_epochs:
            host, spec, task = make_task(opts.threads)
            task.labels(data)
            train, val = task.split(data, val_fraction=0.2, seed=opts.seed)
            torch.manual_seed(opts.seed)
            seconds, summary = fit_plugin(task, host, spec, train, val, opts.seed, epochs=opts.mf_epochs)
            result["mf"] = {"epochs": opts.mf_epochs, "seconds": seconds, "best_epoch": summary["best_epoch"],
                            "ndcg_by_epoch": [h["val"]["ndcg_at_k"] for h in summary["history"]],
                            "precision_by_epoch": [h["val"]["precision_at_k"] for h in summary["history"]]}
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print(f"recommendation: {result['interactions']} interactions, {result['users']} users, {result['items']} items; "
          f"implicit threads {opts.threads}, repeats {opts.repeats}{' (medians)' if opts.repeats > 1 else ''}")
    print(f"load        plugin {result['load_seconds_plugin']:.2f} s  pandas+scipy {result['load_seconds_reference']:.2f} s  "
          f"ratio {result['load_ratio']:.2f}")
    print(f"fit + eval  plugin {result['fit_eval_seconds_plugin']:.2f} s  implicit {result['fit_eval_seconds_implicit']:.2f} s  "
          f"overhead ratio {result['overhead_ratio']:.3f} (target <= 1.05)"
          + (f"; per repeat {' '.join(f'{r:.3f}' for r in result['overhead_ratio_per_repeat'])}" if opts.repeats > 1 else ""))
    print("metrics@k   " + "  ".join(f"{k} {result['metrics_plugin'][k]:.4f}/{result['metrics_implicit'][k]:.4f}"
                                     for k in result["metrics_implicit"])
          + f"  (plugin/implicit: {'identical' if result['same_metrics'] else 'DIFFERENT'})")
    print("popular     " + "  ".join(f"{k} {v:.4f}" for k, v in result["popular"].items()))
    if "mf" in result:
        mf = result["mf"]
        print(f"gradient MF ndcg by epoch (0 = ALS): {' '.join(f'{v:.4f}' for v in mf['ndcg_by_epoch'])}; best epoch "
              f"{mf['best_epoch']}; {mf['seconds']:.1f} s")


if __name__ == "__main__":
    main()
