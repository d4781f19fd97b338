"""The hook's per-instance report (issue 19): a real Dramatiq worker, real Redis, read back by the probe."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from dramactl import queue, reports
from dramactl.settings import parse
from tests.conftest import RedisServer
from tests.integration.test_work_report import hook, wait_for


def probe(redis_server: RedisServer) -> queue.Probe:
    settings = parse({**redis_server.env, "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": "r1"})
    return queue.read_probe(settings)


@pytest.fixture
def reporter(broker: RedisBroker, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRAMACTL_INSTANCE", "7")
    r = hook.WorkReporter(interval=0.1)
    broker.add_middleware(r)
    return r


def test_busy_threads_oldest_start_and_holds_reach_the_probe_and_go_on_shutdown(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter) -> None:
    release = threading.Event()

    @dramatiq.actor(queue_name="r1", max_retries=0)
    def long_task(i: int) -> None:
        release.wait(30)

    @dramatiq.actor(queue_name="r1", max_retries=0)
    def quick() -> None:
        pass

    worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=100)
    worker.start()
    try:
        quick.send()  # a short mean task: the hook keeps Dramatiq's prefetch (its gate is for long tasks)
        wait_for(lambda: reporter.mean_task() is not None)
        wait_for(lambda: 7 in probe(redis_server).instances)
        idle = probe(redis_server).instances[7]
        assert (idle.threads, idle.busy, idle.oldest, idle.held, idle.idle) == (3, 0, None, 0, True), "an idle worker reports too: the flush is a heartbeat"
        sent = time.time()
        long_task.send(1)
        long_task.send(2)
        wait_for(lambda: probe(redis_server).instances[7].busy == 2)
        busy = probe(redis_server).instances[7]
        assert sent - 1 <= busy.oldest <= time.time() and not busy.idle
        assert busy.queued == 0
        hook.HOLDS.add(1)
        try:
            wait_for(lambda: probe(redis_server).instances[7].held == 1)
        finally:
            hook.HOLDS.add(-1)
        for i in (3, 4):  # one more thread's worth and one over: fetched (prefetch 6), queued behind busy threads
            long_task.send(i)
        wait_for(lambda: (r := probe(redis_server).instances[7]).busy == 3 and r.queued == 1)
        release.set()
        wait_for(lambda: (r := probe(redis_server).instances[7]).busy == 0 and r.queued == 0)
        assert probe(redis_server).instances[7].oldest is None, "finished tasks leave no start behind"
        key = reports.instances_key("dramatiq")
        assert list(redis.hgetall(key)) == [f"7.{os.getpid()}".encode()], "one field per worker process, named <instance>.<pid>"
    finally:
        release.set()
        worker.stop()
    assert redis.hgetall(reports.instances_key("dramatiq")) == {}, "a clean shutdown deletes its report"
    assert 7 not in probe(redis_server).instances


def test_a_failing_task_leaves_no_running_start(broker: RedisBroker, redis_server: RedisServer, reporter) -> None:
    @dramatiq.actor(queue_name="r1", max_retries=0)
    def fails() -> None:
        raise RuntimeError("boom")

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for _ in range(5):
            fails.send()
        wait_for(lambda: (probe(redis_server).queues[0].done_total or 0) >= 5)
        wait_for(lambda: probe(redis_server).instances[7].busy == 0)
        assert reporter.running == {}
    finally:
        worker.stop()


def test_damaged_stale_and_dead_process_fields_are_ignored_and_the_damaged_named(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    key = reports.instances_key("dramatiq")
    now_ms = int(time.time() * 1000)
    good = {"threads": 4, "busy": 1, "oldest": now_ms - 5000, "held": 0, "at": now_ms}
    child = subprocess.Popen(["true"])
    child.wait()
    dead_pid = child.pid  # reaped: no such process (a pid no process can have, above 2**22, is damaged)
    redis.hset(key, mapping={
        f"1.{os.getpid()}": json.dumps(good),
        f"2.{os.getpid()}": json.dumps({**good, "at": now_ms - 60_000}),  # stale: stopped reporting a minute ago
        f"3.{dead_pid}": json.dumps(good),  # its process is gone (a crash)
        f"4.{os.getpid()}": "{not json",
        f"5.{os.getpid()}": json.dumps({**good, "busy": 9}),  # busy > threads
        "garbage": json.dumps(good),
    })
    p = probe(redis_server)
    assert sorted(p.instances) == [1]
    assert (p.instances[1].busy, round(time.time() - p.instances[1].oldest)) == (1, 5)
    assert len(p.damaged) == 3 and all(key in line for line in p.damaged)
    assert any("'4." in line and "not JSON" in line for line in p.damaged)
    assert any("busy 9 > threads 4" in line for line in p.damaged)
    assert p.queues[0].error is None, "the queues are read whatever the reports hold"


def test_a_report_key_of_another_type_is_named_not_a_traceback(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    redis.set(reports.instances_key("dramatiq"), "oops")
    p = probe(redis_server)
    assert p.instances == {} and len(p.damaged) == 1 and "is a string, not a Dramatiq instance report hash" in p.damaged[0]


def test_numbers_beyond_a_float_or_a_pid_and_a_future_at_are_named_not_a_traceback(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The review's values (OverflowError in status, metrics, check and every tick before): each
    field named once, the good one beside them still read."""
    key = reports.instances_key("dramatiq")
    now_ms = int(time.time() * 1000)
    good = {"threads": 8, "busy": 1, "oldest": None, "held": 0, "at": now_ms}
    redis.hset(key, mapping={
        "1.1": '{"threads":8,"busy":1,"oldest":null,"held":0,"at":1' + "0" * 400 + "}",
        "2.1": '{"threads":8,"busy":1,"oldest":1' + "0" * 400 + ',"held":0,"at":%d}' % now_ms,
        "2.99999999999999999999999": json.dumps({**good, "at": now_ms + 10**9}),  # a pid os.kill overflows on, never stale
        "3.1": json.dumps({**good, "at": now_ms + 10**9}),  # fresh for ever, before
        f"4.{os.getpid()}": json.dumps(good),
    })
    p = probe(redis_server)
    assert sorted(p.instances) == [4]
    assert len(p.damaged) == 4 and all(key in line and "\n" not in line for line in p.damaged), p.damaged
    assert any("'3.1'" in line and "ahead of this host's clock" in line for line in p.damaged)
