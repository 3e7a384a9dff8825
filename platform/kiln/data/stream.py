"""Files that stream. Ray Data reads the shards, splits the rows by a seeded hash, and turns
them into the model's tensors in `map_batches` on the way to each Train worker. The driver
never holds the data, and nothing the size of the data is put in the object store.

    layout = TableLayout(task="classification", label="y", features=["a", "b"])  # or TextLayout
    data = stream(shards, layout, val_fraction=0.2, seed=0)      # a StreamedDataset
    TorchTrainer(..., datasets=data.datasets)      # workers: get_dataset_shard("train"), "val"

A `Layout` says what a dataset's rows become: the columns it reads, a block's summary (counts,
sums, words), the summaries merged into the fitted preprocessing (a standardisation, the
classes, a vocabulary), and a block's tensors with that preprocessing applied. The in-memory
path (`data.streaming: false`, `in_memory`) uses the same split (`in_validation`), fits on its
training rows as one block, and makes the same tensors: both paths train on the same numbers.
"""

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from kiln.data.base import Dataset
from kiln.errors import DataError
from kiln.schema import DataSchema

BLOCK_BYTES = 8 * 2**20  # Ray Data blocks on their way to the workers
HASH_BUCKETS = 2**20  # the split's resolution: val_fraction is kept to about one in a million
STREAM_ABOVE_BYTES = 256 * 2**20  # `streaming: auto` streams files larger than this on disk
SAMPLE_ROWS, SAMPLE_BYTES = 2000, 8 * 2**20  # the fitting pass's uniform sample of raw rows


class Source(Protocol):
    """Files Ray Data reads as rows: a table's shards (kiln.data.shards), image files."""

    @property
    def fingerprint(self) -> str: ...

    def dataset(self, columns: list[str]) -> Any:
        """A ray.data.Dataset of these columns, one read task per file at least."""
        ...

    def explain(self, error: Exception) -> str:
        """A failed read of the dataset, in one line."""
        ...


