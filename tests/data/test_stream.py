"""Tables streamed into Ray Train through Ray Data: larger than the object store, the same
metrics as in memory, uneven shards, a killed worker, and bad files refused by name."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from kiln import data, preprocess
from kiln.data.files import read_table
from kiln.data.shards import CsvDialect, Shards
from kiln.data.stream import StreamedDataset, fit, in_validation
from kiln.data.tables import TableLayout
from kiln.errors import DataError
from kiln.registry import ModelRegistry
from kiln.spec import DataSpec, parse_spec
from kiln.train import run_job
from tests.conftest import ROOT, quiet_view, run_kiln
from tests.data.generated import FEATURES, people, reviews, write_table

pytestmark = pytest.mark.usefixtures("ray_cluster")


def table_spec(path: Path, name: str, streaming: bool, **train) -> dict:
    return {
        "name": name,
        "task": "classification",
        "data": {
            "name": "table",
            "path": str(path),
            "params": {"label": "label"},
            "streaming": streaming,
        },
        "model": {"family": "mlp", "params": {"hidden": [64, 64]}},
        "train": {"epochs": 3, "batch_size": 256, "optimizer": {"lr": 0.003}, **train},
        "scaling": {"num_workers": 2},
        "register": {"name": name},
    }


def train(spec: dict):
    parsed = parse_spec(spec, spec["name"])
    view = quiet_view(parsed)
    return run_job(parsed, view), view


# --- the split and the fit: the same rows and statistics on both paths -----------------------


def test_split_is_seeded_order_free_and_keeps_keys_together():
    frame = pd.DataFrame({"user": np.arange(2000) % 97, "v": np.arange(2000.0)})
    val = in_validation(frame, 0.25, seed=3)
    assert 0.2 < val.mean() < 0.3
    shuffled = frame.sample(frac=1, random_state=0)
    np.testing.assert_array_equal(in_validation(shuffled, 0.25, seed=3), val[shuffled.index])
    assert (in_validation(frame, 0.25, seed=4) != val).any()
    by_user = in_validation(frame, 0.25, seed=3, key="user")
    assert frame[by_user].user.nunique() + frame[~by_user].user.nunique() == 97  # no user split


def test_streamed_fit_equals_numpy_on_the_same_rows(tmp_path):
    write_table(tmp_path / "t", rows=30_000, files=3)
    shards = Shards.open(str(tmp_path / "t"))
    layout = TableLayout("classification", "label", [f"f{i}" for i in range(FEATURES)])
    split = {"val_fraction": 0.2, "seed": 0, "key": None}
    fitted, count, _ = fit(shards.dataset(layout.columns), layout, split)
    frame = pd.concat(pd.read_parquet(p) for p in shards.files)
    expected = frame[~in_validation(frame[layout.columns], 0.2, 0)]
    x = expected[layout.features].to_numpy(np.float64)
    assert count == len(expected) and fitted.classes == [0, 1]
    rule = fitted.transform["standardize"]
    np.testing.assert_allclose(rule["mean"], x.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(rule["std"], x.std(axis=0), rtol=1e-9)


def test_the_fitting_pass_samples_training_rows_from_every_shard(tmp_path):
    """Shards in time order, each of its own period (f0 near 10 x its index): the sample that
    serving's drift reference is made of spans them all, where the first rows read would be
    shard 0's. It is seeded, holds only training rows, and its first rows are a sample too."""
    folder = tmp_path / "periods"
    for index, path in enumerate(write_table(folder, rows=40_000, files=4)):
        frame = pd.read_parquet(path)
        frame.assign(f0=frame.f0 + 10 * index).to_parquet(path)
    layout = TableLayout("classification", "label", [f"f{i}" for i in range(FEATURES)])

    def sample(seed: int) -> pd.DataFrame:
        split = {"val_fraction": 0.2, "seed": seed, "key": None}
        return fit(Shards.open(str(folder)).dataset(layout.columns), layout, split)[2]

    first, again, other = sample(0), sample(0), sample(1)
    assert len(first) == 2000 and first.equals(again) and not first.equals(other)
    assert not in_validation(first, 0.2, 0).any()
    periods = pd.Series(np.rint(first.f0.to_numpy(np.float64) / 10).astype(int))
    assert periods.value_counts(normalize=True).min() > 0.2
    assert periods.head(200).nunique() == 4

    streamed = data.stream.stream(Shards.open(str(folder)), layout, 0.2, seed=0)
    assert streamed.sample_x.shape == (2000, FEATURES)
    few = tmp_path / "few.parquet"  # 50 distinct rows, 800 times each: a sample of them all
    rows = pd.DataFrame({"n": np.arange(40_000) % 50, "label": np.arange(40_000) % 2})
    rows.to_parquet(few)
    trained = rows[~in_validation(rows, 0.2, 0)].n.nunique()  # equal rows split together
    layout = TableLayout("classification", "label", ["n"])
    dataset = data.stream.stream(Shards.open(str(few)), layout, 0.2, seed=0)
    assert len(np.unique(dataset.sample_x)) == trained > 30
    rule = streamed.schema.transform["standardize"]
    f0 = streamed.sample_x[:, 0] * rule["std"][0] + rule["mean"][0]  # as the files wrote it
    np.testing.assert_allclose(np.sort(f0), np.sort(first.f0), rtol=1e-5, atol=1e-5)
    assert streamed.for_workers().sample_x is None


