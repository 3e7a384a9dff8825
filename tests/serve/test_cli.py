"""`kiln serve`, `kiln serve status|shutdown` and `kiln bench` as a user runs them. This module
runs first in the package: it deploys and deletes its own applications before the package's
`serving` fixture deploys serving/digits.yaml."""

import json
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from tests.conftest import ROOT, run_kiln
from tests.serve.conftest import GATEWAY_PORT, GRPC_PORT, PORT, dashboard_url

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_serve_detach_status_bench_shutdown_beside_another_team(digits_models, tmp_path):
    dashboard = dashboard_url()
    up = run_kiln(
        "serve",
        "serving/digits.yaml",
        "--only",
        "digits-cnn",
        "--detach",
        "--address",
        dashboard,
        "--port",
        str(PORT),
        "--grpc-port",
        str(GRPC_PORT),
        "--grpc-gateway-port",
        str(GATEWAY_PORT),
    )
    assert up.returncode == 0, up.stderr
    assert f"http://127.0.0.1:{PORT}/v2/models/digits-cnn" in up.stdout
    assert f"127.0.0.1:{GRPC_PORT}" in up.stdout
    assert f"gRPC gateway   127.0.0.1:{GATEWAY_PORT}" in up.stdout
    assert "no API keys" in up.stdout  # an open endpoint is said out loud
    try:
        status = run_kiln("serve", "status", "--address", dashboard, "--json")
        apps = {a["application"]: a for a in json.loads(status.stdout)}
        assert set(apps) == {"kiln", "digits-cnn"}
        assert apps["digits-cnn"]["status"] == "RUNNING"
        assert apps["digits-cnn"]["deployments"]["ModelDeployment"]["replicas"] == 1

        url = f"http://127.0.0.1:{PORT}/v2/models/digits-cnn"
        out, png = tmp_path / "bench.json", tmp_path / "bench.png"
        args = ["bench", url, "-c", "4", "-d", "5", "--warmup", "0.5", "--json", "-o", str(out)]
        bench = subprocess.Popen(
            [sys.executable, "-m", "kiln", *args, "--histogram", str(png)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # status while the load runs: rates and percentiles over its window
        during = run_kiln("serve", "status", "--address", dashboard, "--json", "--window", "2")
        stdout, stderr = bench.communicate(timeout=120)
        bench = subprocess.CompletedProcess(args, bench.returncode, stdout, stderr)
        assert bench.returncode == 0, bench.stderr
        live = {a["application"]: a for a in json.loads(during.stdout)}
        model = live["digits-cnn"]["deployments"]["ModelDeployment"]
        assert model["rps"] > 10 and model["version"] == 1, model
        assert 0 < model["p50_ms"] <= model["p99_ms"], model
        assert model["queued"] >= 0 and model["ongoing"] >= 0
        figures = json.loads(bench.stdout)
        assert figures["ok"] == figures["requests"] > 0 and figures["errors"] == {}
        assert figures["p50_ms"] <= figures["p99_ms"]
        assert json.loads(out.read_text()) == figures
        assert png.read_bytes()[:4] == b"\x89PNG"

        binary = run_kiln("bench", url, "-c", "2", "-d", "2", "--warmup", "0", "--binary", "--json")
        assert binary.returncode == 0, binary.stderr
        figures = json.loads(binary.stdout)
        assert figures["ok"] == figures["requests"] > 0 and figures["errors"] == {}
        grpc_args = ["-c", "2", "-d", "2", "--warmup", "0", "--json"]
        grpc = run_kiln("bench", url, "--grpc", f"127.0.0.1:{GRPC_PORT}", *grpc_args)
        assert grpc.returncode == 0, grpc.stderr
        figures = json.loads(grpc.stdout)
        assert figures["ok"] == figures["requests"] > 0 and figures["errors"] == {}

        soak = run_kiln(
            *("bench", url, "--rate", "40", "-d", "6", "--warmup", "0", "--interval", "2"),
            *("--soak", str(tmp_path / "soak.png"), "--address", dashboard, "--json"),
        )
        assert soak.returncode == 0, soak.stderr
        report = json.loads(soak.stdout)
        assert [i["from_s"] for i in report["intervals"]] == [0, 2, 4]
        assert sum(i["requests"] for i in report["intervals"]) == report["requests"] == 240
        [replica] = [r for n, r in report["replicas"].items() if n.startswith("digits-cnn/")]
        assert replica["start_mb"] > 50 and "growth_mb_per_hour" in replica
        assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"

        a_second_team_adds_and_removes_its_own(dashboard, tmp_path)
    finally:
        down = run_kiln("serve", "shutdown", "--address", dashboard)
    assert down.returncode == 0, down.stderr
    from tests.serve.conftest import wait_until_gone

    wait_until_gone(dashboard)


def a_second_team_adds_and_removes_its_own(dashboard: str, tmp_path) -> None:
    """While team A serves digits-cnn from serving/digits.yaml, team B's own file adds
    digits-mlp without touching it, cannot silently take digits-cnn over, and removes only
    its own."""
    ports = (
        *("--address", dashboard, "--port", str(PORT)),
        *("--grpc-port", str(GRPC_PORT), "--grpc-gateway-port", str(GATEWAY_PORT)),
    )
    team_b = tmp_path / "team-b.yaml"
    config = yaml.safe_load((ROOT / "serving/digits.yaml").read_text())
    for app in config["applications"]:  # team B batches digits-cnn its own way
        if app["name"] == "digits-cnn":
            app["deployments"][0]["user_config"] = {"max_batch_size": 8, "batch_wait_ms": 0}
    team_b.write_text(yaml.safe_dump(config))

    def running() -> dict:
        status = run_kiln("serve", "status", "--address", dashboard, "--json")
        return {a["application"]: a["deployed_from"] for a in json.loads(status.stdout)}

    b = run_kiln("serve", str(team_b), "--only", "digits-mlp", "--detach", *ports)
    assert b.returncode == 0, b.stderr
    origins = running()
    assert set(origins) == {"kiln", "digits-cnn", "digits-mlp"}
    assert origins["digits-cnn"].endswith(str(ROOT / "serving/digits.yaml"))
    assert origins["digits-mlp"].endswith(str(team_b))
    for model in ("digits-cnn", "digits-mlp"):
        ready = httpx.get(f"http://127.0.0.1:{PORT}/v2/models/{model}/ready", timeout=10)
        assert ready.status_code == 200, model

    clash = run_kiln("serve", str(team_b), "--only", "digits-cnn", "--detach", *ports)
    assert clash.returncode == 1 and "Traceback" not in clash.stderr
    assert "'digits-cnn' already runs, deployed from" in clash.stderr, clash.stderr
    assert "--replace" in clash.stderr

    down = run_kiln("serve", "shutdown", "--address", dashboard, "--only", "digits-mlp")
    assert down.returncode == 0, down.stderr
    assert set(running()) == {"kiln", "digits-cnn"}
    missing = run_kiln("serve", "shutdown", "--address", dashboard, "--only", "nope")
    assert missing.returncode == 1 and "no application 'nope' runs" in missing.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["serve", "missing.yaml"], 2, "file not found"),
        (["serve", "serving/digits.yaml", "--only", "nope"], 2, "no model application 'nope'"),
        (["serve", "status", "--address", "http://127.0.0.1:9"], 1, "cannot reach"),
        (["bench", "http://127.0.0.1:9/v2/models/x", "-d", "1"], 1, "cannot reach"),
        (
            ["rollout", "status", "m", "--metrics", "http://127.0.0.1:9/metrics"],
            1,
            "no metrics endpoint answers (http://127.0.0.1:9/metrics): is the cluster up?",
        ),
    ],
)
def test_mistakes_are_one_line(args, code, message):
    done = run_kiln(*args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_missing_model_is_refused_before_deploying(fresh_home):
    done = run_kiln("serve", "serving/digits.yaml", env={"KILN_HOME": str(fresh_home)})
    assert done.returncode == 3 and "no model named 'digits-cnn'" in done.stderr


def test_validate_checks_serving_configs_against_the_registry(digits_models, recommender):
    """`kiln validate` takes a serving config beside job specs: its models must be registered."""
    done = run_kiln(
        "validate", "serving/digits.yaml", "serving/recsys.yaml", "jobs/digits-cnn.yaml"
    )
    assert done.returncode == 0, done.stderr
    assert "ok serving/digits.yaml (serving config: kiln, digits-cnn," in done.stdout
    assert "ok serving/recsys.yaml (serving config: " in done.stdout
    assert "ok jobs/digits-cnn.yaml (digits-cnn: " in done.stdout


def test_validate_names_the_application_whose_model_is_missing(fresh_home):
    done = run_kiln("validate", "serving/digits.yaml", env={"KILN_HOME": str(fresh_home)})
    assert done.returncode == 2, done.stderr
    assert "serving/digits.yaml: applications[1] (digits-cnn): no model named" in done.stderr
