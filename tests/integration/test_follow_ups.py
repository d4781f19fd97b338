"""At least once, through every path a message takes in a worker: a real Dramatiq worker, a
real Redis that goes away (stopped) or hangs (SIGSTOP), and the dramactl hook.

Each test runs the same scenario with the hook and with plain Dramatiq: plain Dramatiq
loses the follow-up (or strands the message), the hook does not.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from typing import Callable

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from tests.integration.test_hook import StoppableRedis, install_hook, server  # noqa: F401 - the fixture

HOOKED = pytest.mark.parametrize("hooked", [True, False], ids=["with-hook", "plain-dramatiq"])


def make_broker(server: StoppableRedis, **kwargs) -> RedisBroker:
    # No client-side retries: redis-py would otherwise ride out a short outage by itself.
    return RedisBroker(port=server.port, retry=Retry(NoBackoff(), 0), **kwargs)


def hook(broker: RedisBroker, hooked: bool):
    if hooked:
        return install_hook(broker)
    dramatiq.set_broker(broker)
    return None


def sweeping(broker: RedisBroker, interval: float):
    """Install the hook on ``broker`` and return its Maintenance, sweeping every ``interval`` s."""
    install_hook(broker)
    maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
    maintenance.interval = interval
    return maintenance


def with_results(server: StoppableRedis, port: int | None = None, socket_timeout: float | None = None):
    """A broker on ``server`` with Dramatiq's Results middleware and its Redis backend on
    ``port`` (default: the broker's own server), without client-side retries; (broker, backend)."""
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = make_broker(server, socket_timeout=socket_timeout)
    backend = RedisBackend(client=redis_lib.Redis(port=port or server.port, retry=Retry(NoBackoff(), 0), socket_timeout=socket_timeout))
    broker.add_middleware(Results(backend=backend))
    return broker, backend


def answering(broker: RedisBroker):
    """An actor on queue "res" that stores its result, 42, once ``go`` is set; (actor, runs, running, go)."""
    ran: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="res", store_results=True)
    def answer() -> int:
        ran.append(1)
        running.set()
        go.wait(20)
        return 42

    return answer, ran, running, go


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def queues_empty(client: redis_lib.Redis, *queues: str) -> bool:
    return all(client.hlen(f"dramatiq:{q}.msgs") == 0 and client.hlen(f"dramatiq:{q}.DQ.msgs") == 0 for q in queues)


@HOOKED
def test_a_time_limited_actor_that_fails_during_an_outage_is_retried(server: StoppableRedis, hooked: bool) -> None:
    """The actor fails about 0.2 s into a 1.5 s time limit while Redis is down: Retries' enqueue
    fails. The hold outlasts the time limit; its TimeLimitExceeded must not turn the hold
    into an ack (plain Dramatiq acks at once)."""
    broker = make_broker(server)
    attempts: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="tl", max_retries=3, min_backoff=100, max_backoff=200, time_limit=1500)
    def limited() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            running.set()
            go.wait(20)
            broker.client.incr("tl:touched")  # Redis is down now: this raises, Retries steps in

    hook(broker, hooked)
    broker.emit_after("process_boot")  # as Dramatiq's CLI does in a worker process: TimeLimit's timer starts
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        limited.send()
        assert running.wait(10)
        server.stop()
        go.set()
        time.sleep(4)  # the actor fails; the retry cannot be stored; the 1.5 s limit passes
        server.start()
        client = redis_lib.Redis(port=server.port)
        if hooked:
            assert wait_for(lambda: attempts == [1, 2] and queues_empty(client, "tl"), 30), attempts
            limited.send()  # the worker thread survived the interrupt: it takes another message
            assert wait_for(lambda: len(attempts) == 3, 10), attempts
        else:
            wait_for(lambda: queues_empty(client, "tl"), 10)
            time.sleep(2)
            assert attempts == [1], attempts  # the retry was never stored, the original acked: lost
            assert queues_empty(client, "tl") and client.zcard("dramatiq:tl.XQ") == 0
    finally:
        go.set()
        worker.stop(timeout=5000)


@HOOKED
def test_a_pipelines_next_step_survives_an_outage_at_the_moment_of_enqueue(server: StoppableRedis, hooked: bool) -> None:
    broker = make_broker(server)
    ran: list[str] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="pipe")
    def a() -> int:
        ran.append("a")
        running.set()
        go.wait(20)  # Redis goes down while a runs; a itself succeeds
        return 1

    @dramatiq.actor(broker=broker, queue_name="pipe")
    def b(value: int) -> None:
        ran.append(f"b{value}")

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        (a.message() | b.message()).run()
        assert running.wait(10)
        server.stop()
        go.set()  # a returns; Pipelines enqueues b into a Redis that is down
        time.sleep(2)
        server.start()
        client = redis_lib.Redis(port=server.port)
        if hooked:
            assert wait_for(lambda: ran == ["a", "b1"] and queues_empty(client, "pipe"), 30), ran
        else:
            wait_for(lambda: queues_empty(client, "pipe"), 10)
            time.sleep(2)
            assert ran == ["a"], ran  # b was never stored, a acked
    finally:
        go.set()
        worker.stop(timeout=5000)


