"""Dataset builders: shapes, deterministic splits, no leakage, and the user's own files."""

import importlib
import inspect
import re

import numpy as np
import pandas as pd
import pytest

from kiln import data
from kiln.data.series import seasonal_naive, windowed
from kiln.errors import DataError
from kiln.preprocess import encode, token_ids, tokenize
from kiln.spec import DataSpec
from tests.data.generated import reviews


def build(name: str, task: str = "classification", path=None, **params):
    spec = DataSpec(name=name, path=path, params=params)
    data.check(spec)
    return data.build(spec, task)


def test_digits_image_and_sequence_layouts():
    image, sequence = build("digits"), build("digits", layout="sequence")
    assert image.x_train.shape[1:] == (1, 8, 8) and sequence.x_train.shape[1:] == (8, 8)
    assert len(image.x_train) + len(image.x_val) == 1797
    assert image.schema.output_dim == 10 and image.x_train.max() <= 1.0
    np.testing.assert_array_equal(image.x_val[:, 0], sequence.x_val)  # same split


@pytest.mark.parametrize("name", data.DATASETS.names())
def test_the_modules_a_builder_names_for_preloading_are_the_ones_it_imports(name):
    """`kiln train` imports them while Ray starts; a wrong name would only lose that."""
    named = data.imports(DataSpec(name=name))
    for module in named:
        importlib.import_module(module)
    builder = inspect.getsource(data.DATASETS.get(name))
    imported = set(re.findall(r"^\s+(?:from|import) (\S+)", builder, re.MULTILINE))
    heavy = {m for m in imported if m.split(".")[0] in ("sklearn", "statsmodels")}
    assert heavy == set(named)


def test_splits_are_deterministic_and_seeded():
    a, b = build("digits"), build("digits")
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert a.fingerprint() == b.fingerprint()
    other = data.build(DataSpec(name="digits", seed=1), "classification")
    assert other.fingerprint() != a.fingerprint()


def test_breast_cancer_is_standardised_by_the_training_split_only():
    d = build("breast_cancer")
    assert d.x_train.shape[1] == 30 and d.schema.classes == ["malignant", "benign"]
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-4)
    assert not np.allclose(d.x_val.mean(axis=0), 0, atol=1e-4)
    assert len(d.schema.transform["standardize"]["mean"]) == 30


def test_co2_windows_come_in_time_order_with_a_seasonal_naive_baseline():
    d = build("co2", task="forecasting", window=24, horizon=1)
    assert d.x_train.shape[1:] == (24, 1) and d.y_train.shape[1:] == (1,)
    assert 0 < d.baselines["seasonal_naive_val_mae"] < 5  # ppm
    assert d.schema.target_scale > 0


def test_seasonal_naive_on_a_known_series():
    series = np.tile(np.arange(4.0), 10)  # period 4, no noise: seasonal naive is exact
    d = windowed([series], window=8, horizon=2, val_fraction=0.25, season=4)
    assert d.baselines["seasonal_naive_val_mae"] == 0.0
    inputs, targets = np.array([[1.0, 2.0, 3.0]]), np.array([[5.0]])
    assert seasonal_naive(inputs, targets, season=2)["seasonal_naive_val_mae"] == 3.0


def test_text_is_encoded_with_left_padding():
    ids = encode([["good", "film"], []], {"good": 2, "film": 3}, max_len=4)
    assert ids.tolist() == [[0, 0, 2, 3], [0, 0, 0, 0]]


def test_words_of_any_script_are_tokens_and_a_model_keeps_its_own_tokenizer():
    text = "Don't stop: été, Straße! Привет, мир. 我爱北京 snake_case"
    assert tokenize(text) == [
        *("don't", "stop", "été", "straße", "привет", "мир"),
        *("我", "爱", "北", "京", "snake", "case"),
    ]
    ascii_only = {"tokenize": "[a-z0-9']+", "vocab": {"stop": 2, "t": 3}, "max_len": 3}
    assert token_ids(ascii_only, ["été stop"]).tolist() == [[0, 3, 2]]  # as it was trained


def test_wrong_task_for_a_dataset_is_refused():
    with pytest.raises(DataError, match="digits is a classification or generation dataset"):
        build("digits", task="forecasting")


