"""Intake pauses (issue 19): dramactl's tick marks an instance in Redis, that instance's
worker hook makes its consumers fetch nothing while the mark lasts. A real Dramatiq
worker with the hook, real Redis, read back by the probe."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from dramactl import intake, queue
from dramactl.settings import parse
from tests.conftest import RedisServer, free_port
from tests.integration.test_instance_report import probe, reporter  # noqa: F401 - reporter: the fixture (instance 7, 0.1 s flushes)
from tests.integration.test_work_report import hook, wait_for

QUEUE = "r1"  # the queue probe() reads
LIST = f"dramatiq:{QUEUE}"  # Dramatiq's list of the queue's waiting message ids
HEARTBEATS = "dramatiq:__heartbeats__"


def acks(redis: redis_lib.Redis, broker: RedisBroker) -> set[str]:
    """The ids the worker fetched and has not acked yet."""
    return {m.decode() for m in redis.smembers(f"dramatiq:__acks__.{broker.broker_id}.{QUEUE}")}


def waiting(redis: redis_lib.Redis) -> list[str]:
    return [m.decode() for m in redis.lrange(LIST, 0, -1)]


def heartbeat(redis: redis_lib.Redis, broker: RedisBroker) -> float:
    score = redis.zscore(HEARTBEATS, broker.broker_id)
    assert score is not None, "the worker has a heartbeat"
    return score


def test_a_paused_instance_fetches_nothing_keeps_its_heartbeat_finishes_its_task_and_resumes_when_unmarked(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter
) -> None:
    release, started = threading.Event(), threading.Event()
    runs: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def task(i: int) -> None:
        runs.append(i)
        if i == 0:
            started.set()
            release.wait(30)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: 7 in probe(redis_server).instances)
        assert probe(redis_server).instances[7].paused is False
        running = task.send(0).options["redis_message_id"]
        wait_for(started.is_set)

        assert intake.write(redis, "dramatiq", [7], time.time(), interval=10) is None
        wait_for(lambda: probe(redis_server).instances[7].paused)

        later = [task.send(i).options["redis_message_id"] for i in (1, 2, 3)]
        beats = [heartbeat(redis, broker)]
        deadline = time.monotonic() + 3.0  # 30 times the consumers' longest back-off (worker_timeout)
        while time.monotonic() < deadline:
            assert waiting(redis) == later, f"a paused instance fetches nothing: the three stay in the queue (ran {runs}, unacked {acks(redis, broker)})"
            assert acks(redis, broker) == {running}, "it holds only the message it was running"
            time.sleep(0.1)
            beats.append(heartbeat(redis, broker))
        assert runs == [0] and reporter.paused.is_set()
        assert all(b <= a for b, a in zip(beats, beats[1:])) and beats[-1] - beats[0] >= 2000, (
            "the fetch with a count of 0 still records the heartbeat, so the running task is not taken for a dead worker's"
        )
        assert probe(redis_server).instances[7].busy == 1

        release.set()  # the running task ends and is acked while the instance is still paused
        wait_for(lambda: not acks(redis, broker))
        assert not redis.hexists(f"{LIST}.msgs", running), "acked: its message is gone"
        assert waiting(redis) == later and runs == [0]
        wait_for(lambda: probe(redis_server).instances[7].busy == 0)
        assert probe(redis_server).instances[7].paused is True

        assert intake.write(redis, "dramatiq", [], time.time(), interval=10) is None  # the tick waits for none
        wait_for(lambda: sorted(runs) == [0, 1, 2, 3])
        wait_for(lambda: probe(redis_server).instances[7].paused is False)
        wait_for(lambda: probe(redis_server).queues[0].done_total == 4)
        assert waiting(redis) == [] and acks(redis, broker) == set()
        assert redis.hlen(f"{LIST}.msgs") == 0, "every message acked"
    finally:
        release.set()
        worker.stop()
    assert sorted(runs) == [0, 1, 2, 3], "each message ran exactly once"


def test_a_mark_no_tick_renews_lapses_and_the_instance_takes_messages_again(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "HOLD_MARGIN", 0.0)  # the mark lasts HOLD_TICKS x 0.5 s, not a minute more
    key = intake.pause_key("dramatiq")
    ran_while_marked: list[bool] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def task() -> None:
        ran_while_marked.append(bool(redis.exists(key)))

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: 7 in probe(redis_server).instances)
        assert intake.write(redis, "dramatiq", [7], time.time(), interval=0.5) is None
        assert 0 < redis.pttl(key) <= intake.hold_seconds(0.5) * 1000 == intake.HOLD_TICKS * 500
        wait_for(lambda: probe(redis_server).instances[7].paused)
        for _ in range(3):
            task.send()
        assert redis.exists(key), "sent while the mark lasts"
        wait_for(lambda: len(ran_while_marked) == 3, seconds=10)  # nothing removes the mark: it lapses
        assert ran_while_marked == [False, False, False], "nothing ran before the mark lapsed"
        wait_for(lambda: probe(redis_server).instances[7].paused is False)
        assert waiting(redis) == []
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        pytest.param(lambda r, key: r.set(key, "oops"), 1, id="a-string"),  # Redis refuses the HGET: named once
        pytest.param(lambda r, key: r.rpush(key, "7"), 1, id="a-list"),
        pytest.param(lambda r, key: r.hset(key, mapping={"garbage": "x", "70": "1", "7.123": "1", "": ""}), 0, id="other-fields"),  # not this instance's
    ],
)
def test_a_damaged_pause_key_never_pauses_nor_breaks_the_worker(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter, caplog: pytest.LogCaptureFixture, damage, named: int
) -> None:
    key = intake.pause_key("dramatiq")
    damage(redis, key)
    done: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def task(i: int) -> None:
        done.append(i)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    with caplog.at_level("WARNING", logger="dramactl.hook"):
        worker.start()
        try:
            wait_for(lambda: 7 in probe(redis_server).instances)
            first = probe(redis_server).instances[7]
            for i in range(5):
                task.send(i)
            wait_for(lambda: sorted(done) == [0, 1, 2, 3, 4])
            wait_for(lambda: probe(redis_server).queues[0].done_total == 5)
            wait_for(lambda: probe(redis_server).instances[7].at > first.at)  # the report keeps flowing
            assert probe(redis_server).instances[7].paused is False and not reporter.paused.is_set()
            time.sleep(0.5)  # a few more flushes: each meets the damage again
        finally:
            worker.stop()
    lines = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert len(lines) == named, lines
    assert redis.type(key) != b"none", "the damage is left for the operator"


def test_write_marks_exactly_the_given_instances_with_an_expiry_and_an_empty_list_deletes(redis: redis_lib.Redis) -> None:
    key = intake.pause_key("dramatiq")
    assert key == hook.PAUSE_KEY.format(namespace="dramatiq", host=hook.host_identity()), "the key the hook reads"
    now = time.time()
    assert intake.write(redis, "dramatiq", [7, 3], now, interval=10) is None
    assert redis.hgetall(key) == {b"3": str(int(now * 1000)).encode(), b"7": str(int(now * 1000)).encode()}
    hold = intake.hold_seconds(10) * 1000
    assert hold >= intake.HOLD_TICKS * 10_000 and hold - 1000 < redis.pttl(key) <= hold

    assert intake.write(redis, "dramatiq", [7], now + 10, interval=2) is None
    assert redis.hgetall(key) == {b"7": str(int((now + 10) * 1000)).encode()}, "instance 3 no longer waited for: unmarked"
    hold = intake.hold_seconds(2) * 1000
    assert hold - 1000 < redis.pttl(key) <= hold < intake.hold_seconds(10) * 1000, "each write sets the expiry afresh"

    assert intake.write(redis, "dramatiq", [], now + 20, interval=2) is None
    assert redis.exists(key) == 0

    redis.set(key, "oops")  # a key of another type is replaced, not an error
    assert intake.write(redis, "dramatiq", [2], now, interval=10) is None
    assert redis.hgetall(key) == {b"2": str(int(now * 1000)).encode()}
    assert intake.write(redis, "dramatiq", [], now, interval=10) is None
    assert redis.exists(key) == 0

    other = intake.pause_key("dramatiq", host="h2")
    assert intake.write(redis, "dramatiq", [1], now, interval=10, host="h2") is None
    assert redis.hgetall(other) == {b"1": str(int(now * 1000)).encode()} and redis.exists(key) == 0


def test_write_with_redis_down_returns_one_line_naming_the_key(redis_server: RedisServer) -> None:
    closed = parse({**redis_server.env, "REDIS_PORT": str(free_port()), "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": QUEUE})
    client = queue.connect(closed)  # the scaler's client: nothing listens on that port
    line = intake.write(client, "dramatiq", [7], time.time(), interval=10)
    assert line is not None and "\n" not in line
    assert intake.pause_key("dramatiq") in line and "keep taking messages" in line


def test_a_damaged_mark_is_ignored_and_named_once(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter, caplog) -> None:
    """A mark that is not the epoch ms the tick writes (hand-written, damaged) does not pause the
    instance: it keeps processing, and the journal names the key and the fix once."""
    import logging

    caplog.set_level(logging.WARNING, logger="dramactl.hook")
    key = intake.pause_key("dramatiq")
    redis.hset(key, "7", "not epoch ms")
    done = []

    @dramatiq.actor(queue_name="r1", max_retries=0)
    def quick(i: int) -> None:
        done.append(i)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for i in range(3):
            quick.send(i)
        wait_for(lambda: sorted(done) == [0, 1, 2])
        time.sleep(0.5)  # a few more flushes: still named only once
        assert probe(redis_server).instances[7].paused is False
    finally:
        worker.stop()
    named = [r.getMessage() for r in caplog.records if "not the epoch ms" in r.getMessage()]
    assert len(named) == 1 and key in named[0] and f"HDEL {key} 7" in named[0], named


def test_a_process_booting_while_its_instance_is_paused_fetches_nothing(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter) -> None:
    """A restart during a scale-down's wait: the mark is read before the consumers start, so the
    new process does not take a whole prefetch (2 x threads) before its first flush pauses it."""
    done = []

    @dramatiq.actor(queue_name="r1", max_retries=0)
    def quick(i: int) -> None:
        done.append(i)

    assert intake.write(redis, "dramatiq", [7], time.time(), interval=10) is None
    for i in range(20):
        quick.send(i)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: (r := probe(redis_server).instances.get(7)) is not None and r.paused)
        time.sleep(1.0)
        assert done == [] and redis.llen("dramatiq:r1") == 20, f"took {len(done)} before pausing"
        assert intake.write(redis, "dramatiq", [], time.time(), interval=10) is None
        wait_for(lambda: sorted(done) == list(range(20)))
    finally:
        worker.stop()


def test_a_hung_redis_does_not_hold_up_the_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boot's read of the pause runs before READY=1: with Redis hung (SIGSTOP) and an app
    client without a socket timeout, the worker still boots within BOOT_READ_SECONDS, and once
    Redis resumes it pauses on its mark and resumes when the mark goes."""
    import os
    import signal

    from tests.integration.test_hook import StoppableRedis

    server = StoppableRedis()
    assert server.proc is not None
    try:
        monkeypatch.setenv("DRAMACTL_INSTANCE", "7")
        broker = RedisBroker(port=server.port)  # no socket timeout: a call to a hung Redis blocks
        reporter = hook.WorkReporter(interval=0.1)
        broker.add_middleware(reporter)
        client = redis_lib.Redis(port=server.port, socket_timeout=5)
        assert intake.write(client, "dramatiq", [7], time.time(), interval=10) is None
        os.kill(server.proc.pid, signal.SIGSTOP)
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        began = time.monotonic()
        worker.start()
        took = time.monotonic() - began
        os.kill(server.proc.pid, signal.SIGCONT)
        try:
            assert took < hook.BOOT_READ_SECONDS + 1.0, f"the boot waited {took:.1f}s on a hung Redis"
            wait_for(lambda: reporter.paused.is_set())  # the flush reads it once Redis answers
            assert intake.write(client, "dramatiq", [], time.time(), interval=10) is None
            wait_for(lambda: not reporter.paused.is_set())
        finally:
            worker.stop(timeout=5000)
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.close()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_or_reload_signal_pauses_the_intake_at_once(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, reporter, signame: str
) -> None:
    """Dramatiq's worker process notices SIGTERM (a stop: systemd's, for an instance stopped as
    idle) or SIGHUP (a reload) only at its next one-second poll, and until its worker threads
    stop they start whatever the consumers fetch, which the drain then cuts off if it is long.
    The hook's handler, chained before Dramatiq's, pauses the intake when the signal arrives:
    nothing sent after it is fetched. (Dramatiq's own handler stands in here for the one its
    worker process installs; the process itself does not stop.)"""
    import os
    import signal

    sig = getattr(signal, signame)
    seen: list[int] = []
    done: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def quick(i: int) -> None:
        done.append(i)

    original = signal.signal(sig, lambda signum, frame: seen.append(signum))  # as Dramatiq's worker process has
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        quick.send(0)
        wait_for(lambda: done == [0])
        os.kill(os.getpid(), sig)
        wait_for(lambda: seen == [sig])  # Dramatiq's handler still ran
        sent = [quick.send(i).options["redis_message_id"] for i in (1, 2, 3)]
        time.sleep(2.0)  # 20 times the consumers' longest back-off (worker_timeout)
        assert done == [0] and waiting(redis) == sent, f"fetched after the signal: ran {done}"
    finally:
        worker.stop()
        signal.signal(sig, original)
