"""The Redis probe against messages that real Dramatiq actors enqueued, fetched and dead-lettered."""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from dramactl import queue
from dramactl.settings import SettingsError, parse
from dramactl.stats import FleetBacklog
from tests.conftest import RedisServer


def settings_for(redis_server: RedisServer, queues: str = "q1", **extra: str):
    return parse({**redis_server.env, "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": queues, **extra})


def by_name(stats):
    return {q.name: q for q in stats}


def test_ready_messages_and_oldest_age(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(5):
        task.send(i)
    time.sleep(1.1)
    task.send(99)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.in_flight, q.delayed, q.due, q.dead) == (6, 0, 0, 0, 0)
    assert 1.0 <= q.oldest_age < 10.0, "age comes from the head (oldest) message"
    assert q.backlog == 6


def test_the_newest_age_comes_from_the_tail_message(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Dramatiq RPUSHes and fetches from index 0: the tail is the newest ready message,
    read in the same round trip (one more LINDEX and HGET, whatever the queue's length)."""

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    task.send(0)
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 1 and q.newest_age == q.oldest_age, "one ready message is the oldest and the newest"
    for i in range(1, 200):
        task.send(i)
    time.sleep(1.2)
    task.send(200)
    time.sleep(1.2)
    redis.config_resetstat()
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 201
    assert q.newest_age is not None and 1.1 <= q.newest_age <= q.oldest_age - 1.1, q
    calls = commandstats(redis)
    assert (calls.get("lindex"), calls.get("hget")) == (2, 2), calls


def test_a_requeued_tail_is_older_than_the_head_and_gives_no_newest_age(broker: RedisBroker, redis_server: RedisServer) -> None:
    """A stopping worker requeues what it prefetched (its consumer's requeue: Dramatiq RPUSHes it
    back): the tail is then older than the head, and its timestamp says nothing about the newest arrival."""

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    task.send(0)
    time.sleep(0.05)
    for i in range(1, 4):
        task.send(i)
    consumer = broker.consume("q1", prefetch=1, timeout=1000)
    first = next(consumer)
    assert first.args == (0,)
    consumer.requeue([first])  # message 0 back at the tail
    consumer.close()
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 4 and q.in_flight == 0
    assert q.oldest_age is not None and q.newest_age is None, q


@pytest.mark.parametrize("stamp", ['"soon"', "null", "[1]", "9e15"], ids=["string", "null", "list", "future"])
def test_a_tail_whose_timestamp_is_not_one_gives_no_newest_age_and_nothing_else_wrong(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, stamp: str, caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(3):
        task.send(i)
    time.sleep(0.05)
    redis.hset("dramatiq:q1.msgs", "bad-tail", '{"message_timestamp": %s, "args": [%s]}' % (stamp, int(time.time() * 1000)))
    redis.rpush("dramatiq:q1", "bad-tail")
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.in_flight, q.delayed, q.due, q.orphaned, q.error) == (4, 0, 0, 0, 0, None)
    assert q.oldest_age is not None and 0.0 <= q.oldest_age < 10.0
    assert q.newest_age is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_in_flight_are_fetched_not_acked(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(10):
        task.send(i)
    consumer = broker.consume("q1", prefetch=4, timeout=1000)
    held = [next(consumer) for _ in range(3)]  # Dramatiq's consumer fetches a prefetch batch
    (q,) = queue.read(settings_for(redis_server))
    assert q.in_flight == 4 and q.ready == 6, q
    assert q.backlog == 10
    for m in held:
        consumer.ack(m)
    (q,) = queue.read(settings_for(redis_server))
    assert q.in_flight == 1 and q.ready == 6
    consumer.close()


def test_delayed_and_due(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(3):
        task.send_with_options(args=(i,), delay=600_000)
    task.send_with_options(args=(9,), delay=1)
    time.sleep(0.05)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.delayed, q.due) == (0, 4, 1)
    assert q.backlog == 1, "only the due delayed message needs a worker now"


def test_dead_letters_from_a_real_worker(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1", max_retries=0)
    def doomed() -> None:
        raise RuntimeError("boom")

    doomed.send()
    doomed.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join("q1", timeout=10_000)
    finally:
        worker.stop()
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.in_flight, q.dead) == (0, 0, 2)


def test_several_queues_in_one_round_trip_and_summed(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="a")
    def ta() -> None: ...

    @dramatiq.actor(queue_name="b")
    def tb() -> None: ...

    for _ in range(3):
        ta.send()
    tb.send()
    stats = queue.read(settings_for(redis_server, "a,b,empty"))
    named = by_name(stats)
    assert (named["a"].ready, named["b"].ready, named["empty"].ready) == (3, 1, 0)
    assert named["empty"].oldest_age is None and named["empty"].newest_age is None
    total = FleetBacklog.of(stats)
    assert total.backlog == 4
    assert total.newest_age == min(named["a"].newest_age, named["b"].newest_age), "the latest arrival anywhere"


def test_namespace_setting_is_honoured(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    b = RedisBroker(host="127.0.0.1", port=redis_server.port, namespace="other")
    dramatiq.set_broker(b)

    @dramatiq.actor(queue_name="q1")
    def task() -> None: ...

    task.send()
    assert queue.read(settings_for(redis_server))[0].ready == 0
    assert queue.read(settings_for(redis_server, REDIS_NAMESPACE="other"))[0].ready == 1


def test_unreachable_redis_names_the_setting(redis_server: RedisServer) -> None:
    from tests.conftest import free_port

    s = parse({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port())})
    with pytest.raises(SettingsError, match=r"^REDIS_HOST: cannot reach Redis at 127\.0\.0\.1:\d+/0"):
        queue.read(s)


def test_wrong_password_names_the_setting() -> None:
    server = RedisServer(password="right")
    try:
        for given in ("wrong", ""):
            s = parse({**server.env, "REDIS_PASSWORD": given})
            with pytest.raises(SettingsError, match=r"^REDIS_PASSWORD: Redis at 127\.0\.0\.1:\d+/0 refused it"):
                queue.read(s)
        assert queue.read(parse(server.env))[0].ready == 0
    finally:
        server.stop()


# -- message arguments cannot fool the probe --------------------------------------------

FOOLING_ARGS = [  # (args, kwargs) naming eta / message_timestamp where the probe must not look
    ((), {"eta": 1, "message_timestamp": 1}),
    (({"eta": 1, "message_timestamp": 1},), {}),
    (({"deep": {"options": {"eta": 1}, "message_timestamp": 1}},), {}),
    (('"eta": 1, "message_timestamp": 1',), {"note": '{"options": {"eta": 1}}'}),
]


@pytest.mark.parametrize(("args", "kwargs"), FOOLING_ARGS, ids=["kwargs", "dict-arg", "nested", "strings"])
def test_eta_in_arguments_does_not_make_a_delayed_message_due(broker: RedisBroker, redis_server: RedisServer, args, kwargs) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(*args, **kwargs) -> None: ...

    task.send_with_options(args=args, kwargs=kwargs, delay=3_600_000)
    task.send_with_options(args=args, kwargs=kwargs, delay=1)
    time.sleep(0.05)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.delayed, q.due) == (2, 1), "only options.eta decides, not an argument named eta"


@pytest.mark.parametrize(("args", "kwargs"), FOOLING_ARGS, ids=["kwargs", "dict-arg", "nested", "strings"])
def test_message_timestamp_in_arguments_does_not_age_the_queue(broker: RedisBroker, redis_server: RedisServer, args, kwargs) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(*args, **kwargs) -> None: ...

    task.send_with_options(args=args, kwargs=kwargs)
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 1
    assert q.oldest_age is not None and 0.0 <= q.oldest_age < 10.0, q


def test_bodies_that_are_not_json_are_skipped(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task() -> None: ...

    task.send_with_options(delay=1)
    redis.hset("dramatiq:q1.DQ.msgs", mapping={"junk": '"eta": 1 <- not JSON', "array": "[1, 2]", "null-options": '{"options": null}'})
    redis.rpush("dramatiq:q1", "bad-head")
    redis.hset("dramatiq:q1.msgs", "bad-head", '{"message_timestamp": 1')
    time.sleep(0.05)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.ready, q.delayed, q.due, q.oldest_age) == (1, 4, 1, None)


# -- bounded work per probe -------------------------------------------------------------


def commandstats(redis: redis_lib.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in redis.info("commandstats").items()}


def test_probe_is_sent_by_hash_and_survives_a_script_flush(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    assert queue.read(settings_for(redis_server))[0].ready == 0
    redis.script_flush()
    redis.config_resetstat()
    queue.read(settings_for(redis_server))  # NOSCRIPT, SCRIPT LOAD, EVALSHA again
    queue.read(settings_for(redis_server))
    calls = commandstats(redis)
    assert calls.get("evalsha", 0) >= 2 and "eval" not in calls and calls.get("script|load") == 1, calls


def test_due_count_is_exact_up_to_the_limit(broker: RedisBroker, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    due = 0
    for i in range(queue.EXACT_DUE_LIMIT):
        soon = i % 3 == 0
        due += soon
        task.send_with_options(args=(i,), delay=1 if soon else 3_600_000)
    time.sleep(0.05)
    (q,) = queue.read(settings_for(redis_server))
    assert (q.delayed, q.due) == (queue.EXACT_DUE_LIMIT, due)


@pytest.mark.parametrize("due_every", [1, 2, 0])
def test_above_the_limit_due_is_sampled_within_bounds(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, due_every: int) -> None:
    """A thousand delayed messages: past EXACT_DUE_LIMIT (a few hundred at most) the probe
    decodes DUE_SAMPLE bodies, no more, and scales the hit rate up."""

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    n = 1000
    assert queue.EXACT_DUE_LIMIT < n and queue.DUE_SAMPLE < n
    for i in range(n):
        soon = due_every and i % due_every == 0
        task.send_with_options(args=(i,), delay=1 if soon else 3_600_000)
    time.sleep(0.05)
    redis.config_resetstat()
    (q,) = queue.read(settings_for(redis_server))
    assert q.delayed == n
    if due_every == 1:
        assert q.due == n, "every sampled body is due"
    elif due_every == 0:
        assert q.due == 0
    else:
        assert 0 < q.due < n
    calls = commandstats(redis)
    assert "hvals" not in calls and "hgetall" not in calls, calls
    assert calls.get("hget", 0) <= queue.DUE_SAMPLE + 1, "the sample's bodies and the head, nothing more"


def test_huge_bodies_stop_the_sample_early(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(blob: str) -> None: ...

    blob = "x" * (queue.DUE_BYTE_BUDGET // 4)
    for _ in range(10):
        task.send_with_options(args=(blob,), delay=1)
    time.sleep(0.05)
    redis.config_resetstat()
    (q,) = queue.read(settings_for(redis_server))
    assert (q.delayed, q.due) == (10, 10), "an estimate from the bodies read"
    assert commandstats(redis).get("hget", 0) <= 5, "about DUE_BYTE_BUDGET bytes decoded, not all 10 bodies"


def test_a_huge_head_or_tail_costs_its_last_bytes_not_a_decode(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The head's and the tail's timestamps come from the body's end, where Dramatiq's encoder
    writes message_timestamp: a body of megabytes (an OCR page sent inline) is not decoded in
    the Lua script that holds Redis. A body of another layout above the byte budget is not
    decoded at all: its age is unknown, never a long block."""

    @dramatiq.actor(queue_name="q1")
    def task(blob: str) -> None: ...

    blob = "x" * (4 * queue.DUE_BYTE_BUDGET)
    task.send(blob)
    time.sleep(1.1)
    task.send(blob)
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 2 and q.oldest_age is not None and q.newest_age is not None, q
    assert q.oldest_age >= q.newest_age + 1.0, q
    assert redis.hget("dramatiq:q1.msgs", redis.lindex("dramatiq:q1", 0)).endswith(b'}') and b'"message_timestamp":' in \
        redis.hget("dramatiq:q1.msgs", redis.lindex("dramatiq:q1", 0))[-40:], "Dramatiq writes the timestamp last"

    # The same huge body with its fields in another order: not read from its end, and too big to decode.
    mid = redis.lindex("dramatiq:q1", 0)
    other = b'{"message_timestamp":%d,"args":["%s"]}' % (int(time.time() * 1000) - 60_000, blob.encode())
    redis.hset("dramatiq:q1.msgs", mid, other)
    (q,) = queue.read(settings_for(redis_server))
    assert q.ready == 2 and q.oldest_age is None and q.error is None, q
    # Small enough, the same layout is decoded.
    redis.hset("dramatiq:q1.msgs", mid, b'{"message_timestamp":%d,"args":["x"]}' % (int(time.time() * 1000) - 60_000))
    (q,) = queue.read(settings_for(redis_server))
    assert q.oldest_age is not None and 59.0 <= q.oldest_age < 70.0, q


# -- orphaned: held by a worker whose heartbeat expired ---------------------------------


def stale(redis: redis_lib.Redis, b: RedisBroker, ago_ms: int = 3_600_000) -> None:
    """Make broker ``b``'s worker look dead: its last heartbeat an hour ago."""
    redis.zadd("dramatiq:__heartbeats__", {b.broker_id: int(time.time() * 1000) - ago_ms})


def test_messages_of_a_dead_worker_are_orphaned_not_in_flight(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(10):
        task.send(i)
    live = broker.consume("q1", prefetch=3, timeout=1000)
    next(live)
    other = RedisBroker(host="127.0.0.1", port=redis_server.port)
    dead = other.consume("q1", prefetch=4, timeout=1000)
    next(dead)
    try:
        (q,) = queue.read(settings_for(redis_server))
        assert (q.ready, q.in_flight, q.orphaned) == (3, 7, 0), "both heartbeats are fresh"
        stale(redis, other)
        (q,) = queue.read(settings_for(redis_server))
        assert (q.ready, q.in_flight, q.orphaned) == (3, 3, 4), q
        assert q.backlog == 10, "orphaned messages are still work"
        assert FleetBacklog.of([q]).orphaned == 4
    finally:
        live.close()
        other.close()


HEARTBEAT_TIMEOUT_KEY = "dramatiq:__dramactl__.heartbeat_timeout"


def two_in_flight(broker: RedisBroker):
    """Five messages on q1, two of them fetched by a consumer (in its ack set): the consumer, to close."""

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(5):
        task.send(i)
    consumer = broker.consume("q1", prefetch=2, timeout=1000)
    next(consumer)
    return consumer


def test_heartbeat_timeout_comes_from_the_published_key(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    consumer = two_in_flight(broker)
    key = HEARTBEAT_TIMEOUT_KEY
    try:
        stale(redis, broker, ago_ms=5_000)  # 5 s without a heartbeat: alive under Dramatiq's 60 s
        assert queue.read(settings_for(redis_server))[0].orphaned == 0
        redis.set(key, "1000")
        (q,) = queue.read(settings_for(redis_server))
        assert (q.in_flight, q.orphaned) == (0, 2)
        redis.set(key, "soon")  # not a number: the default again
        assert queue.read(settings_for(redis_server))[0].orphaned == 0
        redis.delete(key)
        redis.hset(key, "x", "1")  # not even a string: the default again, no error
        assert queue.read(settings_for(redis_server))[0].in_flight == 2
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "value, shown",
    [
        ("nan", "'nan'"),  # NaN reached ZRANGEBYSCORE: every probe failed, blaming REDIS_URL
        ("-nan", "'-nan'"),
        ("abc", "'abc'"),
        ("-5", "'-5'"),
        ("0", "'0'"),
        ("inf", "'inf'"),
        ("1e400", "'1e400'"),
        ("9" * 1000, "(1000 bytes)"),
        ({"x": "1"}, "is a hash, not the string of a heartbeat timeout"),
    ],
)
def test_a_damaged_heartbeat_timeout_is_named_once_and_dramatiqs_default_used(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, value, shown: str
) -> None:
    consumer = two_in_flight(broker)
    key = HEARTBEAT_TIMEOUT_KEY
    try:
        redis.hset(key, mapping=value) if isinstance(value, dict) else redis.set(key, value)
        stale(redis, broker, ago_ms=5_000)  # alive under Dramatiq's 60 s
        p = queue.read_probe(settings_for(redis_server))
        assert (p.queues[0].in_flight, p.queues[0].orphaned) == (2, 0)
        stale(redis, broker, ago_ms=3_600_000)  # dead under it
        p = queue.read_probe(settings_for(redis_server))
        assert (p.queues[0].in_flight, p.queues[0].orphaned) == (0, 2)
        (line,) = p.damaged
        assert key in line and shown in line and f"redis-cli DEL {key}" in line and "60 s" in line and len(line) < 400, line
        redis.delete(key)
        redis.set(key, "1000.5")
        assert queue.read_probe(settings_for(redis_server)).damaged == (), "a positive number is no damage"
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "body, why",
    [
        ("garbage", "not a JSON object"),
        ('["a", 1]', "not a JSON object"),
        ('{"message_timestamp": "soon"}', "not epoch ms"),
        ('{"message_timestamp": [1]}', "not epoch ms"),
        ('{"message_timestamp": -5}', "not epoch ms"),
        ('{"message_timestamp": 1e400}', "not epoch ms"),
        ('{"args": [1]}', "no message_timestamp"),
        ('{"message_timestamp":1' + "0" * 400 + "}", "not epoch ms"),  # read from the end: digits past a float
        ('{"message_timestamp":1,"args":["' + "x" * (queue.DUE_BYTE_BUDGET + 1) + '"]}', "does not end with message_timestamp"),
    ],
    ids=["garbage", "list", "string", "array", "negative", "huge", "absent", "huge-at-end", "over-large"],
)
def test_a_head_message_whose_timestamp_cannot_be_read_is_named_with_its_id(
    broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer, body: str, why: str
) -> None:
    """Its wait is unknown, so the latency guard leaves the queue out: said, not silent."""

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    redis.rpush("dramatiq:q1", "bad-head")
    redis.hset("dramatiq:q1.msgs", "bad-head", body)
    task.send(1)
    p = queue.read_probe(settings_for(redis_server))
    assert p.queues[0].ready == 2 and p.queues[0].oldest_age is None and p.queues[0].error is None
    (line,) = p.damaged
    assert "dramatiq:q1.msgs" in line and "'bad-head'" in line and why in line and "MAX_QUEUE_WAIT" in line and len(line) < 400, line
    redis.lpop("dramatiq:q1")
    p = queue.read_probe(settings_for(redis_server))
    assert p.damaged == () and p.queues[0].oldest_age is not None, "a good head: nothing named"


def test_orphans_are_counted_per_queue(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="a")
    def ta() -> None: ...

    @dramatiq.actor(queue_name="b")
    def tb() -> None: ...

    for _ in range(3):
        ta.send()
        tb.send()
    ca = broker.consume("a", prefetch=2, timeout=1000)
    cb = broker.consume("b", prefetch=1, timeout=1000)
    next(ca), next(cb)
    try:
        stale(redis, broker)
        named = by_name(queue.read(settings_for(redis_server, "a,b")))
        assert (named["a"].orphaned, named["a"].in_flight, named["b"].orphaned, named["b"].in_flight) == (2, 0, 1, 0)
    finally:
        ca.close()
        cb.close()


# -- keys that are not Dramatiq's, and other Redis errors -------------------------------


def test_a_key_of_the_wrong_type_is_reported_per_queue(broker: RedisBroker, redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    @dramatiq.actor(queue_name="good")
    def task() -> None: ...

    task.send()
    redis.zadd("dramatiq:__heartbeats__", {"some-worker": 1})
    redis.set("dramatiq:text.XQ", "not a zset")
    s = settings_for(redis_server, "good,__heartbeats__,text")
    named = by_name(queue.read_each(s))
    assert named["good"].ready == 1 and named["good"].error is None
    assert named["__heartbeats__"].error == "dramatiq:__heartbeats__ is a zset, not a Dramatiq queue list"
    assert named["text"].error == "dramatiq:text.XQ is a string, not a Dramatiq dead-letter zset"
    with pytest.raises(SettingsError) as err:
        queue.read(s)
    assert str(err.value) == (
        "DRAMATIQ_QUEUE_NAME: queue '__heartbeats__': dramatiq:__heartbeats__ is a zset, not a Dramatiq queue list; "
        "remove it from DRAMATIQ_QUEUE_NAME or fix the key"
    )


def test_other_redis_errors_name_the_redis_setting(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A user that may not run scripts: Redis answers NOPERM, we answer one line naming REDIS_URL."""
    redis.acl_setuser("probe-noscript", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-evalsha", "-eval"])
    try:
        s = settings_for(redis_server, REDIS_URL=f"redis://probe-noscript:pw@127.0.0.1:{redis_server.port}/0")
        with pytest.raises(SettingsError) as err:
            queue.read(s)
        message = str(err.value)
        assert message.startswith(f"REDIS_URL: Redis at redis://***@127.0.0.1:{redis_server.port}/0 answered with an error: "), message
        assert "evalsha" in message.lower() and "\n" not in message and ":pw@" not in message
    finally:
        redis.acl_deluser("probe-noscript")