@HOOKED
def test_an_on_failure_callback_survives_an_outage_at_the_moment_of_enqueue(server: StoppableRedis, hooked: bool) -> None:
    broker = make_broker(server)
    calls: list[str] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="cb")
    def report_failure(message_data: dict, exception_data: dict) -> None:
        calls.append(f"failed:{exception_data['type']}")

    @dramatiq.actor(broker=broker, queue_name="cb", max_retries=0)
    def doomed() -> None:
        calls.append("doomed")
        running.set()
        go.wait(20)
        raise ValueError("no")

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        doomed.send_with_options(on_failure=report_failure)
        assert running.wait(10)
        server.stop()
        go.set()  # doomed fails, no retries: the message is dead-lettered and on_failure enqueued
        time.sleep(2)
        server.start()
        client = redis_lib.Redis(port=server.port)
        if hooked:
            assert wait_for(lambda: calls == ["doomed", "failed:ValueError"], 30), calls
            assert wait_for(lambda: client.zcard("dramatiq:cb.XQ") == 1, 10)  # the original: dead-lettered once
        else:
            wait_for(lambda: client.zcard("dramatiq:cb.XQ") == 1, 10)
            time.sleep(2)
            assert calls == ["doomed"], calls  # the callback was never stored
    finally:
        go.set()
        worker.stop(timeout=5000)


@HOOKED
def test_a_result_redis_refused_is_stored_once_redis_is_back(server: StoppableRedis, hooked: bool) -> None:
    """Results stores an actor's return value after it returns; Redis (broker and result
    backend, as usually configured) is down at that moment. Plain Dramatiq logs the
    refused store and acks once Redis is back: the caller waiting on the result never
    gets it. The hook holds the ack and stores the result first; the actor runs once."""
    from dramatiq.results import ResultMissing

    broker, backend = with_results(server)
    answer, ran, running, go = answering(broker)  # Redis goes down while it runs; it returns normally

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        message = answer.send()
        assert running.wait(10)
        server.stop()
        go.set()  # answer returns; Results stores 42 into a Redis that is down
        time.sleep(2)
        server.start()
        client = redis_lib.Redis(port=server.port)
        assert wait_for(lambda: queues_empty(client, "res"), 30)  # acked, either way
        if hooked:
            assert message.get_result(backend=backend, block=True, timeout=10_000) == 42
        else:
            time.sleep(2)
            with pytest.raises(ResultMissing):
                message.get_result(backend=backend)  # acked without its result
        assert ran == [1], ran  # held, not run again
    finally:
        go.set()
        worker.stop(timeout=5000)


# Redis neither stopped nor answering writes: (begin, end) of each fault, given the server and a client to it.
REFUSING = {
    # Hung (SIGSTOP): the store times out on the client (1 s socket timeout) rather than being refused.
    "hung": (lambda server, admin: os.kill(server.proc.pid, signal.SIGSTOP), lambda server, admin: os.kill(server.proc.pid, signal.SIGCONT)),
    # Every write refused for want of a replica; the result backend writes in a MULTI/EXEC pipeline, whose
    # errors redis-py rewrites ("Command # 1 (...) of pipeline caused error: NOREPLICAS ...").
    "noreplicas": (
        lambda server, admin: admin.config_set("min-replicas-to-write", 1),
        lambda server, admin: admin.config_set("min-replicas-to-write", 0),
    ),
}


@pytest.mark.parametrize("fault", sorted(REFUSING))
def test_a_result_redis_hung_or_refusing_is_stored_once_it_answers(server: StoppableRedis, fault: str) -> None:
    """Redis hangs (SIGSTOP) or refuses writes (NOREPLICAS) rather than stopping, while the
    actor runs: either is one a working Redis ends, so the result is held and stored once
    Redis answers again, and the actor runs once."""
    begin, end = REFUSING[fault]
    broker, backend = with_results(server, socket_timeout=1)
    admin = redis_lib.Redis(port=server.port)
    answer, ran, running, go = answering(broker)
    hook(broker, True)
    guard = next(m for m in broker.middleware if type(m).__name__ == "FollowUpGuard")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        message = answer.send()
        assert running.wait(10)
        begin(server, admin)
        go.set()
        assert wait_for(lambda: guard.held == 1, 10)
        time.sleep(3)
        end(server, admin)
        assert message.get_result(backend=backend, block=True, timeout=20_000) == 42
        assert wait_for(lambda: queues_empty(admin, "res"), 30)
        assert ran == [1], ran
    finally:
        end(server, admin)
        go.set()
        worker.stop(timeout=5000)