# --- training --------------------------------------------------------------------------------


@pytest.mark.slow
def test_streamed_table_larger_than_the_object_store(tmp_path):
    """~310 MB of Parquet through a Ray cluster with an 80 MB object store: the rule is
    learnt, the driver's memory stays flat, and no object near the table's size is stored."""
    files = write_table(tmp_path / "big", rows=1_700_000, files=17)
    size = sum(p.stat().st_size for p in files)
    assert size > 3.5 * 80 * 2**20
    spec = table_spec(tmp_path / "big", "streamed-big", True, epochs=1, batch_size=1024)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    log = tmp_path / "child.log"
    with log.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.data.streamed_job", str(tmp_path / "spec.json"), "80"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "KILN_HOME": str(tmp_path / "home")},
        )
        peak = _peak_rss(child, timeout_s=600)
    assert child.returncode == 0, log.read_text()[-3000:]
    result = json.loads(child.stdout.read().strip().splitlines()[-1])
    metrics = result["outcome"]["metrics"]
    growth = peak - result["rss_before_data"]
    print(
        f"\nstreamed {size / 2**20:.0f} MB: driver peak RSS {peak / 2**20:.0f} MB "
        f"(+{growth / 2**20:.0f} MB over Ray and torch loaded), {metrics}\n{result['memory']}"
    )
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["train_rows_dropped"] < 2
    # The wait for the first batch is part of the epoch's wait for data, itself part of it.
    waits = metrics["input_first_batch_s"], metrics["input_wait_s"], metrics["epoch_time_s"]
    assert 0 < waits[0] <= waits[1] < waits[2]
    assert growth < size / 2, "the driver held a large part of the table"
    spilled = re.search(r"Spilled (\d+) MiB, (\d+) objects", result["memory"])
    if spilled:  # blocks may spill under an 80 MB store; the table never goes in whole
        mib, objects = int(spilled[1]), int(spilled[2])
        assert mib / objects < size / 2**20 / 5


def _peak_rss(child: subprocess.Popen, timeout_s: float) -> int:
    process, peak, deadline = psutil.Process(child.pid), 0, time.monotonic() + timeout_s
    while child.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):  # between its exit and our poll
            peak = max(peak, process.memory_info().rss)
        time.sleep(0.05)
    if child.poll() is None:
        child.kill()
        pytest.fail("the streamed run did not finish in time")
    return peak


@pytest.mark.slow
def test_streamed_and_in_memory_give_the_same_metrics(tmp_path, fresh_home):
    write_table(tmp_path / "t", rows=8000, files=4)
    results = {}
    for streaming in (True, False):
        spec = table_spec(tmp_path / "t", f"parity-{streaming}".lower(), streaming, epochs=2)
        outcome, _ = train(spec)
        results[streaming] = outcome.metrics
    print(f"\nstreamed {results[True]}\nin memory {results[False]}")
    assert results[True]["val_accuracy"] == pytest.approx(results[False]["val_accuracy"], abs=0.02)
    assert results[True]["val_loss"] == pytest.approx(results[False]["val_loss"], rel=0.35)
    registry = ModelRegistry.open()
    rules = [
        registry.read_json(registry.resolve(f"{name}@1"), "model.json")["schema"]["transform"]
        for name in ("parity-true", "parity-false")
    ]
    streamed, in_memory = (r["standardize"] for r in rules)  # fitted in one pass, and by numpy
    np.testing.assert_allclose(streamed["mean"], in_memory["mean"], atol=1e-6)
    np.testing.assert_allclose(streamed["std"], in_memory["std"], rtol=1e-6)


@pytest.mark.slow
def test_uneven_shards_neither_hang_nor_drop_rows_silently(tmp_path, fresh_home):
    write_table(tmp_path / "t", rows=0, files=4, sizes=[3, 9001, 17, 2500])
    outcome, _ = train(table_spec(tmp_path / "t", "uneven", True, epochs=1))
    frame = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "t").glob("*.parquet")))
    train_rows = int((~in_validation(frame, 0.2, seed=0)).sum())
    for epoch in outcome.history:  # every training row is trained on or reported left out
        assert epoch["train_rows"] + epoch["train_rows_dropped"] == train_rows
        assert 0 <= epoch["train_rows_dropped"] < 2  # fewer than the 2 workers
    assert len(outcome.history) == 1 and outcome.metrics["val_accuracy"] > 0.7


