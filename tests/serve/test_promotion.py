"""Zero-downtime promotion: `kiln models promote` moves the alias, the running endpoint follows
it without a failed request, and a version that cannot load is refused while the old one serves."""

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.torch import load as load_weights
from safetensors.torch import save as save_weights

from kiln.registry import WEIGHTS
from tests.serve.conftest import infer_body

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class SteadyClient(threading.Thread):
    """Sends the same request back to back and records every answer."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.answers: list[tuple[int, str | None, str | None]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                response = client.post(self.url, json=self.body)
                if response.status_code != 200:
                    self.answers.append((response.status_code, None, response.text))
                    continue
                body = response.json()
                label = next(o for o in body["outputs"] if o["name"] == "label")["data"][0]
                self.answers.append((200, body["model_version"], label))
                time.sleep(0.01)

    def wait_for(self, condition, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, self.answers[-3:]
            time.sleep(0.2)


def copy_of(registry, ref: str, weights: bytes | None = None) -> int:
    """Register a new version of digits-cnn from an existing one's files."""
    source = registry.resolve(ref)
    files = {name: registry.read(source, name) for name in source.manifest["files"]}
    if weights is not None:
        files[WEIGHTS] = weights
    return registry.register("digits-cnn", files).version


def biased_towards(registry, label: int) -> bytes:
    state = load_weights(registry.read(registry.resolve("digits-cnn@1"), WEIGHTS))
    last_bias = [k for k, v in state.items() if k.endswith("bias") and v.shape == (10,)][-1]
    state[last_bias][label] += 100.0  # every answer becomes `label`
    return save_weights(state)


def test_promotion_under_load(serving, digits_models, http):
    registry = digits_models
    assert http.get("/v2/models/digits-cnn").json()["parameters"]["version"] == 1
    threes = copy_of(registry, "digits-cnn@1", biased_towards(registry, 3))
    wrong_architecture = copy_of(
        registry, "digits-cnn@1", registry.read(registry.resolve("digits-mlp@1"), WEIGHTS)
    )
    x = np.zeros((1, 1, 8, 8), np.float32)
    client = SteadyClient(f"{serving}/v2/models/digits-cnn/infer", infer_body(x))
    client.start()
    try:
        client.wait_for(lambda: len(client.answers) > 20)
        registry.promote("digits-cnn", threes, "production")
        client.wait_for(lambda: client.answers[-1][1] == str(threes))
        registry.promote("digits-cnn", wrong_architecture, "production")

        def refused() -> bool:
            meta = http.get("/v2/models/digits-cnn").json()
            return str(wrong_architecture) in meta["parameters"]["refused"]

        client.wait_for(refused)
        listed = http.get("/v2/models/digits-cnn").json()["versions"]  # the watcher's listing
        assert {str(threes), str(wrong_architecture)} <= set(listed), listed
        seen = len(client.answers)
        client.wait_for(lambda: len(client.answers) > seen + 20)
    finally:
        client.stopped.set()
        client.join()
        registry.promote("digits-cnn", 1, "production")
        # The tests after this one expect version 1 to answer: wait for the replica to follow.
        client.wait_for(
            lambda: http.get("/v2/models/digits-cnn").json()["parameters"]["version"] == 1
        )

    failed = [a for a in client.answers if a[0] != 200]
    assert not failed, failed[:3]
    versions = [a[1] for a in client.answers]
    switch = versions.index(str(threes))
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {str(threes)}
    assert {a[2] for a in client.answers[switch:]} == {"3"}
    why = http.get("/v2/models/digits-cnn").json()["parameters"]["refused"][str(wrong_architecture)]
    assert "do not fit" in why
    print(
        f"\n{len(client.answers)} requests during two promotions, 0 failed; switched at #{switch}"
    )


def test_the_endpoint_follows_promotions_after_the_registry_failed_for_a_while(
    serving, digits_models, http
):
    """The alias file unreadable (an OSError from the registry's filesystem, as from a bucket
    that does not answer) for a few watch ticks: the endpoint answers throughout, and follows
    the next promotion once the registry reads again."""
    registry = digits_models
    alias = Path(registry.root) / "digits-cnn" / "aliases" / "production.json"
    fives = copy_of(registry, "digits-cnn@1", biased_towards(registry, 5))
    x = np.zeros((1, 1, 8, 8), np.float32)
    client = SteadyClient(f"{serving}/v2/models/digits-cnn/infer", infer_body(x))
    client.start()
    try:
        saved = alias.read_bytes()
        alias.unlink()
        alias.mkdir()  # reading it fails with an OSError that is not "not found"
        time.sleep(2.0)  # four ticks of the watcher (watch_interval_s 0.5)
        alias.rmdir()
        alias.write_bytes(saved)
        registry.promote("digits-cnn", fives, "production")
        client.wait_for(lambda: client.answers[-1][1] == str(fives))
    finally:
        client.stopped.set()
        client.join()
        if alias.is_dir():
            alias.rmdir()
        registry.promote("digits-cnn", 1, "production")
        client.wait_for(
            lambda: http.get("/v2/models/digits-cnn").json()["parameters"]["version"] == 1
        )
    assert all(status == 200 for status, _, _ in client.answers), client.answers[-3:]
