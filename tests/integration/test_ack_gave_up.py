"""An ack or nack Dramatiq gives up on leaves nothing stranded in a live worker's ack set.

Dramatiq retries an ack or nack (every 5 s) only on a connection error; on any other error
``post_process_message`` logs "Unhandled error during post_process_message" and the worker
thread moves on: the message stays in the worker's ack set, and no ``after_ack`` runs. The
hook turns the refusals a working Redis ends (``_passing``) into connection errors; anything
else it leaves to Dramatiq, and its guard then counted the message as still held by that
(live, idle) thread, so the sweep never handed it back until the thread took another
message: on an idle instance, until the process stopped.

Redis before 7.0 wraps an error that ``redis.call`` raises inside a script (Dramatiq's
dispatch.lua: every ack, nack, fetch and requeue) in one of its own, ``ERR Error running
script (call to f_...): @user_script:57: @user_script: 57: -READONLY You can't write
against a read only replica.``: the hook read it as an error no Redis ends, and the ack
was given up on as above. The refusals are returned by the test's real Redis
(``redis.error_reply``), in the text Redis 6 sends, and parsed by redis-py as in a worker.
"""

from __future__ import annotations

import time

import dramatiq
import pytest
import redis as redis_lib

from tests.integration.test_follow_ups import HOOKED, make_broker, sweeping, wait_for
from tests.integration.test_hook import StoppableRedis, install_hook, server  # noqa: F401 - the fixture

REDIS6_SCRIPT_ERROR = "ERR Error running script (call to f_fdacc359c79a5adc3b8eeb53ff5772d7c4214c1c): @user_script:57: @user_script: 57: -{reply}"
NO_PERMISSION = "NOPERM this user has no permissions to run the 'evalsha' command"  # an ACL changed under the worker


def refusing_once(broker, call: str, reply: str) -> list[str]:
    """Make the broker's ``do_ack`` or ``do_nack`` fail once with ``reply``, an error the real
    Redis returns (so redis-py parses it as in a worker); the list of ids refused."""
    real = getattr(broker, call)
    refused: list[str] = []

    def once(queue_name, *args):
        if not refused:
            refused.append(args[0])
            broker.client.eval("return redis.error_reply(ARGV[1])", 0, reply)
        return real(queue_name, *args)

    setattr(broker, call, once)
    return refused


def started(broker, hooked: bool, monkeypatch: pytest.MonkeyPatch):
    """One worker thread on ``broker``: with the hook, its sweep every 0.3 s (returned), else plain
    Dramatiq (None); and the worker, started."""
    maintenance = sweeping(broker, 0.3) if hooked else None
    if not hooked:
        plain(broker, monkeypatch)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    return maintenance, worker


