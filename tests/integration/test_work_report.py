"""The worker hook's work report: real Dramatiq workers, real Redis, read back by the probe."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramactl import queue
from dramactl.settings import parse
from tests.conftest import RedisServer
from tests.integration.test_hook import StoppableRedis, server  # noqa: F401 - the fixture

HOOK_DIR = Path(queue.__file__).resolve().parent / "hook"


def load_hook():
    """The hook module, imported against a throwaway broker (its import installs itself)."""
    dramatiq.set_broker(StubBroker())
    sys.path.insert(0, str(HOOK_DIR))
    try:
        return importlib.import_module("dramactl_ready")
    finally:
        sys.path.remove(str(HOOK_DIR))


hook = load_hook()


def read_one(redis_server: RedisServer, name: str = "w1"):
    settings = parse({**redis_server.env, "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": name})
    (q,) = queue.read(settings)
    return q


def wait_for(predicate, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_completions_and_busy_seconds_reach_the_probe(broker: RedisBroker, redis_server: RedisServer) -> None:
    reporter = hook.WorkReporter(interval=0.2)
    broker.add_middleware(reporter)

    @dramatiq.actor(queue_name="w1", max_retries=0)
    def task(i: int) -> None:
        time.sleep(0.02)
        if i % 5 == 0:
            raise ValueError("a failure is work done too")

    assert read_one(redis_server).done_total is None, "nothing reported yet"
    for i in range(30):
        task.send(i)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: read_one(redis_server).done_total == 30)
    finally:
        worker.stop()
    q = read_one(redis_server)
    assert q.busy_seconds_total >= 30 * 0.02, "every message's service time is counted"
    assert q.busy_sq_total >= 30 * 0.02**2 and q.busy_sq_total >= q.busy_seconds_total**2 / q.done_total
    assert q.backlog == 0


def test_the_spread_of_service_times_reaches_the_probe_as_a_sum_of_squares(broker: RedisBroker, redis_server: RedisServer) -> None:
    """Four messages of 0.1 s and four of 0.5 s: sum of squares 4 x 0.01 + 4 x 0.25 = 1.04 s²
    (the mean is 0.3 s, the coefficient of variation 2/3), in the same flush as done and busy."""
    reporter = hook.WorkReporter(interval=0.2)
    broker.add_middleware(reporter)

    @dramatiq.actor(queue_name="w1", max_retries=0)
    def task(seconds: float) -> None:
        time.sleep(seconds)

    for i in range(8):
        task.send(0.1 if i % 2 else 0.5)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: read_one(redis_server).done_total == 8)
    finally:
        worker.stop()
    q = read_one(redis_server)
    assert q.busy_seconds_total == pytest.approx(2.4, rel=0.1)
    assert q.busy_sq_total == pytest.approx(1.04, rel=0.15)
    variance = q.busy_sq_total / 8 - (q.busy_seconds_total / 8) ** 2
    assert variance**0.5 / (q.busy_seconds_total / 8) == pytest.approx(2 / 3, rel=0.1)


def test_a_hook_that_counts_no_squares_reads_as_unknown_spread(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """An older hook writes done and busy only: the spread is absent, not zero."""
    redis.hset("dramatiq:__dramactl__.work.w1", mapping={"done": 10, "busy": 20.0})
    q = read_one(redis_server)
    assert (q.done_total, q.busy_seconds_total, q.busy_sq_total) == (10.0, 20.0, None)


@pytest.mark.parametrize("field, value", [("done", "1e300"), ("done", str(2**63)), ("busy", "inf"), ("done", "-3")])
def test_a_work_counter_no_hook_could_have_written_is_named_and_left_out(
    redis: redis_lib.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    """``done`` is a HINCRBY counter, so Redis never holds it past 2**63 - 1: 1e300 there was
    written by something else (it made the policy's service-time spread divide by an
    underflowed 0, a traceback every tick). Named and left out, like inf or a negative."""
    redis.hset("dramatiq:__dramactl__.work.w1", mapping={"done": 10, "busy": 20.0, field: value})
    with caplog.at_level("WARNING", logger="dramactl"):
        q = read_one(redis_server)
    assert (q.done_total if field == "done" else q.busy_seconds_total) is None
    assert f"ignoring damaged __dramactl__.work.w1 field {field} in Redis ({value!r} is not a finite count)" in caplog.text, caplog.text


def test_messages_that_finish_while_the_worker_stops_are_counted(broker: RedisBroker, redis_server: RedisServer) -> None:
    """A scale-down's drain: before_worker_shutdown ends the reporter's loop, then the running
    messages finish; their completions must still reach Redis (replay rebuilds arrivals from them)."""
    reporter = hook.WorkReporter(interval=0.2)
    broker.add_middleware(reporter)
    started = []

    @dramatiq.actor(queue_name="w1", max_retries=0)
    def task(i: int) -> None:
        started.append(i)
        time.sleep(1.0)

    for i in range(4):
        task.send(i)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    wait_for(lambda: len(started) == 4)
    worker.stop()  # the four are still running: they finish during the stop
    q = read_one(redis_server)
    assert q.done_total == 4 and q.busy_seconds_total >= 4 * 1.0, q


def test_one_round_trip_per_flush_whatever_the_messages(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    reporter = hook.WorkReporter()
    calls = []
    real_pipeline = broker.client.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: (calls.append(1), execute(*a, **k))[1]
        return pipe

    broker.client.pipeline = counting_pipeline
    for queue_name in ("w1", "w1.DQ", "w2"):
        for _ in range(100):
            message = dramatiq.Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={})
            reporter.before_process_message(broker, message)
            reporter.after_process_message(broker, message, result=None)
    assert reporter.flush(broker) is True
    assert len(calls) == 1
    assert redis.hget(queue.work_key("dramatiq", "w1"), "done") == b"200", "the delay queue's messages count for their queue"
    assert redis.hget(queue.work_key("dramatiq", "w2"), "done") == b"100"
    assert reporter.flush(broker) is True and len(calls) == 1, "nothing new: no round trip"
    # An instance of the fleet (DRAMACTL_INSTANCE set: after_worker_boot names its report) sends its
    # report in the same round trip as the counts (issue 19: no extra Redis cost per message).
    reporter.report_key = hook.INSTANCES_KEY.format(namespace=broker.namespace, host=hook.host_identity())
    reporter.report_field, reporter.threads = "3.1", 4
    for _ in range(100):
        message = dramatiq.Message(queue_name="w1", actor_name="a", args=(), kwargs={}, options={})
        reporter.before_process_message(broker, message)
        reporter.after_process_message(broker, message, result=None)
    assert reporter.flush(broker) is True and len(calls) == 2
    assert redis.hget(queue.work_key("dramatiq", "w1"), "done") == b"300"
    assert json.loads(redis.hget(reporter.report_key, "3.1"))["threads"] == 4


def test_redis_down_keeps_the_counts_and_never_raises(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    dead = RedisBroker(host="127.0.0.1", port=1)  # nothing listens there
    reporter = hook.WorkReporter()
    message = dramatiq.Message(queue_name="w3", actor_name="a", args=(), kwargs={}, options={})
    reporter.before_process_message(dead, message)
    reporter.after_process_message(dead, message, exception=RuntimeError("app error"))
    assert reporter.flush(dead) is False
    live = RedisBroker(host="127.0.0.1", port=redis_server.port)
    assert reporter.flush(live) is True
    assert redis.hget(queue.work_key("dramatiq", "w3"), "done") == b"1", "kept across the outage"
    # Garbage in the hooks' arguments never reaches the app as an exception.
    reporter.after_process_message(dead, None, result=None)
    reporter.after_skip_message(dead, object())
    reporter.after_worker_boot(object(), object())


def test_a_damaged_field_is_named_once_and_never_counts_the_rest_twice(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses HINCRBYFLOAT on ``busy_sq=garbage`` (and HSET on an instance report key
    that is not a hash) but applies the flush's other commands: those must not be sent again,
    or done grows with no new work and the probe reads a huge arrival rate."""
    key = queue.work_key("dramatiq", "w4")
    redis.hset(key, "busy_sq", "garbage")
    reporter = hook.WorkReporter()
    reporter.report_key, reporter.report_field = "dramatiq:__dramactl__.instances.h4", "1.123"
    redis.set(reporter.report_key, "not a hash")
    with caplog.at_level("WARNING", logger="dramactl.hook"):
        for _ in range(3):
            for _ in range(10):
                message = dramatiq.Message(queue_name="w4", actor_name="a", args=(), kwargs={}, options={})
                reporter.before_process_message(broker, message)
                reporter.after_process_message(broker, message, result=None)
            reporter.flush(broker)
        for _ in range(3):
            reporter.flush(broker)  # no new work
    assert redis.hget(key, "done") == b"30", "each completion counted exactly once"
    assert 0.0 <= float(redis.hget(key, "busy")) < 1.0
    assert redis.hget(key, "busy_sq") == b"garbage", "the damaged field is left for the operator"
    assert redis.get(reporter.report_key) == b"not a hash"
    assert reporter.pending == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if key in m and "busy_sq" in m]) == 1, lines
    assert len([m for m in lines if reporter.report_key in m and "1.123" in m]) == 1, lines


