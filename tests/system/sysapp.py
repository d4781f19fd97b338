"""The workload of the system tests: actors that record every message they complete.

Each message's final step SADDs its ident into ``sys:processed`` (a duplicate bumps
``sys:duplicates``), so the tests can check "processed exactly once" from Redis itself:
lost = sent - processed.

* ``work``: the plain actor (sleeps, records).
* ``limited``: the same under a ``time_limit``; with ``fail_once`` it raises the first time it
  sees its ident (a marker in ``sys:failed``), so its retry must be stored, during an outage too.
* ``first | final``: a pipeline; ``first`` works and returns the ident, Dramatiq enqueues
  ``final`` with it, and ``final`` records it.

``send_mix`` sends them a quarter each (work, limited failing once, limited, pipeline).
"""

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

# The fault tests shorten Dramatiq's 60 s heartbeat timeout to keep CI short.
_heartbeat = int(os.environ.get("SYSAPP_HEARTBEAT_TIMEOUT", "60000"))
if os.environ.get("REDIS_URL"):
    # The multi-host tests share one Redis over a unix socket: unix:///run/shared-redis/redis.sock.
    broker = RedisBroker(url=os.environ["REDIS_URL"], heartbeat_timeout=_heartbeat)
else:
    broker = RedisBroker(
        host=os.environ.get("REDIS_HOST", "localhost"),
        port=int(os.environ.get("REDIS_PORT", "6379")),
        db=int(os.environ.get("REDIS_DB", "0")),
        heartbeat_timeout=_heartbeat,
    )
dramatiq.set_broker(broker)

# A slow start-up (a heavy app import) for the tests that time one: READY=1 comes after it.
time.sleep(float(os.environ.get("SYSAPP_START_DELAY", "0")))
# Longer than a message's work, shorter than an outage: a thread held through an outage
# outlives its message's time limit.
TIME_LIMIT_MS = 5000
# The outages of the fault scenario each cost a message in progress one attempt.
RETRIES = {"max_retries": 10, "min_backoff": 200, "max_backoff": 2000}


def _record(ident: str) -> None:
    client = broker.client
    if not client.sadd("sys:processed", ident):
        client.incr("sys:duplicates")
    client.incr("sys:count")


@dramatiq.actor(queue_name="sys", max_retries=3, min_backoff=200, max_backoff=2000)
def work(ident: str, seconds: float, sent: float | None = None) -> None:
    client = broker.client
    client.incr("sys:started")
    client.hset("sys:ran_on", ident, os.environ.get("DRAMACTL_INSTANCE", ""))  # test_victims.py: which instance took it
    if sent is not None:  # test_replay.py: each message's queue wait, from its send to its start
        client.rpush("sys:waits", time.time() - sent)
    time.sleep(seconds)
    if not client.sadd("sys:processed", ident):
        client.incr("sys:duplicates")
    client.incr("sys:count")


@dramatiq.actor(queue_name="sys", time_limit=TIME_LIMIT_MS, **RETRIES)
def limited(ident: str, seconds: float, fail_once: bool = False) -> None:
    client = broker.client
    client.incr("sys:started")
    if fail_once and client.sadd("sys:failed", ident):
        raise dramatiq.Retry(f"{ident}: failing once, as planned (its retry must be stored)")  # retried, logged without a traceback
    time.sleep(seconds)
    _record(ident)


@dramatiq.actor(queue_name="sys", **RETRIES)
def first(ident: str, seconds: float) -> str:
    broker.client.incr("sys:started")
    time.sleep(seconds)
    return ident


@dramatiq.actor(queue_name="sys", **RETRIES)
def final(ident: str) -> None:
    _record(ident)


def send_mix(count: int, seconds: float, prefix: str) -> None:
    for i in range(count):
        ident = f"{prefix}{i}"
        kind = i % 4
        if kind == 0:
            work.send(ident, seconds)
        elif kind in (1, 2):
            limited.send(ident, seconds, kind == 1)
        else:
            dramatiq.pipeline([first.message(ident, seconds), final.message()]).run()


def send_delayed(count: int, seconds: float, delay_ms: int, prefix: str) -> None:
    for i in range(count):
        work.send_with_options(args=(f"{prefix}{i}", seconds), delay=delay_ms)
