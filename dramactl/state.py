"""What the scaler remembers between oneshot runs: pause, threads and recent ticks.

Lives in systemd's StateDirectory (``/var/lib/dramactl/state.json``) so it survives
reboots; written atomically so a crash mid-write never leaves half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

STATE_FILE = "state.json"
LOCK_FILE = "tick.lock"
HISTORY_SECONDS = 3600.0
LOCK_WAIT = 30.0  # seconds a manual change waits for the lock by default (`--wait`)
LOCK_POLL = 0.05


@dataclass(frozen=True)
class TickRecord:
    """What one tick saw and decided: the input to stabilization windows."""

    at: float
    backlog: int
    workers: int
    target: int
    oldest_age: float | None = None
    wanted: int | None = None  # the raw recommendation (ScalingDecision.wanted): what scale-down windows compare
    duration: float | None = None  # seconds the tick took (dramactl_tick_duration_seconds)


@dataclass(frozen=True)
class Recovery:
    """The backoff for bringing failed instances back (see ``policy.recover``).

    ``attempts`` counts resets in a row; ``next_at`` is the earliest time of the next
    reset (0: none scheduled: the wait starts when a failure is seen after a reset);
    ``failing_at`` is when a tick last saw a failing instance (a quiet spell ends
    the streak).
    """

    attempts: int = 0
    next_at: float = 0.0
    failing_at: float | None = None


@dataclass(frozen=True)
class ScalerState:
    """Operator intent (pause, manual size, threads), recovery backoff and the recent tick history."""

    paused: bool = False
    threads: int | None = None
    history: tuple[TickRecord, ...] = field(default=())
    size: int | None = None  # the manual size while paused (scale-to, scale-up/down): restored after reboots
    recovery: Recovery = field(default=Recovery())
    actions: tuple[int, int] = (0, 0)  # instances started, stopped since the state began: dramactl_scaling_actions_total

    def counted(self, started: int, stopped: int) -> "ScalerState":
        """The counters after ``started`` starts and ``stopped`` stops."""
        return replace(self, actions=(self.actions[0] + started, self.actions[1] + stopped))

    def with_tick(self, record: TickRecord, keep_seconds: float = HISTORY_SECONDS) -> "ScalerState":
        kept = tuple(r for r in self.history if r.at >= record.at - keep_seconds)
        return replace(self, history=kept + (record,))

    def to_dict(self) -> dict:
        return {
            "paused": self.paused,
            "threads": self.threads,
            "size": self.size,
            "recovery": asdict(self.recovery),
            "history": [asdict(r) for r in self.history],
            "actions": {"up": self.actions[0], "down": self.actions[1]},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ScalerState":
        return cls(
            paused=bool(data.get("paused", False)),
            threads=data.get("threads"),
            size=data.get("size"),
            recovery=Recovery(**data.get("recovery", {})),
            history=tuple(TickRecord(**r) for r in data.get("history", [])),
            actions=(int(data.get("actions", {}).get("up", 0)), int(data.get("actions", {}).get("down", 0))),
        )


class StateStore:
    """Reads and writes :class:`ScalerState` in one directory, and holds the tick lock."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> ScalerState:
        try:
            return ScalerState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return ScalerState()
        except (ValueError, TypeError):
            # A corrupt file must not wedge the scaler: start over, history is only a hint.
            return ScalerState()

    def save(self, state: ScalerState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state.to_dict(), f)
            os.chmod(tmp, 0o644)  # workers read the thread count from here
            self._match_directory_owner(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def _match_directory_owner(self, path: str) -> None:
        """When root writes (manual command), keep the file the scaler user's."""
        if os.geteuid() == 0:
            st = self.directory.stat()
            os.chown(path, st.st_uid, st.st_gid)

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE

    @contextmanager
    def lock(self, wait: bool | float = True) -> Iterator[None]:
        """One tick or manual change at a time.

        ``wait`` is True (as long as it takes), False (not at all) or seconds; raises
        BlockingIOError when the lock is still taken after that.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            if os.geteuid() == 0:
                st = self.directory.stat()
                os.fchown(fd, st.st_uid, st.st_gid)
            if wait is True:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_within(fd, float(wait))
            yield
        finally:
            os.close(fd)


def _flock_within(fd: int, seconds: float) -> None:
    """Take an exclusive flock, trying until ``seconds`` passed; BlockingIOError after that."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            time.sleep(min(LOCK_POLL, remaining))
