"""The sentiment task: a transformers sequence classifier fine-tuned by taskzoo's shared trainer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from taskzoo import BackboneSpec, DataError, UserError
from taskzoo.helpers.batching import LongestFirstSampler, SeededLengthGroupedSampler
from taskzoo.helpers.hf import TOKEN_FIELDS, TransformersAdapter, build_classifier, classifier_graph, load_classifier, save_classifier, token_limit
from taskzoo.helpers.plots import plot_confusion_matrix
from taskzoo.helpers.tables import delimited_text, json_lines_text, write_or_return
from taskzoo.task import Task
from taskzoo.helpers.splits import stratified_split
from taskzoo_sentiment.data import TextData, read_texts, read_texts_in_parts, sort_labels

class SentimentTask(Task):
    inline_input = "text"
    tokenizer: Any = None
    _labels: list[str] | None = None

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> TextData:
        return read_texts(
            path,
            role=role,
            text_column=self.options.get("text_column"),
            label_column=self.options.get("label_column"),
            known_labels=labels if role in ("val", "test") else None,
        )

    def inputs_from_options(self) -> TextData | None:
        texts = [t for t in self.options.get("text") or [] if t.strip()]
        if not texts:
            return None
        return TextData(
            path=Path("--text"), texts=texts, labels=None, rows=list(range(1, len(texts) + 1)),
            text_column="text", label_column=None, columns=["text"], records=[{"text": t} for t in texts],
        )

    def read_parts(self, path: Path, *, role: str, labels: Sequence[str] | None = None,
                   size: int) -> Iterator[TextData]:
        if role != "predict" or Path(path).suffix.lower() not in (".csv", ".tsv", ".txt", ".parquet", ".pq"):
            yield from super().read_parts(path, role=role, labels=labels, size=size)
            return
        yield from read_texts_in_parts(path, size, text_column=self.options.get("text_column"))

    def parts(self, data: TextData, size: int) -> Iterator[TextData]:
        for start in range(0, len(data), size):
            yield data.subset(range(start, min(start + size, len(data))))

    def labels(self, data: TextData) -> list[str]:
        return sort_labels(set(data.labels or []))

    def describe_split(self, *, val_fraction: float, seed: int) -> str:
        return f"a random {val_fraction:.0%} of the training data, stratified by label (seed {seed})"

    def split(self, data: TextData, *, val_fraction: float, seed: int) -> tuple[TextData, TextData]:
        train, val = stratified_split(data.labels or [], val_fraction, seed)
        if not val:
            raise DataError(f"{data.path}: too few rows to split off a validation set; give one with --val")
        return data.subset(train), data.subset(val)

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        tokenizer, network = build_classifier(AutoModelForSequenceClassification, backbone, labels)
        self.tokenizer, self._labels = tokenizer, list(labels)
        self.max_length = token_limit(tokenizer, self.options.get("max_length"), f"backbone '{backbone.name}'")
        tokenizer.model_max_length = self.max_length
        return TransformersAdapter(network)

    @property
    def labels_of_model(self) -> list[str]:
        if self._labels is None:
            raise RuntimeError("build or load the model first")
        return self._labels

    def _encode(self, data: TextData) -> list[dict[str, Any]]:
        encoded = self.tokenizer(data.texts, truncation=True, max_length=self.tokenizer.model_max_length)
        label_ids = {label: i for i, label in enumerate(self.labels_of_model)}
        items = []
        for i in range(len(data)):
            item = {key: encoded[key][i] for key in TOKEN_FIELDS if key in encoded}
            item["index"] = i
            if data.labels is not None:
                item["labels"] = label_ids[data.labels[i]]
            items.append(item)
        return items

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokens = [{key: item[key] for key in TOKEN_FIELDS if key in item} for item in items]
        batch = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        batch["index"] = torch.tensor([item["index"] for item in items])
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items])
        return batch

    def dataloader(self, data: TextData, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        items = self._encode(data)
        lengths = [len(item["input_ids"]) for item in items]
        sampler = SeededLengthGroupedSampler(lengths, batch_size, seed) if train else LongestFirstSampler(lengths)
        return DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=self._collate)

    def predictions(self, batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = torch.softmax(output.float(), dim=-1).cpu()
        scores, labels = probabilities.max(dim=-1)
        indices = batch["index"].tolist()
        return [
            {"index": indices[i], "label": int(labels[i]), "score": float(scores[i]), "probs": probabilities[i].tolist()}
            for i in range(len(indices))
        ]

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        return batch["labels"].tolist()

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        save_classifier(model, self.tokenizer, folder)

    def load(self, folder: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        self.tokenizer, model, self._labels = load_classifier(AutoModelForSequenceClassification, folder)
        return model

    def export_graph(self, model: torch.nn.Module) -> Any:
        return classifier_graph(model, self.tokenizer)

    # -- outputs ---------------------------------------------------------------------------------

    def records(self, data: TextData, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each input row with its predicted label, that label's probability and every label's."""
        labels = self.labels_of_model
        records = []
        for p in sorted(predictions, key=lambda p: p["index"]):
            record = dict(data.records[p["index"]]) if data.records else {data.text_column: data.texts[p["index"]]}
            record["prediction"] = labels[p["label"]]
            record["score"] = round(p["score"], 6)
            record["scores"] = {labels[i]: round(v, 6) for i, v in enumerate(p["probs"])}
            records.append({"row": data.rows[p["index"]], **record})
        return records

    def write_predictions(self, data: TextData, predictions: list[dict[str, Any]], output: Path | None) -> str:
        records = self.records(data, predictions)
        all_scores = bool(self.options.get("all_scores"))
        if output is None and data.path == Path("--text"):
            lines = []
            for record in records:
                line = f"{record['prediction']}\t{record['score']:.4f}\t{record['text']}"
                if all_scores:
                    line += "\t" + " ".join(f"{label}={value:.4f}" for label, value in record["scores"].items())
                lines.append(line)
            return "\n".join(lines)
        suffix = output.suffix.lower() if output else ".csv"
        if suffix in (".jsonl", ".json"):
            text = json_lines_text(records)
        elif suffix in (".csv", ".tsv"):
            # One column per label with --all-scores; the row number stays out, as it was read.
            rows = [{**{k: v for k, v in r.items() if k not in ("row", "scores")},
                     **({f"score_{label}": value for label, value in r["scores"].items()} if all_scores else {})}
                    for r in records]
            fields = list(rows[0]) if rows else ["prediction", "score"]
            text = delimited_text(rows, fields, tabs=suffix == ".tsv")
        else:
            raise UserError(f"--output {output}: unknown file type; use .csv, .tsv or .jsonl")
        return write_or_return(text, output)

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        if "confusion_matrix" not in metrics:
            return []
        accuracy = metrics.get("accuracy")
        title = "Confusion matrix" + (f" (accuracy {accuracy:.3f})" if accuracy is not None else "")
        return [plot_confusion_matrix(metrics["confusion_matrix"], self.labels_of_model, folder / "confusion_matrix.png", title)]

    def model_card_usage(self, run_folder: Path) -> str:
        return (
            "The `model/` folder is a standard transformers checkpoint:\n\n"
            "```python\nfrom transformers import pipeline\n"
            f"classify = pipeline(\"text-classification\", model=\"{run_folder / 'model'}\")\n"
            "classify(\"the hoppy finish was wonderful\")\n```\n"
        )
