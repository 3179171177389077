"""Sentiment: fine-tune a pretrained text encoder to label reviews, tickets or posts.

This module is what the ``taskzoo`` entry point loads: it only declares records, so listing tasks
never imports torch. The work happens in `taskzoo_sentiment.task` (model, batches, outputs),
`taskzoo_sentiment.data` (reading and checking files) and `taskzoo_sentiment.metrics`.
"""

from __future__ import annotations

from typing import Any

from taskzoo import Finding, MetricSpec, Option, SampleData, TaskSpec, hookimpl

TASK = "sentiment"


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Text classification (sentiment, topics, intents): text -> one of two or more labels, or several (--multi-label)",
            data_formats=("csv", "tsv", "jsonl", "parquet", "datasets folder, hf:NAME"),
            task_class="taskzoo_sentiment.task:SentimentTask",
            main_metric="accuracy",
            defaults={"epochs": 4, "lr": 1e-4, "batch_size": 16},
            options=(
                Option("text-column", "Column holding the text (default: detected, e.g. text/review/sentence).",
                       commands=("run", "check", "evaluate", "predict")),
                Option("label-column", "Column holding the label (default: detected, e.g. label/sentiment/stars).",
                       commands=("run", "check", "evaluate")),
                Option("max-length", "Truncate texts to this many tokens (default: the backbone's maximum).",
                       type=int, minimum=8, commands=("run",)),
                Option("multi-label", "Each text may have several labels (a ticket both 'billing' and 'urgent'): "
                       "labels split on --label-separator or given as a list; sigmoid outputs with a threshold "
                       "per label chosen on the validation data.", type=bool, default=False, commands=("run", "check")),
                Option("label-separator", "Separator of the labels in a multi-label cell.", default="|",
                       commands=("run", "check", "evaluate")),
                Option("text", "A text to label; repeat for several.", multiple=True, commands=("predict",)),
                Option("all-scores", "Also give every label's probability (a score_LABEL column; .jsonl files "
                       "always hold them under 'scores').", type=bool, default=False, commands=("predict",),
                       remember=False),
            ),
            # 32 + 12 reviews from examples/reviews.csv: enough to prove the task end to end.
            sample=SampleData(
                train="taskzoo_sentiment/sample/train.csv",
                test="taskzoo_sentiment/sample/test.csv",
                predict_output="predictions.csv",
                bad=("taskzoo_sentiment/sample/one_label.csv", "taskzoo_sentiment/sample/no_label_column.csv"),
                options={"max-length": 64, "batch-size": 8},
            ),
        )
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_sentiment import metrics

    return [
        MetricSpec("accuracy", (TASK,), metrics.accuracy, description="Share of texts labelled correctly."),
        MetricSpec("macro_f1", (TASK,), metrics.macro_f1, description="F1 averaged over classes, each weighted equally."),
        MetricSpec("micro_f1", (TASK,), metrics.micro_f1,
                   description="F1 over every (text, label) decision pooled (multi-label runs)."),
        MetricSpec("most_common_set_micro_f1", (TASK,), metrics.most_common_set_micro_f1,
                   description="micro_f1 of predicting the evaluated data's most common label set for every text "
                               "(multi-label runs): the baseline."),
        MetricSpec("per_class", (TASK,), metrics.per_class, description="Precision, recall, F1 and support per class."),
        MetricSpec("confusion_matrix", (TASK,), metrics.confusion_matrix, description="Counts: rows true, columns predicted."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_sentiment.data import check

    return check(data)