@pytest.mark.usefixtures("ray_cluster")
class TestFiles:
    """The user's own files, read through Ray Data."""

    def test_text_csv(self, tmp_path):
        path = tmp_path / "reviews.csv"
        reviews(40, seed=0).to_csv(path, index=False)
        d = build("text_csv", path=str(path), max_len=6)
        assert d.schema.classes == ["neg", "pos"] and d.schema.input_dtype == "int64"
        assert (
            d.x_train.shape[1] == 6 and d.schema.vocab_size == len(d.schema.transform["vocab"]) + 2
        )

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_table(self, tmp_path, suffix):
        rng = np.random.default_rng(0)
        frame = pd.DataFrame(rng.normal(size=(50, 3)), columns=["a", "b", "c"])
        frame["label"] = np.where(frame.a > 0, "yes", "no")
        path = tmp_path / f"table{suffix}"
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
        d = build("table", path=str(path), label="label")
        assert d.x_train.shape[1] == 3 and d.schema.classes == ["no", "yes"]

    def test_text_csv_in_russian_has_a_vocabulary(self, tmp_path):
        """Cyrillic had no token at all: every text was padding and the model a majority vote."""
        path = tmp_path / "reviews.csv"
        words = {"pos": "отличный фильм", "neg": "ужасный фильм"}
        labels = ["pos", "neg"] * 20
        texts = [f"{words[y]} {i}" for i, y in enumerate(labels)]
        pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
        d = build("text_csv", path=str(path), max_len=4)
        assert {"отличный", "ужасный", "фильм"} <= set(d.schema.transform["vocab"])
        assert (d.x_train != 0).sum(axis=1).min() == 3

    def test_table_with_a_missing_label_column(self, tmp_path):
        path = tmp_path / "t.csv"
        pd.DataFrame({"a": [1.0, 2.0]}).to_csv(path, index=False)
        with pytest.raises(DataError, match="no column 'label'"):
            build("table", path=str(path), label="label")

    def test_csv_series_sorted_by_time(self, tmp_path):
        t = np.arange(120)
        frame = pd.DataFrame({"t": t, "y": np.sin(2 * np.pi * t / 12)}).sample(
            frac=1, random_state=0
        )
        path = tmp_path / "series.csv"
        frame.to_csv(path, index=False)
        d = build("csv_series", task="forecasting", path=str(path), column="y", time_column="t")
        assert d.baselines["seasonal_naive_val_mae"] < 1e-6  # a pure 12-step season, once sorted

    def test_csv_series_of_several_series_windows_each_on_its_own(self, tmp_path):
        """Sales of three stores by date, in long format: each store's 12-month season at its
        own level and phase. Windows of one store only make the seasonal naive forecast exact;
        read as one series, the file would interleave the stores, and is refused."""
        months = pd.date_range("2015-01-01", periods=60, freq="MS")
        stores = [
            pd.DataFrame(
                {
                    "date": months.strftime("%Y-%m-%d"),
                    "store": name,
                    "sales": level + np.sin(2 * np.pi * (np.arange(60) + phase) / 12),
                }
            )
            for name, level, phase in [("north", 10, 0), ("south", 500, 3), ("east", 80, 7)]
        ]
        short = pd.DataFrame({"date": ["2019-01-01"] * 1, "store": ["new"], "sales": [1.0]})
        path = tmp_path / "sales.csv"
        pd.concat([*stores, short]).sample(frac=1, random_state=0).to_csv(path, index=False)
        spec = dict(task="forecasting", path=str(path), column="sales", time_column="date")
        d = build("csv_series", **spec, series_column="store", window=12)
        assert d.baselines["seasonal_naive_val_mae"] < 1e-9  # no window crosses two stores
        windows = 60 - 12  # per store, the latest 10 (0.2) of them validating
        assert (len(d.x_train), len(d.x_val)) == (3 * (windows - 10), 3 * 10)
        assert d.schema.transform["series"] == 3 and d.schema.transform["series_left_out"] == 1
        with pytest.raises(DataError, match="share their time .*data.params.series_column"):
            build("csv_series", **spec, window=12)
        pd.concat(stores).assign(store=None).to_csv(path, index=False)
        with pytest.raises(DataError, match="180 rows have no 'store'"):
            build("csv_series", **spec, series_column="store", window=12)

    def test_csv_series_of_whole_numbers_then_decimals(self, tmp_path):
        """Sales counted in units for years, then in fractions: past pyarrow's first block
        (where it types a CSV column), 2.5 no longer fails the read."""
        y = (np.arange(600_000) % 12).astype(float)
        y[-100:] += 0.5
        path = tmp_path / "series.csv"
        pd.DataFrame({"y": y}).to_csv(path, index=False, float_format="%g")
        d = build("csv_series", task="forecasting", path=str(path), column="y", window=12)
        assert d.baselines["seasonal_naive_val_mae"] > 0  # the half units came through

    def test_csv_series_sorted_by_its_dates_not_their_text(self, tmp_path):
        """`3/1/1958` before `12/1/1958` and `1/1/1959`: sorted as text, December came first."""
        months = pd.date_range("1958-03-01", periods=120, freq="MS")
        season = np.sin(2 * np.pi * np.arange(120) / 12)
        frame = pd.DataFrame({"date": months.strftime("%-m/%-d/%Y"), "y": season})
        path = tmp_path / "series.csv"
        frame.sample(frac=1, random_state=0).to_csv(path, index=False)
        d = build("csv_series", task="forecasting", path=str(path), column="y", time_column="date")
        assert d.baselines["seasonal_naive_val_mae"] < 1e-6
        frame.assign(date=["soon"] * 120).to_csv(path, index=False)
        with pytest.raises(DataError, match="time column .date. is not dates or numbers"):
            build("csv_series", task="forecasting", path=str(path), column="y", time_column="date")
