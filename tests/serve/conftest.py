"""Real Ray Serve over real HTTP: the digits models trained (briefly) and registered, then
serving/digits.yaml deployed as `kiln serve` deploys it, on its own port, for this package."""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, quiet_view
from tests.data.generated import people, reviews

QUICK = {"digits-mlp": 3, "digits-rnn": 3, "digits-gan": 3}  # epochs: serving needs weights
API_KEY = "kiln-test-key-3f9a"
# Serve keeps the HTTP port of its first start in a cluster: every deploy here uses this one.
PORT = free_port()
GRPC_PORT = free_port()
GATEWAY_PORT = free_port()  # the index's gRPC gateway (serving/digits.yaml's 8001)
SECURED = "digits-cnn-secured"


def pytest_collection_modifyitems(items):
    """The tests on the package's deployment (`serving`) run one after another, from where the
    first of them is. A module that deploys its own config between two of them tore that
    deployment down, and the next test on it deployed its 7 applications again (45-55 s here,
    three times a run); the other tests keep their order, after them."""
    on_it = [item for item in items if "serving" in item.fixturenames]
    if on_it:
        first = items.index(on_it[0])
        items[first:] = on_it + [i for i in items[first:] if "serving" not in i.fixturenames]


@pytest.fixture(scope="package")
def digits_models(digits_cnn, spoken_digits_cnn):
    """Every model serving/digits.yaml names, registered and promoted to production."""
    from kiln.registry import ModelRegistry
    from kiln.train import run_job
    from kiln.validate import load_spec

    registry = ModelRegistry.open()
    for name, epochs in QUICK.items():
        if not registry.versions(name):
            spec = load_spec(ROOT / "jobs" / f"{name}.yaml", [f"train.epochs={epochs}"])
            run_job(spec, quiet_view(spec))
    for name in ["digits-cnn", "spoken-digits-cnn", *QUICK]:
        registry.promote(name, 1, "production")
    return registry


@pytest.fixture(scope="package")
def recommender(ray_cluster):
    """The two-tower model on synthetic interactions, promoted to production. Trained before
    anything is deployed: serving replicas hold CPUs that training workers need."""
    from kiln.registry import ModelRegistry
    from kiln.train import run_job
    from kiln.validate import load_spec

    spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml", ["train.epochs=4"])
    run_job(spec, quiet_view(spec))
    registry = ModelRegistry.open()
    registry.promote("recsys-two-tower", registry.versions("recsys-two-tower")[-1], "production")
    from kiln.registry.loading import load_model

    return load_model(registry, "recsys-two-tower@production")


@pytest.fixture(scope="package")
def raw_input_models(ray_cluster, tmp_path_factory):
    """A breast-cancer MLP (standardised features), a text RNN (a vocabulary) and a table
    MLP (numbers with gaps, a text column), for the raw-input tests. Trained before
    anything is deployed, as `recommender` is."""
    from kiln.registry import ModelRegistry
    from kiln.spec import parse_spec
    from kiln.train import run_job
    from kiln.validate import load_spec

    cancer = load_spec(ROOT / "jobs/tabular-breast-cancer.yaml", ["train.epochs=8"])
    run_job(cancer, quiet_view(cancer))
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    reviews(600, seed=0).to_csv(path, index=False)
    text = parse_spec(
        {
            "name": "reviews-rnn",
            "task": "classification",
            "data": {"name": "text_csv", "path": str(path), "params": {"max_len": 8}},
            "model": {"family": "rnn", "params": {"hidden": 32, "embed_dim": 16}},
            "train": {"epochs": 4, "batch_size": 32, "optimizer": {"lr": 0.01}},
            "scaling": {"num_workers": 2},
        },
        "reviews-rnn",
    )
    run_job(text, quiet_view(text))
    path = tmp_path_factory.mktemp("people") / "people.csv"
    people(2000, seed=0).to_csv(path, index=False)
    table = parse_spec(
        {
            "name": "people-mlp",
            "task": "classification",
            "data": {"name": "table", "path": str(path), "params": PEOPLE_PARAMS},
            "model": {"family": "mlp", "params": {"hidden": [32, 32]}},
            "train": {"epochs": 12, "batch_size": 64, "optimizer": {"lr": 0.01}},
            "scaling": {"num_workers": 2},
        },
        "people-mlp",
    )
    run_job(table, quiet_view(table))
    return ModelRegistry.open()


