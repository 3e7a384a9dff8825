"""Real-time recommendations over real HTTP: Ray Serve, a real Redis server, the two-tower
model trained on synthetic interactions."""

import asyncio
import gzip
import json
import threading
import time

import httpx
import numpy as np
import pytest

from kiln.features import EmbeddedRedis, FeatureStore, connect
from tests.conftest import ROOT, free_port, run_kiln
from tests.serve.conftest import PORT, dashboard_url, deployed

pytestmark = [pytest.mark.ray, pytest.mark.slow]
VECTOR_TTL_S = 3.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def recsys_config(recommender, redis_server) -> dict:
    from kiln.serve.control import deploy

    config = deploy.load_config(ROOT / "serving/recsys.yaml", port=PORT)
    deploy.use_redis(config, redis_server.url)
    app = next(a for a in config["applications"] if a["name"] == "recommend")
    app["args"].update(vector_ttl_s=VECTOR_TTL_S, breaker_reset_s=1)
    app["deployments"][0]["autoscaling_config"]["max_replicas"] = 1
    return config


@pytest.fixture(scope="module")
def recsys(recsys_config):
    with deployed(recsys_config) as url:
        yield f"{url}/v1"


@pytest.fixture
def api(recsys):
    with httpx.Client(base_url=recsys, timeout=30) as client:
        yield client


def items(answer: dict) -> list[str]:
    return [i["item_id"] for i in answer["items"]]


def test_miss_hit_events_miss(api, recommender):
    user = "5"
    first = api.get(f"/recommend/{user}", params={"k": 10}).json()
    assert (first["cache"], first["degraded"], first["cold_start"]) == ("miss", False, False)
    second = api.get(f"/recommend/{user}", params={"k": 10}).json()
    assert second["cache"] == "hit" and items(second) == items(first)
    clicked = items(second)[:3]
    posted = api.post(
        "/events", json=[{"user_id": user, "item_id": i, "type": "click"} for i in clicked]
    )
    assert posted.status_code == 200 and posted.json() == {"accepted": 3}
    after = api.get(f"/recommend/{user}", params={"k": 10}).json()
    assert after["cache"] == "miss"
    assert not set(clicked) & set(items(after))  # seen items never come back
    assert items(after) != items(second)
    assert api.get(f"/recommend/{user}", params={"k": 10}).json()["cache"] == "hit"


def test_a_vector_older_than_its_ttl_is_stale(api):
    user = "11"
    api.get(f"/recommend/{user}")
    assert api.get(f"/recommend/{user}").json()["cache"] == "hit"
    time.sleep(VECTOR_TTL_S + 0.5)  # Redis still holds it
    stale = api.get(f"/recommend/{user}").json()
    assert stale["cache"] == "miss" and stale["features"]["vector"] == "stale"


def test_cold_start_bounds_and_malformed_events(api, recommender):
    cold = api.get("/recommend/someone-new", params={"k": 5}).json()
    popular = [str(i) for i in recommender.card["schema"]["transform"]["popular_items"][:5]]
    assert cold["cold_start"] and items(cold) == popular
    for k in (0, 101, "x"):
        assert api.get("/recommend/5", params={"k": k}).status_code == 400
    for body in ('{"user_id": 1}', "{", "[]", '{"user_id": 1, "item_id": 2, "timestamp": "x"}'):
        response = api.post("/events", content=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]


def test_event_bodies_are_bounded_and_may_come_compressed(api):
    events = [{"user_id": "packer", "item_id": i, "type": "click"} for i in ("3", "4")]
    packed = gzip.compress(json.dumps(events).encode())
    posted = api.post("/events", content=packed, headers={"Content-Encoding": "gzip"})
    assert posted.status_code == 200 and posted.json() == {"accepted": 2}
    huge = api.post("/events", content=b"[" + b" " * 4 * 2**20 + b"]")  # past the 4 MiB default
    assert huge.status_code == 413 and "limit" in huge.json()["error"]


def test_a_new_user_with_events_gets_personal_recommendations(api):
    api.post("/events", json={"user_id": "newcomer", "item_id": "3"})
    answer = api.get("/recommend/newcomer").json()
    assert not answer["cold_start"] and "3" not in items(answer)