@HOOKED
@pytest.mark.parametrize("ttl", [None, datetime.timedelta(minutes=1)], ids=["default-ttl", "timedelta-ttl"])
def test_a_failed_messages_exception_survives_a_results_redis_outage(server: StoppableRedis, hooked: bool, ttl) -> None:
    """Results on a Redis of its own, stopped while an actor with no retries fails.
    Dramatiq stores the exception after the nack, where a refusal is only logged: the
    caller never learns that the message failed. The hook stores it before the nack,
    holding the nack until the results Redis is back. A result_ttl given as a timedelta
    (redis-py's PEXPIRE takes one, so Dramatiq does) is one too: read as milliseconds it
    raised in the guard and the exception was lost."""
    from dramatiq.results import ResultFailure, ResultMissing

    results_server = StoppableRedis()
    broker, backend = with_results(server, results_server.port)
    ran: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="res", store_results=True, max_retries=0, **({"result_ttl": ttl} if ttl else {}))
    def doomed() -> None:
        ran.append(1)
        running.set()
        go.wait(20)
        raise ValueError("no")

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        message = doomed.send()
        assert running.wait(10)
        results_server.stop()
        go.set()  # doomed fails, no retries: nacked, its exception stored into a Redis that is down
        time.sleep(2)
        results_server.start()
        assert wait_for(lambda: client.zcard("dramatiq:res.XQ") == 1, 30)  # dead-lettered, either way
        if hooked:
            with pytest.raises(ResultFailure, match="ValueError"):
                message.get_result(backend=backend, block=True, timeout=10_000)
        else:
            time.sleep(2)
            with pytest.raises(ResultMissing):
                message.get_result(backend=backend)
        assert ran == [1], ran
    finally:
        go.set()
        worker.stop(timeout=5000)
        results_server.close()


def test_a_result_is_held_for_no_longer_than_its_ttl(server: StoppableRedis, caplog: pytest.LogCaptureFixture) -> None:
    """The results Redis is gone for good: a caller could read a result only within its
    result_ttl, so the hold gives up then and acks (the thread serves the queue again)."""
    results_server = StoppableRedis()
    broker, backend = with_results(server, results_server.port)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="res", store_results=True, result_ttl=2_000)
    def answer(name: str) -> str:
        ran.append(name)
        return name

    hook(broker, True)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        results_server.stop()
        answer.send("first")
        answer.send("second")
        assert wait_for(lambda: ran == ["first", "second"] and queues_empty(client, "res"), 30), ran
        assert "dropping the result of answer@res: Redis refused it until its result_ttl passed" in caplog.text
        assert "1 follow-up(s) dropped (named above)" in caplog.text and "stored after holding" not in caplog.text
    finally:
        worker.stop(timeout=5000)
        results_server.close()


def test_a_result_that_can_never_be_stored_is_left_to_dramatiq(server: StoppableRedis) -> None:
    """A return value JSON cannot encode: waiting cannot store it, so the hook does not
    hold the ack for it (it would pin the thread for good); Dramatiq logs it and acks."""
    from dramatiq.results import ResultMissing

    broker, backend = with_results(server)
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="res", store_results=True)
    def unencodable() -> object:
        ran.append(1)
        return object()

    hook(broker, True)
    guard = next(m for m in broker.middleware if type(m).__name__ == "FollowUpGuard")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        message = unencodable.send()
        client = redis_lib.Redis(port=server.port)
        assert wait_for(lambda: ran == [1] and queues_empty(client, "res"), 10), ran
        with pytest.raises(ResultMissing):
            message.get_result(backend=backend)
        assert guard.held == 0
    finally:
        worker.stop(timeout=5000)


@HOOKED
def test_a_failing_notify_shutdown_actor_during_a_drain_in_an_outage_loses_nothing(server: StoppableRedis, hooked: bool) -> None:
    """SIGTERM's drain interrupts notify_shutdown actors with Shutdown. One failed while Redis
    was down (its retry not stored): the interrupt must not ack it. The worker is stopped
    while Redis is down, then Redis comes back: the retry exists, or the original is still
    in the ack set for the next worker."""
    broker = make_broker(server, heartbeat_timeout=2000)
    attempts: list[str] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="drain", max_retries=3, min_backoff=100, max_backoff=200, notify_shutdown=True)
    def job() -> None:
        attempts.append(broker.broker_id)
        if len(attempts) == 1:
            running.set()
            go.wait(20)
            broker.client.incr("drain:touched")  # Redis is down: fails, its retry cannot be stored

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        job.send()
        assert running.wait(10)
        server.stop()
        go.set()
        time.sleep(1.5)  # failed; the retry's enqueue failed
        stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 2000})
        stopper.start()  # the drain: Shutdown goes to notify_shutdown threads
        stopper.join(10)
        server.start()
        # The old worker settles first: plain Dramatiq's ack (retried every 5 s) lands; the
        # hook stores the retry, then acks.
        client = redis_lib.Redis(port=server.port)
        wait_for(lambda: client.scard(f"dramatiq:__acks__.{broker.broker_id}.drain") == 0, 20)
    finally:
        go.set()
    # The next worker (a new process in real life: a new broker id) finds the message:
    # the retry, or the original once the old worker's heartbeat expired.
    successor = make_broker(server, heartbeat_timeout=2000)
    hook(successor, hooked)
    successor.actors = broker.actors
    for name in broker.queues:
        successor.declare_queue(name)
    second = dramatiq.Worker(successor, worker_threads=1, worker_timeout=100)
    second.start()
    try:
        if hooked:
            assert wait_for(lambda: len(attempts) >= 2 and queues_empty(client, "drain"), 30), attempts
        else:
            wait_for(lambda: queues_empty(client, "drain"), 10)
            time.sleep(4)
            assert len(attempts) == 1, attempts  # acked through the interrupt: lost
    finally:
        second.stop(timeout=5000)


