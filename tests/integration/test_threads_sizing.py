"""The thread count of `scale-to N --threads T` (`start P T`) runs the workers the ticks
start after `dramactl resume`, and the policy sizes the fleet by it, not by WORKER_THREADS
(it did before a review found it), and so does `status`'s policy view. Real Redis and real
Dramatiq messages; this host's instances a stand-in (no systemd)."""

from __future__ import annotations

from types import SimpleNamespace

import dramatiq
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from dramactl import scaler, status
from dramactl.settings import parse
from dramactl.state import StateStore
from tests.integration.test_replace_in_fleet import StandIn


def test_after_resume_the_policy_sizes_workers_with_the_threads_they_run(
    broker: RedisBroker, redis: redis_lib.Redis, settings_env: dict[str, str]
) -> None:
    settings = parse({**settings_env, "DRAMATIQ_QUEUE_NAME": "q1", "MIN_PROCESSES": "1", "MAX_PROCESSES": "10",
                      "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"})
    here = StandIn(redis, settings)
    scaler.scale_to(settings, 2, threads=2, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    assert StateStore(settings.state_dir).load().threads == 2  # what the ticks start workers with

    @dramatiq.actor(queue_name="q1")
    def task(i: int) -> None: ...

    for i in range(16):
        task.send(i)
    here.timer = lambda: SimpleNamespace(to_dict=lambda: None)  # type: ignore[attr-defined]  # no timer in a stand-in
    view = status.collect(settings, fleet=here)  # type: ignore[arg-type]
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert view["threads"] == 2
    assert view["policy"]["target"] == outcome.decision.target, (view["policy"], outcome.decision.reason)  # status shows what the tick does
    # 16 messages ready for 2 workers x 2 threads: 4 per thread. Sized as 2 x 8 threads
    # (WORKER_THREADS), 16 is within the fleet's share plus noise and main holds at 2.
    assert outcome.decision.target > 2, outcome.decision.reason
