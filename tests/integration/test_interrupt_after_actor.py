"""An interrupt that lands after the actor returned, before the guard disarmed interrupts.

TimeLimit's timer reads a thread's deadline under its lock and raises ``TimeLimitExceeded``
into the thread after releasing it (ShutdownNotifications raises ``Shutdown`` the same way):
one read just before the actor returned lands wherever the thread is by then. The guard's
first after-hook disarms both; an interrupt landing in the after-hooks after that point is
handled (``test_after_hooks_cut_short_by_a_late_interrupt_leave_the_message_unacked`` in
test_follow_ups.py). One landing before it (between the actor's return and the guard's
first after-hook) escapes Dramatiq's ``emit_after`` before any after-hook ran; Dramatiq
then runs the after-hooks with the interrupt as the exception, and the guard took it for
the actor's failure: with no retry left, Retries dead-lettered a message that succeeded,
and its next pipeline step, ``on_success`` and result were never produced.

The guard now reads the interrupt's traceback: not raised inside the actor (no frame of
``Actor.__call__``), the run was cut short and the message is left unacked, to be handed
back by the sweep and run again. An interrupt inside the actor is a failure, as before.
The late interrupt is modelled as in the reviewer's demo: raised into its own thread as
Dramatiq starts the after-hooks of the message's success.
"""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.middleware import Shutdown, TimeLimitExceeded
from dramatiq.middleware.threading import raise_thread_exception

from tests.integration.test_follow_ups import HOOKED, hook, make_broker, queues_empty, sweeping, wait_for
from tests.integration.test_hook import StoppableRedis, server  # noqa: F401 - the fixture


def interrupt_after_success(broker, actor: str, interrupt: type[BaseException]) -> list[int]:
    """Raise ``interrupt`` into the worker thread once, as Dramatiq starts the after-hooks of
    ``actor``'s first success (the actor has returned; no after-hook has run yet)."""
    fired: list[int] = []
    original = broker.emit_after

    def emit_after(signal, *args, **kwargs):
        if signal == "process_message" and kwargs.get("exception") is None and args[0].actor_name == actor and not fired:
            fired.append(1)
            raise_thread_exception(threading.get_ident(), interrupt)
        return original(signal, *args, **kwargs)

    broker.emit_after = emit_after
    return fired


@HOOKED
@pytest.mark.parametrize("interrupt", [TimeLimitExceeded, Shutdown], ids=["time-limit", "shutdown"])
def test_an_interrupt_landing_after_the_actor_returned_leaves_the_message_unacked(server: StoppableRedis, hooked: bool, interrupt) -> None:
    broker = make_broker(server)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="after", max_retries=0)
    def step1() -> int:
        ran.append("step1")
        return 1

    @dramatiq.actor(broker=broker, queue_name="after")
    def step2(value: int) -> None:
        ran.append("step2")

    fired = interrupt_after_success(broker, "step1", interrupt)
    maintenance = sweeping(broker, 0.3) if hooked else hook(broker, False)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        (step1.message() | step2.message()).run()
        if hooked:
            assert wait_for(lambda: "step2" in ran and queues_empty(client, "after"), 15), (ran, client.zcard("dramatiq:after.XQ"))
            assert fired and client.zcard("dramatiq:after.XQ") == 0  # never dead-lettered
            assert ran.count("step1") == 2 and ran.count("step2") == 1, ran  # run again: a duplicate, counted
            assert maintenance.handed_back == 1
        else:
            assert wait_for(lambda: client.zcard("dramatiq:after.XQ") == 1, 10), ran
            time.sleep(1)
            assert fired and ran == ["step1"], ran  # step1 succeeded, was dead-lettered, and step2 never exists
    finally:
        worker.stop(timeout=5000)


def test_a_time_limit_inside_the_actor_is_still_its_failure(server: StoppableRedis) -> None:
    """TimeLimit interrupts the actor itself (a real deadline, TimeLimit's own timer): that is
    the actor's failure, through Retries as before: with no retry left it is dead-lettered,
    its next step never runs, and the sweep hands nothing back."""
    broker = make_broker(server)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="inside", max_retries=0, time_limit=300)
    def slow() -> int:
        ran.append("slow")
        for _ in range(100):  # 5 s at most; the limit is 0.3 s (TimeLimit checks once a second)
            time.sleep(0.05)
        ran.append("returned")
        return 1

    @dramatiq.actor(broker=broker, queue_name="inside")
    def after(value: int) -> None:
        ran.append("after")

    maintenance = sweeping(broker, 0.3)
    broker.emit_after("process_boot")  # as Dramatiq's CLI does in a worker process: TimeLimit's timer starts
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        (slow.message() | after.message()).run()
        assert wait_for(lambda: client.zcard("dramatiq:inside.XQ") == 1, 10), ran
        time.sleep(1.5)  # five sweep rounds: a message left unacked would be handed back and run again
        assert ran == ["slow"] and maintenance.handed_back == 0 and queues_empty(client, "inside")
    finally:
        worker.stop(timeout=5000)
