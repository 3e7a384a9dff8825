"""The feature layout against a real Redis server."""

import asyncio

import numpy as np
import pytest
import redis

from kiln.features import (
    AsyncFeatureStore,
    EmbeddedRedis,
    Event,
    FeatureStore,
    connect,
    connect_async,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_history_is_capped_deduplicated_and_ordered(redis_client):
    store = FeatureStore(redis_client, history_len=3)
    events = [Event(user_id=7, item_id=i, timestamp=t) for i, t in [(1, 10), (2, 20), (3, 30)]]
    store.append_events(events)
    store.append_events(
        [Event(user_id=7, item_id=1, timestamp=40), Event(user_id=7, item_id=4, timestamp=35)]
    )
    features = store.read(7, "m", 1)
    assert [i for i, _ in features.history] == ["3", "4", "1"]  # 2 fell off; 1 moved to the end
    assert features.history_state == "fresh" and features.vector_state == "missing"


def test_vector_round_trip_ttl_at_read_time_and_invalidation(redis_client):
    clock = Clock()
    store = FeatureStore(redis_client, history_len=5, vector_ttl_s=60, clock=clock)
    vector = np.arange(4, dtype=np.float32)
    store.write_vector("u", "m", 2, vector)
    np.testing.assert_array_equal(store.read("u", "m", 2).vector, vector)
    assert store.read("u", "m", 3).vector_state == "missing"  # keyed by version
    clock.now += 61  # Redis still holds it; Kiln judges it stale
    stale = store.read("u", "m", 2)
    assert stale.vector_state == "stale" and stale.vector is None
    assert redis_client.hexists(store.key("u"), "v:m:2")
    store.write_vector("u", "m", 2, vector)
    store.append_events([Event(user_id="u", item_id="9")])
    assert store.read("u", "m", 2).vector_state == "missing"  # an event drops the vector


def test_replace_histories_is_idempotent_and_purge_is_by_key(redis_client):
    store = FeatureStore(redis_client, history_len=2)
    histories = {"a": [("1", 1.0), ("2", 2.0), ("3", 3.0)], "b": [("5", 5.0)]}
    store.replace_histories(histories)
    first = {k: redis_client.hgetall(k) for k in redis_client.keys("*")}
    store.replace_histories(histories)
    assert {k: redis_client.hgetall(k) for k in redis_client.keys("*")} == first
    assert [i for i, _ in store.read("a", "m", 1).history] == ["2", "3"]
    for user in "ab":
        store.write_vector(user, "m", 1, np.zeros(2))
        store.write_vector(user, "m", 2, np.ones(2))
    redis_client.set("unrelated", "kept")
    assert store.purge_vectors("m", [1]) == 2
    assert store.read("a", "m", 1).vector_state == "missing"
    assert store.read("a", "m", 2).vector_state == "fresh"
    assert redis_client.get("unrelated") == b"kept"
    assert store.stats()["vectors"] == {"m:2": 2}


def test_a_read_is_one_command(redis_client):
    store = FeatureStore(redis_client, history_len=5)
    store.append_events([Event(user_id=1, item_id=2)])
    redis_client.config_resetstat()
    store.read(1, "m", 1)
    calls = {k: v["calls"] for k, v in redis_client.info("commandstats").items()}
    calls.pop("cmdstat_config", None)
    assert calls == {"cmdstat_hmget": 1}


def test_the_async_store_reads_and_writes_the_same_layout(redis_server, redis_client):
    """The serving path's client: what it writes the blocking store reads, and back."""
    layout = FeatureStore(redis_client, history_len=2)

    async def serve() -> tuple:
        store = AsyncFeatureStore(layout, connect_async(redis_server.url, timeout_s=2))
        events = [Event(user_id=7, item_id=i, timestamp=t) for i, t in [(1, 1), (2, 2), (3, 3)]]
        accepted = await store.append_events([*events, Event(user_id=8, item_id=5)])
        await store.write_vector(7, "m", 1, np.ones(3))
        read = await asyncio.gather(*(store.read(u, "m", 1) for u in (7, 8, 9)))
        written = layout.read(7, "m", 1).vector  # the blocking store reads what it wrote
        await store.append_events([Event(user_id=7, item_id=4)])
        await store.client.aclose()
        return accepted, read, written

    accepted, (seven, eight, nobody), written = asyncio.run(serve())
    assert accepted == 4
    assert [i for i, _ in seven.history] == ["2", "3"] and seven.vector_state == "fresh"
    np.testing.assert_array_equal(seven.vector, np.ones(3, dtype=np.float32))
    assert [i for i, _ in eight.history] == ["5"] and eight.vector_state == "missing"
    assert nobody.history_state == "missing"
    np.testing.assert_array_equal(written, np.ones(3, dtype=np.float32))
    assert layout.read(7, "m", 1).vector_state == "missing"  # an event drops the vector


def test_the_async_store_fails_fast_when_redis_is_down():
    from tests.conftest import free_port

    layout = FeatureStore(connect("redis://127.0.0.1:1"), history_len=2)
    store = AsyncFeatureStore(layout, connect_async(f"redis://127.0.0.1:{free_port()}", 0.2))
    with pytest.raises(redis.ConnectionError):
        asyncio.run(asyncio.wait_for(store.read(1, "m", 1), timeout=5))


def test_embedded_redis_persists_across_restarts(tmp_path):
    from tests.conftest import free_port

    server = EmbeddedRedis(tmp_path, port=free_port()).start()
    connect(server.url).set("k", "v")
    server.stop()
    assert not server.running()
    server = EmbeddedRedis(tmp_path, port=server.port).start()
    assert connect(server.url).get("k") == b"v"
    server.stop()


def test_an_embedded_redis_that_outlives_its_starter_leaves_its_output_alone(tmp_path):
    """`out=$(kiln serve up --detach)` or `| tee` reads until every holder of the pipe has
    gone: the Redis that the command leaves running held its stderr, and the caller hung."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    port = free_port()
    start = (
        "from pathlib import Path; from kiln.features import EmbeddedRedis; "
        f"EmbeddedRedis(Path({str(tmp_path)!r}), {port}).start()"
    )
    env = {"PYTHONPATH": str(ROOT / "platform"), "PATH": ""}
    try:
        started = subprocess.run(
            [sys.executable, "-c", start], capture_output=True, timeout=30, env=env
        )
        assert started.returncode == 0, started.stderr
    finally:
        EmbeddedRedis(tmp_path, port).stop()


def test_a_password_protected_redis_by_url(tmp_path):
    import subprocess

    import pytest
    import redis

    from kiln.features.redis_server import redis_binary
    from tests.conftest import free_port

    port = free_port()
    command = [
        redis_binary(),
        "--port",
        str(port),
        "--requirepass",
        "s3cret",
        "--dir",
        str(tmp_path),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        url = f"redis://:s3cret@127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                connect(url).ping()
                break
            except redis.ConnectionError:
                import time

                time.sleep(0.05)
        store = FeatureStore(connect(url), history_len=3)
        store.append_events([Event(user_id=1, item_id=2)])
        assert store.read(1, "m", 1).history_state == "fresh"
        with pytest.raises(redis.AuthenticationError):
            connect(f"redis://:wrong@127.0.0.1:{port}/0").ping()
    finally:
        server.terminate()
        server.wait()
