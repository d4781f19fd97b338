"""The worker fleet in systemd, over D-Bus with pystemd: list, start, stop, await.

Calls go straight through ``pystemd.dbuslib.DBus.call_method`` with explicit
signatures instead of pystemd's introspecting objects: a tick then costs one
``ListUnitsByPatterns`` round trip however many instances there are, and no XML
is fetched or parsed on the scaler's path.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass, replace
from typing import Collection, Iterable, Sequence

from pystemd.dbusexc import DBusBaseError
from pystemd.dbuslib import DBus, apply_signature

from .instance import PATTERN, WorkerUnit, instance_number, unit_name

SYSTEMD = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
PROPERTIES = b"org.freedesktop.DBus.Properties"
UNIT = b"org.freedesktop.systemd1.Unit"
SERVICE = b"org.freedesktop.systemd1.Service"
TIMER = b"org.freedesktop.systemd1.Timer"
# While job results are awaited (Fleet._jobs): the most queued messages dispatched in a row, and the
# seconds between such rounds. sd-bus queues the signals it reads during a method call, and a queued
# message does not make the socket readable: past DISPATCH of them (JobRemoved of other jobs aside:
# a round that removed any goes on at once), the rest wait up to JOB_POLL.
DISPATCH = 32
JOB_POLL = 0.1


class FleetError(RuntimeError):
    """systemd could not be reached or refused an operation; the message says which."""


@dataclass(frozen=True)
class JobResult:
    """How one start/stop job ended: systemd's result ("done", "failed", ...) or "pending"."""

    unit: str
    verb: str
    result: str

    @property
    def ok(self) -> bool:
        """Done, or still running when we stopped waiting ("pending": a stop still
        draining, a start still importing the app); the next tick sees how it ended."""
        return self.result in ("done", "pending")


@dataclass(frozen=True)
class TimerInfo:
    """The scaler timer's state for ``status``."""

    active_state: str
    interval: float | None  # seconds between ticks (OnUnitActiveSec), None when not loaded
    last: float | None  # epoch seconds of the last trigger
    next: float | None  # epoch seconds of the next trigger

    def to_dict(self) -> dict:
        return {"active_state": self.active_state, "interval": self.interval, "last": self.last, "next": self.next}


def _on_job_removed(msg, error=None, userdata=None) -> None:  # noqa: ARG001 - pystemd's callback shape
    """JobRemoved(u id, o job, s unit, s result): record the result by job path.

    A plain module function on purpose: pystemd stores its metadata on the callback
    object, which a bound method cannot carry, and it must outlive the bus.
    """
    msg.process_reply(False)
    _job_id, job, _unit, result = msg.body
    userdata[job] = result.decode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(exc: DBusBaseError) -> str:
    """pystemd's error as one readable phrase; access errors say who may do what."""
    message = _text(exc.err_message or b"") or str(exc)
    if exc.errno in (-1, -13) and ("denied" in message.lower() or "nteractive" in message):
        return f"{message} (as uid {os.geteuid()}; polkit lets the dramactl user start/stop only dramatiq-worker@N.service)"
    return message


