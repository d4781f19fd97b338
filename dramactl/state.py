"""What the scaler remembers between oneshot runs: pause, threads and recent ticks.

Lives in systemd's StateDirectory (``/var/lib/dramactl/state.json``) so it survives
reboots; written atomically so a crash mid-write never leaves half a file. A file
that cannot be used (not JSON, or JSON of the wrong shape) is set aside as
``state.json.damaged-<epoch>`` with one warning line on stderr, and the command
carries on with a fresh state: the history is only a hint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .settings import cut
from .victims import KINDS, Pick

STATE_FILE = "state.json"
LOCK_FILE = "tick.lock"
HISTORY_SECONDS = 3600.0
LOCK_WAIT = 30.0  # seconds a manual change waits for the lock by default (`--wait`)
LOCK_POLL = 0.05
MAX_THREADS = 1024  # threads per worker, as WORKER_THREADS and --threads allow
MAX_SIZE = 1000  # a manual size, as MAX_PROCESSES allows
# Seconds a window of ticks reaches past its edge. The timer starts each tick 10-25 ms after
# its interval (more on a loaded host), so the tick a window back is that much older than the
# window; with the reach it is in, as with ticks exactly an interval apart (the simulator's).
WINDOW_EDGE = 1.0


def window_edge(interval: float) -> float:
    """How far a window of ticks ``interval`` seconds apart reaches past its edge:
    :data:`WINDOW_EDGE`, and at most half an interval, so that the reach never lands on
    the tick before (at CHECK_INTERVAL=1 a 1 s reach would hold a tick a second older than
    the window in the simulator and not on a host)."""
    return min(WINDOW_EDGE, interval / 2.0)


class DamagedState(ValueError):
    """The state file holds something that is not a :class:`ScalerState`; the message says what."""


class StateDirError(RuntimeError):
    """The state directory cannot be written (a change now could not be remembered), or its state file cannot be read."""


@dataclass(frozen=True)
class TickRecord:
    """What one tick saw and decided: the input to stabilization windows."""

    at: float
    backlog: int
    workers: int
    target: int
    oldest_age: float | None = None
    wanted: int | None = None  # the raw recommendation (ScalingDecision.wanted): what scale-down windows compare
    done: float | None = None  # the hook's cumulative counters (FleetBacklog.done_total, busy_seconds_total)
    busy: float | None = None
    for_rate: int | None = None  # workers the measured arrivals needed (work-based sizing), held by scale-down windows
    startup: float | None = None  # seconds this tick's start jobs took (StartUnit until READY=1), learned start-up
    duration: float | None = None  # seconds the tick took (dramactl_tick_duration_seconds)
    starting: tuple[int, ...] = ()  # instances started and not yet measured: their start-up is read next tick (rates.measure_startup)
    victims: str | None = None  # why each instance this tick stopped (or waited for) was chosen: '@3 idle; @2 busy 1/4, oldest 3s'
    waiting_since: float | None = None  # a scale-down has waited for long tasks since (epoch seconds): the wait's limit counts from it


def stabilization_window(history: Sequence[TickRecord], now: float, window: float, interval: float) -> list[TickRecord] | None:
    """The ticks of the last ``window`` seconds before ``now`` (reaching :func:`window_edge`
    past its edge), or None when the history does not reach back over the whole window
    (after a gap or a reboot nothing is known of it). A tick up to two intervals older
    than the window counts for the reach: a late or skipped tick leaves the window known."""
    reach = now - window - 2.0 * interval
    recent = [r for r in history if reach <= r.at < now]
    edge = window_edge(interval)
    if not recent or recent[0].at > now - window + edge:
        return None
    return [r for r in recent if r.at >= now - window - edge]


@dataclass(frozen=True)
class Recovery:
    """The backoff for bringing failed instances back (see ``policy.safeguard``).

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
    recycles: int = 0  # instances replaced for their memory (WORKER_RECYCLE_MEMORY): dramactl_recycles_total
    stopped_by: tuple[int, ...] = (0,) * len(KINDS)  # instances scale-downs stopped, by victims.KINDS: dramactl_scale_down_stops_total
    fleet_claimed: float | None = None  # FLEET_NAME: Redis' clock when this host last wrote its claim
    fleet_lost: float | None = None  # FLEET_NAME: Redis' clock when it found the fleet's records lost (fleetplan.records_lost)
    fleet_in: str | None = None  # the FLEET_NAME those two were written in (a host moved to another fleet starts afresh)

    def counted(self, started: int, stopped: int, picks: Iterable[Pick] = ()) -> "ScalerState":
        """The counters after ``started`` starts and ``stopped`` stops, ``picks`` those of a
        scale-down's stops (what each ran when chosen)."""
        kinds = [p.kind for p in picks]
        by = tuple(n + kinds.count(kind) for n, kind in zip(self.stopped_by, KINDS))
        return replace(self, actions=(self.actions[0] + started, self.actions[1] + stopped), stopped_by=by)

    def wait_ended(self) -> "ScalerState":
        """Without the last tick's scale-down wait for long tasks: a manual command or a rolling
        restart ends it (scaler.pauses_ended), so a later wait counts its limit afresh."""
        if not self.history or self.history[-1].waiting_since is None:
            return self
        return replace(self, history=self.history[:-1] + (replace(self.history[-1], waiting_since=None),))

    def stops_by_kind(self) -> dict[str, int]:
        return dict(zip(KINDS, self.stopped_by))

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
            "recycles": self.recycles,
            "stopped_by": self.stops_by_kind(),
            "fleet_claimed": self.fleet_claimed,
            "fleet_lost": self.fleet_lost,
            "fleet_in": self.fleet_in,
        }

    @classmethod
    def from_dict(cls, data: object) -> "ScalerState":
        """Validate every field; :class:`DamagedState` names the first that is wrong.

        Missing optional fields take their defaults; names this version does not know are ignored.
        """
        d = _fields(data, "the file")
        rec = _fields(d.get("recovery", {}), "recovery")
        actions = _fields(d.get("actions", {}), "actions")
        stopped_by = _fields(d.get("stopped_by", {}), "stopped_by")
        history = d.get("history", [])
        if not isinstance(history, list):
            raise DamagedState(f"history: {history!r} is not a list")
        return cls(
            paused=_flag(d, "paused", "paused"),
            threads=_whole(d, "threads", "threads", low=1, high=MAX_THREADS, optional=True),
            size=_whole(d, "size", "size", low=0, high=MAX_SIZE, optional=True),
            recovery=Recovery(
                attempts=_whole(rec, "attempts", "recovery.attempts", low=0, default=0),
                next_at=_number(rec, "next_at", "recovery.next_at", default=0.0),
                failing_at=_number(rec, "failing_at", "recovery.failing_at", optional=True),
            ),
            history=tuple(_tick(r, f"history[{i}]") for i, r in enumerate(history)),
            actions=(
                _whole(actions, "up", "actions.up", low=0, default=0),
                _whole(actions, "down", "actions.down", low=0, default=0),
            ),
            recycles=_whole(d, "recycles", "recycles", low=0, default=0),
            stopped_by=tuple(_whole(stopped_by, kind, f"stopped_by.{kind}", low=0, default=0) for kind in KINDS),
            fleet_claimed=_number(d, "fleet_claimed", "fleet_claimed", optional=True),
            fleet_lost=_number(d, "fleet_lost", "fleet_lost", optional=True),
            fleet_in=_text(d, "fleet_in", "fleet_in"),
        )


