"""Serving under stress, digits-mlp over real Ray Serve and real HTTP: a load ramp that scales
replicas up and back down, a replica killed under a steady load, a stalled replica replaced
after failing its health check, overload shed with 429 and Retry-After, and a cold start from
zero replicas."""

import asyncio
import contextlib
import os
import signal
import threading
import time

import httpx
import pytest

from kiln.bench.load import LoadResult, body_for, generate_load
from tests.conftest import ROOT
from tests.serve.conftest import GATEWAY_PORT, GRPC_PORT, PORT, dashboard_url, deployed

pytestmark = [pytest.mark.ray, pytest.mark.slow]
APP = "digits-mlp"


def mlp_config(**deployment: object) -> dict:
    """serving/digits.yaml with only digits-mlp, its deployment changed by `deployment`."""
    from kiln.serve.control import deploy

    config = deploy.load_config(
        ROOT / "serving" / "digits.yaml",
        port=PORT,
        only=[APP],
        grpc_port=GRPC_PORT,
        grpc_gateway_port=GATEWAY_PORT,
    )
    app = next(a for a in config["applications"] if a["name"] == APP)
    app["deployments"] = [{**app["deployments"][0], **deployment}]
    return config


def replicas(state: str | None = "RUNNING") -> list[dict]:
    """The deployment's replicas in `state` (any state: None)."""
    from kiln.serve.control import deploy

    apps = deploy.details(dashboard_url()).get("applications", {})
    deployment = apps.get(APP, {}).get("deployments", {}).get("ModelDeployment", {})
    return [r for r in deployment.get("replicas", []) if state in (None, r["state"])]


def target_replicas(metrics_url: str) -> float:
    """What Serve's autoscaler exports as the deployment's target number of replicas."""
    from tests.serve.test_metrics import scrape, total

    name = "ray_serve_autoscaling_target_replicas"
    return total(scrape(metrics_url), name, application=APP, deployment="ModelDeployment")


def wait_for(condition, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.25)
    return time.monotonic() - start


class Background:
    """generate_load in a thread, so that the test can watch and act meanwhile."""

    def __init__(self, **kwargs: object):
        self.started = time.monotonic()
        self.result: LoadResult | None = None
        self.thread = threading.Thread(target=self._run, kwargs=kwargs)
        self.thread.start()

    def _run(self, **kwargs: object) -> None:
        self.result = asyncio.run(generate_load(**kwargs))  # type: ignore[arg-type]

    def join(self) -> LoadResult:
        self.thread.join()
        assert self.result is not None
        return self.result


def infer(url: str) -> tuple[str, bytes]:
    """The model's infer URL and a valid request for it (from its metadata)."""
    model = f"{url}/v2/models/{APP}"
    return f"{model}/infer", body_for(httpx.get(model, timeout=30).json())


def test_a_load_ramp_scales_replicas_up_then_back_down(digits_models, metrics_url):

    autoscaling = {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }
    with deployed(mlp_config(autoscaling_config=autoscaling, max_ongoing_requests=8)) as url:
        target, body = infer(url)
        load = Background(url=target, body=body, concurrency=16, duration_s=20, warmup_s=0)
        up = wait_for(lambda: len(replicas()) >= 2, 20, "a second replica under load")
        wait_for(lambda: target_replicas(metrics_url) >= 2, 20, "Serve's exported target >= 2")
        result = load.join()
        down = wait_for(lambda: len(replicas()) == 1, 45, "back to one replica after the load")
        wait_for(lambda: target_replicas(metrics_url) == 1, 20, "Serve's exported target == 1")
        print(f"\nramp: 2 replicas {up:.1f} s into the load, back to 1 {down:.1f} s after it")
        summary = result.summary()
        assert summary["errors"] == {}, summary


