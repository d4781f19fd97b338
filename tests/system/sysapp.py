"""The workload of the system tests: an actor that records every message it completes.

Each completion SADDs the message's ident (a duplicate bumps ``sys:duplicates``), so
the tests can check "processed exactly once" from Redis itself.
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


@dramatiq.actor(queue_name="sys", max_retries=3, min_backoff=200, max_backoff=2000)
def work(ident: str, seconds: float) -> None:
    client = broker.client
    client.incr("sys:started")
    time.sleep(seconds)
    if not client.sadd("sys:processed", ident):
        client.incr("sys:duplicates")
    client.incr("sys:count")