@HOOKED
def test_a_fetch_a_hung_redis_ran_after_the_client_timed_out_is_processed_by_the_same_worker(server: StoppableRedis, hooked: bool) -> None:
    """Redis hangs (SIGSTOP) while an idle worker polls: its fetch times out on the client,
    and Redis runs it when it resumes (SIGCONT). Those ids sit in the live worker's ack
    set; the process never saw them. The hook hands them back within a few rounds."""
    broker = make_broker(server, socket_timeout=0.5)
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="hung")
    def record(i: int) -> None:
        done.append(i)

    module = hook(broker, hooked)
    if module is not None:
        maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
        maintenance.interval = 1.0
    client = redis_lib.Redis(port=server.port)
    for i in range(20):
        record.send(i)
    # Held back until Redis hangs: the worker's first fetches reach a stopped server.
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        time.sleep(3)  # fetches time out on the client (0.5 s) and are queued in the stopped server's sockets
        os.kill(server.proc.pid, signal.SIGCONT)
        acks = f"dramatiq:__acks__.{broker.broker_id}.hung"
        if hooked:
            assert wait_for(lambda: sorted(done) == list(range(20)) and client.scard(acks) == 0, 30), (sorted(done), client.smembers(acks))
            assert len(done) == 20  # handed back once each: no duplicate
            assert maintenance.handed_back >= 1
        else:
            wait_for(lambda: client.llen("dramatiq:hung") == 0 and len(done) + client.scard(acks) >= 20, 20)
            time.sleep(3)
            stranded = client.scard(acks)
            assert stranded > 0 and len(done) == 20 - stranded, (len(done), stranded)  # held by a live worker forever
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        worker.stop(timeout=5000)


HUNG_REDIS_BOUND = 30.0  # s after SIGCONT: three 5 s sweep rounds, Dramatiq's 5 s ack retry, the backlog's own work