class Layout(Protocol):
    """How a dataset's raw rows become a model's tensors, and what is fitted on them."""

    @property
    def columns(self) -> list[str]: ...

    def summary(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """One block of training rows as one row of summaries (`fit` adds its "rows")."""
        ...

    def fitted(self, summaries: list[dict[str, Any]]) -> "Layout":
        """This layout with its preprocessing fitted on the blocks' summaries."""
        ...

    def tensors(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw rows as {"x": model inputs, "y": targets}."""
        ...

    def schema(self) -> DataSchema: ...


def class_indices(values: np.ndarray, classes: list[Any], column: str) -> np.ndarray:
    """Labels as indices into the sorted `classes`; a label the training rows lacked is a
    DataError naming it."""
    known = np.asarray(classes)
    y = np.searchsorted(known, values).clip(0, len(known) - 1)
    if len(values) and not (known[y] == values).all():
        unknown = values[known[y] != values][0]
        raise DataError(
            f"label {unknown!r} of column {column!r} is not among the training rows' "
            f"classes {classes}"
        )
    return y.astype(np.int64)


def labels_of(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A block's distinct labels, as JSON in a one-element array (summaries are rows)."""
    return np.array([json.dumps(frame[column].dropna().unique().tolist())])


def time_order(values: pd.Series, what: str) -> np.ndarray:
    """A time column as numbers that order it: numbers as they are, timestamps and the dates
    text writes as unix seconds (`3/1/1958` sorted as text puts every December before March).
    Text is read in one format month first, else day first (`13/01/1958` says so), else each
    value on its own."""
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy()
    if pd.api.types.is_datetime64_any_dtype(values):
        return _unix_seconds(values)
    error: Exception | None = None
    for how in ({}, {"dayfirst": True}, {"format": "mixed"}):
        try:
            return _unix_seconds(pd.to_datetime(values, utc=True, **how))
        except (ValueError, TypeError) as e:
            error = e
    raise DataError(f"{what} is not dates or numbers ({error})")


def _unix_seconds(times: pd.Series) -> np.ndarray:
    """Seconds of any date or time type, numpy's or pyarrow's (which reads a CSV's ISO dates,
    `2015-01-31`, as date32: no `.dt.tz`); a time without a zone is taken as UTC."""
    utc = pd.to_datetime(times, utc=True).dt.tz_convert(None)
    return utc.to_numpy("datetime64[ns]").astype(np.int64) / 1e9


def present_labels(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The label column's values; a row without one (missing, empty text, or an infinite
    number) is a DataError: there is nothing to learn from it."""
    values = frame[column]
    missing = values.isna()
    if pd.api.types.is_float_dtype(values):
        missing |= np.isinf(values.to_numpy(np.float64, na_value=np.nan))
    elif not pd.api.types.is_numeric_dtype(values):  # a CSV's empty cell: an empty string
        missing |= values.astype(str).str.strip() == ""
    if count := int(missing.sum()):
        raise DataError(
            f"{count} of {len(values)} rows have no {column!r} (the label), or an infinite "
            "one: drop or fill them"
        )
    return values.to_numpy()


def merged_labels(summaries: list[dict[str, Any]]) -> list[Any]:
    return sorted({label for part in summaries for label in json.loads(part["classes"])})


def merged_moments(
    summaries: list[dict[str, Any]], prefix: str = ""
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The blocks' counts, means and sums of squared deviations merged by Chan et al.'s
    pairwise update: (count, mean, M2) of all of them. A block's count is its "count" (per
    feature, where values may be missing) or else its "rows"; `prefix` names another set of
    moments ("target_": "target_mean", "target_m2")."""
    count: Any = 0
    mean, m2 = np.zeros(1), np.zeros(1)  # broadcast to the first block's shape
    for part in summaries:
        n = np.asarray(part.get(f"{prefix}count", part["rows"]), dtype=np.float64)
        block_mean = np.asarray(part[f"{prefix}mean"], dtype=np.float64)
        total = count + n
        share = np.divide(n, total, out=np.zeros_like(total), where=total > 0)
        delta = block_mean - mean
        mean = mean + delta * share
        m2 = m2 + np.asarray(part[f"{prefix}m2"]) + delta**2 * count * share
        count = total
    return count if np.ndim(count) else int(count), np.asarray(mean), np.asarray(m2)


def columns_read(layout: Layout, key: str | None) -> list[str]:
    """The layout's columns, and the split's key column when it is not one of them."""
    return layout.columns + ([key] if key and key not in layout.columns else [])


def in_validation(
    frame: pd.DataFrame, val_fraction: float, seed: int, key: str | None = None
) -> np.ndarray:
    """Which rows are validation rows: a seeded hash of the `key` column, or of the whole row.
    The same row always falls on the same side, in any shard, on any worker, in any order;
    with a key, all rows of one key value (a user, a patient) stay together."""
    hashed = frame[[key]] if key else frame
    codes = pd.util.hash_pandas_object(hashed, index=False).to_numpy(np.uint64)
    # pandas' hash_key salts only text columns: the seed is mixed in for every type here.
    salt = np.uint64(int(hashlib.sha256(str(seed).encode()).hexdigest()[:16], 16))
    return (_mix(codes ^ salt) % HASH_BUCKETS) < round(val_fraction * HASH_BUCKETS)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def too_few_to_split(rows: int, val_fraction: float, key: str | None) -> str:
    if key:  # every row of a key value falls on one side
        return f"{rows} rows have too few distinct {key!r} values to split at {val_fraction}"
    return f"{rows} rows are too few to split at {val_fraction} (equal rows fall on one side)"


def rows_of(
    frame: pd.DataFrame, part: str, val_fraction: float, seed: int, key: str | None
) -> pd.DataFrame:
    """The training or validation rows of a batch of raw rows."""
    val = in_validation(frame, val_fraction, seed, key)
    return frame[val if part == "val" else ~val]


@dataclass
class StreamedDataset:
    """What a streamed job trains on: Ray Datasets of {"x", "y"} rows (lazy: nothing is read
    until workers iterate them), and what the workers and the registry need to know."""

    schema: DataSchema
    train_rows: int  # counted in the fitting pass, so each epoch can account for every row
    source: str  # the shards' fingerprint and the split
    datasets: dict[str, Any] = field(default_factory=dict, repr=False)  # "train", "val"
    baselines: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    # model inputs of a uniform sample of the training rows (`fit`): serving's drift reference
    sample_x: np.ndarray | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        return self.source

    def for_workers(self) -> "StreamedDataset":
        """Without the Ray Datasets and the sample: workers read their shards through Ray
        Train."""
        return replace(self, datasets={}, sample_x=None)


def should_stream(streaming: bool | Literal["auto"], size_bytes: int) -> bool:
    """`data.streaming`: true, false, or auto (files larger than STREAM_ABOVE_BYTES)."""
    return streaming is True or (streaming == "auto" and size_bytes > STREAM_ABOVE_BYTES)


def stream(
    source: Source,
    layout: Layout,
    val_fraction: float,
    seed: int,
    key: str | None = None,
    val_source: Source | None = None,
) -> StreamedDataset:
    """A streamed dataset, its preprocessing fitted on the training rows in one pass. With a
    `val_source` (the user's own validation files), every row of `source` trains and every
    row of `val_source` validates."""
    import ray.data

    quiet_ray_data()
    if val_source is not None:
        key = None
    sources = {"train": source, "val": val_source or source}
    # with the user's own validation files, every row of `source` trains and every row of
    # theirs validates; else each part is its side of the hashed split
    fractions = {"train": 0.0, "val": 1.0} if val_source else dict.fromkeys(sources, val_fraction)

    def part(name: str):
        return (
            sources[name]
            .dataset(columns_read(layout, key))
            .map_batches(
                rows_of,
                fn_kwargs={"part": name, "val_fraction": fractions[name], "seed": seed, "key": key},
                batch_format="pandas",
                batch_size=None,  # whole blocks: per-batch overhead is Ray Data's largest cost
            )
        )

    raw = source.dataset(columns_read(layout, key))
    split = {"val_fraction": fractions["train"], "seed": seed, "key": key}
    layout, train_rows, sample = fit(raw, layout, split, source.explain, val_source is None)
    if val_source is not None:
        _require_rows(part("val"), val_source)
    tensors = {"batch_format": "pandas", "batch_size": None, "fn_kwargs": {"layout": layout}}
    datasets: dict[str, ray.data.Dataset] = {
        name: part(name).map_batches(_tensors, **tensors) for name in ("train", "val")
    }
    for dataset in datasets.values():
        # Ray Data's default blocks of up to 128 MiB reach a worker two or three an epoch:
        # smaller ones keep reading, transforming and training overlapped.
        dataset.context.target_max_block_size = BLOCK_BYTES
    validation = val_source.fingerprint if val_source else f"{val_fraction}|{seed}|{key}"
    digest = hashlib.sha256(f"{source.fingerprint}|{layout.columns}|{validation}".encode())
    sample_x = layout.tensors(sample)["x"]
    schema = layout.schema()
    return StreamedDataset(schema, train_rows, digest.hexdigest(), datasets, sample_x=sample_x)


def _require_rows(val: Any, val_source: Source) -> None:
    """The user's validation files hold rows: counted once, before any worker starts (an
    epoch would otherwise validate on none)."""
    try:
        rows = val.count()
    except Exception as e:  # Ray Data wraps reader errors in its own types
        why = val_source.explain(e)
        raise DataError(
            why if kiln_error_in(e) else f"cannot read the validation rows: {why}"
        ) from None
    if rows == 0:
        raise DataError("no validation rows: the files of data.val_path hold none")


def in_memory(
    frame: pd.DataFrame,
    layout: Layout,
    val_fraction: float,
    seed: int,
    key: str | None,
    path: str,
    val_frame: pd.DataFrame | None = None,
) -> Dataset:
    """The same split, fit and tensors as `stream`, on a table read whole (its columns:
    `columns_read`); with a `val_frame` (the user's validation files), every row of `frame`
    trains and every row of `val_frame` validates."""
    if val_frame is None:
        val = in_validation(frame[columns_read(layout, key)], val_fraction, seed, key)
        train_rows, val_rows = frame[~val], frame[val]
        if train_rows.empty or val_rows.empty:
            raise DataError(f"{path}: {too_few_to_split(len(frame), val_fraction, key)}")
    else:  # each holds rows: read_table and ImageFiles.open refuse empty files
        train_rows, val_rows = frame, val_frame
    one_block = {name: value[0] for name, value in _summary(train_rows, layout).items()}
    layout = layout.fitted([one_block])  # as `fit` merges the rows Ray Data takes
    a, b = layout.tensors(train_rows), layout.tensors(val_rows)
    return Dataset(a["x"], a["y"], b["x"], b["y"], layout.schema())


def quiet_ray_data() -> None:
    """Kiln draws its own progress: Ray Data's bars and execution logs (a line every few
    seconds where stdout is not a terminal) would bury it. Its warnings stay."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # A failed read or map is a Kiln error in one line; Ray Data also logs each one with two
    # tracebacks (about 150 lines on the terminal).
    for name in FAILURE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


FAILURE_LOGGERS = (
    "ray.data.exceptions",
    "ray.data._internal.execution.streaming_executor_state",
)


def _tensors(frame: pd.DataFrame, layout: Layout) -> dict[str, np.ndarray]:
    return layout.tensors(frame)


def fit(
    raw: Any,
    layout: Layout,
    split: dict[str, Any],
    explain: Callable[[Exception], str] | None = None,
    validates: bool = True,
) -> tuple[Layout, int, pd.DataFrame]:
    """One pass over the rows: each block is split (`split`: `in_validation`'s arguments),
    its training rows summarised where they are read (by the layout: counts, sums, labels,
    words) and its validation rows counted; the summaries are merged here. No training rows,
    or no validation rows, is an error before any worker starts. Ray Data's
    `aggregate` computes a table's mean and std in a hash shuffle that took 10-15 s for
    300,000 rows of 32 features on 2 CPUs, against under 1 s for this pass.

    The pass also draws a uniform sample of up to SAMPLE_ROWS raw training rows (seeded):
    each row gets a random key, each block keeps its rows of lowest key and the merge keeps
    the lowest of those (bottom-k sampling), so the sample spans every shard, where the first
    rows read would be one shard's, and the driver holds one sample at a time, not one per
    block.
    `explain`: a failed read in one line (the source's `explain`). `validates`: whether
    the split must leave validation rows (not where the user's own files validate)."""
    summaries = raw.map_batches(
        _summary,
        fn_kwargs={"layout": layout, "split": split},
        batch_format="pandas",
        batch_size=None,
    )
    parts: list[dict[str, Any]] = []
    sample = pd.DataFrame()
    try:
        for part in summaries.iter_rows():
            block = _unpacked(part.pop("sample"))
            sample = _lowest(pd.concat([sample, block]) if len(sample) else block)
            parts.append(part)
    except DataError:
        raise
    except Exception as e:  # Ray Data wraps reader errors, and ours, in its own types
        why = (explain or root_cause)(e)
        raise DataError(
            why if kiln_error_in(e) else f"cannot read the training rows: {why}"
        ) from None
    rows = sum(int(part["rows"]) for part in parts)
    if rows == 0:
        raise DataError("no training rows: the data are empty or val_fraction takes them all")
    if sum(int(part.pop("val_rows")) for part in parts) == 0 and validates:
        why = too_few_to_split(rows, split["val_fraction"], split["key"])
        raise DataError(f"no validation rows: {why}")
    fitted = layout.fitted([p for p in parts if int(p["rows"])])
    return fitted, rows, sample.drop(columns=[SAMPLE_KEY]).reset_index(drop=True)


def _summary(
    frame: pd.DataFrame, layout: Layout, split: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A block's summary; with a `split` (`fit`), of its training rows, with its validation
    rows' count and its share of the sample."""
    val_rows = None
    if split is not None:
        val = in_validation(frame, **split)
        frame, val_rows = frame[~val], np.array([val.sum()])
    summary: dict[str, Any] = {"rows": np.array([len(frame)]), **layout.summary(frame)}
    if split is not None:
        summary["val_rows"] = val_rows
        keys, limit = _sample_keys(frame, split["seed"]), _sample_limit(frame)
        lowest = np.argpartition(keys, limit - 1)[:limit] if len(keys) > limit else slice(None)
        keyed = frame.iloc[lowest].assign(**{SAMPLE_KEY: keys[lowest]})
        summary["sample"] = np.array([_packed(keyed)], dtype=object)
    return summary


SAMPLE_KEY = "__kiln_sample_key"


def _sample_keys(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Random keys for a block's rows, from a seed of the job's seed, the block's length and
    its first and last rows: the same files give the same sample. (A hash of each row would
    give equal rows equal keys, and a table of few distinct rows a sample of a few of them.)
    Raw bytes, such as an encoded image, are left out of the seed (its path is in it)."""
    ends = frame.iloc[[0, -1]] if len(frame) else frame
    hashed = [c for c in frame if not _holds_bytes(frame[c])]
    digest = pd.util.hash_pandas_object(ends[hashed], index=False).to_numpy(np.uint64)
    return np.random.default_rng([seed, len(frame), *digest.tolist()]).random(len(frame))


def _holds_bytes(column: pd.Series) -> bool:
    return len(column) > 0 and isinstance(column.iloc[0], bytes)


def _sample_limit(frame: pd.DataFrame) -> int:
    """SAMPLE_ROWS, fewer where they would pass SAMPLE_BYTES (rows of encoded images)."""
    head = frame.head(1000)
    row_bytes = head.memory_usage(deep=True, index=False).sum() / max(len(head), 1)
    return max(1, min(SAMPLE_ROWS, int(SAMPLE_BYTES // max(row_bytes, 1))))


def _lowest(keyed: pd.DataFrame) -> pd.DataFrame:
    """The keyed rows of lowest key, in key order, as many as a block keeps."""
    return keyed.nsmallest(_sample_limit(keyed), SAMPLE_KEY)


def _packed(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _unpacked(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


KILN_ERROR = re.compile(r"kiln\.errors\.\w+Error: (.+)")


def root_cause(e: BaseException) -> str:
    """The first line of what went wrong. Ray Data keeps an error raised in a read or map
    task only as the text of the remote traceback: a Kiln error's message is found there."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    for error in chain:
        if found := KILN_ERROR.findall(str(error)):
            return found[-1].strip()
    text = str(chain[-1]).strip()
    return text.splitlines()[0] if text else type(chain[-1]).__name__


def kiln_error_in(e: BaseException) -> bool:
    return any(KILN_ERROR.search(str(error)) for error in (e, e.__cause__) if error is not None)
