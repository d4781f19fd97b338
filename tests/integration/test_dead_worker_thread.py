"""A worker thread that dies in its ack leaves nothing stranded in a live worker's ack set.

Dramatiq's ``Interrupt`` (TimeLimit's ``TimeLimitExceeded``, ShutdownNotifications'
``Shutdown``) is a BaseException raised asynchronously into a worker thread. TimeLimit's
timer reads a deadline under its lock and raises the interrupt after releasing it, so one
read just before the guard disarmed the deadline can land anywhere later in the thread,
also in ``post_process_message`` (the ack), which catches only ``Exception``: the thread
ends there, the message unacked in the ack set of a process that keeps heartbeating. The
hook's sweep must not count a dead thread's message as held by the process, or it never
hands it back (only a restart of the whole instance would).

The interrupt is modelled, as in test_follow_ups.py's late-interrupt test, by a middleware
that raises it into its own thread, here from ``before_ack``.
"""

from __future__ import annotations

import threading

import dramatiq
import redis as redis_lib
from dramatiq.middleware import Middleware, TimeLimitExceeded
from dramatiq.middleware.threading import raise_thread_exception

from tests.integration.test_follow_ups import make_broker, sweeping, wait_for
from tests.integration.test_hook import StoppableRedis, server  # noqa: F401 - the fixture


class InterruptInAck(Middleware):
    """Lands a TimeLimitExceeded in the ack of the first message of ``actor``."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.fired = threading.Event()
        self.thread: threading.Thread | None = None

    def before_ack(self, broker, message) -> None:
        if message.actor_name == self.actor and not self.fired.is_set():
            self.fired.set()
            self.thread = threading.current_thread()
            raise_thread_exception(threading.get_ident(), TimeLimitExceeded)


def test_the_message_of_a_worker_thread_that_died_in_its_ack_is_handed_back(server: StoppableRedis) -> None:
    broker = make_broker(server)
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="dies")
    def job(i: int) -> None:
        done.append(i)

    late = InterruptInAck("job")
    broker.add_middleware(late)  # before the hook's guard, which is installed last
    maintenance = sweeping(broker, 0.3)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    acks = f"dramatiq:__acks__.{broker.broker_id}.dies"
    try:
        job.send(0)
        assert wait_for(lambda: late.thread is not None and not late.thread.is_alive(), 10)  # the thread ended in the ack
        assert done == [0] and client.scard(acks) == 1  # processed, not acked
        # The process lives on (one thread left, its consumers heartbeat): the sweep must hand
        # the id back (two 0.3 s rounds), and the surviving thread runs it again (a duplicate).
        assert wait_for(lambda: done == [0, 0] and client.scard(acks) == 0, 10), (done, client.smembers(acks), maintenance.handed_back)
        assert maintenance.handed_back == 1
    finally:
        worker.stop(timeout=5000)


def test_prefetched_messages_are_handed_back_when_every_worker_thread_has_died(server: StoppableRedis) -> None:
    """With its only worker thread dead, the process never runs what it prefetched, yet its
    consumers go on heartbeating: those messages must go back to their queue for the other
    instances (until the watchdog restarts this one, they would wait in its memory)."""
    broker = make_broker(server)
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="alldead")
    def job(i: int) -> None:
        done.append(i)

    late = InterruptInAck("job")
    broker.add_middleware(late)
    maintenance = sweeping(broker, 0.3)
    client = redis_lib.Redis(port=server.port)
    for i in range(3):
        job.send(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)  # prefetch 2
    worker.start()
    acks = f"dramatiq:__acks__.{broker.broker_id}.alldead"
    try:
        assert wait_for(lambda: late.thread is not None and not late.thread.is_alive(), 10)
        assert done == [0]
        # Every id back in the queue, none left in the live worker's ack set.
        assert wait_for(lambda: client.llen("dramatiq:alldead") == 3 and client.scard(acks) == 0, 10), (
            client.llen("dramatiq:alldead"), client.smembers(acks), maintenance.handed_back,
        )
        assert done == [0]
    finally:
        worker.stop(timeout=5000)
