"""Interaction data: MovieLens layouts, remapping, leave-last-out, and messy inputs."""

import numpy as np
import pandas as pd
import pytest

from kiln import data
from kiln.data.interactions import NEGATIVES, leave_last_out, read_interactions
from kiln.errors import DataError
from kiln.spec import DataSpec

ROWS = [  # user, item, rating, timestamp; deliberately unsorted, with a duplicate
    (1, 10, 4, 300),
    (1, 11, 3, 100),
    (1, 12, 5, 200),
    (1, 11, 2, 400),
    (2, 10, 4, 150),
    (2, 13, 1, 50),
    (3, 12, 5, 10),
    (4, 10, 3, 1),
    (4, 99, 4, 9),  # item 99 appears only as user 4's last: validation only
]


def write_movielens(tmp_path):
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame(ROWS, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(
        ratings, index=False
    )
    udata = tmp_path / "u.data"
    udata.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    return ratings, udata


@pytest.mark.usefixtures("ray_cluster")
def test_every_movielens_layout_loads_to_the_same_interactions(tmp_path):
    """ratings.csv (ML-latest, 20M, 25M, 32M), u.data (100k), ratings.dat (1M; 10M's has
    half stars)."""
    ratings, udata = write_movielens(tmp_path)
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{u}::{i}::{r}.5::{t}\n" for u, i, r, t in ROWS))
    a = read_interactions(str(ratings), None, None, None).reset_index(drop=True)
    for other in (udata, dat):
        b = read_interactions(str(other), None, None, None).reset_index(drop=True)
        pd.testing.assert_frame_equal(a.astype("int64"), b.astype("int64"))


def test_a_movielens_ratings_dat_broken_past_its_first_line_is_one_line(tmp_path):
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::4::300\n1::11::3\n")
    with pytest.raises(DataError, match="ratings.dat: not a MovieLens ratings file past its"):
        read_interactions(str(dat), None, None, None)


def test_leave_last_out_by_time_with_duplicates_and_cold_items():
    frame = pd.DataFrame([(u, i, t) for u, i, _, t in ROWS], columns=["user", "item", "time"])
    d = leave_last_out(frame, history_len=3, seed=0)
    items = d.extras["ids"]["items"].tolist()
    users = d.extras["ids"]["users"].tolist()
    assert items == [10, 11, 12, 13] and users == [1, 2, 3, 4]  # 99 never in training
    assert d.schema.transform["num_users"] == 5
    assert d.schema.transform["dropped_cold_items"] == 1  # user 4's held-out item 99
    # User 1 by time: 11 (100), 12 (200), 10 (300); the re-watch of 11 at 400 is dropped,
    # so 10 is held out and the history is [11, 12].
    index = {v: k + 1 for k, v in enumerate(items)}
    val = {int(x[0]): (x[1:].tolist(), int(y)) for x, y in zip(d.x_val, d.y_val, strict=True)}
    assert val[1] == ([0, index[11], index[12]], index[10])
    assert val[2] == ([0, 0, index[13]], index[10])  # 13 at t=50, then 10 at t=150
    assert 3 not in val  # a single interaction: training only


def test_times_written_as_dates_order_a_history_as_dates():
    """A user's 3/1, 10/1 and 12/1 (month first, as written): as text, 10/1 came first."""
    frame = pd.DataFrame(  # user 8's one item trains: user 7's held-out item can be ranked
        {
            "user": [7, 7, 7, 8],
            "item": [1, 2, 3, 1],
            "time": ["12/1/2020", "3/1/2020", "10/1/2020", "1/1/2020"],
        }
    )
    d = leave_last_out(frame, history_len=2, seed=0)
    assert d.y_val.tolist() == [1]  # item 1 (12/1) is held out
    assert d.y_train.tolist() == [2, 3, 1]  # 2 (3/1), then 3 (10/1); then user 8's
    day_first = frame.assign(time=["01/12/2020", "13/01/2020", "01/10/2020", "01/01/2020"])
    assert leave_last_out(day_first, 2, seed=0).y_val.tolist() == [1]  # 13: day first
    with pytest.raises(DataError, match="time column is not dates or numbers"):
        leave_last_out(frame.assign(time=["soon", "later", "now", "then"]), 2, seed=0)


def test_a_feature_store_history_keeps_dated_interactions_as_unix_times():
    from kiln.features.materialize import recent_histories

    frame = pd.DataFrame(
        {"user": ["u", "u", "u"], "item": ["a", "b", "c"], "time": ["12/1/2020", "3/1/2020", None]}
    )
    assert recent_histories(frame, history_len=5) == {
        "u": [("b", 1583020800.0), ("a", 1606780800.0)]
    }


def test_training_examples_predict_each_next_item():
    frame = pd.DataFrame({"user": [7, 7, 7, 8], "item": [1, 2, 3, 3], "time": [1, 2, 3, 0]})
    d = leave_last_out(frame, history_len=2, seed=0)  # user 8's item 3 trains: 7's is ranked
    assert d.x_train.tolist() == [[1, 0, 0], [1, 0, 1], [2, 0, 0]]
    assert d.y_train.tolist() == [1, 2, 3] and d.x_val.tolist() == [[1, 1, 2]]


def test_interactions_with_nothing_to_validate_on_are_refused():
    """Each user's latest item is held out only when they have two or more, and a held-out
    item training never saw is dropped: with none left, training would report HR@10 0 of
    nobody and register it."""
    once = pd.DataFrame({"user": [1, 2, 3], "item": [1, 2, 3], "time": [1, 2, 3]})
    with pytest.raises(DataError, match="no user has two or more distinct items"):
        leave_last_out(once, history_len=3, seed=0)
    rewatched = pd.DataFrame({"user": [1, 1], "item": [4, 4], "time": [1, 2]})
    with pytest.raises(DataError, match="no user has two or more distinct items"):
        leave_last_out(rewatched, history_len=3, seed=0)
    new_items = pd.DataFrame({"user": [1, 1, 2, 2], "item": [1, 5, 2, 6], "time": [1, 2, 3, 4]})
    with pytest.raises(DataError, match="each of the 2 held-out items .* no training"):
        leave_last_out(new_items, history_len=3, seed=0)


@pytest.mark.usefixtures("ray_cluster")
def test_streamed_interactions_with_nothing_to_validate_on_are_refused_before_training(tmp_path):
    (tmp_path / "events").mkdir()
    once = pd.DataFrame({"uid": [1, 2, 3], "item": [1, 2, 3], "time": [1, 2, 3]})
    once.to_parquet(tmp_path / "events" / "part-0.parquet", index=False)
    with pytest.raises(DataError, match="no user has two or more distinct items"):
        build_interactions(tmp_path / "events", streaming=True)


def test_synthetic_interactions_are_seeded_and_negatives_unseen():
    spec = DataSpec(name="interactions", params={"synthetic": {"users": 200, "items": 150}})
    a, b = data.build(spec, "recommendation"), data.build(spec, "recommendation")
    assert a.fingerprint() == b.fingerprint()
    candidates = a.extras["candidates"]
    assert candidates.shape == (len(a.y_val), 1 + NEGATIVES)
    assert len(a.extras["seen"]) == len(a.y_val)  # under RECALL_USERS: every user's
    for row, seen in a.extras["seen"].items():
        assert not set(candidates[row, 1:]) & set(seen.tolist())
        assert a.y_val[row] not in candidates[row, 1:]
    popularity = a.extras["popularity"]
    assert popularity[1:].max() > 5 * np.median(popularity[1:])  # a popularity skew


# --- streamed: Ray Data groups the rows by user; the same arrays as in memory -----------------


def write_shuffled_shards(folder, users=400, items=300, files=3, seed=5):
    """Synthetic interactions in shuffled rows over several Parquet files, with re-watches."""
    from kiln.data.interactions import Synthetic, synthetic_interactions

    frame = synthetic_interactions(Synthetic(users=users, items=items), seed=seed)
    frame = pd.concat([frame, frame.sample(frac=0.05, random_state=1).assign(time=9e9)])
    frame = frame.sample(frac=1.0, random_state=2).rename(columns={"user": "uid"})
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), files)):
        frame.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return frame