PEOPLE_PARAMS = {"label": "label", "max_categories": 4}  # the one-off hamlets: "other"


@pytest.fixture(scope="package")
def serving_config(digits_models, recommender, raw_input_models, tmp_path_factory):
    """serving/digits.yaml, plus a copy of the CNN that needs an API key; deployed by
    `serving`, and shut down when the package's tests are done."""
    from kiln.serve.control import deploy

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{API_KEY}\nanother-key\n")
    config = deploy.load_config(
        ROOT / "serving" / "digits.yaml",
        port=PORT,
        grpc_port=GRPC_PORT,
        grpc_gateway_port=GATEWAY_PORT,
    )
    for app in config["applications"]:
        if app["import_path"] == deploy.MODEL_APP:
            app["args"]["watch_interval_s"] = 0.5
            for d in app["deployments"]:  # one replica each: 2 CPUs hold them and the client
                d["autoscaling_config"] = {**d["autoscaling_config"], "max_replicas": 1}
    config["applications"].append(secured_copy(config, keys))
    yield config
    dashboard = dashboard_url()
    deploy.shutdown(dashboard)
    wait_until_gone(dashboard)


@pytest.fixture
def serving(serving_config) -> str:
    """The base URL of `serving_config`, deployed again when a test module in between
    deployed its own config (a deploy is the whole cluster's Serve state, see `deployed`)."""
    from kiln.serve.control import deploy

    dashboard = dashboard_url()
    running = deploy.details(dashboard).get("applications", {})
    wanted = [a["name"] for a in serving_config["applications"]]
    base = f"http://127.0.0.1:{PORT}"
    if any(running.get(name, {}).get("status") != "RUNNING" for name in wanted):
        deploy.deploy(serving_config, dashboard)
        deploy.wait_until_running(serving_config, dashboard, timeout_s=240)
        answering(base)
    return base


def answering(base: str, timeout_s: float = 60) -> None:
    """Until the HTTP port answers. Once, in a fresh-clone run, every application was RUNNING
    after a redeploy while the port still refused connections (a whole module's tests failed
    at once): HAProxy not yet listening again after the previous shutdown, whose stats page
    `wait_until_running` could not read either, and so did not wait for."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{base}/v2/health/ready", timeout=5)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def deployed(config: dict) -> Iterator[str]:
    """The config deployed (as `kiln serve` deploys it) until the block ends; its base URL."""
    from kiln.serve.control import deploy

    dashboard = dashboard_url()
    deploy.deploy(config, dashboard)
    try:
        deploy.wait_until_running(config, dashboard, timeout_s=240)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        deploy.shutdown(dashboard)
        wait_until_gone(dashboard)


def dashboard_url() -> str:
    import ray

    return "http://" + ray._private.worker.get_dashboard_url()


def secured_copy(config, keys: Path) -> dict:
    cnn = next(a for a in config["applications"] if a["name"] == "digits-cnn")
    return {
        **cnn,
        "name": SECURED,
        "route_prefix": f"/v2/models/{SECURED}",
        "args": {**cnn["args"], "api_keys_file": str(keys)},
    }


def wait_until_gone(dashboard: str) -> None:
    """The replicas' CPUs are free again for the training tests that follow."""
    from kiln.serve.control import deploy

    for _ in range(60):
        if not deploy.details(dashboard).get("applications"):
            return
        time.sleep(1)


@pytest.fixture
def http(serving):
    with httpx.Client(base_url=serving, timeout=30) as client:
        yield client


@pytest.fixture(scope="package")
def metrics_url(ray_cluster) -> str:
    port = ray_cluster._private.worker.global_worker.node.metrics_export_port
    return f"http://127.0.0.1:{port}/metrics"


def infer_body(array, name: str = "input", datatype: str = "FP32") -> dict:
    return {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        ]
    }