def test_the_hit_path_is_one_redis_round_trip(api, redis_server):
    user = "21"
    api.get(f"/recommend/{user}")  # miss: read, then write the vector back
    client = connect(redis_server.url, timeout_s=2)
    client.config_resetstat()
    assert api.get(f"/recommend/{user}").json()["cache"] == "hit"
    calls = {k: v["calls"] for k, v in client.info("commandstats").items()}
    calls = {k: v for k, v in calls.items() if k not in ("cmdstat_config", "cmdstat_info")}
    assert calls == {"cmdstat_hmget": 1}


def test_redis_down_degrades_then_recovers(api, redis_server):
    user = "33"
    api.get(f"/recommend/{user}")
    answers: list[dict] = []
    statuses: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            while not stop.is_set():
                response = client.get(f"/recommend/{user}", params={"recent": "1,2"})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    answers.append(response.json())
                time.sleep(0.02)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        time.sleep(1)
        redis_server.stop()
        time.sleep(3)
        during = api.post("/events", json={"user_id": user, "item_id": "4"})
        redis_server.start()
        deadline = time.monotonic() + 30
        while not answers or answers[-1]["cache"] != "hit":
            assert time.monotonic() < deadline, answers[-1]
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert set(statuses) == {200}, statuses
    degraded = [a for a in answers if a["degraded"]]
    assert degraded and all(a["cache"] == "bypass" and a["items"] for a in degraded)
    assert not {"1", "2"} & {i for a in degraded for i in items(a)}  # the request's own history
    assert during.status_code == 503 and during.headers["retry-after"] == "1"
    print(
        f"\n{len(answers)} answers while Redis was stopped and restarted; {len(degraded)} degraded"
    )


def test_features_load_twice_gives_the_same_contents(recommender, redis_server, tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {"user": [1, 1, 2, 3, 3, 3], "item": [10, 11, 10, 12, 13, 14], "time": [1, 2, 3, 4, 5, 6]}
    )
    path = tmp_path / "interactions.csv"
    frame.to_csv(path, index=False)
    env = {"KILN_REDIS_URL": redis_server.url}
    namespace = "loadtest"
    args = [
        "features",
        "load",
        str(path),
        "--model",
        "recsys-two-tower@production",
        "--namespace",
        namespace,
        "--json",
    ]
    client = connect(redis_server.url, timeout_s=2)

    def contents() -> dict:
        return {k: client.hgetall(k) for k in client.scan_iter(match=f"{namespace}:*")}

    first = run_kiln(*args, env=env)
    assert first.returncode == 0, first.stderr
    snapshot = contents()
    second = run_kiln(*args, env=env)
    assert second.returncode == 0 and contents() == snapshot

    assert json.loads(first.stdout)["users"] == 3 and len(snapshot) == 3
    store = FeatureStore(client, 20, namespace)
    assert [i for i, _ in store.read(3, "m", 1).history] == ["12", "13", "14"]
    stats = run_kiln("features", "stats", "--namespace", namespace, "--json", env=env)
    assert json.loads(stats.stdout)["users_with_history"] == 3


def test_concurrent_requests_are_batched_and_answered_as_one_at_a_time(api, recsys, metrics_url):
    from tests.serve.test_metrics import scrape, total

    async def at_once(users: list[str]) -> dict[str, list[str]]:
        async with httpx.AsyncClient(base_url=recsys, timeout=30) as client:
            answers = await asyncio.gather(*(client.get(f"/recommend/{u}") for u in users))
        return {u: items(a.json()) for u, a in zip(users, answers, strict=True)}

    fresh = [str(u) for u in range(200, 264)]
    together = asyncio.run(at_once(fresh))  # misses: the user tower runs on batches
    alone = {u: items(api.get(f"/recommend/{u}").json()) for u in fresh}  # hits, one by one
    assert together == alone
    assert asyncio.run(at_once(fresh)) == alone  # hits, batched
    deadline = time.monotonic() + 30
    while True:  # Ray exports a histogram's _sum from bucket midpoints: count the buckets
        samples = scrape(metrics_url)
        batches = total(samples, "ray_kiln_batch_size_count", model="recommend")
        single = total(samples, "ray_kiln_batch_size_bucket", model="recommend", le="1.0")
        if batches > single:  # some batch held more than one request
            break
        assert time.monotonic() < deadline, (batches, single)
        time.sleep(1)
    print(f"\n{batches:.0f} batches, {batches - single:.0f} of them of several requests")


