"""A host of a shared fleet (FLEET_NAME) while it replaces instances: room first, heartbeat kept.

The replace-then-drain step (:mod:`dramactl.rollout`: ``dramactl restart``, the tick's
memory recycle) runs one instance more than before for the replacement's start-up. On
one host MAX_PROCESSES bounds that. In a fleet the other hosts' claims may already fill
FLEET_MAX_PROCESSES, and they only see this host's claim: so the replacement's place is
claimed in the fleet first (:meth:`Seat.room`, through :func:`dramactl.share.reserve`),
and when the fleet has no room the old instance drains first, as at MAX_PROCESSES
(:func:`dramactl.rollout.bound` says which limit held). After the step the claim drops
back to what runs.

A rolling restart holds the tick lock, so no tick renews this host's heartbeat while it
runs; one longer than FLEET_HOST_TTL would let the heartbeat expire, and the other hosts
would take this host's share on top of its instances. :meth:`Seat.kept` renews it with
the current claim every :func:`every` seconds (a thread; one write to the fleet's key
each time), and each step's claims renew it too.

Only share.py's public functions are used; this module is imported only with FLEET_NAME.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import redis

from . import share
from .settings import Settings, SettingsError

log = logging.getLogger("dramactl.seat")
ERRORS = (OSError, redis.RedisError, SettingsError)


def every(host_ttl: float) -> float:
    """Seconds between heartbeats during a roll (pure): a third of FLEET_HOST_TTL, so two may
    fail in a row before the heartbeat expires."""
    return max(0.2, host_ttl / 3.0)


class Seat:
    """This host's claim in the fleet while instances are replaced; ``claim`` is what it holds now."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        paused: bool,
        name: str | None = None,
        report: Callable[[str], None] = lambda line: None,
        marks: tuple[float | None, float | None] = (None, None),
    ) -> None:
        self.client, self.settings, self.paused, self.name = client, settings, paused, name
        self.marks = marks  # (claimed_at, lost_at) from the host's state: no room is claimed while the fleet's records are lost
        self.report = report
        self.claim: int | None = None
        self._lock = threading.Lock()  # the thread's renewals and the steps' claims write one after the other

    def _reserve(self, target: int, up: int) -> int:
        return share.reserve(
            self.client, self.settings, target=target, up=up, occupying=up, paused=self.paused, partial=True, name=self.name,
            claimed_at=self.marks[0], lost_at=self.marks[1],
        )

    def room(self, running: int, wanted: int) -> tuple[int, str]:
        """Claim places for ``wanted`` replacements beside the ``running`` instances: (the most
        instances this host may run now, and what limits it when that is below running + wanted).
        A fleet that cannot be asked gives no room: the old instance drains first."""
        fleet = self.settings.fleet_name
        with self._lock:
            try:
                allowed = self._reserve(running + wanted, running)
            except ERRORS as exc:
                log.warning("fleet %s: could not claim room for a replacement (%s); draining first", fleet, exc)
                return running, f"fleet {fleet} could not be asked for room ({exc})"
            self.claim = max(running, allowed)
        return allowed, f"FLEET_MAX_PROCESSES reached: fleet {fleet}'s other hosts claim the rest"

    def beat(self, running: int | None = None) -> None:
        """Renew the heartbeat with the current claim; ``running``: the claim drops (or rises) to that first.
        A rise asks the fleet for the room (the claim script); a renewal or a drop rewrites the host's
        own heartbeat and claim with a fresh expiry and nothing else (:func:`dramactl.share.settle`:
        what is up and, on a failing host, what counts under the target stay as the tick wrote them).
        Once the heartbeat is gone (Redis restarted empty) only the claim of what runs is written:
        the next tick must find the heartbeat gone to hold its growth."""
        with self._lock:
            rises = running is not None and (self.claim is None or running > self.claim)
            if running is not None:
                self.claim = running
            if self.claim is None:
                return
            try:
                if rises:
                    self._reserve(self.claim, self.claim)
                else:
                    share.settle(self.client, self.settings, claim=self.claim, up=None, name=self.name, claimed_at=self.marks[0])
            except ERRORS as exc:
                log.warning("fleet %s: could not renew this host's heartbeat (%s)", self.settings.fleet_name, exc)
                self.report(f"fleet {self.settings.fleet_name}: could not renew this host's heartbeat ({exc}); trying again")

    @contextmanager
    def kept(self, interval: float | None = None) -> Iterator["Seat"]:
        """The heartbeat renewed every ``interval`` seconds (default :func:`every`) while the block runs."""
        done = threading.Event()
        interval = every(self.settings.host_ttl) if interval is None else interval

        def loop() -> None:
            while not done.wait(interval):
                try:
                    self.beat()
                except Exception as exc:  # noqa: BLE001 - a renewal that breaks must not end the roll, nor print a traceback
                    log.error("fleet %s: renewing this host's heartbeat failed (%s: %s)", self.settings.fleet_name, type(exc).__name__, exc)

        thread = threading.Thread(target=loop, name="dramactl-fleet-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join(timeout=30)
