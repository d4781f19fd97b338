"""A Dramatiq app with Dramatiq's own Prometheus middleware: what a fleet of several instances must not collide on."""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.prometheus import Prometheus

broker = RedisBroker(host=os.environ.get("REDIS_HOST", "localhost"))
broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="prom")
def noop(n: int) -> None:
    broker.client.incr("prom:done")