@HOOKED
def test_a_busy_worker_hands_back_or_processes_everything_it_held_when_a_hung_redis_resumes(
    server: StoppableRedis, hooked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live worker at full load (four threads busy, prefetch full, retries waiting in its
    in-memory delay queue) while Redis hangs (SIGSTOP, 8 s, then SIGCONT): acks and fetches are
    in flight. redis-py's own retries (two here, ten by default) resend each timed-out call on a
    new connection and give up after about 3 s (a 1 s socket timeout here, 5 s by default), so
    the hang makes acks fail with a TimeoutError and leaves fetches that Redis runs on resuming
    for a client that is gone. The same worker (its heartbeat never expires: no one else can
    recover its messages) must process or hand back every message within HUNG_REDIS_BOUND of
    SIGCONT, at the hook's real 5 s sweep interval, leaving nothing in its ack sets. Plain
    Dramatiq strands them there for as long as the worker lives."""
    broker = RedisBroker(
        port=server.port, socket_timeout=1, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), 2), heartbeat_timeout=600_000
    )
    done: list[int] = []
    consumer = dramatiq.brokers.redis._RedisConsumer
    if not hooked and getattr(consumer, "_dramactl_timeouts", False):  # an earlier test's hook patched the class
        for name, original in consumer._dramactl_unpatched.items():
            monkeypatch.setattr(consumer, name, original)
        monkeypatch.setattr(consumer, "_dramactl_timeouts", False)

    @dramatiq.actor(broker=broker, queue_name="busy", max_retries=0)
    def work(i: int) -> None:
        time.sleep(0.2)
        done.append(i)

    module = hook(broker, hooked)
    client = redis_lib.Redis(port=server.port)
    acks = [f"dramatiq:__acks__.{broker.broker_id}.busy", f"dramatiq:__acks__.{broker.broker_id}.busy.DQ"]
    for i in range(150):
        work.send(i)
    for i in range(150, 160):
        work.send_with_options(args=(i,), delay=5000)  # in the delay queue's memory through the hang
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    assert server.proc is not None
    try:
        assert wait_for(lambda: len(done) >= 12 and worker.consumers["busy.DQ"].delay_queue.qsize() == 10, 10), len(done)
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(8)
        os.kill(server.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()

        def settled() -> bool:
            return set(done) == set(range(160)) and sum(client.scard(k) for k in acks) == 0 and queues_empty(client, "busy")

        if hooked:
            ok = wait_for(settled, HUNG_REDIS_BOUND)
            took = time.monotonic() - resumed
            assert ok, (sorted(set(range(160)) - set(done)), [client.smembers(k) for k in acks])
            maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
            print(f"hung Redis resumed: all 160 processed and ack sets empty {took:.1f}s after SIGCONT; "
                  f"{len(done) - 160} duplicate(s), {maintenance.handed_back} id(s) handed back by the sweep")
            assert all(t.is_alive() for t in worker.workers) and all(t.is_alive() for t in worker.consumers.values())
        else:
            wait_for(settled, HUNG_REDIS_BOUND)
            stranded = sum(client.scard(k) for k in acks)
            assert stranded > 0, (len(set(done)), stranded)  # at a live worker, until it stops
        assert client.zscore("dramatiq:__heartbeats__", broker.broker_id) is not None  # the same live worker throughout
        assert module is None or len(client.zrange("dramatiq:__heartbeats__", 0, -1)) == 1
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        worker.stop(timeout=5000)


def test_the_sweep_leaves_messages_the_process_holds_alone(server: StoppableRedis) -> None:
    """Prefetched, delayed-in-memory and running messages are in the ack set and in the
    process: several sweep rounds hand none back, and every message is processed once."""
    broker = make_broker(server)
    done: list[int] = []
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="keep")
    def slow(i: int) -> None:
        release.wait(20)
        done.append(i)

    maintenance = sweeping(broker, 0.3)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for i in range(6):
            slow.send(i)
        for i in range(6, 9):
            slow.send_with_options(args=(i,), delay=3000)
        time.sleep(2.5)  # ~8 rounds while 2 run, 4 are prefetched and 3 are delayed in memory
        assert maintenance.handed_back == 0
        release.set()
        assert wait_for(lambda: len(done) == 9, 20), done
        time.sleep(1)
        assert sorted(done) == list(range(9)) and maintenance.handed_back == 0
    finally:
        release.set()
        worker.stop(timeout=5000)


@HOOKED
def test_an_ack_that_times_out_is_retried_like_a_lost_connection(server: StoppableRedis, hooked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ack times out before Redis got it (redis.TimeoutError, as when a connection to a
    hung Redis is being made): Dramatiq drops such an ack ("You've found a bug") and the
    message stays in a live worker's ack set. With the hook it is retried like a
    ConnectionError. The timeout is raised in the client before the command is sent."""
    broker = make_broker(server)
    done: list[int] = []
    real_ack = broker.do_ack
    failures = [redis_lib.TimeoutError("Timeout connecting to server")]

    def ack_once_timing_out(*args):
        if failures:
            raise failures.pop()
        return real_ack(*args)

    broker.do_ack = ack_once_timing_out
    consumer = dramatiq.brokers.redis._RedisConsumer
    if not hooked and getattr(consumer, "_dramactl_timeouts", False):  # an earlier test's hook patched the class
        for name, original in consumer._dramactl_unpatched.items():
            monkeypatch.setattr(consumer, name, original)
        monkeypatch.setattr(consumer, "_dramactl_timeouts", False)

    @dramatiq.actor(broker=broker, queue_name="ackto")
    def one() -> None:
        done.append(1)

    hook(broker, hooked)
    if hooked:  # the sweep would hand the message back too (a duplicate): this test is about the ack itself
        next(m for m in broker.middleware if type(m).__name__ == "Maintenance").interval = 60
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    acks = f"dramatiq:__acks__.{broker.broker_id}.ackto"
    try:
        one.send()
        assert wait_for(lambda: done == [1] and not failures, 10)
        if hooked:
            # Dramatiq retries the ack after its POST_PROCESS_MESSAGE_RETRY_DELAY_SECS (5 s).
            assert wait_for(lambda: client.hlen("dramatiq:ackto.msgs") == 0 and client.scard(acks) == 0, 15)
        else:
            time.sleep(6)
            assert client.scard(acks) == 1  # dropped: unacked at a live worker
        assert done == [1]
    finally:
        worker.stop(timeout=5000)


@HOOKED
def test_a_send_the_actor_retried_itself_is_not_sent_again_by_the_hold(server: StoppableRedis, hooked: bool) -> None:
    """Redis refuses the actor's send (the command never reaches it); the actor catches the
    error and sends the same message again, which Redis stores. The hold must not send the
    refused copy too: the target runs once, with the hook as without it."""
    broker = make_broker(server)
    ran: list[str] = []
    real_enqueue = broker.do_enqueue
    failures = [redis_lib.ConnectionError("Connection refused")]

    def enqueue_once_refused(queue_name, *args):
        if queue_name == "resent" and failures:
            raise failures.pop()
        return real_enqueue(queue_name, *args)

    broker.do_enqueue = enqueue_once_refused

    @dramatiq.actor(broker=broker, queue_name="resent", max_retries=0)
    def target(name: str) -> None:
        ran.append(name)

    @dramatiq.actor(broker=broker, queue_name="sender", max_retries=0)
    def sender() -> None:
        for _ in range(3):
            try:
                target.send("report")
                return
            except redis_lib.ConnectionError:
                time.sleep(0.1)

    hook(broker, hooked)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        sender.send()
        assert wait_for(lambda: ran == ["report"] and not failures and queues_empty(client, "sender", "resent"), 10), ran
        time.sleep(2)  # a second copy from the hold would have run by now
        assert ran == ["report"] and queues_empty(client, "sender", "resent")
    finally:
        worker.stop(timeout=5000)


def test_time_limit_is_disarmed_once_the_actor_returns(server: StoppableRedis) -> None:
    """The guard's first after-hook removes the thread's deadline: nothing can interrupt
    Dramatiq's follow-ups once the actor is done."""
    broker = make_broker(server)
    install_hook(broker)
    limit = next(m for m in broker.middleware if isinstance(m, TimeLimit))
    guard = next(m for m in broker.middleware if type(m).__name__ == "FollowUpGuard")
    assert broker.middleware[-1] is guard and type(broker.middleware[0]).__name__ == "_AfterHooksDone"
    ident = threading.get_ident()

    @dramatiq.actor(broker=broker, queue_name="arm", time_limit=1000)
    def quick() -> None:
        pass

    message = dramatiq.MessageProxy(quick.message()) if hasattr(dramatiq, "MessageProxy") else quick.message()
    limit.before_process_message(broker, message)
    guard.track(broker, message)
    assert limit.manager.deadlines[ident] is not None
    guard.after_process_message(broker, message, result=None)
    assert limit.manager.deadlines[ident] is None


def test_a_redis_that_refuses_writes_is_held_through_and_named_in_the_journal(server: StoppableRedis, caplog: pytest.LogCaptureFixture) -> None:
    """Redis answers but refuses writes (OOM under maxmemory, as a full server does): the
    failed message's retry is held; past the alarm bound the worker logs an error naming
    the refusal; once Redis takes writes again the retry is stored and runs."""
    broker = make_broker(server)
    attempts: list[int] = []
    running, go = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="oom", max_retries=3, min_backoff=100, max_backoff=200)
    def fails_once() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            running.set()
            go.wait(20)
            raise RuntimeError("first attempt fails")

    module = install_hook(broker)
    guard = next(m for m in broker.middleware if type(m).__name__ == "FollowUpGuard")
    guard.alarm_after = 1.0
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    admin = redis_lib.Redis(port=server.port)
    try:
        fails_once.send()
        assert running.wait(10)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # every write is refused: OOM
        caplog.set_level("WARNING", logger="dramactl.hook")
        go.set()
        assert wait_for(lambda: module.HOLDS.count() == 1, 10)
        assert wait_for(lambda: any(r.levelname == "ERROR" and r.name == "dramactl.hook" and "maxmemory" in r.getMessage() for r in caplog.records), 10), [r.getMessage() for r in caplog.records]
        assert attempts == [1]
        admin.config_set("maxmemory", 0)
        assert wait_for(lambda: attempts == [1, 2] and queues_empty(admin, "oom"), 30), attempts
        assert module.HOLDS.count() == 0
        assert any("stored after holding" in r.getMessage() for r in caplog.records)
    finally:
        admin.config_set("maxmemory", 0)
        go.set()
        worker.stop(timeout=5000)


