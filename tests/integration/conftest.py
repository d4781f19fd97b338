"""Fixtures for the real-Redis tests: a Dramatiq broker on the session's redis-server."""

from __future__ import annotations

from typing import Iterator

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import RedisServer


@pytest.fixture
def broker(redis: redis_lib.Redis, redis_server: RedisServer) -> Iterator[RedisBroker]:
    """A RedisBroker on the test Redis (emptied per test), set as Dramatiq's global broker."""
    b = RedisBroker(host="127.0.0.1", port=redis_server.port)
    dramatiq.set_broker(b)
    yield b
    b.close()
