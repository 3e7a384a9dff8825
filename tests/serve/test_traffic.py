"""Traffic policies on a live endpoint, digits-mlp over real Ray Serve and HTTP, one replica
reconfigured in place from test to test: a canary's share of 1,000 requests, new weights under
steady load, a sticky A/B assignment by header, and a shadow application whose agreement with
the primary is counted in metrics. (Named to run after test_stress, which also deploys its own
configs, so that the package's shared config is deployed again only once.)"""

import asyncio
import collections
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
import yaml
from safetensors.torch import load as load_weights
from safetensors.torch import save as save_weights
from scipy import stats

from kiln.registry import WEIGHTS
from kiln.serve.config import Traffic
from kiln.serve.control import deploy
from kiln.serve.replica.drift import INPUTS, OUTPUT, SHIFTED
from kiln.serve.replica.predictor import Predictor
from kiln.serve.replica.rollout import ARM_HEADER
from tests.conftest import ROOT, run_kiln
from tests.serve.conftest import GRPC_PORT, dashboard_url, deployed, infer_body
from tests.serve.test_endpoints import validation_split
from tests.serve.test_metrics import scrape, total
from tests.serve.test_promotion import SteadyClient
from tests.serve.test_stress import APP, ids, infer, mlp_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SHADOW = f"{APP}-shadow"
BIG_BODY = 16 * 2**20  # bodies the primary takes: more than a Serve handle's 4 MiB over gRPC


@pytest.fixture(scope="module")
def versions(digits_models) -> dict[str, int]:
    """digits-mlp's production files registered again (aliased candidate), and a copy whose
    scores lean towards the digit 3 (the shadow's model: it agrees with production on most
    inputs, not all)."""
    registry = digits_models
    source = registry.resolve(f"{APP}@production")
    files = {name: registry.read(source, name) for name in source.manifest["files"]}
    candidate = registry.register(APP, files).version
    registry.promote(APP, candidate, "candidate")
    state = load_weights(files[WEIGHTS])
    last_bias = [k for k, v in state.items() if k.endswith("bias") and v.shape == (10,)][-1]
    state[last_bias][3] += 4.0
    leaning = registry.register(APP, {**files, WEIGHTS: save_weights(state)}).version
    return {"production": source.version, "candidate": candidate, "leaning": leaning}


def configured(versions: dict[str, int], live: dict | None = None, **traffic: object) -> dict:
    """digits-mlp (one replica, `traffic` and the rest of its user_config from `live`) and its
    shadow application (the leaning copy)."""
    user_config = {"max_batch_size": 16, "batch_wait_ms": 0, "traffic": traffic or None}
    config = mlp_config(
        num_replicas=1, autoscaling_config=None, user_config={**user_config, **(live or {})}
    )
    primary = next(a for a in config["applications"] if a["name"] == APP)
    primary["args"] = {**primary["args"], "max_body_bytes": BIG_BODY}
    shadow = {
        **primary,
        "name": SHADOW,
        "route_prefix": f"/v2/models/{SHADOW}",
        "args": {**primary["args"], "model": f"{APP}@{versions['leaning']}"},
        "deployments": [{**primary["deployments"][0], "user_config": {"max_batch_size": 16}}],
    }
    config["applications"].append(shadow)
    return config


@pytest.fixture(scope="module")
def endpoint(versions):
    with deployed(configured(versions, split={"production": 80, "candidate": 20})) as url:
        yield url


def reconfigure(url: str, versions: dict[str, int], **traffic: object) -> None:
    """New traffic in the running replica: deployed, then seen in the model's metadata."""
    deploy.deploy(configured(versions, **traffic), dashboard_url())
    deadline = time.monotonic() + 60
    while True:
        live = httpx.get(f"{url}/v2/models/{APP}", timeout=10).json()["parameters"]
        if live.get("traffic") == Traffic.model_validate(traffic).model_dump(exclude_none=True):
            return
        assert time.monotonic() < deadline, f"traffic {traffic} not live: {live}"
        time.sleep(0.5)