def test_feature_cache_metrics_are_exported(api, metrics_url):
    from tests.serve.test_metrics import scrape, total

    api.get("/recommend/5")  # at least a hit or miss after the tests above
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(metrics_url)
        figures = {
            "hits": total(samples, "ray_kiln_cache_total", result="hit"),
            "misses": total(samples, "ray_kiln_cache_total", result="miss"),
            "bypassed": total(samples, "ray_kiln_cache_total", result="bypass"),
            "degraded": total(samples, "ray_kiln_degraded_total"),
            "events": total(samples, "ray_kiln_events_total", outcome="accepted"),
            "rejected": total(samples, "ray_kiln_events_total", outcome="rejected"),
            "stale": total(
                samples, "ray_kiln_feature_reads_total", feature="vector", state="stale"
            ),
            "redis": total(samples, "ray_kiln_redis_latency_ms_count", operation="read"),
            "latency": total(samples, "ray_kiln_recommend_latency_ms_count"),
        }
        if all(figures.values()):
            return
        assert time.monotonic() < deadline, figures
        time.sleep(1)


def with_split(config: dict, split: dict[str, float] | None) -> dict:
    """The recsys config with a rollout on the recommend deployment (None: none)."""
    import copy

    changed = copy.deepcopy(config)
    app = next(a for a in changed["applications"] if a["name"] == "recommend")
    user_config = app["deployments"][0]["user_config"]
    user_config["traffic"] = {"split": split} if split else None
    return changed


def click_experiment(recsys: str, rates: dict[str, float], users: int, seed: int) -> int:
    """Each simulated user asks for recommendations once and clicks the first item with the
    true click rate of the arm that answered; returns the clicks sent. A user's draw is seeded
    by the user, not by the order the concurrent answers come back in, so a run's clicks (and
    so its verdict) are the same every time."""

    async def user(client: httpx.AsyncClient, gate: asyncio.Semaphore, i: int) -> bool:
        name = f"ab{seed}-{i}"
        async with gate:
            answer = (await client.get(f"/recommend/{name}?k=3")).json()
            if np.random.default_rng([seed, i]).random() >= rates[answer["arm"]]:
                return False
            click = {"user_id": name, "item_id": answer["items"][0]["item_id"], "type": "click"}
            assert (await client.post("/events", json=click)).status_code == 200
            return True

    async def everyone() -> int:
        async with httpx.AsyncClient(base_url=recsys, timeout=30) as client:
            gate = asyncio.Semaphore(8)
            return sum(await asyncio.gather(*(user(client, gate, i) for i in range(users))))

    return asyncio.run(everyone())


def rollout_status(metrics_url: str, control: str, requests: int, conversions: int) -> dict:
    """`kiln rollout status recommend` once the exported counters reach `requests` and
    `conversions` (they are scraped, so they lag what was sent)."""
    deadline = time.monotonic() + 60
    while True:
        status = run_kiln("rollout", "status", "recommend", "--control", control,
                          "--metrics", metrics_url, "--json")  # fmt: skip
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        counted = sum(a["requests"] for a in report["arms"])
        converted = sum(a["conversions"] for a in report["arms"])
        if counted >= requests and converted >= conversions:
            return report
        assert time.monotonic() < deadline, report
        time.sleep(1)