def test_the_squares_of_short_tasks_are_not_rounded_away(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty messages of a fraction of a millisecond: each square is below 1e-6 s², which
    rounding to six decimals erased. Sent as the float itself (redis-py writes its repr, e.g.
    1.66e-06, and HINCRBYFLOAT accepts exponent notation), the sum arrives whole. The hook's
    clock advances 0.2 ms a reading, so a busy machine cannot stretch the tasks (a real
    sleep of 0.2 ms took about 1 ms once under CI's load, and the premise failed)."""
    ticks = iter(range(1, 10**6))
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.monotonic = lambda: next(ticks) * 0.0002
    monkeypatch.setattr(hook, "time", clock)
    reporter = hook.WorkReporter()
    for _ in range(20):
        message = dramatiq.Message(queue_name="w5", actor_name="a", args=(), kwargs={}, options={})
        reporter.before_process_message(broker, message)
        reporter.after_process_message(broker, message, result=None)
    squares = reporter.pending["w5"][2]
    assert 0 < squares < 1e-5
    assert reporter.flush(broker) is True
    q = read_one(redis_server, "w5")
    assert q.done_total == 20
    assert q.busy_sq_total == pytest.approx(squares, rel=1e-6)
    assert q.busy_sq_total >= q.busy_seconds_total**2 / q.done_total * (1 - 1e-6)


def test_a_hung_redis_does_not_hold_up_the_workers_shutdown(server: StoppableRedis) -> None:
    """Redis hangs (SIGSTOP) and the client has no socket timeout: the reporter's thread waits in
    its flush. The stop must not wait with it: after the join's bound the last flush (and the
    report's removal) are skipped, leaving the rest to the reporter's own thread, whose last
    flush sends what finished during the drain if Redis resumes before the process exits."""
    broker = RedisBroker(port=server.port, socket_timeout=None)
    reporter = hook.WorkReporter(interval=0.2)
    reporter.after_worker_boot(broker, types.SimpleNamespace(worker_threads=1))
    assert reporter.thread is not None
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        message = dramatiq.Message(queue_name="w6", actor_name="a", args=(), kwargs={}, options={})
        reporter.before_process_message(broker, message)
        reporter.after_process_message(broker, message, result=None)
        wait_for(lambda: reporter.pending == {}, 5)  # the loop's flush took the count and waits on Redis
        reporter.before_process_message(broker, message)  # one more finishes during the drain
        reporter.after_process_message(broker, message, result=None)
        reporter.before_worker_shutdown(broker, None)
        stopped = threading.Event()
        threading.Thread(target=lambda: (reporter.after_worker_shutdown(broker, None), stopped.set()), daemon=True).start()
        assert stopped.wait(2 * reporter.interval + 1 + 3), "the stop waited on the hung Redis"
        assert reporter.thread.is_alive()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    reporter.thread.join(10)
    assert redis_lib.Redis(port=server.port).hget(queue.work_key("dramatiq", "w6"), "done") == b"2", "resumed, the reporter's own last flush sends both"
