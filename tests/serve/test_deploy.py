"""Why a deploy failed, in one line (Serve's application message names only the deployment,
its replicas' message holds the error, a whole traceback), and when a deploy is ready."""

import pytest
import yaml

from kiln.errors import ServeError
from kiln.serve.control.deploy import grpc_gateway_ports, merge, proxy_not_ready, why_failed
from kiln.serve.control.running import merged_into, stamped
from tests.conftest import ROOT

TRACEBACK = """Traceback (most recent call last):
  File "/work/kiln/registry/loading.py", line 35, in build_from_card
    return models.create(spec, DataSchema(**card["schema"]))
  File "/work/kiln/builders.py", line 86, in import_object
    raise SpecError(f"cannot import {path}: {e}", field=field) from None
kiln.errors.SpecError: cannot import nets:build: No module named 'nets'"""


def failed_app(message: str) -> dict:
    return {
        "status": "DEPLOY_FAILED",
        "message": "Failed to update the deployments ['ModelDeployment'].",
        "deployments": {
            "ModelDeployment": {"status": "DEPLOY_FAILED", "message": message},
            "Other": {"status": "HEALTHY", "message": ""},
        },
    }


def test_a_replica_that_cannot_import_the_model_says_so_and_what_to_do():
    reason = why_failed(failed_app(TRACEBACK))
    assert reason.startswith("kiln.errors.SpecError: cannot import nets:build: No module named")
    assert 'runtime_env: {working_dir: "local:///its/folder"}' in reason


def test_another_error_is_the_replicas_own_line():
    reason = why_failed(failed_app("Traceback ...\nValueError: bad weights file"))
    assert reason == "ValueError: bad weights file"


def test_without_a_deployment_message_the_application_message_stands():
    app = {"status": "DEPLOY_FAILED", "message": "Failed to build the application.\nbad route"}
    assert why_failed(app) == "bad route"


def test_a_deploy_waits_for_a_healthy_proxy_unless_proxies_are_off():
    def serve(location, *statuses):
        proxies = {f"node{i}": {"status": s} for i, s in enumerate(statuses)}
        return {"proxy_location": location, "proxies": proxies}

    assert proxy_not_ready(serve("EveryNode")) == ["the HTTP proxy (not started)"]
    assert proxy_not_ready(serve("EveryNode", "STARTING")) == ["the HTTP proxy (STARTING)"]
    assert proxy_not_ready(serve("EveryNode", "UNHEALTHY", "HEALTHY")) == []
    assert proxy_not_ready(serve("Disabled")) == []


def test_configs_deployed_together_share_one_index_with_the_gateway_either_sets():
    """serving/digits.yaml's index runs the gRPC gateway, serving/recsys.yaml's does not: the
    two deploy together (make demo does), in either order, with gRPC and the gateway."""
    digits, recsys = (yaml.safe_load((ROOT / f"serving/{n}.yaml").read_text()) for n in NAMES)
    for configs in ([digits, recsys], [recsys, digits]):
        merged = merge(configs)
        assert [a["name"] for a in merged["applications"]].count("kiln") == 1
        assert grpc_gateway_ports(merged) == [8001] and merged["grpc_options"]["port"] == 9000
    other = yaml.safe_load(yaml.safe_dump(recsys))
    other["applications"][0]["args"] = {"grpc_gateway_port": 8101}
    with pytest.raises(ServeError, match="already has grpc_gateway_port: 8001, not 8101"):
        merge([digits, other])


def test_a_config_joins_the_running_index_instead_of_clashing_with_it():
    digits, recsys = (yaml.safe_load((ROOT / f"serving/{n}.yaml").read_text()) for n in NAMES)
    runs = stamped(recsys, "team-a@host:/recsys.yaml")  # runs: its index has no gateway
    details = {
        "applications": {a["name"]: {"deployed_app_config": a} for a in runs["applications"]}
    }
    whole = merged_into(stamped(digits, "team-b@host:/digits.yaml"), details, replace=False)
    (index,) = [a for a in whole["applications"] if a["name"] == "kiln"]
    assert index["args"] == {"grpc_gateway_port": 8001}
    assert index["runtime_env"]["env_vars"]["KILN_DEPLOYED_FROM"] == "team-a@host:/recsys.yaml"


NAMES = ("digits", "recsys")
