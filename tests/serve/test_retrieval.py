"""Retrieval without Ray: id maps as Parquet, exact and IVF top-k against each other, seen
items excluded while k items still come back."""

import io
import json
import time

import numpy as np
import pytest

from kiln.idmaps import IdMap
from kiln.retrieval import ItemIndex


def test_id_maps_look_up_both_ways_and_round_trip_through_parquet():
    items = IdMap(["m1", "m7", 9])
    assert items.index_of("m7") == 2 and items.index_of("9") == 3 and items.index_of("x") == 0
    assert items.indices(["m9", "m1", "nope"]).tolist() == [0, 1, 0]
    assert items.ids_of([3, 1]) == ["9", "m1"] and "m7" in items and len(items) == 3
    again = IdMap.from_parquet(items.to_parquet())
    assert again.ids.tolist() == ["m1", "m7", "9"]
    with pytest.raises(ValueError, match="repeat"):
        IdMap(["a", "a"])


def test_a_million_ids_load_fast():
    ids = IdMap([f"item-{i}" for i in range(1_000_000)])
    data = ids.to_parquet()
    started = time.perf_counter()
    loaded = IdMap.from_parquet(data)
    seconds = time.perf_counter() - started
    print(f"\n1,000,000 ids: {len(data) / 2**20:.1f} MiB of Parquet, loaded in {seconds:.2f} s")
    assert loaded.index_of("item-999999") == 1_000_000


def catalogue(items: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few hundred tastes (row 0: no item), as trained item towers give."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, dim))
    vectors = centres[rng.integers(0, 300, items)] + 0.6 * rng.normal(size=(items, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.vstack([np.zeros((1, dim)), vectors]).astype(np.float32)


def test_ivf_top_10_holds_95_percent_of_the_exact_top_10_on_50000_items():
    vectors = catalogue(50_000)
    ann, exact = ItemIndex(vectors), ItemIndex(vectors, exact_up_to=10**9)
    assert ann.mode == "ivf" and exact.mode == "exact"
    rng = np.random.default_rng(1)
    users = vectors[rng.integers(1, 50_001, 300)] + 0.3 * rng.normal(size=(300, 32))
    users = (users / np.linalg.norm(users, axis=1, keepdims=True)).astype(np.float32)
    none = [set() for _ in users]
    got = ann.search(users, 10, none)
    want = exact.search(users, 10, none)
    recall = np.mean(
        [len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want, strict=True)]
    )
    print(
        f"\nIVF over 50,000 items: recall@10 {recall:.3f} (calibrated {ann.recall:.3f} "
        f"at nprobe {ann.nprobe}, built in {ann.build_s:.2f} s)"
    )
    assert recall >= 0.95

    stored = ann.to_bytes()  # as registration stores it
    started = time.perf_counter()
    read = ItemIndex.read(stored, items=50_000)
    print(
        f"stored index {len(stored) / 2**20:.1f} MiB, read in {time.perf_counter() - started:.2f} s"
    )
    assert (read.mode, read.recall, read.nprobe) == ("ivf", ann.recall, ann.nprobe)
    assert read.search(users, 10, none) == got
    assert exact.to_bytes() is None

    import faiss  # versions registered before ItemIndex.MAGIC stored an npz: still read

    npz, meta = io.BytesIO(), {"recall": ann.recall, "nprobe": ann.nprobe, "items": 50_000}
    np.savez(npz, index=faiss.serialize_index(ann._ivf), meta=np.array(json.dumps(meta)))
    assert ItemIndex.read(npz.getvalue(), items=50_000).search(users, 10, none) == got
    with pytest.raises(ValueError, match="a stored index of 50000 items for 4999"):
        ItemIndex.read(stored, items=4999)


@pytest.mark.parametrize("kind", ["exact", "ivf", "stored ivf"])
def test_seen_items_are_never_returned_and_k_items_still_are(kind):
    vectors = catalogue(5000)
    index = ItemIndex(vectors, exact_up_to=10**9 if kind == "exact" else 1000)
    if kind == "stored ivf":  # as a replica reads it: its exact fallback probes every list
        index = ItemIndex.read(index.to_bytes(), items=5000)
        assert index.vectors is None and index.mode == "ivf"
    query = vectors[[7]]
    best = {i for i, _ in index.search(query, 50, [set()])[0]}
    answer = index.search(query, 10, [best])[0]  # the 50 best are all seen
    assert len(answer) == 10 and not {i for i, _ in answer} & best
    assert all(a[1] >= b[1] for a, b in zip(answer, answer[1:], strict=False))  # best first
    almost_all = set(range(1, 4996))
    left = index.search(query, 10, [almost_all])[0]
    assert sorted(i for i, _ in left) == [4996, 4997, 4998, 4999, 5000]  # fewer only when gone


def test_vectors_without_structure_are_searched_exactly():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(30_001, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    index = ItemIndex(noise)
    assert index.mode == "exact" and index.recall == 1.0  # no IVF setting reached the target