def test_a_replica_killed_under_steady_load_is_replaced(digits_models):
    with deployed(mlp_config(num_replicas=2, autoscaling_config=None)) as url:
        wait_for(lambda: len(replicas()) == 2, 60, "two replicas")
        target, body = infer(url)
        load = Background(url=target, body=body, rate=50, duration_s=24, warmup_s=0)
        time.sleep(6)
        victim = replicas()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        replaced = wait_for(
            lambda: len(replicas()) == 2 and victim["replica_id"] not in ids(), 60, "a new replica"
        )
        back_at = killed_at + replaced - load.started
        result = load.join()
    failed = [t for t, s in zip(result.started, result.statuses, strict=True) if s != 200]
    print(f"\nkill: {len(failed)} of {len(result.statuses)} failed; replaced in {replaced:.1f} s")
    assert len(result.statuses) >= 1000
    assert len(failed) <= 0.005 * len(result.statuses), failed
    assert all(t < back_at for t in failed), (failed, back_at)  # none once it is back


def ids() -> set[str]:
    return {r["replica_id"] for r in replicas()}


def test_overload_is_shed_with_429_and_retry_after(digits_models):
    limits = {"max_ongoing_requests": 2, "max_queued_requests": 4, "autoscaling_config": None}
    with deployed(mlp_config(num_replicas=1, **limits)) as url:
        target, body = infer(url)
        result = asyncio.run(
            generate_load(target, body, concurrency=64, duration_s=6, warmup_s=0, timeout_s=10)
        )
    statuses = set(result.statuses)
    shed = [r for s, r in zip(result.statuses, result.retry_after, strict=True) if s in (429, 503)]
    accepted = [ms for s, ms in zip(result.statuses, result.latencies_ms, strict=True) if s == 200]
    print(f"\noverload: {result.summary()}")
    assert statuses <= {200, 429, 503}, statuses  # no timeouts (0) and no 500s
    assert shed and all(r is not None and int(r) >= 1 for r in shed)
    assert accepted and max(result.latencies_ms) < 5000  # nothing hangs
    assert sorted(accepted)[int(0.99 * len(accepted))] < 2000  # accepted ones stay fast


def test_scale_to_zero_answers_its_first_request(digits_models):
    autoscaling = {
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": 1,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 0,
        "downscale_delay_s": 2,
        "downscale_to_zero_delay_s": 2,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    with deployed(mlp_config(autoscaling_config=autoscaling)) as url:
        target, body = infer(url)  # (its metadata request may start a replica: wait it out)
        wait_for(lambda: not replicas(state=None), 60, "zero replicas")
        start = time.perf_counter()
        answer = httpx.post(target, content=body, timeout=120)
        cold_start_s = time.perf_counter() - start
        assert answer.status_code == 200, answer.text
        print(f"\ncold start from zero replicas: {cold_start_s:.2f} s")
        wait_for(lambda: not replicas(state=None), 60, "back to zero replicas")


def test_a_stalled_replica_fails_its_health_check_and_is_replaced(digits_models):
    """SIGSTOP freezes a replica as a blocked event loop would: it still exists, but stops
    answering. Serve's health check notices and replaces it; then every request succeeds."""
    health = {"health_check_period_s": 1, "health_check_timeout_s": 2}
    with deployed(mlp_config(num_replicas=2, autoscaling_config=None, **health)) as url:
        wait_for(lambda: len(replicas()) == 2, 60, "two replicas")
        target, body = infer(url)
        victim = replicas()[0]
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            replaced = wait_for(
                lambda: len(replicas()) == 2 and victim["replica_id"] not in ids(),
                60,
                "the stalled replica replaced",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGKILL)
        # The proxy learns the new replica set from the controller a moment after the
        # dashboard shows it (a long poll): wait for 10 answers in a row, then measure.
        settled = wait_for(lambda: all_answered(target, body, 10), 30, "10 answers in a row")
        after = asyncio.run(generate_load(target, body, rate=50, duration_s=4, warmup_s=0))
    print(f"\nstall: replaced {replaced:.1f} s after SIGSTOP, settled {settled:.1f} s later;")
    print(f"then {after.summary()}")
    assert set(after.statuses) == {200}, after.summary()


def all_answered(target: str, body: bytes, count: int) -> bool:
    with httpx.Client(timeout=5) as client:
        try:
            return all(client.post(target, content=body).status_code == 200 for _ in range(count))
        except httpx.HTTPError:
            return False
