"""Text classification from a CSV of `text,label`: a vocabulary built from the training split,
token ids padded on the left so that an RNN's last step is the text's last word."""

from collections import Counter

import numpy as np

from kiln.data.base import DATASETS, Dataset, require_task, shuffled_split
from kiln.data.files import read_table
from kiln.errors import DataError
from kiln.preprocess import TOKEN, encode, tokenize
from kiln.schema import DataSchema


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
) -> Dataset:
    require_task("text_csv", task, ("classification",))
    frame = read_table(path)
    for name in (text_column, label_column):
        if name not in frame.columns:
            raise DataError(f"{path} has no column {name!r}; columns: {', '.join(frame.columns)}")
    tokens = [tokenize(t) for t in frame[text_column]]
    classes, y = np.unique(frame[label_column].astype(str).to_numpy(), return_inverse=True)
    train, val = shuffled_split(len(tokens), val_fraction, seed)
    vocab = build_vocab([tokens[i] for i in train], max_vocab)
    schema = DataSchema(
        task="classification",
        input_shape=[max_len],
        input_dtype="int64",
        output_dim=len(classes),
        classes=[str(c) for c in classes],
        vocab_size=len(vocab) + 2,
        transform={"tokenize": TOKEN.pattern, "vocab": vocab, "max_len": max_len},
    )
    x_train = encode([tokens[i] for i in train], vocab, max_len)
    x_val = encode([tokens[i] for i in val], vocab, max_len)
    return Dataset(x_train, y[train].astype(np.int64), x_val, y[val].astype(np.int64), schema)


def build_vocab(texts: list[list[str]], max_vocab: int) -> dict[str, int]:
    """Most frequent words first (ties alphabetical, so the vocabulary is deterministic)."""
    counts = Counter(word for words in texts for word in words)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:max_vocab]
    return {word: i + 2 for i, word in enumerate(ranked)}
