"""The fleet's settings record holding a value a host's own settings refuse: real Redis, a real tick."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis as redis_lib

from dramactl import scaler, share
from dramactl import settings as settings_mod
from dramactl.fleet import JobResult, TimerInfo
from dramactl.instance import WorkerUnit, unit_name
from tests.conftest import RedisServer


class OneUp:
    """systemd's side of the tick: instance 1 up; starts and stops succeed at once."""

    def __init__(self) -> None:
        self.units = {1: WorkerUnit(1, "active", "running")}

    def instances(self, details=False, timed=(), memory=False):
        return [self.units[n] for n in sorted(self.units)]

    def start(self, numbers, timeout=90.0):
        self.units.update({n: WorkerUnit(n, "active", "running") for n in numbers})
        return [JobResult(unit_name(n), "start", "done") for n in numbers]

    def stop(self, numbers, timeout=90.0):
        for n in numbers:
            self.units.pop(n, None)
        return [JobResult(unit_name(n), "stop", "done") for n in numbers]

    def restart(self, numbers, timeout=90.0):
        return []

    def timeouts(self, number):
        return 90.0, 75.0

    def why_not_started(self, number):
        return ""

    def kill(self, numbers, signal=9):
        pass

    def reset_failed(self, numbers):
        pass

    def timer(self, name=""):
        return TimerInfo("active", 180.0, None, None)

    def close(self):
        pass


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"max_queue_wait": 0.0}, "max_queue_wait"),  # ZeroDivisionError in every tick of a host that followed it
        ({"min_processes": 5000}, "min_processes"),
        ({"scale_down_stabilization": 1e300}, "scale_down_stabilization"),
    ],
)
def test_a_record_value_a_host_would_refuse_is_named_once_and_the_record_rewritten(
    changes: dict, named: str, redis: redis_lib.Redis, redis_server: RedisServer, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    share._named.clear()
    settings = settings_mod.parse({
        **redis_server.env, "DRAMATIQ_COMMAND": "dramatiq app", "DRAMATIQ_QUEUE_NAME": "default", "FLEET_NAME": "f1",
        "DRAMACTL_STATE_DIR": str(tmp_path / "state"),
    })
    now_ms = int(time.time() * 1000)
    redis.rpush("dramatiq:default", "m0")  # a message waiting two minutes: the latency guard is asked
    redis.hset("dramatiq:default.msgs", "m0", json.dumps({"message_timestamp": now_ms - 120_000}, separators=(",", ":")))
    key = share.fleet_key(settings)
    t = time.time()
    other = {"max": 10, "up": 2, "claim": 2, "share": 2, "at": t, "expires": t + 600, "working": 2, "settings": "x"}
    redis.hset(key, "host:other", json.dumps(other))  # a live host whose settings differ: the record is followed
    redis.hset(key, "settings", json.dumps({**share.fleet_values(settings), **changes}))
    with caplog.at_level(logging.WARNING):
        here = OneUp()
        scaler.tick(settings, dry_run=False, fleet=here)  # type: ignore[arg-type]
        scaler.tick(settings, dry_run=True, fleet=here)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if f"settings.{named}" in r.getMessage()]
    assert len(lines) == 1 and key in lines[0] and "\n" not in lines[0], caplog.text
    assert json.loads(redis.hget(key, "settings")) == share.fleet_values(settings), "the host's own settings, written back"
