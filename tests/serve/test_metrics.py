"""Kiln's and Ray Serve's metrics, scraped from the node's metrics port as Prometheus does."""

import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import infer_body

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def scrape(url: str) -> list:
    text = httpx.get(url, timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def requests_of(url: str, model: str) -> tuple[float, float]:
    samples = scrape(url)
    name = "ray_kiln_requests_total"
    return total(samples, name, model=model, code="200"), total(
        samples, name, model=model, code="400"
    )


def settled(url: str, model: str) -> tuple[float, float]:
    """Counts once earlier requests have all been reported (metrics arrive every second)."""
    before = requests_of(url, model)
    while True:
        time.sleep(2.5)
        now = requests_of(url, model)
        if now == before:
            return now
        before = now


def test_exported_metrics_count_the_requests_sent(http, metrics_url):
    model = "digits-mlp"
    ok_before, bad_before = settled(metrics_url, model)
    body = infer_body(np.zeros((2, 1, 8, 8), np.float32))
    for made_up in (777001, 777002):  # versions the model lacks: 404, and no series of theirs
        assert (
            http.post(f"/v2/models/{model}/versions/{made_up}/infer", json=body).status_code == 404
        )
    for _ in range(5):
        assert http.post(f"/v2/models/{model}/infer", json=body).status_code == 200
    for _ in range(3):
        assert http.post(f"/v2/models/{model}/infer", content="{").status_code == 400
    deadline = time.monotonic() + 30
    while requests_of(metrics_url, model) != (ok_before + 5, bad_before + 3):
        assert time.monotonic() < deadline, requests_of(metrics_url, model)
        time.sleep(1)

    samples = scrape(metrics_url)
    assert total(samples, "ray_kiln_model_version", model=model) == 1
    assert total(samples, "ray_kiln_request_latency_ms_count", model=model) >= 8
    # Ray exports a histogram's sum from its buckets' midpoints (5 batches of 2 sum to 7.5):
    # count the batches instead
    assert total(samples, "ray_kiln_batch_size_count", model=model) >= 5
    assert total(samples, "ray_kiln_model_load_seconds", model=model, version="1") > 0
    assert total(samples, "ray_serve_num_http_requests_total") > 0  # Serve's own, same port
    assert not [s for s in samples if s.labels.get("version", "").startswith("77700")]
