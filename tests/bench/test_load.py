"""The load generator against a real socket: a request that gets no answer says why."""

import asyncio
import socket

from kiln.bench.load import generate_load


def test_a_request_without_an_answer_is_status_0_with_its_reason():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound but not listening: connections are refused
        url = f"http://127.0.0.1:{port}/v2/models/m/infer"
        result = asyncio.run(generate_load(url, b"{}", rate=20, duration_s=0.5, warmup_s=0))
    summary = result.summary()
    assert set(result.statuses) == {0} and summary["errors"] == {"0": 10}
    [(reason, count)] = summary["failures"].items()
    assert count == 10 and reason.startswith("ClientConnectorError"), reason