class Fleet:
    """systemd's view of ``dramatiq-worker@*.service`` and the verbs to change it."""

    def __init__(self, bus: DBus | None = None) -> None:
        self._bus = bus
        self._removed: dict[bytes, str] = {}
        self._subscribed = False

    # -- connection -------------------------------------------------------
    @property
    def bus(self) -> DBus:
        if self._bus is None:
            bus = DBus()
            try:
                bus.open()
            except DBusBaseError as exc:
                raise FleetError(f"cannot reach systemd on the system bus ({exc}); dramactl needs systemd as PID 1") from None
            self._bus = bus
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: bytes, signature: bytes = b"", args: Sequence = (), path: bytes = MANAGER_PATH, interface: bytes = MANAGER):
        call_args = apply_signature(signature, list(args)) if signature else []
        try:
            return self.bus.call_method(SYSTEMD, path, interface, method, call_args).body
        except DBusBaseError as exc:
            what = " ".join(_text(a) for a in args if isinstance(a, bytes) and a != b"replace")
            raise FleetError(f"systemd refused {method.decode()} {what}".rstrip() + f": {_reason(exc)}") from None

    def _property(self, path: bytes, interface: bytes, name: bytes, rtype: bytes):
        try:
            return self.bus.get_property(SYSTEMD, path, interface, name, rtype)
        except DBusBaseError as exc:
            raise FleetError(f"cannot read {name.decode()} of {path.decode()}: {exc}") from None

    # -- reading ----------------------------------------------------------
    def instances(self, details: bool = False, timed: Collection[int] = (), memory: bool = False) -> list[WorkerUnit]:
        """Loaded worker instances, lowest number first; one D-Bus call unless ``details``.

        Without details, only units that look unhealthy get their restart count read,
        so a tick over 64 healthy instances costs what a tick over one does. ``timed``:
        instances whose start (InactiveExitTimestamp, as ``started``) and READY=1
        (ActiveEnterTimestamp, as ``since``) are read too, two property reads each:
        the ones the last tick started and has not timed yet (:func:`dramactl.rates.measure_startup`).
        ``memory`` (or ``details``): each running instance's MemoryCurrent too, one
        property read per instance (WORKER_RECYCLE_MEMORY, status).
        """
        rows = self._call(b"ListUnitsByPatterns", b"asas", [[], [PATTERN.encode()]])
        units = []
        for name, _desc, load, active, sub, _following, path, _job_id, job_type, _job_path in rows:
            number = instance_number(_text(name))
            if number is None or _text(load) == "not-found":
                continue
            active_s, sub_s, job = _text(active), _text(sub), _text(job_type)
            if active_s == "inactive" and sub_s == "dead" and job != "start":
                continue
            unit = WorkerUnit(number=number, active_state=active_s, sub_state=sub_s, job=job)
            if details or active_s != "active":
                unit = self._with_details(unit, path, details)
            if number in timed:
                unit = self._with_times(unit, path)
            if (details or memory) and active_s in ("active", "reloading", "deactivating"):
                unit = replace(unit, memory=self._memory(path))
            units.append(unit)
        return sorted(units, key=lambda u: u.number)

    def _with_details(self, unit: WorkerUnit, path: bytes, full: bool) -> WorkerUnit:
        restarts = int(self._property(path, SERVICE, b"NRestarts", b"u"))
        if not full:
            return replace(unit, restarts=restarts)
        pid = int(self._property(path, SERVICE, b"MainPID", b"u"))
        entered = int(self._property(path, UNIT, b"ActiveEnterTimestamp", b"t"))
        result = _text(self._property(path, SERVICE, b"Result", b"s"))
        since = entered / 1e6 if entered else None
        return replace(unit, pid=pid, since=since, restarts=restarts, result=result)

    def _memory(self, path: bytes) -> int | None:
        """MemoryCurrent in bytes (the cgroup's memory.current), None when systemd does not know it."""
        value = int(self._property(path, SERVICE, b"MemoryCurrent", b"t"))
        return None if value >= 2**64 - 1 else value

    def why_not_started(self, number: int) -> str:
        """Why an instance's start did not end in READY=1, in a few words (systemd's Result and exit status)."""
        path = self._call(b"LoadUnit", b"s", [unit_name(number).encode()])
        result = _text(self._property(path, SERVICE, b"Result", b"s"))
        code = int(self._property(path, SERVICE, b"ExecMainCode", b"i"))
        status = int(self._property(path, SERVICE, b"ExecMainStatus", b"i"))
        state = _text(self._property(path, UNIT, b"ActiveState", b"s"))
        if result == "timeout":
            limit = int(self._property(path, SERVICE, b"TimeoutStartUSec", b"t")) / 1e6
            return f"no READY=1 within TimeoutStartSec={limit:g}s, {state}"
        if code == 1:  # CLD_EXITED
            return f"exit status {status}" + (" (the app cannot be imported)" if status == 2 else "") + f", {state}"
        if code in (2, 3):  # CLD_KILLED, CLD_DUMPED
            return f"killed by signal {status}, {state}"
        return f"result {result}, {state}"

    def timeouts(self, number: int) -> tuple[float, float]:
        """The instance unit's TimeoutStartSec and TimeoutStopSec, in seconds."""
        path = self._call(b"LoadUnit", b"s", [unit_name(number).encode()])
        start = int(self._property(path, SERVICE, b"TimeoutStartUSec", b"t"))
        stop = int(self._property(path, SERVICE, b"TimeoutStopUSec", b"t"))
        return start / 1e6, stop / 1e6

    def _with_times(self, unit: WorkerUnit, path: bytes) -> WorkerUnit:
        left = int(self._property(path, UNIT, b"InactiveExitTimestamp", b"t"))
        entered = int(self._property(path, UNIT, b"ActiveEnterTimestamp", b"t")) if unit.active_state == "active" else 0
        return replace(unit, started=left / 1e6 if left else None, since=entered / 1e6 if entered else unit.since)

    def timer(self, name: str = "dramactl.timer") -> TimerInfo:
        """The scaler timer: state, interval, last and next tick."""
        path = self._call(b"LoadUnit", b"s", [name.encode()])
        active = _text(self._property(path, UNIT, b"ActiveState", b"s"))
        load = _text(self._property(path, UNIT, b"LoadState", b"s"))
        if load != "loaded":
            return TimerInfo(active_state=f"{active} ({load})", interval=None, last=None, next=None)
        timers = self._property(path, TIMER, b"TimersMonotonic", b"a(stt)")
        interval = next((usec / 1e6 for base, usec, _ in timers if _text(base) == "OnUnitActiveUSec"), None)
        last_us = int(self._property(path, TIMER, b"LastTriggerUSec", b"t"))
        next_mono = int(self._property(path, TIMER, b"NextElapseUSecMonotonic", b"t"))
        pending = active == "active" and 0 < next_mono < 2**63
        next_at = time.time() + next_mono / 1e6 - time.monotonic() if pending else None
        return TimerInfo(active_state=active, interval=interval, last=last_us / 1e6 if last_us else None, next=next_at)

    # -- changing ---------------------------------------------------------
    def _subscribe(self) -> None:
        if self._subscribed:
            return
        self.bus.match_signal(SYSTEMD, MANAGER_PATH, MANAGER, b"JobRemoved", _on_job_removed, self._removed)
        self._call(b"Subscribe")
        self._subscribed = True

    def start(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        """Start instances and wait for their jobs (with Type=notify: until they consume)."""
        return self._run_jobs(b"StartUnit", "start", numbers, timeout)

    def stop(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        """Stop instances (SIGTERM to the main process: Dramatiq drains) and wait for the jobs."""
        return self._run_jobs(b"StopUnit", "stop", numbers, timeout)

    def restart(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        return self._run_jobs(b"RestartUnit", "restart", numbers, timeout)

    def reset_failed(self, numbers: Iterable[int]) -> None:
        """reset-failed: forget a unit's failure and start-limit counter, so it can start again."""
        for n in numbers:
            self._call(b"ResetFailedUnit", b"s", [unit_name(n).encode()])

    def kill(self, numbers: Iterable[int], signal: int = 9) -> None:
        """Signal every process of the instances (KillUnit, who=all): for a replacement that
        never became ready, so holds no message. Root only: polkit does not give it to the scaler."""
        for n in numbers:
            self._call(b"KillUnit", b"ssi", [unit_name(n).encode(), b"all", signal])

    def reload(self) -> None:
        """daemon-reload, after unit files changed."""
        self._call(b"Reload")

    def start_unit(self, name: str, timeout: float = 30.0) -> JobResult:
        """Start any named unit (the timer, the target)."""
        return self._jobs(b"StartUnit", "start", [name], timeout)[0]

    def stop_unit(self, name: str, timeout: float = 90.0) -> JobResult:
        return self._jobs(b"StopUnit", "stop", [name], timeout)[0]

    def _run_jobs(self, method: bytes, verb: str, numbers: Iterable[int], timeout: float) -> list[JobResult]:
        return self._jobs(method, verb, [unit_name(n) for n in numbers], timeout)

    def _dispatch(self, jobs: Sequence[bytes]) -> bool:
        """Dispatch up to DISPATCH messages (one per ``process``: JobRemoved, through its callback,
        and the signals queued meanwhile); True once every job in ``jobs`` has been removed."""
        for _ in range(DISPATCH):
            self.bus.process()
            if all(job in self._removed for job in jobs):
                return True
        return False

    def _wait(self, seconds: float) -> None:
        """Until the bus's socket is readable or ``seconds`` pass, with the GIL released: pystemd's
        ``wait`` (sd_bus_wait) holds it, and a tick waiting for start jobs would starve its other
        threads, the fleet heartbeat's renewals (dramactl.seat) among them, for the whole wait."""
        fd = self.bus.get_fd()
        if fd < 0:
            self.bus.wait(int(seconds * 1e6))
            return
        poller = select.poll()  # not select.select: no limit on the descriptor's number
        poller.register(fd, select.POLLIN)
        poller.poll(seconds * 1000)

    def _jobs(self, method: bytes, verb: str, names: Sequence[str], timeout: float) -> list[JobResult]:
        """Queue all jobs at once, then wait for every JobRemoved (or the timeout)."""
        if not names:
            return []
        self._subscribe()
        jobs = [(name, self._call(method, b"ss", [name.encode(), b"replace"])) for name in names]
        deadline = time.monotonic() + timeout
        while any(job not in self._removed for _, job in jobs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            removed = len(self._removed)
            if self._dispatch([job for _, job in jobs]):
                break
            if len(self._removed) == removed:  # a round that removed jobs may have left more queued: go on at once
                self._wait(min(remaining, JOB_POLL))
        return [JobResult(name, verb, self._removed.pop(job, "pending")) for name, job in jobs]
