"""A real Redis server (the embedded one Kiln starts) on a free port, per test module."""

import pytest

from kiln.features import EmbeddedRedis, connect
from tests.conftest import free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = connect(redis_server.url, timeout_s=2)
    client.flushdb()  # each test starts from an empty database
    return client
