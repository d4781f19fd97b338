"""A worker instance as systemd reports it: ``dramatiq-worker@N.service``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

PATTERN = "dramatiq-worker@*.service"
_NAME = re.compile(r"^dramatiq-worker@([1-9][0-9]*)\.service$")


def unit_name(number: int) -> str:
    """The unit name of instance ``number`` (1-based)."""
    if number < 1:
        raise ValueError(f"instance numbers start at 1, not {number}")
    return f"dramatiq-worker@{number}.service"


def instance_number(name: str) -> int | None:
    """The instance number in a unit name, or None for anything that is not one of ours."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class WorkerUnit:
    """One instance: systemd's states plus what status shows (PID, since, restarts)."""

    number: int
    active_state: str
    sub_state: str
    pid: int = 0
    since: float | None = None  # epoch seconds the unit entered its current active state
    restarts: int = 0
    result: str = ""
    job: str = ""  # the type of systemd's pending job for the unit ("start", "stop", ...), if any
    memory: int | None = None  # MemoryCurrent in bytes, when read (status, WORKER_RECYCLE_MEMORY)
    started: float | None = None  # epoch seconds its start began (InactiveExitTimestamp); read only when asked

    @property
    def name(self) -> str:
        return unit_name(self.number)

    @property
    def is_up(self) -> bool:
        """Counts toward the fleet: running, or on its way to running."""
        return self.active_state in ("active", "activating", "reloading") and self.sub_state != "auto-restart"

    @property
    def is_coming_back(self) -> bool:
        """Not up now, but systemd will bring it back by itself: waiting to restart
        (auto-restart), or its main process died and systemd is cleaning up the rest
        before Restart=on-failure starts it again (deactivating with no stop job), or a
        start job is queued for it."""
        if self.sub_state == "auto-restart" or (not self.is_up and self.job in ("start", "restart")):
            return True
        return self.active_state == "deactivating" and self.job != "stop"

    @property
    def occupies(self) -> bool:
        """Counts against MAX_PROCESSES: up, or coming back without us."""
        return self.is_up or self.is_coming_back

    @property
    def is_failed(self) -> bool:
        """Given up on by systemd (start limit, exit 2, a failed stop): only reset-failed brings it back."""
        return self.active_state == "failed"

    @property
    def is_failing(self) -> bool:
        """Failed, or in systemd's restart loop: growing the fleet would only multiply it."""
        return self.is_failed or self.is_coming_back or (self.active_state == "activating" and self.restarts > 0)

    @property
    def is_stopping(self) -> bool:
        """Draining on a stop job: it goes away and must not be counted, nor stopped twice."""
        return self.active_state == "deactivating" and self.job == "stop"

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "name": self.name,
            "is_up": self.is_up,
            "is_failing": self.is_failing,
            "is_coming_back": self.is_coming_back,
        }