async def answers(target: str, body: bytes, count: int, headers=None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.post(target, content=body, headers=headers and headers(i))

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_a_canary_gets_its_share_and_new_weights_apply_without_a_failed_request(endpoint, versions):
    target, body = infer(endpoint)
    replies = asyncio.run(answers(target, body, 1000))
    assert {r.status_code for r in replies} == {200}
    answered = collections.Counter(r.json()["model_version"] for r in replies)
    arms = {(r.json()["parameters"]["arm"], r.headers[ARM_HEADER]) for r in replies}
    low, high = stats.binom.interval(0.999, 1000, 0.2)
    print(f"\ncanary 80/20: {dict(answered)}; 99.9% interval for the canary {low}-{high}")
    assert low <= answered[str(versions["candidate"])] <= high
    assert arms == {("production", "production"), ("candidate", "candidate")}

    before = ids()
    client = SteadyClient(target, json.loads(body))
    client.start()
    try:
        client.wait_for(lambda: len(client.answers) >= 10)
        reconfigure(endpoint, versions, split={"candidate": 1})
        only_candidate = [str(versions["candidate"])] * 20
        client.wait_for(lambda: [v for _, v, _ in client.answers[-20:]] == only_candidate)
    finally:
        client.stopped.set()
        client.join()
    assert {code for code, _, _ in client.answers} == {200}, client.answers[-3:]
    assert ids() == before  # user_config applied in place: the same replica


def test_a_sticky_header_keeps_each_user_on_one_arm(endpoint, versions):
    split = {"production": 1, "candidate": 1}
    reconfigure(endpoint, versions, split=split, sticky_header="x-user-id")
    target, body = infer(endpoint)
    users = [f"user-{i}" for i in range(200)]
    replies = asyncio.run(answers(target, body, 600, lambda i: {"x-user-id": users[i % 200]}))
    assert {r.status_code for r in replies} == {200}
    arms_of = collections.defaultdict(set)
    for i, reply in enumerate(replies):
        arms_of[users[i % 200]].add(reply.json()["parameters"]["arm"])
    assert all(len(arms) == 1 for arms in arms_of.values())
    on_candidate = sum(arms == {"candidate"} for arms in arms_of.values())
    low, high = stats.binom.interval(0.999, 200, 0.5)
    print(f"\nsticky A/B: {on_candidate} of 200 users on the candidate")
    assert low <= on_candidate <= high
    anonymous = asyncio.run(answers(target, body, 40))  # no header: drawn at random
    assert {r.json()["parameters"]["arm"] for r in anonymous} == set(split)
    over_grpc = grpc_arm(endpoint, {"application": APP, "x-user-id": users[7]})
    assert over_grpc == replies[7].json()["parameters"]["arm"]  # the same key, the same arm
    pinned = httpx.post(f"{endpoint}/v2/models/{APP}/versions/1/infer", content=body, timeout=30)
    assert pinned.json()["model_version"] == "1"
    assert "arm" not in (pinned.json().get("parameters") or {})


def grpc_arm(url: str, metadata: dict[str, str]) -> str:
    """The arm a Triton gRPC client's call is answered by (its metadata carries the key)."""
    declared = httpx.get(f"{url}/v2/models/{APP}", timeout=10).json()["inputs"][0]["shape"]
    shape = [1 if d < 0 else d for d in declared]
    tensor = triton.InferInput("input", shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    client = triton.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    try:
        result = client.infer(APP, [tensor], headers=metadata)
    finally:
        client.close()
    return result.get_response().parameters["arm"].string_param


def test_feedback_per_arm_decides_the_experiment_and_promote_ends_it(
    endpoint, versions, digits_models, metrics_url
):
    """After the sticky test, arms production and candidate run. Clients report the candidate
    right 90 times in 100 and production 70: `kiln rollout status` finds the candidate ahead
    and significant; `kiln rollout promote` moves production to the candidate's version."""
    feedback = f"{endpoint}/v2/models/{APP}/feedback"
    for arm, correct in (("production", 70), ("candidate", 90)):
        sent = httpx.post(feedback, json={"arm": arm, "correct": correct, "wrong": 100 - correct})
        assert sent.status_code == 200 and sent.json() == {"accepted": 100}, sent.text
    unknown = httpx.post(feedback, json={"arm": "nope", "correct": 1})
    assert unknown.status_code == 404 and "no arm 'nope'" in unknown.json()["error"]

    deadline = time.monotonic() + 60
    while True:
        status = run_kiln("rollout", "status", APP, "--metrics", metrics_url, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        counted = {a["name"]: a["correct"] + a["wrong"] for a in report["arms"]}
        if counted == {"production": 100, "candidate": 100} or time.monotonic() > deadline:
            break
        time.sleep(1)
    [verdict] = report["comparisons"]
    print(f"\nrollout status: {verdict}")
    assert verdict["arm"] == "candidate" and verdict["metric"] == "accuracy"
    assert verdict["difference"] == pytest.approx(0.2) and verdict["significant"]

    promoted = run_kiln("rollout", "promote", APP, "--json")
    assert promoted.returncode == 0, promoted.stderr
    try:
        assert digits_models.resolve(f"{APP}@production").version == versions["candidate"]
    finally:  # the package's other tests serve production as it was
        digits_models.promote(APP, versions["production"], "production")


def test_a_shadow_agrees_as_offline_and_its_death_costs_the_primary_nothing(
    endpoint, versions, digits_models, metrics_url
):
    reconfigure(endpoint, versions, shadow={"application": SHADOW})
    data, _ = validation_split(digits_models, f"{APP}@production")
    batches = np.array_split(data.x_val.astype(np.float32), len(data.x_val) // 4)
    offline = {
        arm: np.concatenate([labels_of(predictor(digits_models, v), b) for b in batches])
        for arm, v in (("primary", versions["production"]), ("shadow", versions["leaning"]))
    }
    agreed_offline = int((offline["primary"] == offline["shadow"]).sum())
    assert 0 < agreed_offline < len(data.x_val)  # the leaning copy disagrees, sometimes

    with httpx.Client(timeout=30) as client:
        online = [post_labels(client, f"{endpoint}/v2/models/{APP}/infer", b) for b in batches]
    assert np.array_equal(np.concatenate(online), offline["primary"])  # answers unchanged
    counted = shadow_examples(metrics_url, len(data.x_val))
    print(f"\nshadow: {counted} online; agreed offline {agreed_offline} of {len(data.x_val)}")
    assert counted == {"agreed": agreed_offline, "disagreed": len(data.x_val) - agreed_offline}
    dashboard = (ROOT / "k8s/base/kiln-dashboard.json").read_text()
    plotted = set(re.findall(r"\bray_kiln_shadow_[a-z_]+", dashboard))
    assert plotted and plotted <= {s.name for s in scrape(metrics_url)}, plotted

    # a binary body larger than a Serve handle's gRPC message (4 MiB) is copied and compared too
    big = np.resize(data.x_val.astype(np.float32), (24_000, *data.x_val.shape[1:]))
    tensor = triton_http.InferInput("input", list(big.shape), "FP32")
    tensor.set_data_from_numpy(big, binary_data=True)
    body, header_length = triton_http.InferenceServerClient.generate_request_body([tensor])
    assert 4 * 2**20 < len(body) < BIG_BODY
    response = httpx.post(
        f"{endpoint}/v2/models/{APP}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    rows = len(data.x_val) + len(big)
    assert sum(shadow_examples(metrics_url, rows).values()) == rows
    assert (
        total(scrape(metrics_url), "ray_kiln_shadow_requests_total", model=APP, outcome="failed")
        == 0
    )

    [replica] = shadow_replicas()
    os.kill(replica["pid"], signal.SIGKILL)
    target, body = infer(endpoint)
    after = asyncio.run(answers(target, body, 300))
    assert {r.status_code for r in after} == {200}  # the primary never noticed


def predictor(registry, version: int) -> Predictor:
    return Predictor.load(registry, registry.resolve(f"{APP}@{version}"))


def labels_of(model: Predictor, batch: np.ndarray) -> np.ndarray:
    return model.run(model.prepare(0, batch))["label"]


def post_labels(client: httpx.Client, target: str, batch: np.ndarray) -> np.ndarray:
    response = client.post(target, json=infer_body(batch))
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    return np.array(label["data"])


def shadow_examples(metrics_url: str, rows: int) -> dict[str, float]:
    """The shadow's row counts, once the metrics have caught up with every row sent."""
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(metrics_url)
        counts = {
            result: total(samples, "ray_kiln_shadow_examples_total", model=APP, result=result)
            for result in ("agreed", "disagreed")
        }
        if sum(counts.values()) >= rows or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def shadow_replicas() -> list[dict]:
    apps = deploy.details(dashboard_url()).get("applications", {})
    deployment = apps[SHADOW]["deployments"]["ModelDeployment"]
    return [r for r in deployment["replicas"] if r["state"] == "RUNNING"]


def test_an_arm_the_registry_lacks_is_refused_before_deploying(versions, tmp_path):
    config = yaml.safe_load((ROOT / "serving/digits.yaml").read_text())
    app = next(a for a in config["applications"] if a["name"] == APP)
    traffic = {"split": {"production": 90, "canary": 10}}
    app["deployments"][0]["user_config"] = {"max_batch_size": 16, "traffic": traffic}
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_kiln("serve", str(path), "--only", APP, "--address", "http://127.0.0.1:9")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1, done.stderr
    assert "canary" in lines[0] and APP in lines[0], lines[0]


def test_drift_stays_low_on_training_inputs_and_rises_on_inverted_digits(
    endpoint, versions, digits_models, metrics_url
):
    """The window holds 600 rows: first the digits the model was trained on (the validation
    split of its job), then the same digits with inverted intensities."""
    drift = {"window": 600, "min_rows": 300}
    deploy.deploy(configured(versions, {"drift": drift}), dashboard_url())
    deadline = time.monotonic() + 60
    while httpx.get(f"{endpoint}/v2/models/{APP}", timeout=10).json()["parameters"].get(
        "drift"
    ) != {**drift, "share": 1.0}:
        assert time.monotonic() < deadline, "drift config not live"
        time.sleep(0.5)
    version = str(versions["production"])
    target = f"{endpoint}/v2/models/{APP}/versions/{version}/infer"
    data, _ = validation_split(digits_models, f"{APP}@production")
    rows = np.concatenate([data.x_val, data.x_train])[:600]

    def drift_after(inputs: np.ndarray) -> dict[str, float]:
        for batch in np.array_split(inputs, 60):
            assert httpx.post(target, json=infer_body(batch), timeout=30).status_code == 200
        time.sleep(4)  # a watcher tick (2 s) exports the whole window; Ray reports each 1 s
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(metrics_url)
            figures = {
                f"{stat}{feature}": total(
                    samples, f"ray_kiln_drift_{stat}", model=APP, version=version, feature=feature
                )
                for stat in ("psi", "ks")
                for feature in (INPUTS, OUTPUT)
            }
            counted = total(samples, "ray_kiln_drift_window_rows", model=APP, version=version)
            if counted >= 600 and all(figures.values()) or time.monotonic() > deadline:
                return figures
            time.sleep(1)

    same = drift_after(rows)
    inverted = drift_after(1.0 - rows)
    print(f"\ndrift on training digits {same}\non inverted digits {inverted}")
    assert same[f"psi{INPUTS}"] < SHIFTED and same[f"psi{OUTPUT}"] < SHIFTED
    assert inverted[f"psi{INPUTS}"] > SHIFTED and inverted[f"psi{OUTPUT}"] > SHIFTED
    assert inverted[f"ks{INPUTS}"] > 2 * same[f"ks{INPUTS}"]


def test_a_request_is_followed_by_its_id_into_the_replica_json_log(endpoint, versions):
    """Serve takes the client's X-Request-Id (or makes one) and returns it; the replica's
    sampled access log (here every answer) is a JSON line with the same id, the model, the
    version and arm that answered, the status and the latency."""
    import ray

    split = {"production": 1, "candidate": 1}
    deploy.deploy(configured(versions, {"access_log_share": 1.0}, split=split), dashboard_url())
    target, body = infer(endpoint)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"

    def logged(request_id: str) -> dict | None:
        for path in logs.glob(f"replica_{APP}_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if request_id in line and line.startswith("{"):
                    record = json.loads(line)
                    if record.get("request_id") == request_id and "status" in record:
                        return record
        return None

    deadline = time.monotonic() + 60
    while True:  # the new user_config reaches the replica (its answers name an arm), then
        # its log is flushed; an answer of the previous config may be logged too (CI saw one)
        request_id = f"trace-{uuid.uuid4().hex}"
        answer = httpx.post(target, content=body, headers={"X-Request-Id": request_id}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-request-id"] == request_id
        time.sleep(1)
        split_applied = "arm" in answer.json().get("parameters", {})
        if split_applied and (record := logged(request_id)):
            break
        assert time.monotonic() < deadline, f"no JSON access log line for {request_id} in {logs}"
    print(f"\naccess log: {record}")
    assert record["model"] == APP and record["status"] == 200 and record["latency_ms"] > 0
    assert record["arm"] == answer.json()["parameters"]["arm"]
    assert str(record["version"]) == answer.json()["model_version"]
    assert record["replica"] and record["application"] == APP

    generated = httpx.post(target, content=body, timeout=30).headers.get("x-request-id")
    assert generated and generated != request_id  # made by Serve when the client sends none
    bad = httpx.post(target, content=b"{}", headers={"X-Request-Id": "trace-bad"}, timeout=30)
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "trace-bad"
