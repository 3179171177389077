"""NER: fine-tune a pretrained text encoder to find entity types in text (drugs, courts, products).

This module is what the ``taskzoo`` entry point loads: it only declares records, so listing tasks
never imports torch. The work happens in `taskzoo_ner.task` (sub-word alignment, windows, spans),
`taskzoo_ner.data` (CoNLL / JSON Lines readers, tag schemes) and `taskzoo_ner.metrics` (seqeval).
"""

from __future__ import annotations

from typing import Any

from taskzoo import Finding, MetricSpec, Option, SampleData, TaskSpec, hookimpl

TASK = "ner"


@hookimpl
def taskzoo_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK,
            description="Named-entity recognition: find typed spans (drugs, organisations, products) in text",
            data_formats=("conll", "jsonl or parquet: tokens+tags, text+entities", "datasets folder, hf:NAME", "txt (predict)"),
            task_class="taskzoo_ner.task:NerTask",
            main_metric="f1",
            defaults={"epochs": 8, "lr": 2e-4, "batch_size": 16},
            options=(
                Option("tag-column", "CoNLL column (1-based) holding the tag (default: the last).", type=int, minimum=1,
                       commands=("run", "check", "evaluate")),
                Option("tag-scheme", "Tag scheme of the files (default: detected).", choices=("auto", "iob2", "iob1", "bioes"),
                       default="auto", commands=("run", "check", "evaluate")),
                Option("max-length", "Sub-word tokens per window; longer sentences are split into windows "
                       "(default: the backbone's maximum).", type=int, minimum=8, commands=("run",)),
                Option("text", "A text to find entities in; repeat for several.", multiple=True, commands=("predict",)),
            ),
            # 40 + 12 sentences from examples/ner (synthetic clinical notes, CC0).
            sample=SampleData(
                train="taskzoo_ner/sample/train.conll",
                test="taskzoo_ner/sample/test.conll",
                predict_output="entities.jsonl",
                bad=("taskzoo_ner/sample/missing_tag.conll", "taskzoo_ner/sample/tags_mismatch.jsonl"),
                options={"max-length": 64, "batch-size": 8},
            ),
        )
    ]


@hookimpl
def taskzoo_metrics() -> list[MetricSpec]:
    from taskzoo_ner import metrics

    return [
        MetricSpec("f1", (TASK,), metrics.f1, description="Entity-level micro F1 (seqeval, conlleval rules)."),
        MetricSpec("precision", (TASK,), metrics.precision, description="Entity-level micro precision."),
        MetricSpec("recall", (TASK,), metrics.recall, description="Entity-level micro recall."),
        MetricSpec("macro_f1", (TASK,), metrics.macro_f1, description="Entity F1 averaged over types."),
        MetricSpec("per_type", (TASK,), metrics.per_type, description="Precision, recall, F1, support per entity type."),
        MetricSpec("type_confusion", (TASK,), metrics.type_confusion, description="Word-level confusion of entity types."),
    ]


@hookimpl
def taskzoo_check_data(task: str, data: Any) -> list[Finding] | None:
    if task != TASK:
        return None
    from taskzoo_ner.data import check

    return check(data)
