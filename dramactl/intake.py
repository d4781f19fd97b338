"""Intake pauses: an instance a scale-down waits for takes no new messages (issue 19).

When a scale-down waits for an instance's long tasks (:mod:`dramactl.victims`), the
tick marks that instance here, and the instance's worker hook
(``dramactl_ready.WorkReporter``, which reads the mark in its one-second flush) makes
its consumers fetch nothing while the mark lasts. Its running and prefetched messages
run to completion, new ones go to the instances that stay, and the next tick stops it
as idle. The consumers keep calling Dramatiq's fetch script, with a count of 0, so the
broker heartbeat goes on: the running tasks are not counted dead and handed out again.

The marks are the HASH ``<ns>:__dramactl__.pause.<host>`` (``<host>`` as in
:mod:`dramactl.reports`): field ``<instance>``, value the epoch ms of the tick that set
it. Each tick rewrites the hash to exactly the instances it waits for and pauses
(:func:`dramactl.victims.to_pause`), plus, until their stop jobs ran (or the tick stopped
waiting for them: the SIGTERM was sent, and the hook pauses on it), the instances it
stops, and sets its expiry to :func:`hold_seconds` (three tick intervals and a minute);
a tick that pauses none deletes it, and so does a manual scale or a rolling restart
once it has acted (``scaler.pauses_ended``: they end any wait). When the scaler stops
ticking (the timer stopped or disabled) every mark lapses by itself and the instances
take messages again. The hook reads its mark every second and once at boot, before the
consumers start. Nothing here is needed for a message to be processed: a mark that is
lost (Redis restarted) only resumes an intake early.
"""

from __future__ import annotations

import logging
from typing import Collection

import redis

from .reports import host_identity
from .stats import InstanceReport

log = logging.getLogger("dramactl")

HOLD_TICKS = 3  # tick intervals a mark lasts unless a tick renews it ...
HOLD_MARGIN = 60.0  # ... plus this, for a tick that runs long (its start jobs alone may take 30 s)


def hold_seconds(interval: float) -> float:
    """How long a mark lasts unless a tick renews or removes it."""
    return HOLD_TICKS * interval + HOLD_MARGIN


def pause_key(namespace: str, host: str | None = None) -> str:
    """The marks' HASH for this host (the worker hook builds the same name)."""
    return f"{namespace}:__dramactl__.pause.{host or host_identity()}"


def needs_write(waiting: Collection[int], reports: dict[int, InstanceReport] | None, waited_before: bool) -> bool:
    """Whether the tick has marks to set or to remove: it waits for some instance, an
    instance reports its intake paused, or the previous tick waited (its marks may not
    be read yet). Otherwise the tick costs no round trip."""
    return bool(waiting) or waited_before or any(r.paused for r in (reports or {}).values())


def write(client: redis.Redis, namespace: str, waiting: Collection[int], now: float, interval: float, host: str | None = None) -> str | None:
    """Mark exactly ``waiting`` (instance numbers) as paused, in one round trip; None, or
    a line saying why the marks could not be written (Redis down or refusing: the
    instances then keep taking messages, and the wait still ends at its limit)."""
    key = pause_key(namespace, host)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        if waiting:
            pipe.hset(key, mapping={str(n): int(now * 1000) for n in sorted(waiting)})
            pipe.pexpire(key, int(hold_seconds(interval) * 1000))
        pipe.execute()
    except redis.RedisError as exc:
        return f"could not write the intake pauses to {key} ({exc}); the instances the scale-down waits for keep taking messages"
    return None