_REQUIRED = object()


def _text(d: dict, key: str, where: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise DamagedState(f"{where}: {_short(value)} is not text")
    return value


def _fields(data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise DamagedState(f"{where}: {_short(data)} is not an object")
    return data


def _short(value: object) -> str:
    return cut(json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value))


def _flag(d: dict, key: str, where: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise DamagedState(f"{where}: {_short(value)} is not true or false")
    return value


def _given(d: dict, key: str, where: str, optional: bool, default: object) -> object:
    """``d[key]``, or ``_REQUIRED`` when it may be left out (absent, or None when optional)."""
    if key not in d:
        if optional or default is not _REQUIRED:
            return _REQUIRED
        raise DamagedState(f"{where}: missing")
    return _REQUIRED if d[key] is None and optional else d[key]


def _whole(d: dict, key: str, where: str, *, low: int, high: int | None = None, optional: bool = False, default: object = _REQUIRED):
    value = _given(d, key, where, optional, default)
    if value is _REQUIRED:
        return None if optional else default
    if isinstance(value, bool) or not isinstance(value, int):
        raise DamagedState(f"{where}: {_short(value)} is not a whole number")
    if value < low or (high is not None and value > high):
        raise DamagedState(f"{where}: {value} is out of range {low}.." + (str(high) if high is not None else ""))
    return value


def _number(d: dict, key: str, where: str, *, optional: bool = False, default: object = _REQUIRED):
    value = _given(d, key, where, optional, default)
    if value is _REQUIRED:
        return None if optional else default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DamagedState(f"{where}: {_short(value)} is not a number")
    try:
        number = float(value)  # a JSON integer has no bound: 10**400 has no float
    except OverflowError:
        raise DamagedState(f"{where}: {_short(value)} is too large to be a number") from None
    if not math.isfinite(number):
        raise DamagedState(f"{where}: {_short(value)} is not a number")
    if number < 0:
        raise DamagedState(f"{where}: {value} is negative")
    return number


def _tick(data: object, where: str) -> TickRecord:
    r = _fields(data, where)
    return TickRecord(
        at=_number(r, "at", f"{where}.at"),
        backlog=_whole(r, "backlog", f"{where}.backlog", low=0),
        workers=_whole(r, "workers", f"{where}.workers", low=0),
        target=_whole(r, "target", f"{where}.target", low=0),
        oldest_age=_number(r, "oldest_age", f"{where}.oldest_age", optional=True),
        wanted=_whole(r, "wanted", f"{where}.wanted", low=0, optional=True),
        done=_number(r, "done", f"{where}.done", optional=True),
        busy=_number(r, "busy", f"{where}.busy", optional=True),
        for_rate=_whole(r, "for_rate", f"{where}.for_rate", low=0, optional=True),
        startup=_number(r, "startup", f"{where}.startup", optional=True),
        duration=_number(r, "duration", f"{where}.duration", optional=True),
        starting=_instances(r, "starting", f"{where}.starting"),
        victims=_text(r, "victims", f"{where}.victims"),
        waiting_since=_number(r, "waiting_since", f"{where}.waiting_since", optional=True),
    )


def _instances(d: dict, key: str, where: str) -> tuple[int, ...]:
    """A list of instance numbers (>= 1); missing: none."""
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value):
        raise DamagedState(f"{where}: {_short(value)} is not a list of instance numbers")
    return tuple(value)


def _text(d: dict, key: str, where: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise DamagedState(f"{where}: {_short(value)} is not text")
    return value


class StateStore:
    """Reads and writes :class:`ScalerState` in one directory, and holds the tick lock."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> ScalerState:
        """The saved state; a fresh one when there is none or the file is damaged (then set aside)."""
        try:
            text = read_regular(self.path)
        except FileNotFoundError:
            return ScalerState()
        except OSError as exc:  # the directory is a file, state.json a directory, or not readable by this user
            raise StateDirError(self._unreadable(exc)) from None
        try:
            return ScalerState.from_dict(json.loads(text))
        except DamagedState as exc:
            problem = str(exc)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested past the parser's depth
            problem = f"not JSON ({exc})"
        # A damaged file must not wedge the scaler: keep it for a post-mortem, start over.
        self._set_aside(problem)
        return ScalerState()

    def _set_aside(self, problem: str) -> None:
        aside = self.path.with_name(f"{STATE_FILE}.damaged-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            done = f"set aside as {aside}"
        except FileNotFoundError:  # another command set it aside first
            done = "already set aside"
        except OSError as exc:
            done = f"could not set it aside ({exc.strerror or exc})"
        warn(f"{self.path} is damaged ({problem}); {done}; carrying on with a fresh state (no history, not paused)")

    def save(self, state: ScalerState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_in_state_dir(self.path, json.dumps(state.to_dict()))  # 0644: workers read the thread count from here

    def check_writable(self) -> None:
        """StateDirError unless this process can create (and remove) a file in the directory.

        Checked before a tick or manual command changes the fleet: a change whose
        state cannot be saved would be forgotten (history that never grows, a manual
        size the next tick undoes), so it is better not made.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".writable.", dir=self.directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StateDirError(self._unwritable(exc)) from None

    def _unwritable(self, exc: OSError) -> str:
        why = exc.strerror or str(exc)
        try:
            st = self.directory.stat()
            why += f"; owner {_user(st.st_uid)}, mode {st.st_mode & 0o7777:04o}"
        except OSError:
            pass
        return (
            f"state directory {self.directory} is not writable by uid {os.geteuid()} ({why}); "
            "fix its owner/mode (StateDirectory= in dramactl.service)"
        )

    def _lock_refused(self, exc: OSError) -> str | None:
        """The line for a tick lock that exists but this user may not open (another user's,
        0600: a command run as root before the directory was the scaler's), else None: the
        directory's own message names the wrong thing there, as the directory is writable."""
        if not isinstance(exc, PermissionError):
            return None
        try:
            lock, top = os.lstat(self.lock_path), os.stat(self.directory)
        except OSError:
            return None  # no lock yet: creating it failed, the directory is the problem
        if lock.st_uid == os.geteuid():
            return None
        try:
            self.check_writable()
        except StateDirError:
            return None  # the directory is not writable either: that is the fix to name first
        return (
            f"tick lock {self.lock_path} cannot be opened by uid {os.geteuid()} ({exc.strerror}; owner {_user(lock.st_uid)}, "
            f"mode {lock.st_mode & 0o7777:04o}); give it the directory's owner ({_user(top.st_uid)}) or remove it (the next tick creates it again)"
        )

    def _unreadable(self, exc: OSError) -> str:
        if exc.errno in (errno.ELOOP, errno.EINVAL):
            return f"state file {self.path} is a symbolic link or not a regular file; remove it (the next change writes a fresh state file)"
        if isinstance(exc, NotADirectoryError):
            return f"state directory {self.directory} is not a directory (a file is in its path); set DRAMACTL_STATE_DIR to a directory"
        if isinstance(exc, IsADirectoryError):
            return f"state file {self.path} is a directory; remove it (the next change writes a fresh state file)"
        return (
            f"state file {self.path} cannot be read by uid {os.geteuid()} ({exc.strerror or exc}); "
            "fix its owner/mode (StateDirectory= in dramactl.service)"
        )

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE

    @contextmanager
    def lock(self, wait: bool | float = True) -> Iterator[None]:
        """One tick or manual change at a time.

        ``wait`` is True (as long as it takes), False (not at all) or seconds; raises
        BlockingIOError when the lock is still taken after that.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = _open_lock(self.lock_path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EINVAL):
                raise StateDirError(f"{self.lock_path} is a symbolic link or not a regular file; remove it (the next tick creates it again)") from None
            raise StateDirError(self._lock_refused(exc) or self._unwritable(exc)) from None
        try:
            if wait is True:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_within(fd, float(wait))
            yield
        finally:
            os.close(fd)


# The state directory belongs to the scaler's user, and root's manual commands write in it too.
# So nothing here follows a link or changes a file by its path: that user could put a link to
# /etc/passwd in the path's place between root's steps, and root would write or chown the target.


def read_regular(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file; OSError (ELOOP) for a link, and for
    anything else that is not a file (a FIFO would block the reader)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def write_in_state_dir(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` atomically with ``text``: a new file made by this process (mkstemp,
    O_EXCL), its mode and, for root, its owner (the directory's) set on the open file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:  # closes the descriptor whatever fails below
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:  # a manual command: keep the file the scaler user's
                st = os.stat(path.parent)
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _open_lock(path: Path) -> int:
    """The tick lock's descriptor, mode 0600: another user (a worker's) that could open it could
    hold the lock and stop every tick. Created here (O_EXCL) it is given the directory's owner
    when root creates it; an existing one is never followed as a link, must be a regular file,
    and is narrowed to 0600 if its owner (the scaler user) opened it wider before."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = os.open(path, flags | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            if st.st_mode & 0o077 and st.st_uid == os.stat(path.parent).st_uid and st.st_nlink == 1:
                os.fchmod(fd, 0o600)  # a lock an earlier release made 0644
        except BaseException:
            os.close(fd)
            raise
        return fd
    if os.geteuid() == 0:
        st = os.stat(path.parent)
        os.fchown(fd, st.st_uid, st.st_gid)
    return fd


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def warn(line: str) -> None:
    """One warning line on stderr, which the units send to the journal."""
    sys.stderr.write(f"dramactl: warning: {line}\n")
    sys.stderr.flush()


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
