"""The Redis probe against messages that real Dramatiq actors enqueued, fetched and dead-lettered."""

from __future__ import annotations

import time
from typing import Iterator

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from dramactl import queue
from dramactl.settings import SettingsError, parse
from dramactl.stats import FleetBacklog
from tests.conftest import RedisServer


@pytest.fixture
def broker(redis: redis_lib.Redis, redis_server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(host="127.0.0.1", port=redis_server.port)
    dramatiq.set_broker(b)
    yield b
    b.close()


def settings_for(redis_server: RedisServer, queues: str = "q1", **extra: str):
    return parse({**redis_server.env, "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": queues, **extra})


def by_name(stats):
    return {q.name: q for q in stats}


def test_ready_messages_and_oldest_age(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(5):
        task.send(i)
    time.sleep(1.1)
    task.send(99)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.in_flight, q.delayed, q.due, q.dead) == (6, 0, 0, 0, 0)
    assert 1.0 <= q.oldest_age < 10.0, "age comes from the head (oldest) message"
    assert q.backlog == 6


def test_in_flight_are_fetched_not_acked(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(10):
        task.send(i)
    consumer = broker.consume("q1", prefetch=4, timeout=1000)
    held = [next(consumer) for _ in range(3)]  # Dramatiq's consumer fetches a prefetch batch
    (q,) = queue.read(settings_for(redis_server))
    assert q.in_flight == 4 and q.ready == 6, q
    assert q.backlog == 10
    for m in held:
        consumer.ack(m)
    (q,) = queue.read(settings_for(redis_server))
    assert q.in_flight == 1 and q.ready == 6
    consumer.close()


def test_delayed_and_due(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(3):
        task.send_with_options(args=(i,), delay=600_000)
    task.send_with_options(args=(9,), delay=1)
    time.sleep(0.05)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.delayed, q.due) == (0, 4, 1)
    assert q.backlog == 1, "only the due delayed message needs a worker now"


def test_dead_letters_from_a_real_worker(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1", max_retries=0)
    def doomed() -> None:
        raise RuntimeError("boom")

    doomed.send()
    doomed.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join("q1", timeout=10_000)
    finally:
        worker.stop()
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.in_flight, q.dead) == (0, 0, 2)


def test_several_queues_in_one_round_trip_and_summed(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="a")
    def ta() -> None: ...

    @dramatiq.actor(queue_name="b")
    def tb() -> None: ...

    for _ in range(3):
        ta.send()
    tb.send()
    stats = queue.read(settings_for(redis_server, "a,b,empty"))
    named = by_name(stats)
    assert (named["a"].ready, named["b"].ready, named["empty"].ready) == (3, 1, 0)
    assert named["empty"].oldest_age is None
    assert FleetBacklog.of(stats).backlog == 4


def test_namespace_setting_is_honoured(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    b = RedisBroker(host="127.0.0.1", port=redis_server.port, namespace="other")
    dramatiq.set_broker(b)

    @dramatiq.actor(queue_name="q1")
    def task() -> None: ...

    task.send()
    assert queue.read(settings_for(redis_server))[0].ready == 0
    assert queue.read(settings_for(redis_server, REDIS_NAMESPACE="other"))[0].ready == 1


def test_unreachable_redis_names_the_setting(redis_server: RedisServer) -> None:
    from tests.conftest import free_port

    s = parse({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port())})
    with pytest.raises(SettingsError, match=r"^REDIS_HOST: cannot reach Redis at 127\.0\.0\.1:\d+/0"):
        queue.read(s)


def test_wrong_password_names_the_setting() -> None:
    server = RedisServer(password="right")
    try:
        for given in ("wrong", ""):
            s = parse({**server.env, "REDIS_PASSWORD": given})
            with pytest.raises(SettingsError, match=r"^REDIS_PASSWORD: Redis at 127\.0\.0\.1:\d+/0 refused it"):
                queue.read(s)
        assert queue.read(parse(server.env))[0].ready == 0
    finally:
        server.stop()
