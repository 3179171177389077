"""The sentiment task: a transformers sequence classifier fine-tuned by taskzoo's shared trainer."""

from __future__ import annotations

import functools
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
from taskzoo_sentiment.data import TextData, TokenIds, label_set, read_texts, read_texts_in_parts, sort_labels

MULTI_LABEL = "multi_label_classification"  # transformers' problem_type: sigmoid outputs, BCE loss
# A set of up to this many tokens (400,000 reviews of 40) is kept tokenised, 64 MiB of int32 ids and
# as many again for token type ids, and padded batch by batch: tokenising each batch again took a
# fiftieth of a MiniLM epoch.
KEPT_TOKENS = 1 << 24


class SentimentTask(Task):
    inline_input = "text"
    cpu_bf16 = True  # MiniLM: 1.3x per epoch on AMX CPUs, the same accuracy over 3 seeds (benchmarks/README.md)
    report_draws_predictions = False  # the confusion matrix comes from the metrics
    tokenizer: Any = None
    _labels: list[str] | None = None
    _loaded_multi_label: bool | None = None  # what a loaded model is; None: a run, its --multi-label says
    thresholds: list[float] | None = None  # multi-label: a label is predicted at or above its threshold
    _threshold_data: TextData | None = None  # the validation data the thresholds are chosen on

    @property
    def multi_label(self) -> bool:
        if self._loaded_multi_label is not None:
            return self._loaded_multi_label
        return bool(self.options.get("multi_label"))

    @property
    def separator(self) -> str:
        separator = self.options.get("label_separator") or "|"
        if not separator.strip():
            raise UserError("--label-separator: expected a character such as '|' or ';', got blanks")
        return separator

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> TextData:
        return read_texts(
            path,
            role=role,
            text_column=self.options.get("text_column"),
            label_column=self.options.get("label_column"),
            known_labels=labels if role in ("val", "test") else None,
            label_separator=self.separator if self.multi_label else None,
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
        if self.multi_label:
            return sort_labels({label for row in data.labels or [] for label in label_set(row, self.separator)})
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
        if self.multi_label:  # transformers then scores with a sigmoid per label and BCE-with-logits
            network.config.problem_type = MULTI_LABEL
        self.tokenizer, self._labels = tokenizer, list(labels)
        self.max_length = token_limit(tokenizer, self.options.get("max_length"), f"backbone '{backbone.name}'")
        tokenizer.model_max_length = self.max_length
        return TransformersAdapter(network)

    @property
    def labels_of_model(self) -> list[str]:
        if self._labels is None:
            raise RuntimeError("build or load the model first")
        return self._labels

    def _tokenised(self, data: TextData) -> tuple[list[int], TokenIds | None]:
        """Each text's length in tokens, tokenised a few thousand at a time, and the token ids
        themselves while the set holds at most `KEPT_TOKENS` tokens (None above: a larger set is
        tokenised again batch by batch as the loader asks, never held tokenised)."""
        lengths: list[int] = []
        parts: list[dict[str, Any]] | None = []
        tokens = 0
        for start in range(0, len(data), 2048):  # a slice of a Column is a Column: read a batch at a time
            texts = list(data.texts[start:start + 2048])
            encoded = self.tokenizer(texts, truncation=True, max_length=self.tokenizer.model_max_length)
            part_lengths = [len(ids) for ids in encoded["input_ids"]]
            lengths.extend(part_lengths)
            tokens += sum(part_lengths)
            # Kept while the whole set, at the tokens per text so far, would fit: a set far larger
            # than the limit is dropped at its first part instead of held up to the limit.
            fits = tokens / len(lengths) * len(data) <= KEPT_TOKENS
            if parts is not None and fits:
                parts.append(TokenIds.flat(encoded))
            else:
                parts = None
        return lengths, None if parts is None else TokenIds.joined(parts, lengths)

    def _collate(self, data: TextData, label_ids: dict[str, int], kept: TokenIds | None,
                 indices: list[int]) -> dict[str, torch.Tensor]:
        """A batch padded from the kept token ids, or tokenised when the loader asks for it."""
        if kept is not None:
            encoded = self.tokenizer.pad(kept.texts(indices), return_tensors="pt")
        else:
            encoded = self.tokenizer([data.texts[i] for i in indices], truncation=True, padding=True,
                                     max_length=self.tokenizer.model_max_length, return_tensors="pt")
        batch = {key: encoded[key] for key in TOKEN_FIELDS if key in encoded}
        batch["index"] = torch.tensor(indices)
        if data.labels is not None:
            if self.multi_label:
                hot = torch.zeros(len(indices), len(label_ids))
                for row, i in enumerate(indices):
                    for label in label_set(data.labels[i], self.separator):
                        hot[row, label_ids[label]] = 1.0
                batch["labels"] = hot
            else:
                batch["labels"] = torch.tensor([label_ids[data.labels[i]] for i in indices])
        return batch

    def dataloader(self, data: TextData, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        if not train and data.labels is not None and self.multi_label:
            self._threshold_data = data  # the run's validation data: thresholds are chosen on it when saving
        lengths, kept = self._tokenised(data)
        label_ids = {label: i for i, label in enumerate(self.labels_of_model)} if data.labels is not None else {}
        sampler = SeededLengthGroupedSampler(lengths, batch_size, seed) if train else LongestFirstSampler(lengths)
        return DataLoader(range(len(data)), batch_size=batch_size, sampler=sampler,
                          collate_fn=functools.partial(self._collate, data, label_ids, kept))

    def predictions(self, batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> list[dict[str, Any]]:
        if self.multi_label:
            probabilities = torch.sigmoid(output.float()).cpu()
            thresholds = torch.tensor(self.thresholds or [0.5] * probabilities.shape[1])
            chosen = probabilities >= thresholds
            indices = batch["index"].tolist()
            return [{"index": indices[i], "labels": torch.nonzero(chosen[i]).flatten().tolist(),
                     "score": float(probabilities[i][chosen[i]].min()) if chosen[i].any() else 0.0,
                     "probs": probabilities[i].tolist()} for i in range(len(indices))]
        probabilities = torch.softmax(output.float(), dim=-1).cpu()
        scores, labels = probabilities.max(dim=-1)
        indices = batch["index"].tolist()
        return [
            {"index": indices[i], "label": int(labels[i]), "score": float(scores[i]), "probs": probabilities[i].tolist()}
            for i in range(len(indices))
        ]

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[Any]:
        if self.multi_label:  # each text's label ids
            return [torch.nonzero(row > 0.5).flatten().tolist() for row in batch["labels"].cpu()]
        return batch["labels"].tolist()

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        if self.multi_label:
            self.thresholds = self._choose_thresholds(model)
            # In the checkpoint's config.json, beside id2label, for anyone loading it with transformers.
            model.network.config.label_thresholds = dict(zip(self.labels_of_model, self.thresholds))
        save_classifier(model, self.tokenizer, folder)

    @torch.no_grad()
    def _choose_thresholds(self, model: torch.nn.Module) -> list[float]:
        """Each label's threshold with the best F1 on the validation data (0.5 for a label it
        never shows); the thresholds the saved model predicts with."""
        labels = len(self.labels_of_model)
        if self._threshold_data is None:
            return [0.5] * labels
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        probabilities, truth = [], []
        for batch in self.dataloader(self._threshold_data, batch_size=32, train=False, seed=0):
            inputs = {key: value.to(device) for key, value in batch.items() if key in TOKEN_FIELDS}
            probabilities.append(torch.sigmoid(model(inputs)["output"].float()).cpu())
            truth.append(batch["labels"] > 0.5)
        model.train(was_training)
        from taskzoo_sentiment.metrics import best_thresholds

        return best_thresholds(torch.cat(probabilities).numpy(), torch.cat(truth).numpy())

    def load(self, folder: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        self.tokenizer, model, self._labels = load_classifier(AutoModelForSequenceClassification, folder)
        config = model.network.config
        self._loaded_multi_label = config.problem_type == MULTI_LABEL
        if self._loaded_multi_label:
            saved = getattr(config, "label_thresholds", None) or {}
            self.thresholds = [float(saved.get(label, 0.5)) for label in self._labels]
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
            if self.multi_label:
                record["prediction"] = self.separator.join(labels[i] for i in p["labels"])
                record["labels"] = [labels[i] for i in p["labels"]]
            else:
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
            rows = [{**{k: v for k, v in r.items() if k not in ("row", "scores", "labels")},
                     **({f"score_{label}": value for label, value in r["scores"].items()} if all_scores else {})}
                    for r in records]
            fields = list(rows[0]) if rows else ["prediction", "score"]
            text = delimited_text(rows, fields, tabs=suffix == ".tsv")
        else:
            raise UserError(f"--output {output}: unknown file type; use .csv, .tsv or .jsonl")
        return write_or_return(text, output)

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        if self.multi_label and isinstance(metrics.get("per_class"), Mapping):
            from taskzoo_sentiment.metrics import plot_per_label

            return [plot_per_label(metrics, self.thresholds, folder / "per_label.png")]
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
