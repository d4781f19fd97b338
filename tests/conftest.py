"""Shared fixtures: a real redis-server on loopback, started per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis as redis_lib

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(condition: bool, why: str) -> None:
    """Real services are required: in CI a missing one fails the test; locally it may skip."""
    if condition:
        return
    if IN_CI or os.environ.get("DRAMACTL_REQUIRE_SERVICES"):
        pytest.fail(why)
    pytest.skip(why)


class RedisServer:
    """A redis-server process of our own; ``env`` holds the settings that point at it."""

    def __init__(self, password: str = "") -> None:
        self.port = free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="dramactl-redis-", dir="/var/tmp")
        self.socket = os.path.join(self.dir, "redis.sock")
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir]
        args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis_lib.Redis(host="127.0.0.1", port=self.port, password=password or None)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    @property
    def env(self) -> dict[str, str]:
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port), "REDIS_DB": "0"}
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        return env

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_with_password() -> Iterator[RedisServer]:
    """A second redis-server that requires a password (requirepass), also on a unix socket."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(password="pw-Secret-4711")
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    """A clean database for each test."""
    redis_server.client.flushall()
    yield redis_server.client
    redis_server.client.flushall()


@pytest.fixture
def settings_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """Environment for dramactl pointing at the test Redis, with state in a temp dir."""
    return {
        **redis_server.env,
        "DRAMACTL_STATE_DIR": str(tmp_path / "state"),
        "DRAMACTL_ENV_FILE": str(tmp_path / "none.env"),
    }
