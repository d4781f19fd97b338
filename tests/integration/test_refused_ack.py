"""An ack Redis refuses for a reason Redis itself ends is retried, not dropped.

The hook holds a follow-up while Redis refuses it with any error a working Redis ends
(``_passing``: OOM, READONLY, and the ResponseErrors MASTERDOWN, NOREPLICAS, TRYAGAIN,
CLUSTERDOWN, BUSY, LOADING). Acks, nacks and requeues were retried only for connection
losses, timeouts, OOM and READONLY: refused with NOREPLICAS (``min-replicas-to-write``
with a replica gone), Dramatiq drops the ack ("You've found a bug in Dramatiq"), and
the message stays in the ack set of a live worker whose guard still counts it as in
progress on that idle thread: never handed back, never acked.
"""

from __future__ import annotations

import threading

import dramatiq
import redis as redis_lib

from tests.integration.test_follow_ups import make_broker, sweeping, wait_for
from tests.integration.test_hook import StoppableRedis, server  # noqa: F401 - the fixture


def test_an_ack_refused_for_want_of_replicas_is_retried_once_redis_takes_writes(server: StoppableRedis) -> None:
    broker = make_broker(server)
    done: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="norepl", max_retries=0)
    def one() -> None:
        running.set()
        go.wait(20)
        done.append(1)

    maintenance = sweeping(broker, 0.3)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    admin = redis_lib.Redis(port=server.port)
    acks = f"dramatiq:__acks__.{broker.broker_id}.norepl"
    try:
        one.send()
        assert running.wait(10)
        admin.config_set("min-replicas-to-write", 1)  # no replica: every write is refused with NOREPLICAS
        go.set()
        assert wait_for(lambda: done == [1], 10)
        threading.Event().wait(1)  # the ack is tried and refused
        admin.config_set("min-replicas-to-write", 0)
        # Dramatiq retries a connection-lost ack every 5 s: acked within one retry, once.
        assert wait_for(lambda: admin.scard(acks) == 0 and admin.hlen("dramatiq:norepl.msgs") == 0, 12), (
            admin.smembers(acks), maintenance.handed_back, done,
        )
        assert done == [1]
    finally:
        admin.config_set("min-replicas-to-write", 0)
        go.set()
        worker.stop(timeout=5000)