@pytest.mark.slow
def test_killed_worker_resumes_a_streamed_run(tmp_path, fresh_home):
    write_table(tmp_path / "t", rows=6000, files=3)
    spec = parse_spec(table_spec(tmp_path / "t", "streamed-resilient", True, epochs=4), "spec")
    view = quiet_view(spec)
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(outcome=run_job(spec, view)))
    thread.start()
    deadline = time.monotonic() + 180
    while _epochs(view) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")
    ]
    assert workers, "no training worker to kill"
    os.kill(workers[-1], signal.SIGKILL)
    thread.join(timeout=300)
    outcome = done["outcome"]
    assert outcome.failures >= 1
    assert [h["epoch"] for h in outcome.history] == list(range(1, 5))
    resumed = [e["metrics"]["resumed_from"] for e in view.events if e["kind"] == "report"]
    assert max(resumed) >= 1, "the run started again from scratch"
    assert all(h["train_rows_dropped"] < 2 for h in outcome.history)


def _epochs(view) -> int:
    reports = [e for e in list(view.events) if e["kind"] == "report"]
    return max((e["metrics"]["epoch"] for e in reports), default=0)


def write_reviews(folder: Path, rows: int, files: int) -> None:
    folder.mkdir()
    frame = reviews(rows, seed=0)
    for index in range(files):
        frame.iloc[index::files].to_parquet(folder / f"part-{index}.parquet")


def test_streamed_text_fits_the_same_vocabulary_and_split_as_in_memory(tmp_path):
    write_reviews(tmp_path / "reviews", rows=900, files=3)
    spec = {"path": str(tmp_path / "reviews"), "params": {"max_len": 8}}
    streamed, whole = (
        data.build(DataSpec(name="text_csv", streaming=mode, **spec), "classification")
        for mode in (True, False)
    )
    assert isinstance(streamed, StreamedDataset) and streamed.train_rows == len(whole.y_train)
    assert streamed.schema == whole.schema  # the vocabulary, classes and shape
    train = np.concatenate([b["x"] for b in streamed.datasets["train"].iter_batches()])
    assert sorted(map(tuple, train)) == sorted(map(tuple, whole.x_train))  # the same rows


def test_texts_without_a_label_are_refused_and_empty_texts_have_no_words(tmp_path):
    frame = reviews(300, seed=0)
    frame.loc[7, "text"] = None  # an empty cell: a text without words
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    spec = {"path": str(tmp_path / "reviews.csv"), "params": {"max_len": 8}}
    for mode in (False, True):
        built = data.build(DataSpec(name="text_csv", streaming=mode, **spec), "classification")
        assert built.schema.classes == ["neg", "pos"]  # not "nan" nor "" as a third class
    frame.loc[[5, 9], "label"] = None
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    for mode in (False, True):
        with pytest.raises(DataError, match=r"2 of \d+ rows have no 'label'"):
            data.build(DataSpec(name="text_csv", streaming=mode, **spec), "classification")


@pytest.mark.slow
def test_streamed_text_trains_and_registers_its_vocabulary(tmp_path, fresh_home):
    write_reviews(tmp_path / "reviews", rows=1200, files=4)
    spec = {
        "name": "streamed-reviews",
        "task": "classification",
        "data": {"name": "text_csv", "path": str(tmp_path / "reviews"), "streaming": True},
        "model": {"family": "rnn", "params": {"hidden": 32, "embed_dim": 16}},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": {"lr": 0.01}},
        "scaling": {"num_workers": 2},
    }
    outcome, _ = train(spec)
    assert outcome.metrics["val_accuracy"] > 0.9
    card = ModelRegistry.open().read_json(
        ModelRegistry.open().resolve("streamed-reviews@1"), "model.json"
    )
    assert {"wonderful", "boring"} <= set(card["schema"]["transform"]["vocab"])


# --- bad input: one line naming the file, before any worker starts ---------------------------


def build(path: Path | str, streaming: bool | str = "auto", val_path=None, **params):
    spec = DataSpec(
        name="table",
        path=str(path),
        val_path=val_path,
        streaming=streaming,
        params={"label": "label", **params},
    )
    data.check(spec)
    return data.build(spec, "classification")


def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        build(tmp_path / "nothing.parquet")
    with pytest.raises(DataError, match="no files match"):
        build(tmp_path / "*.parquet")


def test_an_empty_shard_set(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match="no Parquet or CSV files"):
        build(tmp_path / "empty")


