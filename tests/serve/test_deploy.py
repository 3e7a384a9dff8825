"""Why a deploy failed, in one line (Serve's application message names only the deployment,
its replicas' message holds the error, a whole traceback), and when a deploy is ready."""

from kiln.serve.control.deploy import proxy_not_ready, why_failed

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
