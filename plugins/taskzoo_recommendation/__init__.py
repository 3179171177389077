"""Recommendation: implicit-feedback recommenders (ALS, BPR, logistic MF, item-item kNN) from who
read, bought or played what; ranked against a most-popular baseline; updated with new
interactions without starting over (``--init``). With ``--items``, a hybrid model that also
knows what items are (texts and pictures through pretrained encoders), so items nobody has
interacted with yet are recommended too, and visitors are served from a few liked items.

This module is what the ``taskzoo`` entry point loads: it only declares records, so listing tasks
never imports torch or implicit. The work happens in `taskzoo_recommendation.task` (fitting,
batches, saving), `.data` (reading, id maps, hold-out), `.catalogue` (``--items``), `.content`
(encoders, the content projection), `.models` and `.metrics`.
"""

from __future__ import annotations

from typing import Any

from taskzoo import BackboneSource, Finding, MetricSpec, Option, SampleData, SearchParam, TaskSpec, hookimpl

TASK = "recommendation"
COLUMN_COMMANDS = ("run", "check", "evaluate", "predict")


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Recommend items per user from implicit feedback (views, purchases, plays)",
            data_formats=("csv", "tsv", "parquet", "u.data/ratings.dat (no header)", "RecBole .inter/.item"),
            task_class="taskzoo_recommendation.task:RecommendationTask",
            main_metric="ndcg_at_k",
            # ALS needs no gradient epochs; --epochs N fine-tunes the factors with a BPR loss.
            defaults={"epochs": 0, "batch_size": 1024, "lr": 1e-3, "weight_decay": 0.0},
            # The factor model's own knobs: with the default --epochs 0 nothing else trains.
            search_space=(SearchParam("factors", 16, 256, log=True), SearchParam("regularization", 0.01, 100.0, log=True),
                          SearchParam("iterations", 5, 30), SearchParam("alpha", 0.5, 50.0, log=True)),
            options=(
                Option("k", "Recommendations per user, and the k of the ranking metrics.", type=int, minimum=1, default=10,
                       commands=("run", "evaluate", "predict"), remember=False),
                Option("init", "Fine-tune: start from this run folder and fold in the new interactions of --data "
                       "(old ids keep their meaning; new users and items are added).", commands=("run",), remember=False),
                Option("factors", "Latent factors (default: 64 als, 100 bpr, 30 lmf).", type=int, minimum=1,
                       commands=("run",)),
                Option("regularization", "L2 regularisation of the factors (default: 10 als, 0.01 bpr, 0.6 lmf).",
                       type=float, commands=("run",)),
                Option("iterations", "Sweeps over the data (default: 15 als, 100 bpr, 30 lmf).", type=int, minimum=1,
                       commands=("run",)),
                Option("alpha", "ALS confidence scale: confidence = alpha x weight.", type=float, default=1.0,
                       commands=("run",)),
                Option("factor-lr", "Learning rate of implicit's own SGD for bpr and lmf (--lr is the shared "
                       "trainer's, for --epochs).", type=float, commands=("run",)),
                Option("neg-prop", "lmf: negative samples per positive.", type=int, minimum=1, default=30, commands=("run",)),
                Option("neighbours", "knn-*: neighbours kept per item.", type=int, minimum=1, default=20, commands=("run",)),
                Option("threads", "CPU threads for implicit and for scoring recommendations (0: all cores).", type=int, minimum=0,
                       default=0, commands=("run", "evaluate", "predict"), remember=False),
                Option("user-column", "Column of user ids (default: user, user_id, userId, customer...).",
                       commands=COLUMN_COMMANDS),
                Option("item-column", "Column of item ids (default: item, item_id, movieId, product...).",
                       commands=COLUMN_COMMANDS),
                Option("weight-column", "Column of weights: counts, ratings, durations (default: weight, rating, "
                       "count...; none: every interaction weighs 1).", commands=("run", "check", "evaluate")),
                Option("time-column", "Column of timestamps (Unix time or dates); with one, validation holds out "
                       "each user's latest item.", commands=("run", "check", "evaluate")),
                Option("user", "Recommend for this user id (repeatable).", multiple=True, commands=("predict",),
                       remember=False),
                Option("similar-to", "Items most similar to this item id (repeatable).", multiple=True,
                       commands=("predict",), remember=False),
                Option("items", "Items file (CSV, TSV, JSON Lines, Parquet): an id column, text columns and "
                       "optionally an image column (paths relative to the file). Items with no interactions are "
                       "ranked from their content. At predict: rank only these items (new ones included); at "
                       "evaluate: add these items to the catalogue.", commands=COLUMN_COMMANDS, remember=False, path=True),
                Option("text-columns", "Columns of --items that describe an item, comma-separated (default: "
                       "every text column but the id and image).", commands=COLUMN_COMMANDS),
                Option("image-column", "Column of --items with image paths (default: image, photo, poster...; "
                       "none: text only).", commands=COLUMN_COMMANDS),
                Option("text-encoder", "Encoder of item texts (tasks backbones recommendation; any hub id where "
                       "the hub can be reached).", commands=("run",)),
                Option("image-encoder", "Encoder of item images (tasks backbones recommendation; any timm name "
                       "where the hub can be reached).", commands=("run",)),
                Option("finetune-encoder", "With --items and --epochs: also train the last layer of the text "
                       "encoder (saved in the run) instead of keeping its embeddings fixed.", type=bool,
                       default=False, commands=("run",)),
                Option("liked", "Recommend for a visitor with no history from the items they liked: ids, "
                       "comma-separated or repeated (folded in as ALS solves a user; items may be cold).",
                       multiple=True, commands=("predict",), remember=False),
                Option("popular-fallback", "Give users never seen in training the most popular items instead of "
                       "an error.", type=bool, default=False, commands=("predict",), remember=False),
            ),
            # A slice of examples/recommendation: readers of a news site and the articles they read.
            sample=SampleData(
                train="taskzoo_recommendation/sample/train.csv",
                test="taskzoo_recommendation/sample/test.csv",
                predict="taskzoo_recommendation/sample/users.txt",
                predict_output="recs.csv",
                bad=("taskzoo_recommendation/sample/negative_weight.csv",),
            ),
        )
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_recommendation import metrics

    return [
        MetricSpec("ndcg_at_k", (TASK,), metrics.ndcg_at_k, description="NDCG of the top k (implicit.evaluation)."),
        MetricSpec("precision_at_k", (TASK,), metrics.precision_at_k,
                   description="Held-out items in the top k over min(k, held-out items) (implicit.evaluation)."),
        MetricSpec("map_at_k", (TASK,), metrics.map_at_k, description="Mean average precision at k (implicit.evaluation)."),
        MetricSpec("auc_at_k", (TASK,), metrics.auc_at_k, description="AUC limited to the top k (implicit.evaluation)."),
        MetricSpec("popular_precision_at_k", (TASK,), metrics.popular_precision_at_k,
                   description="precision_at_k of the most-popular baseline (popular items the user has not seen)."),
        MetricSpec("popular_map_at_k", (TASK,), metrics.popular_map_at_k,
                   description="map_at_k of the most-popular baseline (popular items the user has not seen)."),
        MetricSpec("popular_ndcg_at_k", (TASK,), metrics.popular_ndcg_at_k,
                   description="ndcg_at_k of the most-popular baseline (popular items the user has not seen)."),
        MetricSpec("popular_auc_at_k", (TASK,), metrics.popular_auc_at_k,
                   description="auc_at_k of the most-popular baseline (popular items the user has not seen)."),
        MetricSpec("recall_at_k", (TASK,), metrics.recall_at_k,
                   description="Held-out items in the top k over all the user's held-out items."),
        MetricSpec("coverage_at_k", (TASK,), metrics.coverage_at_k,
                   description="Share of the catalogue in at least one evaluated user's top k."),
        *(MetricSpec(name, (TASK,), compute, description=description)
          for name, compute, description in metrics.group_metrics()),
        MetricSpec("recall_by_k", (TASK,), metrics.recall_by_k,
                   description="Recall at 1..k of the model and its baselines (warm and cold apart), for recall_at_k.png."),
        MetricSpec("k", (TASK,), metrics.k, description="The k of the metrics."),
        MetricSpec("evaluated_users", (TASK,), metrics.evaluated_users, description="Users with held-out items."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_recommendation.data import check

    return check(data)


@hookimpl
def taskzoo_backbone_sources() -> list[BackboneSource]:
    # implicit's models are fitted from scratch on the interactions: nothing to download.
    return [BackboneSource("implicit", "A recommender model class of the implicit library (fitted, not downloaded)")]
