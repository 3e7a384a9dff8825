"""Parquet tables of generated rows with a known rule, written shard by shard (memory stays
bounded however many rows), for the streaming tests and benchmark; and short reviews whose
sentiment words decide their label.

    write_table(folder, rows=2_000_000, files=20)   # f0..f31 float32, label 0/1
    reviews(600, seed=0)                            # a DataFrame of text, label (pos/neg)
    people(2000, seed=0)                            # numbers with gaps, a text column, label

The label is 1 where x·w / sqrt(F) + x0·x1 > 0: a linear part and an interaction a linear
model cannot learn, with no noise, so an MLP can approach accuracy 1.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 32


def rule(x: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(12345).normal(size=x.shape[1])
    return ((x @ w) / np.sqrt(x.shape[1]) + x[:, 0] * x[:, 1] > 0).astype(np.int64)


def write_table(folder: Path, rows: int, files: int, seed: int = 0, sizes=None) -> list[Path]:
    """`files` Parquet shards of `rows` rows in all (or of `sizes` rows each)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [rows // files + (i < rows % files) for i in range(files)]
    paths = []
    for index, size in enumerate(sizes):
        rng = np.random.default_rng([seed, index])
        x = rng.normal(size=(size, FEATURES)).astype(np.float32)
        columns = {f"f{i}": x[:, i] for i in range(FEATURES)}
        path = folder / f"part-{index:05d}.parquet"
        pq.write_table(pa.table({**columns, "label": rule(x)}), path, row_group_size=65536)
        paths.append(path)
    return paths


WORDS = {"pos": "wonderful delightful moving superb", "neg": "dull boring awful tedious"}


def reviews(n: int, seed: int) -> pd.DataFrame:
    """Short reviews whose label the sentiment words decide, among neutral filler."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = str(rng.choice(["pos", "neg"]))
        words = [*rng.choice(WORDS[label].split(), 2), *rng.choice(["film", "plot", "it"], 3)]
        rows.append((" ".join(rng.permutation(words)), label))
    return pd.DataFrame(rows, columns=["text", "label"])


CITIES = ["paris", "lyon", "nice", "lille"]


def people(rows: int, seed: int) -> pd.DataFrame:
    """A table as real ones come: `income` missing in a tenth of the rows, `city` text (with
    rare one-off values), `age` a distraction. The label is "yes" where income is above 50
    or the city is nice, but not both: without the text column a model cannot learn it."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, rows)
    city = rng.choice(CITIES, rows, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    rare = rng.random(rows) < 0.01
    city[rare] = [f"hamlet-{i}" for i in range(rare.sum())]
    label = np.where((income > 50) ^ (city == "nice"), "yes", "no")
    income[rng.random(rows) < 0.1] = np.nan  # after the label: a missing value hides it
    age = rng.integers(18, 80, rows).astype(float)
    return pd.DataFrame({"age": age, "income": income, "city": city, "label": label})