def test_a_follow_up_that_can_never_be_stored_is_dropped_not_held_forever(server: StoppableRedis, caplog: pytest.LogCaptureFixture) -> None:
    """A pipeline step whose result JSON cannot encode (a set): no Redis can ever store the
    next step. Holding would pin the thread for good; it is dropped as Dramatiq does, named
    in the journal, and the thread takes the next message."""
    broker = make_broker(server)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="poison")
    def first() -> set:
        ran.append("first")
        return {1, 2}

    @dramatiq.actor(broker=broker, queue_name="poison")
    def second(value) -> None:
        ran.append("second")

    @dramatiq.actor(broker=broker, queue_name="poison")
    def other() -> None:
        ran.append("other")

    module = install_hook(broker)
    caplog.set_level("ERROR", logger="dramactl.hook")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        (first.message() | second.message()).run()
        other.send()
        assert wait_for(lambda: ran == ["first", "other"], 10), ran
        assert module.HOLDS.count() == 0
        assert any("can never be stored" in r.getMessage() and "TypeError" in r.getMessage() for r in caplog.records)
    finally:
        worker.stop(timeout=5000)


def test_after_hooks_cut_short_by_a_late_interrupt_leave_the_message_unacked(server: StoppableRedis) -> None:
    """TimeLimit's timer read the deadline just before the guard removed it, and its
    interrupt lands in the after-hooks (modelled by a middleware that raises it into its
    own thread after Pipelines): Dramatiq runs the after-hooks again as for a failure and,
    with no retries left, would dead-letter a message that succeeded, its next step never
    stored. The guard leaves it unacked instead; the sweep hands it back and it completes."""
    from dramatiq.middleware import Middleware, Pipelines, TimeLimitExceeded
    from dramatiq.middleware.threading import raise_thread_exception

    broker = make_broker(server)
    ran: list[str] = []

    class LateInterrupt(Middleware):
        fired = False

        def after_process_message(self, broker, message, *, result=None, exception=None):
            if exception is None and not LateInterrupt.fired and message.actor_name == "step1":
                LateInterrupt.fired = True
                raise_thread_exception(threading.get_ident(), TimeLimitExceeded)

    broker.add_middleware(LateInterrupt(), after=Pipelines)

    @dramatiq.actor(broker=broker, queue_name="late", max_retries=0)
    def step1() -> int:
        ran.append("step1")
        return 1

    @dramatiq.actor(broker=broker, queue_name="late")
    def step2(value: int) -> None:
        ran.append("step2")

    maintenance = sweeping(broker, 0.5)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    client = redis_lib.Redis(port=server.port)
    try:
        (step1.message() | step2.message()).run()
        assert wait_for(lambda: "step2" in ran and queues_empty(client, "late"), 20), ran
        assert client.zcard("dramatiq:late.XQ") == 0  # never dead-lettered
        assert ran.count("step1") == 2 and ran.count("step2") == 1, ran  # run again: a duplicate, counted
        assert maintenance.handed_back == 1
    finally:
        worker.stop(timeout=5000)


