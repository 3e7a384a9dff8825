"""schemathesis, every check and every phase, over each OpenAPI document the digits serving
config serves, with the API key: no request a document calls valid is refused, none it calls
invalid is accepted, no 5xx, every response as documented. (The recommendation app's document
is fuzzed in test_recommend, where it is deployed.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.serve.conftest import API_KEY, SECURED

pytestmark = [pytest.mark.ray, pytest.mark.slow]
MODELS = ["digits-cnn", "digits-mlp", "digits-rnn", "digits-gan", SECURED]


def test_the_index_document(serving):
    result = fuzz(f"{serving}/openapi.json")
    assert result.returncode == 0, failures(result)


@pytest.mark.parametrize("model", MODELS)
def test_each_model_document(serving, http, model):
    inputs = http.get(f"/v2/models/{model}", headers=auth()).json()["inputs"]
    result = fuzz(f"{serving}/v2/models/{model}/openapi.json", inputs)
    assert result.returncode == 0, failures(result)


def fuzz(document: str, inputs: list | None = None) -> subprocess.CompletedProcess:
    """`schemathesis run` as a user runs it, with Kiln's hooks (tests/serve/fuzz_hooks.py)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.serve.fuzz_hooks",
        "KILN_FUZZ_INPUTS": json.dumps(inputs or []),
    }
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", document]
    options = ["--checks", "all", "--max-examples", "25", "--seed", "1", "--no-color"]
    options += ["--generation-database", "none"]  # each run alike, whatever ran before
    header = ["--header", f"Authorization: Bearer {API_KEY}"]
    return subprocess.run(
        [*command, *options, *header],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def failures(result: subprocess.CompletedProcess) -> str:
    """What schemathesis found, from its FAILURES section on."""
    out = result.stdout
    start = max(out.find("FAILURES"), out.find("ERRORS"), 0)
    return (out[start:] + result.stderr)[:8000]


def auth() -> dict:
    return {"Authorization": f"Bearer {API_KEY}"}