def test_a_column_the_spec_names_that_the_files_lack(tmp_path):
    write_table(tmp_path / "t", rows=100, files=2)
    with pytest.raises(DataError, match="has no column 'price'"):
        build(tmp_path / "t", features=["f0", "price"])


@pytest.mark.parametrize("streaming", [False, True])
def test_a_split_that_leaves_no_validation_rows_is_refused_before_training(tmp_path, streaming):
    """Keyed by a column of one value, every row falls on one side: here, training.
    Streamed, the fitting pass counts the validation rows it skips."""
    path = write_table(tmp_path / "t", rows=1_000, files=2)[0].parent
    site = next(
        v for v in "abcdef" if not in_validation(pd.DataFrame({"site": [v]}), 0.2, 0, "site")
    )
    for part in path.glob("*.parquet"):
        pd.read_parquet(part).assign(site=site).to_parquet(part)
    with pytest.raises(DataError, match="1000 rows have too few distinct 'site' values to split"):
        build(path, streaming=streaming, split_key="site")


@pytest.mark.parametrize("streaming", [False, True])
def test_one_row_repeated_is_refused_as_too_few_to_split(tmp_path, streaming):
    value = next(
        v for v in range(9) if not in_validation(pd.DataFrame({"n": [v], "label": [1]}), 0.2, 0)
    )
    pd.DataFrame({"n": [value] * 1_000, "label": [1] * 1_000}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"1000 rows are too few .* \(equal rows fall on one side"):
        build(tmp_path / "t.parquet", streaming=streaming)


def test_mixed_schemas_across_shards(tmp_path):
    write_table(tmp_path / "t", rows=100, files=2)
    pd.DataFrame({"f0": [1.0], "label": [1]}).to_parquet(tmp_path / "t" / "part-9.parquet")
    with pytest.raises(DataError, match=r"part-9\.parquet: columns .* differ"):
        build(tmp_path / "t")


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
@pytest.mark.parametrize("streaming", [False, True])
def test_shards_with_their_columns_in_another_order_read_by_name(tmp_path, suffix, streaming):
    """Files written by different jobs may order the same columns differently."""
    frames = [pd.read_parquet(p) for p in write_table(tmp_path / "t", rows=4000, files=2)]
    frames[1] = frames[1][frames[1].columns[::-1]]  # label first, features reversed
    for kind, order in (("same", frames[0].columns), ("swapped", None)):
        (tmp_path / kind).mkdir()
        for i, frame in enumerate(frames):
            frame = frame if order is None else frame[order]
            path = tmp_path / kind / f"part-{i}.{suffix}"
            frame.to_parquet(path) if suffix == "parquet" else frame.to_csv(path, index=False)
    same, swapped = (build(tmp_path / kind, streaming) for kind in ("same", "swapped"))
    x = [_streamed_x(d) if streaming else d.x_train for d in (same, swapped)]
    np.testing.assert_allclose(np.sort(x[0], axis=0), np.sort(x[1], axis=0), rtol=1e-5)


def test_parquet_parts_with_whole_numbers_here_and_decimals_there_read_alike(tmp_path):
    """pandas writes a column of whole numbers as int64, or as double in a part with a missing
    value: both parts read as double, on both paths, with the same split."""
    (tmp_path / "t").mkdir()
    rng = np.random.default_rng(0)
    whole = pd.DataFrame({"n": rng.integers(0, 100, 1000), "label": rng.integers(0, 2, 1000)})
    whole.to_parquet(tmp_path / "t" / "part-0.parquet")
    gaps = whole.assign(n=whole.n.astype(float).where(np.arange(1000) % 10 > 0))
    gaps.to_parquet(tmp_path / "t" / "part-1.parquet")
    in_memory, streamed = build(tmp_path / "t", False), build(tmp_path / "t", True)
    assert len(in_memory.x_train) == streamed.train_rows
    x = np.sort(_streamed_x(streamed), axis=0)
    np.testing.assert_allclose(np.sort(in_memory.x_train, axis=0), x, rtol=1e-5)
    gaps.assign(n=gaps.n.astype(str)).to_parquet(tmp_path / "t" / "part-2.parquet")
    refused = r"part-2\.parquet: column 'n' is (large_)?string, but int64"
    with pytest.raises(DataError, match=refused):
        build(tmp_path / "t")