def test_a_group_member_whose_barrier_redis_refused_runs_again_and_the_group_completes(server: StoppableRedis) -> None:
    """GroupCallbacks counts the last member down in Redis before it enqueues the
    completion; Redis refuses that count (a reset connection). Nothing was enqueued that
    could be held: the member is left unacked, runs again, and the completion runs."""
    from dramatiq.middleware import GroupCallbacks
    from dramatiq.rate_limits.backends import RedisBackend

    broker = make_broker(server)
    client = redis_lib.Redis(port=server.port)
    ran: list[str] = []

    class FlakyBackend(RedisBackend):
        failed = False

        def decr(self, *args, **kwargs):
            if not FlakyBackend.failed and ran.count("member") == 3:
                FlakyBackend.failed = True
                raise redis_lib.ConnectionError("Connection reset by peer")
            return super().decr(*args, **kwargs)

    broker.add_middleware(GroupCallbacks(FlakyBackend(client=client)))

    @dramatiq.actor(broker=broker, queue_name="grp")
    def member(i: int) -> None:
        ran.append("member")

    @dramatiq.actor(broker=broker, queue_name="grp")
    def completed() -> None:
        ran.append("completed")

    install_hook(broker)
    next(m for m in broker.middleware if type(m).__name__ == "Maintenance").interval = 0.5
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        group = dramatiq.group([member.message(i) for i in range(3)])
        group.add_completion_callback(completed.message())
        group.run()
        assert wait_for(lambda: "completed" in ran and queues_empty(client, "grp"), 20), ran
        assert ran.count("member") == 4 and ran.count("completed") == 1, ran
    finally:
        worker.stop(timeout=5000)


def test_the_delay_queue_consumer_survives_a_redis_that_refuses_writes(server: StoppableRedis) -> None:
    """A retry waits in a consumer's in-memory delay queue; Redis fills up (OOM): the
    consumer's fetch fails with an unexpected error, its close() requeues the delayed
    messages into the same refusal. Dramatiq's consumer thread died of it; with the hook
    it lives, and the message comes back once Redis takes writes."""
    broker = make_broker(server)
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="dqd", min_backoff=3000, max_backoff=3000)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("fails once; its retry waits 3 s in memory")

    install_hook(broker)
    next(m for m in broker.middleware if type(m).__name__ == "Maintenance").interval = 1.0
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    admin = redis_lib.Redis(port=server.port)
    try:
        flaky.send()
        assert wait_for(lambda: worker.consumers["dqd.DQ"].delay_queue.qsize() == 1, 10)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        time.sleep(4)
        admin.config_set("maxmemory", 0)
        assert worker.consumers["dqd.DQ"].is_alive()
        assert wait_for(lambda: len(attempts) == 2 and queues_empty(admin, "dqd"), 30), attempts
    finally:
        admin.config_set("maxmemory", 0)
        worker.stop(timeout=5000)


