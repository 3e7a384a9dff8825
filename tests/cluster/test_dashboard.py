"""Calls to a cluster's dashboard: one that takes requests and never answers (its module
processes gone, as after a Ctrl-C reached them) is a one-line error, not a command that hangs."""

import socket
import time
from collections.abc import Iterator

import pytest
from ray.dashboard.modules.job.sdk import JobSubmissionClient
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

from kiln.cluster import dashboard
from kiln.errors import ClusterError


@pytest.fixture
def silent_dashboard() -> Iterator[str]:
    """A listening socket that never answers: the kernel accepts each connection."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("client_class", [ServeSubmissionClient, JobSubmissionClient])
def test_a_dashboard_that_never_answers_is_an_error_in_time(
    silent_dashboard, client_class, monkeypatch
):
    monkeypatch.setattr(dashboard, "REQUEST_TIMEOUT_S", (1.0, 0.5))
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"did not answer within 0.5 s"):
        dashboard.open_client(client_class, silent_dashboard)
    assert time.perf_counter() - started < 10  # Ray's clients alone wait forever


def test_the_timed_client_is_still_rays_client():
    timed = dashboard._answering_in_time(ServeSubmissionClient)
    assert issubclass(timed, ServeSubmissionClient) and timed.__name__ == "ServeSubmissionClient"