def test_a_corrupt_parquet_file_fails_in_one_line_naming_it(tmp_path):
    write_table(tmp_path / "t", rows=100, files=2)
    (tmp_path / "t" / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    spec = table_spec(tmp_path / "t", "corrupt", True)
    path = tmp_path / "corrupt.yaml"
    path.write_text(json.dumps(spec))
    done = run_kiln("train", str(path), env={"KILN_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "part-00001.parquet: not a readable Parquet file" in lines[-1]
    assert "Traceback" not in done.stderr


def late_values(path: Path, value: str, first_rows: int = 400_000) -> None:
    """A CSV whose feature `n` is whole numbers for more than pyarrow's first block (1 MiB,
    where it reads a column's type from) and then `value`, every 7th row for 1,000 rows."""
    n = (np.arange(first_rows + 1000) % 50).astype(object)
    n[first_rows::7] = value
    pd.DataFrame({"n": n, "label": np.arange(len(n)) % 2}).to_csv(path, index=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_number_column_with_decimals_past_its_first_rows_reads(tmp_path, streaming):
    late_values(tmp_path / "late.csv", "2.5")
    dataset = build(tmp_path / "late.csv", streaming)
    fitted = dataset.schema.transform["standardize"]
    x = dataset.x_train if not streaming else _streamed_x(dataset)
    assert np.isfinite(x).all() and np.isclose(x * fitted["std"][0] + fitted["mean"][0], 2.5).any()


def _streamed_x(dataset: StreamedDataset) -> np.ndarray:
    batches = dataset.datasets["train"].iter_batches(batch_size=None, batch_format="numpy")
    return np.concatenate([b["x"] for b in batches])


@pytest.mark.parametrize("streaming", [False, True])
def test_booleans_and_a_column_empty_in_its_first_rows_read_as_numbers(tmp_path, streaming):
    """Only whole numbers (and columns of nothing) are widened to float64: a CSV's True and
    False stay booleans (1 and 0), and a column empty for its first 2,000 rows still reads."""
    rng = np.random.default_rng(0)
    later = np.concatenate([np.full(2000, np.nan), rng.normal(size=1000)])
    frame = pd.DataFrame({"flag": rng.random(3000) < 0.5, "later": later})
    frame.assign(label=rng.integers(0, 2, 3000)).to_csv(tmp_path / "t.csv", index=False)
    dataset = build(tmp_path / "t.csv", streaming)
    x = _streamed_x(dataset) if streaming else dataset.x_train
    rule = dataset.schema.transform["standardize"]
    flags = np.unique(np.round(x[:, 0] * rule["std"][0] + rule["mean"][0], 4))
    assert flags.tolist() == [0.0, 1.0] and np.isfinite(x).all()


@pytest.mark.parametrize("streaming", [False, True])
def test_a_missing_marker_past_the_first_rows_is_named_then_read_as_missing(tmp_path, streaming):
    """`?` (UCI's mark for a missing value) in a number column: one line naming the file, the
    column, the value and the setting; with `csv.missing: ["?"]`, the training mean."""
    late_values(tmp_path / "late.csv", "?")
    with pytest.raises(DataError) as refused:
        build(tmp_path / "late.csv", streaming)
    message = str(refused.value)
    assert "late.csv: In CSV column #0 ('n')" in message and "invalid value '?'" in message
    assert "data.params.csv.missing" in message and "\n" not in message
    dataset = build(tmp_path / "late.csv", streaming, csv={"missing": ["?"]})
    x = _streamed_x(dataset) if streaming else dataset.x_train
    assert np.isfinite(x).all() and len(x) > 300_000


def test_a_failed_csv_read_is_one_line_without_ray_datas_tracebacks(tmp_path):
    late_values(tmp_path / "late.csv", "?")
    spec = table_spec(tmp_path / "late.csv", "late", False)
    path = tmp_path / "late.yaml"
    path.write_text(json.dumps(spec))
    done = run_kiln("train", str(path), env={"KILN_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    assert "invalid value '?'" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) < 5, done.stderr


@pytest.mark.parametrize("streaming", [False, True])
def test_a_european_csv_reads_as_the_same_table(tmp_path, streaming):
    """`;` between fields, a decimal comma, Latin-1 text (a German Excel export): the same
    tensors as the plain CSV once its dialect is named; unnamed, a line saying which."""
    frame = people(200, seed=0).rename(columns={"city": "Stadt"})
    frame["Stadt"] = frame["Stadt"].str.replace("a", "ä")
    frame.to_csv(tmp_path / "plain.csv", index=False)
    frame.to_csv(tmp_path / "de.csv", sep=";", decimal=",", index=False, encoding="latin-1")
    plain = build(tmp_path / "plain.csv", streaming=False)
    german = {"delimiter": ";", "decimal": ",", "encoding": "latin-1"}
    european = build(tmp_path / "de.csv", streaming, csv=german)
    ours, theirs = european.schema.transform, plain.schema.transform
    assert ours["categories"] == theirs["categories"] and "Stadt" in ours["categories"]
    for key in ("mean", "std"):  # streamed: merged per block, equal to rounding
        assert np.allclose(ours["standardize"][key], theirs["standardize"][key])
    if not streaming:  # the same rows on each side of the split
        assert np.allclose(np.sort(european.x_train, axis=0), np.sort(plain.x_train, axis=0))
    with pytest.raises(DataError, match=r"not separated by ',' need data\.params\.csv\.delim"):
        build(tmp_path / "de.csv", csv={"encoding": "latin-1"})
    with pytest.raises(DataError, match=r"column 'Stadt' is not utf8 text; name its encoding in"):
        build(tmp_path / "de.csv", csv={"delimiter": ";", "decimal": ","})  # was dropped as bytes


def people_csv(path: Path, rows: int = 600) -> pd.DataFrame:
    """Real tables' blemishes: empty cells in a numeric column, an infinite value, a text
    column."""
    frame = people(rows, seed=0)
    frame.loc[3, "age"] = np.inf
    frame.to_csv(path, index=False)  # NaN: an empty cell
    return frame


def test_own_validation_files_validate_every_row_on_both_paths(tmp_path):
    """`data.val_path`: a fixed validation set (a benchmark's, a later month's) instead of a
    share of data.path; preprocessing is fitted on data.path alone."""
    people(600, seed=0).to_csv(tmp_path / "train.csv", index=False)
    people(200, seed=1).to_csv(tmp_path / "val.csv", index=False)
    own = {"val_path": str(tmp_path / "val.csv")}
    whole = build(tmp_path / "train.csv", streaming=False, **own)
    streamed = build(tmp_path / "train.csv", streaming=True, **own)
    assert (len(whole.y_train), len(whole.y_val)) == (600, 200)
    assert streamed.train_rows == 600 and streamed.datasets["val"].count() == 200
    assert streamed.schema == whole.schema  # fitted on the same rows: all of train.csv
    split = build(tmp_path / "train.csv", streaming=False)
    assert split.schema.transform != whole.schema.transform  # a share of it, before

    people(50, seed=2).drop(columns="city").to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match=r"other.csv has no column 'city'"):
        build(tmp_path / "train.csv", val_path=str(tmp_path / "other.csv"))
    with pytest.raises(DataError, match="file not found") as missing:
        build(tmp_path / "train.csv", val_path=str(tmp_path / "nothing.csv"))
    assert missing.value.field == "data.val_path"
    pd.DataFrame(columns=people(1, seed=0).columns).to_csv(tmp_path / "empty.csv", index=False)
    for streaming in (False, True):
        with pytest.raises(DataError, match="empty.csv has no rows|no validation rows"):
            build(tmp_path / "train.csv", streaming, val_path=str(tmp_path / "empty.csv"))
    with pytest.raises(DataError, match="digits takes no validation files; .*image_folder"):
        data.check(DataSpec(name="digits", val_path=str(tmp_path / "val.csv")))


def test_missing_values_are_the_training_mean_on_both_paths(tmp_path):
    people_csv(tmp_path / "people.csv")
    features = ["age", "income"]
    in_memory = build(tmp_path / "people.csv", features=features, streaming=False)
    assert np.isfinite(in_memory.x_train).all() and np.isfinite(in_memory.x_val).all()
    streamed = build(tmp_path / "people.csv", features=features, streaming=True)
    assert isinstance(streamed, StreamedDataset)
    rule = in_memory.schema.transform["standardize"]
    streamed_rule = streamed.schema.transform["standardize"]
    assert streamed_rule["features"] == rule["features"] == features
    for key in ("mean", "std"):
        np.testing.assert_allclose(streamed_rule[key], rule[key], rtol=1e-9)
    frame = read_table(Shards.open(str(tmp_path / "people.csv")))
    train_rows = frame[~in_validation(frame[[*features, "label"]], 0.2, 0)].replace(np.inf, np.nan)
    np.testing.assert_allclose(rule["mean"], train_rows[features].mean(), rtol=1e-6)
    np.testing.assert_allclose(rule["std"], train_rows[features].std(ddof=0), rtol=1e-6)
    missing = preprocess.features({"standardize": rule}, np.array([[np.nan, np.inf]], np.float32))
    assert missing.tolist() == [[0.0, 0.0]]  # the mean, standardised


def test_float32_columns_stored_together_are_read_without_writing_to_them():
    """pandas (copy-on-write) hands float32 columns kept in one block to NumPy as a read-only
    view: a frame made so (a user's in memory, a Parquet read) is summarised and turned into
    tensors, its infinities as missing, and left as it was."""
    a = np.arange(100, dtype=np.float32)
    a[7] = np.inf
    frame = pd.DataFrame({"a": a, "b": np.ones(100, np.float32)})
    frame["label"] = np.arange(100) % 2
    layout = TableLayout("classification", "label", ["a", "b"])
    dataset = data.stream.in_memory(frame, layout, 0.2, seed=0, key=None, path="frame")
    assert np.isfinite(dataset.x_train).all() and np.isinf(frame.a[7])


def test_rows_without_their_label_are_refused_on_both_paths(tmp_path):
    frame = people_csv(tmp_path / "people.csv")
    frame.loc[[5, 9], "label"] = None  # empty cells
    frame.to_csv(tmp_path / "people.csv", index=False)
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"rows have no 'label' \(the label\)"):
            build(tmp_path / "people.csv", features=["age"], streaming=streaming)


def test_text_columns_are_one_hot_over_their_frequent_training_values(tmp_path):
    frame = people_csv(tmp_path / "people.csv")
    in_memory = build(tmp_path / "people.csv", streaming=False, max_categories=3)
    streamed = build(tmp_path / "people.csv", streaming=True, max_categories=3)
    categories = in_memory.schema.transform["categories"]
    assert (
        categories == streamed.schema.transform["categories"] == {"city": ["paris", "lyon", "nice"]}
    )
    assert in_memory.schema.input_shape == [2 + 3 + 1]  # age, income; 3 cities and the rest
    train_rows = frame[~in_validation(frame[["age", "income", "city", "label"]], 0.2, 0)]
    one_hot = in_memory.x_train[:, 2:]
    assert (one_hot.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(one_hot[:, 0] == 1, train_rows.city.to_numpy() == "paris")
    np.testing.assert_array_equal(
        one_hot[:, 3] == 1, ~train_rows.city.isin(["paris", "lyon", "nice"])
    )


def test_a_regressors_label_is_fitted_as_a_z_score_on_both_paths(tmp_path):
    frame = people(600, seed=0).assign(spend=lambda f: f.age * 40 + 1000)
    frame.to_csv(tmp_path / "people.csv", index=False)
    spec = {"label": "spend", "features": ["income", "city"]}
    in_memory = data.build(
        DataSpec(name="table", path=str(tmp_path / "people.csv"), streaming=False, params=spec),
        "regression",
    )
    streamed = data.build(
        DataSpec(name="table", path=str(tmp_path / "people.csv"), streaming=True, params=spec),
        "regression",
    )
    target = in_memory.schema.transform["target"]
    assert streamed.schema.transform["target"] == pytest.approx(target)
    assert in_memory.schema.target_scale == streamed.schema.target_scale == target["std"]
    train_rows = frame[~in_validation(frame[["income", "city", "spend"]], 0.2, 0)]
    assert target == pytest.approx(
        {"mean": train_rows.spend.mean(), "std": train_rows.spend.std(ddof=0)}
    )
    assert abs(in_memory.y_train.mean()) < 1e-6 and in_memory.y_train.std() == pytest.approx(
        1, abs=1e-5
    )
    val_errors = np.abs(
        frame.spend[in_validation(frame[["income", "city", "spend"]], 0.2, 0)] - target["mean"]
    )
    assert in_memory.baselines["mean_val_mae"] == pytest.approx(val_errors.mean(), rel=1e-5)


def test_a_feature_column_of_another_type_is_refused_naming_it(tmp_path):
    frame = people(100, seed=0).assign(born=pd.Timestamp("2000-01-01"))
    frame.to_parquet(tmp_path / "people.parquet")
    with pytest.raises(DataError, match=r"feature column 'born' holds timestamp\[.*\] values"):
        build(tmp_path / "people.parquet", features=["age", "born"])


def test_streaming_a_dataset_that_cannot_stream_is_refused():
    with pytest.raises(
        DataError,
        match="digits is read in memory; datasets that stream: "
        "image_folder, interactions, table, text_csv",
    ):
        data.check(DataSpec(name="digits", streaming=True))


def test_a_time_column_orders_by_what_it_writes():
    """Numbers as they are; dates in text as unix seconds, month first unless a day past 12
    says otherwise, with offsets honoured; anything else a DataError."""
    from kiln.data.stream import time_order

    assert time_order(pd.Series([30, 10]), "t").tolist() == [30, 10]
    us = time_order(pd.Series(["12/1/2020", "3/1/2020"]), "t")
    assert us.tolist() == [1606780800.0, 1583020800.0]
    european = time_order(pd.Series(["01/12/2020", "13/01/2020"]), "t")
    assert european.tolist() == [1606780800.0, 1578873600.0]
    offsets = time_order(pd.Series(["2020-03-01T10:00:00+02:00", "2020-03-01T09:00:00Z"]), "t")
    assert offsets.tolist() == [1583049600.0, 1583053200.0]
    dates = pd.Series(
        pa.array([date(2020, 12, 1), date(2020, 3, 1)]), dtype=pd.ArrowDtype(pa.date32())
    )
    assert time_order(dates, "t").tolist() == [1606780800.0, 1583020800.0]  # pyarrow's ISO dates
    with pytest.raises(DataError, match="t is not dates or numbers"):
        time_order(pd.Series(["soon", "later"]), "t")


def _rows(dataset) -> int:
    if isinstance(dataset, StreamedDataset):
        return sum(d.count() for d in dataset.datasets.values())
    return len(dataset.x_train) + len(dataset.x_val)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_csv_without_a_header_names_its_columns_and_keeps_its_first_row(tmp_path, streaming):
    """UCI's files (`adult.data`): no header row, a suffix other than .csv. Read as it is,
    its first row's values are its column names: refused with the setting that fixes it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2))
    rows = "".join(f"{a:.4f},{b:.4f},{int(a > 0)}\n" for a, b in x)
    (tmp_path / "t.data").write_text(rows)
    with pytest.raises(DataError, match=r"has no column 'label'.*data\.params\.csv\.columns"):
        build(tmp_path / "t.data", streaming)
    (tmp_path / "adult.data").write_text("39, State-gov, <=50K\n50, Private, >50K\n")
    with pytest.raises(DataError, match=r"a number as a name: .*data\.params\.csv\.columns"):
        build(tmp_path / "adult.data", streaming)  # numbers and text, as UCI's adult.data
    dataset = build(tmp_path / "t.data", streaming, csv={"columns": ["a", "b", "label"]})
    assert _rows(dataset) == 1000
    assert dataset.schema.transform["standardize"]["features"] == ["a", "b"]


def test_a_file_named_otherwise_is_read_by_what_it_holds(tmp_path):
    """A gzipped CSV and a Parquet file whose names end otherwise than their format's."""
    frame = pd.DataFrame({"a": np.arange(50.0), "label": np.arange(50) % 2})
    frame.to_csv(tmp_path / "t.csv.gz", index=False)  # pandas compresses by the suffix
    frame.to_parquet(tmp_path / "t.bin")
    assert Shards.open(str(tmp_path / "t.csv.gz")).format == "csv"
    assert Shards.open(str(tmp_path / "t.bin")).format == "parquet"
    for name in ("t.csv.gz", "t.bin"):
        assert _rows(build(tmp_path / name, False)) == 50
    (tmp_path / "parts").mkdir()  # as Spark writes them: part-*.csv.gz
    for i in range(2):
        frame.to_csv(tmp_path / "parts" / f"part-{i:05d}.csv.gz", index=False)
    assert _rows(build(tmp_path / "parts", True)) == 100


def test_csv_column_names_must_differ():
    with pytest.raises(ValueError, match="given twice: a"):
        CsvDialect(columns=["a", "b", "a"])


@pytest.mark.parametrize("streaming", [False, True])
def test_tab_separated_files_read_with_a_tab_unless_the_spec_says_otherwise(tmp_path, streaming):
    """A `.tsv` (or a folder of `.tsv.gz` parts) holds the table its CSV twin does; a
    delimiter the spec names still wins."""
    frame = people(300, seed=0)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    (tmp_path / "parts").mkdir()
    for i, part in enumerate((frame[:150], frame[150:])):
        part.to_csv(tmp_path / "parts" / f"part-{i}.tsv.gz", sep="\t", index=False)
    plain = build(tmp_path / "t.csv", streaming=False).schema.transform
    for path in (tmp_path / "t.tsv", tmp_path / "parts"):
        tabbed = build(path, streaming)
        assert _rows(tabbed) == 300
        assert tabbed.schema.transform["categories"] == plain["categories"]
        assert np.allclose(
            tabbed.schema.transform["standardize"]["mean"], plain["standardize"]["mean"]
        )
    with pytest.raises(DataError, match=r"not separated by ',' need data\.params\.csv\.delim"):
        build(tmp_path / "t.tsv", csv={"delimiter": ","})


@pytest.mark.parametrize("streaming", [False, True])
def test_decimal_columns_are_number_features(tmp_path, streaming):
    """A database's or Spark's export writes money as DECIMAL(12, 2): it was left out of the
    default features without a word (here the one column the label depends on)."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = people(400, seed=0).assign(id=np.arange(400))  # the same split on both sides
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cents = [None if np.isnan(v) else decimal.Decimal(f"{v:.2f}") for v in frame["income"]]
    table = table.set_column(
        table.schema.get_field_index("income"), "income", pa.array(cents, pa.decimal128(12, 2))
    )
    pq.write_table(table, tmp_path / "t.parquet")
    frame.assign(income=frame["income"].round(2)).to_parquet(tmp_path / "floats.parquet")
    dataset = build(tmp_path / "t.parquet", streaming, split_key="id")
    floats = build(tmp_path / "floats.parquet", split_key="id")
    ours, theirs = dataset.schema.transform["standardize"], floats.schema.transform["standardize"]
    assert ours["features"] == theirs["features"] and "income" in ours["features"]
    assert np.allclose(ours["mean"], theirs["mean"]) and np.allclose(ours["std"], theirs["std"])