def test_worker_threads_deadlocked_past_their_time_limit_are_named_and_all_stuck_stops_the_watchdog(
    server: StoppableRedis, caplog: pytest.LogCaptureFixture, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Actors deadlock for real (each takes a lock it already holds): Dramatiq's TimeLimit raises
    its interrupt at 1 s, which a thread blocked in a lock never sees; the process keeps
    heartbeating and the thread keeps its message. The hook names each stuck thread once, past
    the time limit plus its grace, in the journal and in the unit's status line (sd_notify). With
    one of two threads stuck the other works on and the watchdog is still pinged; with both
    stuck the process will never take another message, so WATCHDOG=1 stops (systemd then
    restarts the instance: tests/system/test_hardening.py shows that reaction). Once the threads
    come free it says so, and the pings and the status line come back."""
    import logging
    import socket

    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    broker = make_broker(server)
    locks = [threading.Lock(), threading.Lock()]
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="stuck", time_limit=1000, max_retries=0)
    def deadlock(n: int) -> None:
        locks[n].acquire()
        locks[n].acquire()  # held by this very thread: blocks in C, where no interrupt reaches it

    @dramatiq.actor(broker=broker, queue_name="stuck")
    def fine(i: int) -> None:
        done.append(i)

    install_hook(broker)
    maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
    maintenance.interval, maintenance.stuck_grace = 0.5, 2.0
    caplog.set_level(logging.WARNING, logger="dramactl.hook")
    received: list[tuple[float, str]] = []
    listening = threading.Event()

    def listen() -> None:  # as systemd does: read every datagram (a full socket would block the sender)
        while not listening.is_set():
            try:
                data = listener.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                continue
            received.extend((time.monotonic(), line) for line in data.splitlines())

    def lines(since: float = 0.0) -> list[str]:
        return [line for at, line in list(received) if at >= since]

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()

    named = lambda: [r.getMessage() for r in caplog.records if "past its time limit of" in r.getMessage()]  # noqa: E731
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        deadlock.send(0)
        assert wait_for(lambda: locks[0].locked(), 10)
        for i in range(20):
            fine.send(i)
        assert wait_for(lambda: len(named()) == 1, 10), caplog.text
        assert "(deadlock)" in named()[0] and "restart this instance" in named()[0], named()
        assert wait_for(lambda: any("STATUS=stuck: 1 worker thread(s)" in line for line in lines()), 5), received
        assert wait_for(lambda: sorted(done) == list(range(20)), 10), done  # the other thread works on
        mark = time.monotonic()
        time.sleep(2)
        assert len(named()) == 1  # named once, not every round
        assert "WATCHDOG=1" in lines(mark)  # one thread stuck: the process still works

        deadlock.send(1)  # the other thread deadlocks too
        assert wait_for(lambda: len(named()) == 2, 10), caplog.text
        assert wait_for(lambda: "every worker thread is stuck" in caplog.text, 5), caplog.text
        time.sleep(0.5)
        mark = time.monotonic()
        time.sleep(2)
        assert "WATCHDOG=1" not in lines(mark), lines(mark)  # ten pings would have come

        for lock in locks:
            lock.release()  # the deadlocks end; the pending interrupts then fail the messages
        assert wait_for(lambda: caplog.text.count("no longer stuck") == 2, 10), caplog.text
        mark = time.monotonic()
        assert wait_for(lambda: "WATCHDOG=1" in lines(mark), 5), received
        assert any(line.startswith("STATUS=consuming") for line in lines(mark - 2)), received
    finally:
        for lock in locks:
            if lock.locked():
                lock.release()
        worker.stop(timeout=5000)
        listening.set()
        reader.join(2)
        listener.close()


def test_a_stuck_thread_is_named_and_the_watchdog_withheld_while_redis_hangs(
    server: StoppableRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stuck check needs no Redis, so a hung Redis must not stop it: with Dramatiq's
    default client (redis-py's 5 s socket timeout, each call retried up to ten times) a
    maintenance round's call to the SIGSTOPped server waits well past the check's 5 s, and with no socket timeout for
    as long as it hangs. The one worker thread, deadlocked past its time limit, must still be
    named and the watchdog's pings withheld (systemd then restarts the instance)."""
    import logging

    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a watchdog round every 0.2 s
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    broker = RedisBroker(port=server.port)  # Dramatiq's and redis-py's defaults
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="stuckhung", time_limit=1000, max_retries=0)
    def deadlock() -> None:
        lock.acquire()
        lock.acquire()

    install_hook(broker)
    maintenance = next(m for m in broker.middleware if type(m).__name__ == "Maintenance")
    maintenance.interval, maintenance.stuck_grace = 0.5, 1.0
    caplog.set_level(logging.WARNING, logger="dramactl.hook")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    assert server.proc is not None
    try:
        deadlock.send()
        assert wait_for(lambda: lock.locked(), 10)
        os.kill(server.proc.pid, signal.SIGSTOP)  # before the thread is past its limit + grace
        assert "past its time limit of" not in caplog.text
        assert wait_for(lambda: "past its time limit of" in caplog.text, 8), caplog.text
        assert wait_for(lambda: "every worker thread is stuck" in caplog.text, 3), caplog.text
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        if lock.locked():
            lock.release()
        worker.stop(timeout=5000)