def test_an_ab_rollout_finds_the_arm_users_click_more_and_an_a_a_finds_none(
    api, recsys, recsys_config, metrics_url
):
    """Aliases ctl and exp (then aa1 and aa2) of the same version: a user's arm is a hash of
    the user id; the simulated users click 8% of the time on ctl and 16% on exp."""
    from kiln.registry import ModelRegistry
    from kiln.serve.control import deploy

    registry = ModelRegistry.open()
    version = registry.resolve("recsys-two-tower@production").version
    for alias in ("ctl", "exp", "aa1", "aa2"):
        registry.promote("recsys-two-tower", version, alias)

    def switch(split: dict[str, float] | None) -> None:
        deploy.deploy(with_split(recsys_config, split), dashboard_url())
        deadline = time.monotonic() + 60
        while api.get("/recommend/1").json().get("arm") not in (set(split or {}) or {None}):
            assert time.monotonic() < deadline, f"split {split} not live"
            time.sleep(0.5)

    try:
        switch({"ctl": 1, "exp": 1})
        clicks = click_experiment(recsys, {"ctl": 0.08, "exp": 0.16}, users=1200, seed=1)
        report = rollout_status(metrics_url, "ctl", 1200, clicks)
        [verdict] = report["comparisons"]
        print(f"\nA/B: {report['arms']}\n{verdict}")
        assert verdict["metric"] == "click-through" and verdict["arm"] == "exp"
        assert verdict["difference"] > 0 and verdict["significant"]
        assert sum(a["conversions"] for a in report["arms"]) > 100

        switch({"aa1": 1, "aa2": 1})
        clicks += click_experiment(recsys, {"aa1": 0.1, "aa2": 0.1}, users=1200, seed=2)
        report = rollout_status(metrics_url, "aa1", 2400, clicks)
        verdict = next(c for c in report["comparisons"] if c["arm"] == "aa2")
        print(f"A/A: {verdict}")
        assert verdict["metric"] == "click-through" and not verdict["significant"]
    finally:
        switch(None)


def test_the_grafana_dashboard_queries_exported_metrics(api, recsys, metrics_url):
    """Every metric k8s/base/kiln-dashboard.json plots is in a scrape of the serving metrics."""
    import re

    from kiln.bench.load import body_for
    from tests.serve.test_metrics import scrape

    dashboard = json.loads((ROOT / "k8s/base/kiln-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    plotted = {name for e in exprs for name in re.findall(r"\bray_[a-z0-9_]+", e)}
    assert len(plotted) >= 12, plotted
    # a shadow's metrics exist once one runs, drift's for classifiers: test_traffic checks them
    elsewhere = ("ray_kiln_shadow_", "ray_kiln_drift_")
    wanted = {name for name in plotted if not name.startswith(elsewhere)}

    model = recsys.removesuffix("/v1") + "/v2/models/recsys-two-tower"
    metadata = httpx.get(model, timeout=30).json()
    assert httpx.post(f"{model}/infer", content=body_for(metadata), timeout=30).status_code == 200
    api.get("/recommend/5")
    deadline = time.monotonic() + 30
    while missing := wanted - {s.name for s in scrape(metrics_url)}:
        assert time.monotonic() < deadline, f"the dashboard plots metrics nobody exports: {missing}"
        time.sleep(1)


@pytest.mark.parametrize(
    "document", ["/v1/openapi.json", "/v2/models/recsys-two-tower/openapi.json"]
)
def test_schemathesis_finds_nothing_in_the_documents(recsys, document):
    """As tests/serve/test_fuzz.py does for the digits: every check, every phase."""
    from tests.serve.test_fuzz import failures, fuzz

    base = recsys.removesuffix("/v1")
    inputs = None
    if document.startswith("/v2/"):
        inputs = httpx.get(f"{base}/v2/models/recsys-two-tower", timeout=30).json()["inputs"]
    result = fuzz(f"{base}{document}", inputs)
    assert result.returncode == 0, failures(result)


def test_kserve_v1_answers_under_the_prefix_the_recommendations_own(recsys):
    """recsys.yaml gives the recommendations /v1, where KServe V1's routes are: they answer
    there for every model, the raw two-tower's predictions as its own /infer gives them."""
    model = "recsys-two-tower"
    with httpx.Client(base_url=recsys.removesuffix("/v1"), timeout=30) as http:
        assert model in http.get("/v1/models").json()["models"]
        assert http.get(f"/v1/models/{model}").json() == {"name": model, "ready": True}
        [history] = http.get(f"/v2/models/{model}").json()["inputs"]
        rows = [[user, *[0] * (history["shape"][1] - 1)] for user in (1, 2)]
        tensor = {"name": "history", "datatype": "INT64", "shape": [2, len(rows[0])]}
        v2 = http.post(f"/v2/models/{model}/infer", json={"inputs": [{**tensor, "data": rows}]})
        v1 = http.post(f"/v1/models/{model}:predict", json={"instances": rows})
        assert v1.status_code == 200, v1.text
        scores = np.array(v2.json()["outputs"][0]["data"]).reshape(2, -1)
        assert np.allclose(np.array(v1.json()["predictions"]), scores)
        missing = http.post("/v1/models/nope:predict", json={"instances": rows})
        assert missing.status_code == 404 and model in missing.json()["error"]
