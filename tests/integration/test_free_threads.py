"""Long tasks: an instance fetches only what a free thread can start (the hook's FreeThreads).

Real redis-server, real Dramatiq workers. Dramatiq's consumers race for each message,
each fetching whenever it holds fewer than its prefetch (2 x threads), so without the
gate an instance whose threads are all busy takes messages that then wait behind its
running tasks while another instance idles."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import RedisServer
from tests.integration.test_work_report import hook, wait_for

QUEUE = "gate"


def waiting(redis: redis_lib.Redis) -> int:
    return int(redis.llen(f"dramatiq:{QUEUE}"))


def hooked(redis_server: RedisServer) -> tuple[RedisBroker, object]:
    broker = RedisBroker(host="127.0.0.1", port=redis_server.port)
    reporter = hook.WorkReporter(interval=0.2)
    broker.add_middleware(reporter)
    return broker, reporter


def test_an_instance_whose_threads_run_long_tasks_leaves_new_messages_to_an_idle_one(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A (2 threads) runs two long tasks; B (2 threads) is idle. Messages sent now all run
    on B, at once: none is fetched by A to wait behind its long tasks. (On the hook before
    the gate A's consumer, below its prefetch of 4, took some of them.)"""
    release = threading.Event()
    ran: dict[int, str] = {}
    brokers, workers = [], []
    for name in ("A", "B"):
        broker, _ = hooked(redis_server)
        brokers.append(broker)

        @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="job", max_retries=0)
        def job(i: int, seconds: float, _name: str = name) -> None:
            ran[i] = _name
            if seconds < 0:
                release.wait(30)
            else:
                time.sleep(seconds)

        brokers[-1] = (broker, job)
    (a, job_a), (b, _) = brokers
    try:
        wa = dramatiq.Worker(a, worker_threads=2, worker_timeout=100)
        wa.start()
        workers.append(wa)
        job_a.send(0, 1.1)
        job_a.send(1, 1.1)
        wait_for(lambda: len(ran) == 2 and waiting(redis) == 0)
        wait_for(lambda: wa.consumers[QUEUE].consumer.outstanding_message_count == 0)  # both done: A's tasks are long (1.1 s)
        job_a.send(2, -1)
        job_a.send(3, -1)
        wait_for(lambda: {ran.get(2), ran.get(3)} == {"A"})  # A's two threads are busy
        wb = dramatiq.Worker(b, worker_threads=2, worker_timeout=100)
        wb.start()
        workers.append(wb)
        time.sleep(0.5)
        for i in range(4, 10):
            job_a.send(i, 0.2)
            time.sleep(0.3)
        deadline = time.monotonic() + 10  # B runs them in 0.2 s each; A's long tasks last until released
        while not all(i in ran for i in range(4, 10)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {i: ran.get(i) for i in range(4, 10)} == {i: "B" for i in range(4, 10)}, "a message went to the instance whose threads were busy (None: it still waits there)"
    finally:
        release.set()
        for w in workers:
            w.stop()
        for broker, _ in brokers:
            broker.close()


class OneThread:
    """A hooked worker process with one thread (Dramatiq's prefetch: 2) and its actor:
    ``task.send(i, seconds)`` sleeps that long, or blocks until :attr:`release` (seconds < 0)."""

    def __init__(self, redis_server: RedisServer, worker_timeout: int = 100) -> None:
        self.release = threading.Event()
        self.done: list[int] = []
        self.broker, self.reporter = hooked(redis_server)
        self.worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=worker_timeout)

        @dramatiq.actor(broker=self.broker, queue_name=QUEUE, max_retries=0)
        def task(i: int, seconds: float) -> None:
            if seconds < 0:
                self.release.wait(30)
            else:
                time.sleep(seconds)
            self.done.append(i)

        self.task = task

    def busy_after(self, first: float) -> None:
        """One task of ``first`` seconds completes (the mean task), then one blocks the thread."""
        self.task.send(0, first)
        wait_for(lambda: self.done == [0] and self.reporter.mean_task() is not None)
        self.task.send(1, -1)
        wait_for(lambda: self.reporter.busy() == 1 and waiting(self.broker.client) == 0)

    def __enter__(self) -> "OneThread":
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.worker.stop()
        self.broker.close()


@pytest.mark.parametrize("task_seconds, fetched", [(1.1, 0), (0.01, 1)], ids=["long-tasks-fetch-for-free-threads", "short-tasks-keep-dramatiqs-prefetch"])
def test_a_busy_process_fetches_beyond_its_threads_only_while_its_tasks_are_short(
    redis: redis_lib.Redis, redis_server: RedisServer, task_seconds: float, fetched: int
) -> None:
    """One thread (prefetch 2) runs a task that blocks; two more messages are sent. A process
    whose mean task is a second or more leaves both in Redis for another instance; one whose
    tasks are short keeps Dramatiq's prefetch (it takes one more, as without the hook)."""
    with OneThread(redis_server) as w:
        w.worker.start()
        w.busy_after(task_seconds)
        w.task.send(2, 0.0)
        w.task.send(3, 0.0)
        time.sleep(1.0)  # ten times the consumer's longest back-off (worker_timeout)
        assert 2 - waiting(redis) == fetched, f"mean task {w.reporter.mean_task():.2f}s: fetched {2 - waiting(redis)} behind the busy thread"
        w.release.set()
        wait_for(lambda: sorted(w.done) == [0, 1, 2, 3])
        assert waiting(redis) == 0


def test_a_pause_stops_a_consumer_waiting_for_a_free_thread_from_fetching(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The consumer of a busy long-task process waits in the gate for a thread; the intake is
    paused meanwhile (the scaler's mark, or a stop or reload signal: the same event). When the
    thread is freed, the consumer fetches nothing: the message sent before stays in Redis."""
    with OneThread(redis_server, worker_timeout=1000) as w:
        w.worker.start()
        w.busy_after(1.1)
        w.task.send(2, 0.0)
        time.sleep(0.3)
        assert waiting(redis) == 1, "the busy process left the message in Redis"
        w.reporter.paused.set()
        w.release.set()
        wait_for(lambda: 1 in w.done)
        time.sleep(1.5)  # more than the gate's wait (worker_timeout) and the consumer's back-off
        assert waiting(redis) == 1 and w.done == [0, 1], "fetched after the pause"
        w.reporter.paused.clear()
        wait_for(lambda: w.done == [0, 1, 2])


def test_a_process_takes_no_more_than_its_threads_before_its_first_task_ends(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Until a task has completed the mean task is unknown and the gate is on: a new instance of
    a long-task app (here one thread, Dramatiq's prefetch 2) does not take a whole prefetch
    first, leaving the rest to the instances that have free threads."""
    with OneThread(redis_server) as w:
        for i in range(3):
            w.task.send(i, -1)
        w.worker.start()
        wait_for(lambda: w.reporter.busy() == 1)
        time.sleep(1.0)  # ten times the consumer's longest back-off
        assert waiting(redis) == 2, "fetched beyond its one thread before any task ended"
        w.release.set()
        wait_for(lambda: sorted(w.done) == [0, 1, 2])