def plain(broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain Dramatiq: undo the wrapping an earlier test's hook left on the consumer class."""
    consumer = dramatiq.brokers.redis._RedisConsumer
    if getattr(consumer, "_dramactl_timeouts", False):
        for name, original in consumer._dramactl_unpatched.items():
            monkeypatch.setattr(consumer, name, original)
        monkeypatch.setattr(consumer, "_dramactl_timeouts", False)
    dramatiq.set_broker(broker)


@HOOKED
@pytest.mark.parametrize("call", ["do_ack", "do_nack"], ids=["ack", "nack"])
def test_an_ack_dramatiq_gives_up_on_is_handed_back_and_runs_again(server: StoppableRedis, hooked: bool, call: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis refuses the ack (or, for a message that failed with no retry left, the nack) with
    an error no Redis ends; Dramatiq gives up on it. With the hook the guard stops counting the
    message as held, the sweep hands it back, and it runs again (a duplicate, not a strand)."""
    broker = make_broker(server)
    runs: list[int] = []
    refused = refusing_once(broker, call, NO_PERMISSION)

    @dramatiq.actor(broker=broker, queue_name="gaveup", max_retries=0)
    def job() -> None:
        runs.append(1)
        if call == "do_nack":
            raise ValueError("fails: dead-lettered, no retry left")

    maintenance, worker = started(broker, hooked, monkeypatch)
    client = redis_lib.Redis(port=server.port)
    acks = f"dramatiq:__acks__.{broker.broker_id}.gaveup"
    dead = 1 if call == "do_nack" else 0
    try:
        job.send()
        assert wait_for(lambda: runs == [1] and refused, 10)
        if hooked:
            # Two sweep rounds of 0.3 s, then the one worker thread runs it again: acked (or nacked) this time.
            assert wait_for(lambda: len(runs) == 2 and client.scard(acks) == 0 and client.hlen("dramatiq:gaveup.msgs") == 0, 10), (
                runs, client.smembers(acks), maintenance.handed_back,
            )
            assert client.zcard("dramatiq:gaveup.XQ") == dead
            assert maintenance.handed_back == 1
            time.sleep(1)  # nothing else comes back
            assert len(runs) == 2 and maintenance.handed_back == 1
        else:
            time.sleep(2)
            assert client.smembers(acks) == {refused[0].encode()} and runs == [1]  # stranded until the worker stops
    finally:
        worker.stop(timeout=5000)


@HOOKED
def test_an_ack_refused_inside_dramatiqs_script_by_redis_6_is_retried(server: StoppableRedis, hooked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis 6 refuses the ack inside Dramatiq's dispatch script with READONLY (a failover made
    it a replica), wrapped in its script error. With the hook it is a refusal Redis ends:
    Dramatiq retries the ack after 5 s, the message runs once, and the sweep, which runs all
    along, does not hand back a message whose ack is being retried."""
    broker = make_broker(server)
    runs: list[int] = []
    refused = refusing_once(broker, "do_ack", REDIS6_SCRIPT_ERROR.format(reply="READONLY You can't write against a read only replica. "))

    @dramatiq.actor(broker=broker, queue_name="ro6")
    def job() -> None:
        runs.append(1)

    maintenance, worker = started(broker, hooked, monkeypatch)
    client = redis_lib.Redis(port=server.port)
    acks = f"dramatiq:__acks__.{broker.broker_id}.ro6"
    try:
        job.send()
        assert wait_for(lambda: runs == [1] and refused, 10)
        if hooked:
            assert wait_for(lambda: client.scard(acks) == 0 and client.hlen("dramatiq:ro6.msgs") == 0, 10), client.smembers(acks)
            assert runs == [1] and maintenance.handed_back == 0
        else:
            time.sleep(6)  # past Dramatiq's retry delay: it was not retried
            assert client.smembers(acks) == {refused[0].encode()} and runs == [1]
    finally:
        worker.stop(timeout=5000)


def test_passing_reads_the_code_inside_a_redis_6_script_error(server: StoppableRedis) -> None:
    """The refusals a working Redis ends are read inside Redis 6's script error too, also as
    redis-py reports it from a MULTI/EXEC pipeline; other errors wrapped the same way are not."""
    module = install_hook(make_broker(server))
    client = redis_lib.Redis(port=server.port)

    def error(reply: str, pipeline: bool = False) -> Exception:
        try:
            if pipeline:
                pipe = client.pipeline(transaction=True)
                pipe.eval("return redis.error_reply(ARGV[1])", 0, reply)
                pipe.execute()
            else:
                client.eval("return redis.error_reply(ARGV[1])", 0, reply)
        except redis_lib.RedisError as exc:
            return exc
        raise AssertionError(f"no error for {reply!r}")

    passing = [
        "READONLY You can't write against a read only replica. ",
        "OOM command not allowed when used memory > 'maxmemory'. ",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk. ",
        "NOREPLICAS Not enough good replicas to write. ",
    ]
    never = [
        "WRONGTYPE Operation against a key holding the wrong kind of value ",
        "NOPERM this user has no permissions to access one of the keys used as arguments ",
    ]
    for reply in passing:
        assert module._passing(error(REDIS6_SCRIPT_ERROR.format(reply=reply))), reply
        assert module._passing(error(REDIS6_SCRIPT_ERROR.format(reply=reply), pipeline=True)), reply
    for reply in never:
        assert not module._passing(error(REDIS6_SCRIPT_ERROR.format(reply=reply))), reply
    assert not module._passing(error("ERR Error running script (call to f_0): @user_script:3: user_script:3: attempt to compare nil with number "))
    assert not module._passing(error(NO_PERMISSION))
