"""dramactl.load.send_load against a real Redis, and the load it sends run by a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dramatiq
import pytest

from dramactl import settings as settings_mod
from dramactl.load import KINDS, example_payload, send_load
from dramactl.settings import SettingsError
from tests.conftest import RedisServer, free_port


@pytest.fixture
def app_settings(settings_env, redis):
    return settings_mod.parse(settings_env)


def queued(redis, queue: str) -> list[dict]:
    """The message bodies waiting on a Dramatiq queue (namespace 'dramatiq')."""
    return [json.loads(b) for b in redis.hvals(f"dramatiq:{queue}.msgs")]


def test_importing_load_does_not_import_the_example_app():
    code = "import sys, dramactl.load; print('dramactl.example.tasks' in sys.modules, 'dramatiq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_send_load_enqueues_exactly_n_and_reports_progress(app_settings, redis):
    calls: list[tuple[int, int]] = []
    ids = send_load(app_settings, 25, kind="email", seconds=0, progress=lambda sent, total: calls.append((sent, total)))
    assert len(ids) == 25 and len(set(ids)) == 25
    assert calls == [(i, 25) for i in range(1, 26)]
    assert redis.llen("dramatiq:email_processing") == 25
    bodies = queued(redis, "email_processing")
    assert sorted(b["message_id"] for b in bodies) == sorted(ids)
    assert all(b["actor_name"] == "process_email_task" and b["args"][0]["seconds"] == 0 for b in bodies)
    assert {b["args"][0]["to"] for b in bodies} == {f"user{i}@example.com" for i in range(25)}
    for other in ("ocr_processing", "high_priority", "low_priority"):
        assert redis.llen(f"dramatiq:{other}") == 0


def test_mixed_load_spreads_over_the_four_queues(app_settings, redis):
    ids = send_load(app_settings, 10, kind="mixed")
    assert len(ids) == 10
    assert [redis.llen(f"dramatiq:{q}") for _, q in KINDS.values()] == [3, 3, 2, 2]
    assert all("seconds" not in b["args"][0] for b in queued(redis, "ocr_processing"))  # worker default applies


def test_rate_limit_is_honoured(app_settings, redis):
    start = time.monotonic()
    ids = send_load(app_settings, 11, rate=20, kind="high")
    elapsed = time.monotonic() - start
    assert len(ids) == 11 and redis.llen("dramatiq:high_priority") == 11
    assert elapsed >= 0.5 * 0.95, f"11 messages at 20/s took only {elapsed:.3f}s"  # 10 gaps of 50 ms


def test_zero_messages_sends_nothing(app_settings, redis):
    calls = []
    assert send_load(app_settings, 0, progress=lambda *a: calls.append(a)) == []
    assert calls == [] and list(redis.scan_iter("dramatiq:*")) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"count": -1}, "count"),
        ({"count": 2.5}, "count"),
        ({"count": 3, "rate": 0}, "rate"),
        ({"count": 3, "rate": -5}, "rate"),
        ({"count": 3, "kind": "sms"}, "unknown load kind 'sms'"),
        ({"count": 3, "seconds": -1}, "seconds"),
        ({"count": 3, "fail_times": -1}, "fail_times"),
    ],
)
def test_bad_arguments_raise_before_sending(app_settings, redis, kwargs, match):
    count = kwargs.pop("count")
    with pytest.raises(ValueError, match=match):
        send_load(app_settings, count, **kwargs)
    assert list(redis.scan_iter("dramatiq:*")) == []


def test_load_refuses_queues_the_fleet_does_not_run(settings_env, redis):
    own_app = settings_mod.parse({**settings_env, "DRAMATIQ_COMMAND": "dramatiq shop.tasks", "DRAMATIQ_QUEUE_NAME": "default,email_processing"})
    with pytest.raises(ValueError, match="ocr_processing is not in DRAMATIQ_QUEUE_NAME"):
        send_load(own_app, 4, kind="ocr")
    assert len(send_load(own_app, 2, kind="email")) == 2  # a queue the fleet runs is fine


def test_unreachable_redis_is_a_settings_error(settings_env):
    # redis-py retries connection errors for ~4 s before raising.
    nowhere = settings_mod.parse({**settings_env, "REDIS_PORT": str(free_port())})
    with pytest.raises(SettingsError, match=r"REDIS_HOST: cannot reach Redis at 127\.0\.0\.1:\d+/0 after sending 0 of 3"):
        send_load(nowhere, 3)


def test_wrong_password_is_a_settings_error(redis_server):
    # redis-py retries connection errors (authentication included) for ~4 s before raising.
    locked = RedisServer(password="s3cret")
    try:
        env = {**locked.env, "DRAMACTL_ENV_FILE": "/nonexistent"}
        with pytest.raises(SettingsError, match="REDIS_PASSWORD: Redis at .* refused it"):
            send_load(settings_mod.parse({**env, "REDIS_PASSWORD": "guess"}), 3)
        assert len(send_load(settings_mod.parse(env), 3)) == 3
        assert locked.client.llen("dramatiq:email_processing") == 3
    finally:
        locked.stop()


def test_every_message_of_a_load_runs_exactly_once_with_retries(app_settings, redis):
    from dramactl.example import tasks

    ids = send_load(app_settings, 40, kind="mixed", seconds=0.01, fail_times=1)
    broker = tasks.setup(app_settings)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        for _, queue in KINDS.values():
            broker.join(queue, timeout=30_000)
    finally:
        worker.stop()
    done = set()
    for actor, _ in KINDS.values():
        assert tasks.counts(redis, actor) == {"processed": 10, "unique": 10, "attempts": 20, "failures": 10}, actor
        done |= tasks.processed_ids(redis, actor)
    assert done == set(ids)


def test_payloads_are_valid_input_for_their_actors():
    from dramactl.example import work

    check = {"email": work.validate_email, "ocr": work.validate_ocr, "high": work.validate_notification, "low": work.validate_report}
    for kind, validate in check.items():
        for i in range(30):
            validate(example_payload(kind, i, seconds=0.5, fail_times=2))
