"""The NER task: a transformers token classifier fine-tuned by taskzoo's shared trainer.

Words are split into sub-word tokens; only each word's first sub-token carries its tag (the rest
are ignored by the loss and by predictions). A sentence longer than the backbone's window is cut
at word boundaries into several windows, each word predicted in exactly one (with some of its
neighbours on either side as context), and stitched back afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from taskzoo import BackboneSpec, DataError, UserError
from taskzoo.helpers.batching import LongestFirstSampler, SeededLengthGroupedSampler
from taskzoo.helpers.hf import TOKEN_FIELDS, TransformersAdapter, build_classifier, classifier_graph, load_classifier, save_classifier, token_limit
from taskzoo.helpers.plots import plot_confusion_matrix, save_figure
from taskzoo.helpers.tables import delimited_text, json_lines_text, write_or_return
from taskzoo.task import Task
from taskzoo.helpers.splits import random_split
from taskzoo_ner.data import NerData, Sentence, read_ner

IGNORED = -100


def decode_spans(tags: Sequence[str], scores: Sequence[float]) -> list[tuple[int, int, str, float]]:
    """IOB2 word tags -> (first word, last word, type, mean score); a stray I- opens an entity."""
    spans: list[tuple[int, int, str, float]] = []
    start, kind = None, None
    for position, tag in enumerate([*tags, "O"]):
        prefix, tag_kind = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if start is not None and (prefix != "I" or tag_kind != kind):
            spans.append((start, position - 1, kind, sum(scores[start:position]) / (position - start)))
            start, kind = None, None
        if prefix in "BI" and start is None:
            start, kind = position, tag_kind
    return spans


class NerTask(Task):
    inline_input = "text"
    cpu_bf16 = True  # MiniLM: 1.3x per epoch on AMX CPUs, the same F1 over 3 seeds (benchmarks/README.md)
    report_draws_predictions = False  # the confusion matrix and per-type F1 come from the metrics
    tokenizer: Any = None
    _labels: list[str] | None = None

    # -- data ------------------------------------------------------------------------------------

    def read(self, path: Path, *, role: str, labels: Sequence[str] | None = None) -> NerData:
        known = sorted({label[2:] for label in labels if label != "O"}) if labels and role in ("val", "test") else None
        return read_ner(
            path, role=role, tag_column=self.options.get("tag_column"),
            scheme=self.options.get("tag_scheme") or "auto", known_types=known,
        )

    def inputs_from_options(self) -> NerData | None:
        from taskzoo_ner.data import words_with_offsets

        texts = [t for t in self.options.get("text") or [] if t.strip()]
        if not texts:
            return None
        sentences = []
        for number, text in enumerate(texts, start=1):
            words, offsets = words_with_offsets(text)
            sentences.append(Sentence(tokens=words, tags=None, line=number, text=text, offsets=offsets))
        return NerData(path=Path("--text"), sentences=sentences, format="text")

    def labels(self, data: NerData) -> list[str]:
        kinds = sorted({tag[2:] for s in data.sentences for tag in s.tags or [] if tag != "O"})
        return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]

    def parts(self, data: NerData, size: int) -> Iterator[NerData]:
        for start in range(0, len(data), size):
            yield replace(data, sentences=data.sentences[start:start + size], repairs=[], notes=[],
                          first=data.first + start)

    def split(self, data: NerData, *, val_fraction: float, seed: int) -> tuple[NerData, NerData]:
        train, val = random_split(len(data), val_fraction, seed)
        if not val or not train:
            raise DataError(f"{data.path}: too few sentences to split off a validation set; give one with --val")
        part = lambda indices: NerData(  # noqa: E731
            path=data.path, sentences=[data.sentences[i] for i in indices], format=data.format, scheme=data.scheme
        )
        return part(train), part(val)

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, backbone: BackboneSpec, labels: Sequence[str]) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        tokenizer, network = build_classifier(AutoModelForTokenClassification, backbone, labels)
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"backbone '{backbone.name}' has no fast tokenizer, which NER needs to align words and sub-words")
        self.tokenizer, self._labels = tokenizer, list(labels)
        tokenizer.model_max_length = token_limit(tokenizer, self.options.get("max_length"), f"backbone '{backbone.name}'")
        return TransformersAdapter(network)

    @property
    def labels_of_model(self) -> list[str]:
        if self._labels is None:
            raise RuntimeError("build or load the model first")
        return self._labels

    def windows(self, data: NerData) -> list[dict[str, Any]]:
        """Encoded windows: sub-word ids, the word each first sub-token starts, and its label.

        A sentence longer than the window is cut at word boundaries into cores that cover each
        word exactly once; each core is shown with up to an eighth of the window of neighbouring
        words on either side, so a word next to a cut is tagged knowing what is around it (an
        entity across the cut continues with I- instead of being split in two). Only core words
        are predicted, scored and trained on: the context words have ``word_index`` -1 and no label.
        """
        limit = self.tokenizer.model_max_length - self.tokenizer.num_special_tokens_to_add()
        context = limit // 8
        counts = self.tokenizer([s.tokens for s in data.sentences], is_split_into_words=True, add_special_tokens=False)
        spans: list[tuple[int, int, int, int, int]] = []  # (sentence, window first, window end, core first, core end)
        for index, sentence in enumerate(data.sentences):
            per_word = [0] * len(sentence.tokens)
            for word in counts.word_ids(index):
                if word is not None:
                    per_word[word] += 1
            if sum(per_word) <= limit:
                spans.append((index, 0, len(per_word), 0, len(per_word)))
                continue
            cores, start, used = [], 0, 0
            for word, count in enumerate(per_word):
                if used and used + count > limit - 2 * context:
                    cores.append((start, word))
                    start, used = word, 0
                used += count
            cores.append((start, len(per_word)))
            for first, end in cores:
                window_first, extra = first, 0
                while window_first > 0 and extra + per_word[window_first - 1] <= context:
                    window_first -= 1
                    extra += per_word[window_first]
                window_end, extra = end, 0
                while window_end < len(per_word) and extra + per_word[window_end] <= context:
                    extra += per_word[window_end]
                    window_end += 1
                spans.append((index, window_first, window_end, first, end))
        label_ids = {label: i for i, label in enumerate(self.labels_of_model)}
        encoded = self.tokenizer(
            [data.sentences[i].tokens[a:b] for i, a, b, _, _ in spans], is_split_into_words=True, truncation=True,
            max_length=self.tokenizer.model_max_length,
        )
        items = []
        for row, (sentence_index, window_first, _, first, end) in enumerate(spans):
            sentence = data.sentences[sentence_index]
            word_index, labels, previous = [], [], None
            for word in encoded.word_ids(row):
                position = None if word is None else window_first + word
                predicted = position is not None and word != previous and first <= position < end
                word_index.append(position if predicted else -1)
                if sentence.tags is not None:
                    labels.append(label_ids[sentence.tags[position]] if predicted else IGNORED)
                previous = word
            item = {key: encoded[key][row] for key in TOKEN_FIELDS if key in encoded}
            item.update(word_index=word_index, sentence=data.first + sentence_index, start=first)
            if sentence.tags is not None:
                item["labels"] = labels
            items.append(item)
        return items

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokens = [{key: item[key] for key in TOKEN_FIELDS if key in item} for item in items]
        batch = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        width = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"

        def pad(values: list[int], filler: int) -> list[int]:
            padding = [filler] * (width - len(values))
            return padding + values if left else values + padding

        batch["word_index"] = torch.tensor([pad(item["word_index"], -1) for item in items])
        batch["sentence"] = torch.tensor([item["sentence"] for item in items])
        batch["start"] = torch.tensor([item["start"] for item in items])
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([pad(item["labels"], IGNORED) for item in items])
        return batch

    def dataloader(self, data: NerData, *, batch_size: int, train: bool, seed: int) -> DataLoader:
        items = self.windows(data)
        lengths = [len(item["input_ids"]) for item in items]
        sampler = SeededLengthGroupedSampler(lengths, batch_size, seed) if train else LongestFirstSampler(lengths)
        return DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=self._collate)

    def predictions(self, batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = torch.softmax(output.float(), dim=-1)
        scores, tags = probabilities.max(dim=-1)
        words = batch["word_index"] >= 0
        return [
            {"sentence": int(batch["sentence"][row]), "start": int(batch["start"][row]),
             "tags": tags[row][words[row]].tolist(), "scores": scores[row][words[row]].tolist()}
            for row in range(output.shape[0])
        ]

    def references(self, batch: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        words = batch["word_index"] >= 0
        return [
            {"sentence": int(batch["sentence"][row]), "start": int(batch["start"][row]),
             "tags": batch["labels"][row][words[row]].tolist()}
            for row in range(batch["labels"].shape[0])
        ]

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        save_classifier(model, self.tokenizer, folder)

    def load(self, folder: Path) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        self.tokenizer, model, self._labels = load_classifier(AutoModelForTokenClassification, folder)
        return model

    def export_graph(self, model: torch.nn.Module) -> Any:
        return classifier_graph(model, self.tokenizer)

    def answer(self, prediction: Mapping[str, Any]) -> Any:
        return prediction["sentence"], prediction["start"], prediction["tags"]

    # -- outputs ---------------------------------------------------------------------------------

    def entities(self, data: NerData, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per input sentence: its text and the entities found, with character offsets."""
        windows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item in predictions:
            windows[item["sentence"]].append(item)
        records = []
        for index, sentence in enumerate(data.sentences):
            parts = sorted(windows[data.first + index], key=lambda item: item["start"])
            tags = [self.labels_of_model[t] for part in parts for t in part["tags"]]
            scores = [s for part in parts for s in part["scores"]]
            text, offsets = sentence.surface()
            found = []
            for first, last, kind, score in decode_spans(tags, scores):
                start, end = offsets[first][0], offsets[last][1]
                found.append({"start": start, "end": end, "text": text[start:end], "label": kind, "score": round(score, 4)})
            records.append({"line": sentence.line, "text": text, "entities": found})
        return records

    def records(self, data: NerData, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.entities(data, predictions)

    def write_predictions(self, data: NerData, predictions: list[dict[str, Any]], output: Path | None) -> str:
        records = self.entities(data, predictions)
        suffix = output.suffix.lower() if output else ".jsonl"
        if output is None and data.path == Path("--text"):
            lines = []
            for record in records:
                lines.append(record["text"])
                lines += [f"  {e['label']}\t{e['text']}\t{e['start']}-{e['end']}\t{e['score']:.3f}" for e in record["entities"]]
                if not record["entities"]:
                    lines.append("  (no entities)")
            return "\n".join(lines)
        if suffix in (".jsonl", ".json"):
            text = json_lines_text(records)
        elif suffix in (".csv", ".tsv"):
            entities = ({"line": record["line"], **entity} for record in records for entity in record["entities"])
            text = delimited_text(entities, ["line", "start", "end", "text", "label", "score"], tabs=suffix == ".tsv")
        else:
            raise UserError(f"--output {output}: unknown file type; use .jsonl, .csv or .tsv")
        return write_or_return(text, output)

    def report(self, folder: Path, metrics: Mapping[str, Any]) -> list[Path]:
        pictures = []
        confusion = metrics.get("type_confusion")
        if confusion:
            title = "Entity types per word" + (f" (entity F1 {metrics['f1']:.3f})" if "f1" in metrics else "")
            pictures.append(plot_confusion_matrix(confusion["matrix"], confusion["labels"], folder / "confusion_matrix.png", title))
        per_type = metrics.get("per_type")
        if per_type:
            pictures.append(_plot_per_type(per_type, folder / "per_type_f1.png"))
        return pictures

    def model_card_usage(self, run_folder: Path) -> str:
        return (
            "The `model/` folder is a standard transformers checkpoint:\n\n"
            "```python\nfrom transformers import pipeline\n"
            f"ner = pipeline(\"token-classification\", model=\"{run_folder / 'model'}\", aggregation_strategy=\"first\")\n"
            "ner(\"Aspirin 81 mg was prescribed at Mayo Clinic\")\n```\n"
        )


def _plot_per_type(per_type: Mapping[str, Mapping[str, float]], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(per_type)
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(kinds) + 2), 4))
    width = 0.27
    for offset, measure in zip((-width, 0, width), ("precision", "recall", "f1")):
        axis.bar([i + offset for i in range(len(kinds))], [per_type[k][measure] for k in kinds], width, label=measure)
    axis.set_xticks(range(len(kinds)), labels=[f"{k}\n(n={per_type[k]['support']})" for k in kinds])
    axis.set_ylim(0, 1.05)
    axis.set_title("Entity-level scores per type")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return save_figure(figure, output, dpi=110)