def build_interactions(path, streaming, **params):
    params = {"history_len": 5, "user_column": "uid", **params}
    spec = DataSpec(name="interactions", path=str(path), params=params, streaming=streaming)
    return data.build(spec, "recommendation")


@pytest.mark.usefixtures("ray_cluster")
def test_streamed_histories_equal_the_in_memory_arrays(tmp_path):
    write_shuffled_shards(tmp_path / "events")
    whole = build_interactions(tmp_path / "events", streaming=False)
    streamed = build_interactions(tmp_path / "events", streaming=True)
    assert isinstance(streamed, data.StreamedDataset) and isinstance(whole, data.Dataset)
    assert streamed.schema == whole.schema and streamed.baselines == whole.baselines
    for name in ("candidates", "popularity"):
        np.testing.assert_array_equal(streamed.extras[name], whole.extras[name])
    np.testing.assert_array_equal(streamed.extras["x_val"], whole.x_val)
    np.testing.assert_array_equal(streamed.extras["y_val"], whole.y_val)
    for name in ("users", "items"):
        np.testing.assert_array_equal(streamed.extras["ids"][name], whole.extras["ids"][name])
    batches = list(streamed.datasets["train"].iter_batches(batch_size=None, batch_format="numpy"))
    rows = np.concatenate([np.column_stack([b["x"], b["y"]]) for b in batches])
    expected = np.column_stack([whole.x_train, whole.y_train])
    assert streamed.train_rows == len(expected)
    np.testing.assert_array_equal(_sorted_rows(rows), _sorted_rows(expected))


