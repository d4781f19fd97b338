"""The worker hook against a real Redis that really goes away: a message whose retry Redis
refused is kept (processed once Redis is back), where plain Dramatiq acks it and loses it;
Dramatiq's maintenance redelivers a dead worker's messages without waiting for chance."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import free_port, need

HOOK = Path(__file__).resolve().parents[2] / "dramactl" / "hook" / "dramactl_ready.py"


class StoppableRedis:
    """A redis-server that saves on shutdown, so a stop and start keeps every key (as Debian's does)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dramactl-hook-redis-", dir="/var/tmp")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "3600 1", "--appendonly", "no", "--dir", self.dir]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_lib.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # SIGTERM: Redis saves, then exits
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[StoppableRedis]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed (apt-get install redis-server)")
    s = StoppableRedis()
    yield s
    s.close()


def install_hook(broker: RedisBroker) -> object:
    """Import the hook as Dramatiq does in an instance: it installs itself on the global broker."""
    dramatiq.set_broker(broker)
    spec = importlib.util.spec_from_file_location("dramactl_ready_under_test", HOOK)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hooked", [True, False], ids=["with-hook", "plain-dramatiq"])
def test_a_retry_redis_refused_is_kept_until_redis_is_back(server: StoppableRedis, hooked: bool) -> None:
    # No client-side retries: redis-py would otherwise ride out a short outage by itself.
    broker = RedisBroker(port=server.port, retry=Retry(NoBackoff(), 0))
    attempts: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="hook", max_retries=3, min_backoff=100, max_backoff=200)
    def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            running.set()
            go.wait(20)
            broker.client.incr("hook:touched")  # Redis is down now: this raises, Retries steps in

    if hooked:
        install_hook(broker)
    else:
        dramatiq.set_broker(broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        flaky.send()
        assert running.wait(10)
        server.stop()
        go.set()
        time.sleep(2)  # the actor fails, Retries' enqueue fails
        server.start()
        client = redis_lib.Redis(port=server.port)

        def settled() -> bool:
            return client.hlen("dramatiq:hook.msgs") == 0 and client.hlen("dramatiq:hook.DQ.msgs") == 0

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ((len(attempts) >= 2 or not hooked) and settled()):
            time.sleep(0.2)
        if hooked:
            assert attempts == [1, 2], attempts  # retried once Redis took the retry
            assert settled()
        else:
            # Plain Dramatiq: the retry was never enqueued and the original was acked: gone.
            time.sleep(2)
            assert attempts == [1], attempts
            assert settled() and client.llen("dramatiq:hook") == 0 and client.zcard("dramatiq:hook.XQ") == 0
    finally:
        go.set()
        worker.stop(timeout=5000)


def test_maintenance_redelivers_a_dead_workers_messages_at_once(server: StoppableRedis) -> None:
    """A worker that died holding messages (its ack set, a stale heartbeat): the hook's
    maintenance round puts them back on the queue through Dramatiq's own dispatch script,
    and publishes the heartbeat timeout for dramactl's probe."""
    broker = RedisBroker(port=server.port, heartbeat_timeout=1000)
    done: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="maint")
    def record(ident: str) -> None:
        done.append(ident)

    for i in range(3):
        record.send(f"m{i}")
    dead = RedisBroker(port=server.port, heartbeat_timeout=1000)  # fetches, then "dies"
    consumer = dead.consume("maint", prefetch=3, timeout=100)
    fetched = [next(consumer) for _ in range(3)]
    assert all(m is not None for m in fetched)
    client = redis_lib.Redis(port=server.port)
    assert client.llen("dramatiq:maint") == 0 and client.scard(f"dramatiq:__acks__.{dead.broker_id}.maint") == 3
    time.sleep(1.5)  # the dead worker's heartbeat expires

    module = install_hook(broker)
    maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
    maintenance.run_once(broker, ["maint"])
    assert client.llen("dramatiq:maint") == 3
    assert client.exists(f"dramatiq:__acks__.{dead.broker_id}.maint") == 0
    assert client.get(module.HEARTBEAT_KEY.format(namespace="dramatiq")) == b"1000"
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(done) < 3:
            time.sleep(0.1)
        assert sorted(done) == ["m0", "m1", "m2"]
    finally:
        worker.stop(timeout=5000)
