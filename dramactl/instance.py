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

    @property
    def name(self) -> str:
        return unit_name(self.number)

    @property
    def is_up(self) -> bool:
        """Counts toward the fleet: running, or on its way to running."""
        return self.active_state in ("active", "activating", "reloading") and self.sub_state != "auto-restart"

    @property
    def is_failing(self) -> bool:
        """Failed, or in systemd's restart loop: growing the fleet would only multiply it."""
        return self.active_state == "failed" or self.sub_state == "auto-restart" or (
            self.active_state == "activating" and self.restarts > 0
        )

    @property
    def is_stopping(self) -> bool:
        return self.active_state == "deactivating"

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name, "is_up": self.is_up, "is_failing": self.is_failing}