@pytest.mark.usefixtures("ray_cluster")
def test_past_validation_users_both_paths_validate_one_sample_and_train_on_the_same(tmp_path):
    write_shuffled_shards(tmp_path / "events")
    every = build_interactions(tmp_path / "events", streaming=False)
    whole = build_interactions(tmp_path / "events", streaming=False, validation_users=150)
    streamed = build_interactions(tmp_path / "events", streaming=True, validation_users=150)
    assert 140 <= len(whole.y_val) <= 150 < len(every.y_val)  # 150 users, less cold items
    np.testing.assert_array_equal(streamed.extras["candidates"], whole.extras["candidates"])
    np.testing.assert_array_equal(streamed.extras["x_val"], whole.x_val)
    np.testing.assert_array_equal(streamed.extras["y_val"], whole.y_val)
    sampled = np.isin(every.x_val[:, 0], whole.x_val[:, 0])
    np.testing.assert_array_equal(every.x_val[sampled], whole.x_val)  # the same rows, fewer
    np.testing.assert_array_equal(every.y_val[sampled], whole.y_val)
    np.testing.assert_array_equal(every.x_train, whole.x_train)  # training is untouched
    assert streamed.train_rows == len(every.y_train)
    other_seed = DataSpec(
        name="interactions",
        path=str(tmp_path / "events"),
        params={"history_len": 5, "user_column": "uid", "validation_users": 150},
        streaming=False,
        seed=1,
    )
    assert set(data.build(other_seed, "recommendation").x_val[:, 0]) != set(whole.x_val[:, 0])


@pytest.mark.usefixtures("ray_cluster")
def test_a_csv_of_iso_dates_orders_histories_by_them_on_both_paths(tmp_path):
    """`2020-03-01` is what most exports write, and pyarrow reads it as a date (date32), not
    text: both paths failed on it (`dt.tz is not supported for date32`)."""
    frame = write_shuffled_shards(tmp_path / "numbers")
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(frame["time"].rank(method="dense"), "D")
    (tmp_path / "dates").mkdir()
    frame.assign(time=day.dt.strftime("%Y-%m-%d")).to_csv(tmp_path / "dates/e.csv", index=False)
    by_number = build_interactions(tmp_path / "numbers", streaming=False)
    for streaming in (False, True):
        by_date = build_interactions(tmp_path / "dates", streaming=streaming)
        y_val = by_date.extras["y_val"] if streaming else by_date.y_val
        np.testing.assert_array_equal(y_val, by_number.y_val)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.usefixtures("ray_cluster")
def test_a_streamed_interactions_column_the_files_lack_is_one_line(tmp_path):
    write_shuffled_shards(tmp_path / "events", users=20, items=20, files=2)
    spec = DataSpec(name="interactions", path=str(tmp_path / "events"), params={}, streaming=True)
    with pytest.raises(DataError, match="has no column 'user'"):
        data.build(spec, "recommendation")
