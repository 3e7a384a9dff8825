"""Text classification from a table of `text,label` rows (CSV or Parquet; a file, a folder of
part files or a glob; local, s3:// or gs://), in memory or streamed (kiln.data.stream) by
size: a vocabulary counted on the training rows, token ids padded on the left so that an RNN's
last step is the text's last word."""

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from kiln.data.base import DATASETS, Dataset, require_task
from kiln.data.files import read_table
from kiln.data.shards import CsvDialect, Shards
from kiln.data.stream import (
    StreamedDataset,
    class_indices,
    columns_read,
    in_memory,
    labels_of,
    merged_labels,
    present_labels,
    should_stream,
    stream,
)
from kiln.preprocess import TOKEN, encode, tokenize
from kiln.schema import DataSchema


@dataclass
class TextLayout:
    text: str
    label: str
    max_len: int
    max_vocab: int
    classes: list[str] | None = None
    vocab: dict[str, int] | None = None  # word -> id (0 pads, 1 is an unknown word)

    @property
    def columns(self) -> list[str]:
        return [self.text, self.label]

    def summary(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The block's word counts and labels (labels are read as text)."""
        present_labels(frame, self.label)  # a row without its label fails the fit
        counts = Counter(word for text in self._texts(frame) for word in tokenize(text))
        labels = labels_of(frame.assign(**{self.label: frame[self.label].astype(str)}), self.label)
        return {"words": np.array([json.dumps(counts)]), "classes": labels}

    def fitted(self, summaries: list[dict[str, Any]]) -> "TextLayout":
        counts: Counter[str] = Counter()
        for part in summaries:
            counts.update(json.loads(part["words"]))
        return replace(
            self, classes=merged_labels(summaries), vocab=build_vocab(counts, self.max_vocab)
        )

    def tensors(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        assert self.vocab is not None and self.classes is not None, "fit the layout first"
        x = encode([tokenize(t) for t in self._texts(frame)], self.vocab, self.max_len)
        labels = present_labels(frame, self.label).astype(str)
        return {"x": x, "y": class_indices(labels, self.classes, self.label)}

    def _texts(self, frame: pd.DataFrame) -> pd.Series:
        """The text column, a missing text as an empty one (no words)."""
        return frame[self.text].fillna("")

    def schema(self) -> DataSchema:
        assert self.vocab is not None and self.classes is not None, "fit the layout first"
        return DataSchema(
            task="classification",
            input_shape=[self.max_len],
            input_dtype="int64",
            output_dim=len(self.classes),
            classes=self.classes,
            vocab_size=len(self.vocab) + 2,
            transform={"tokenize": TOKEN.pattern, "vocab": self.vocab, "max_len": self.max_len},
        )


@DATASETS.register("text_csv")
def text_csv(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    max_vocab: int = 20000,
    max_len: int = 64,
    split_key: str | None = None,
    streaming: bool | Literal["auto"] = "auto",
    csv: CsvDialect = CsvDialect(),
    val_path: str | None = None,
) -> Dataset | StreamedDataset:
    """Validation rows are chosen by a seeded hash of the row (or of the `split_key` column);
    larger files stream."""
    require_task("text_csv", task, ("classification",))
    shards = Shards.open(path, csv)
    shards.require([text_column, label_column, *([split_key] if split_key else [])])
    layout = TextLayout(text_column, label_column, max_len, max_vocab)
    val = shards.validation(val_path, layout.columns)
    if should_stream(streaming, shards.bytes + (val.bytes if val else 0)):
        return stream(shards, layout, val_fraction, seed, split_key, val)
    frame = read_table(shards, columns=columns_read(layout, split_key))
    val_frame = read_table(val, columns=layout.columns) if val else None
    return in_memory(frame, layout, val_fraction, seed, split_key, path, val_frame)


def build_vocab(counts: Counter[str], max_vocab: int) -> dict[str, int]:
    """Most frequent words first (ties alphabetical, so the vocabulary is deterministic)."""
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:max_vocab]
    return {word: i + 2 for i, word in enumerate(ranked)}
