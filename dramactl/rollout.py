"""Replace, then drain: new processes for running instances without losing capacity.

One step, used by ``dramactl restart`` (a rolling restart of every instance, so each
runs the code and settings on disk now) and by the tick's memory recycle
(WORKER_RECYCLE_MEMORY, one instance per tick):

1. start a replacement at the lowest free number, when MAX_PROCESSES leaves room
   (else drain one old instance first: the only case where capacity dips by one); on a
   host of a shared fleet the replacement's place is claimed in the fleet first, and
   FLEET_MAX_PROCESSES bounds it the same way (:mod:`dramactl.seat`);
2. wait for its start job, which for a ``Type=notify`` unit ends at READY=1, i.e.
   when the new process consumes;
3. only then stop the old one: SIGTERM, Dramatiq finishes or requeues what it holds.

A replacement that does not start (the new code fails to import: exit 2; no READY=1
within TimeoutStartSec) ends the roll before any old instance is stopped for it: the
old ones keep serving, and the cause is one line. The planning is pure
(:func:`bound`, :func:`next_step`, :func:`drain_order`); the fleet is driven through ``fleet.py``.

While ``dramactl restart`` runs it holds the tick lock, so ticks change nothing; it
also leaves a marker (``rollout.json`` in the state directory) so that a skipped tick
can say why (:func:`in_progress`).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from .fleet import Fleet, FleetError, JobResult
from .instance import WorkerUnit
from .state import read_regular, write_in_state_dir
from .stats import InstanceReport

if TYPE_CHECKING:  # seat (and share) only with FLEET_NAME
    from .seat import Seat

MARKER = "rollout.json"
AT_MAX = "MAX_PROCESSES reached"
START_TIMEOUT_CAP = 3600.0  # seconds; TimeoutStartSec=infinity waits at most this long
Progress = Callable[[str], None]


class RolloutFailed(RuntimeError):
    """A replacement did not start; the message names the instance and the cause."""


@dataclass(frozen=True)
class Step:
    """One replace-then-drain step: start ``start`` (first, unless ``stop_first``), then stop ``stop``;
    ``why``: the limit that made it drain first."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    stop_first: bool = False
    why: str = field(default="", compare=False)


def bound(max_processes: int, fleet_allows: int | None = None, fleet_why: str = "") -> tuple[int, str]:
    """The most instances this host may run during a step, and what reaching it means (pure):
    MAX_PROCESSES, or fewer when the fleet allows fewer (FLEET_MAX_PROCESSES beside the
    other hosts' claims, ``fleet_why``); ``fleet_allows`` None: one host."""
    if fleet_allows is not None and fleet_allows < max_processes:
        return fleet_allows, fleet_why
    return max_processes, AT_MAX


def next_step(taken: Iterable[int], running: int, old: Sequence[int], max_processes: int, batch: int = 1, why: str = AT_MAX) -> Step:
    """The next step of a roll (pure).

    ``taken``: the numbers systemd holds (up, coming back, stopping, failed);
    ``running``: how many count against MAX_PROCESSES (up or coming back);
    ``old``: the instances still to replace, in the order to drain them;
    ``max_processes``: the most this host may run (:func:`bound`; ``why`` says what
    reaching it means). Up to ``batch`` replacements start first, as far as that leaves
    room; with no room, one old instance is drained first and its number reused.
    """
    taken = set(taken)
    todo = tuple(old[: max(1, batch)])
    if not todo:
        return Step((), ())
    room = max_processes - running
    if room <= 0:
        return Step(start=(todo[0],), stop=(todo[0],), stop_first=True, why=why)
    count = min(len(todo), room)
    free = (n for n in range(1, 10**6) if n not in taken)
    return Step(start=tuple(next(free) for _ in range(count)), stop=todo[:count])


def drain_order(old: Sequence[WorkerUnit], reports: Mapping[int, InstanceReport] | None = None, now: float | None = None) -> list[int]:
    """Which old instances to drain first: the scale-down's own order (:func:`dramactl.victims.rank`):
    idle ones, then those whose work started most recently; the highest numbers without reports."""
    from .victims import rank

    return [p.number for p in rank([u.number for u in old], reports, time.time() if now is None else now)]


@dataclass
class Rolled:
    """What a roll did: the jobs, in order, and the failure that ended it early, if any."""

    started: list[JobResult] = field(default_factory=list)
    stopped: list[JobResult] = field(default_factory=list)
    replaced: list[tuple[int, int]] = field(default_factory=list)  # (old, new)
    failure: str | None = None
    drained_first: list[tuple[int, str]] = field(default_factory=list)  # (old instance, why it drained before its replacement)

    def drained_text(self) -> list[str]:
        """'@2 drained before its replacement (MAX_PROCESSES reached)', one per such step."""
        return [f"@{n} drained before its replacement ({why})" for n, why in self.drained_first]


def _seconds(value: float, cap: float) -> float:
    return cap if value <= 0 or value > cap else value


def replace_step(
    fleet: Fleet,
    step: Step,
    *,
    start_timeout: float,
    stop_timeout: float,
    progress: Progress = lambda line: None,
    rolled: Rolled | None = None,
) -> Rolled:
    """Run one :class:`Step`; ``rolled.failure`` says why it stopped short (a replacement did not start)."""
    rolled = rolled if rolled is not None else Rolled()
    pairs = " ".join(f"@{new} for @{old}" for new, old in zip(step.start, step.stop))

    def drain(numbers: Sequence[int]) -> None:
        progress("draining " + " ".join(f"@{n}" for n in numbers))
        began = time.monotonic()
        jobs = fleet.stop(numbers, timeout=stop_timeout)
        rolled.stopped += jobs
        progress("  " + " ".join(f"@{_number(j)} {_shown(j)}" for j in jobs) + f" after {time.monotonic() - began:.1f}s")

    if step.stop_first:
        progress(f"{step.why or AT_MAX}: draining @{step.stop[0]} before its replacement")
        rolled.drained_first.append((step.stop[0], step.why or AT_MAX))
        drain(step.stop)
    progress(f"starting {pairs}; waiting for READY=1")
    began = time.monotonic()
    jobs = fleet.start(step.start, timeout=start_timeout)
    rolled.started += jobs
    bad = [j for j in jobs if j.result != "done"]
    if bad:
        causes = []
        for job in bad:
            n = _number(job)
            why = fleet.why_not_started(n)
            if job.result == "pending" and "TimeoutStartSec" not in why:
                why = f"no READY=1 within {start_timeout:g}s"
            causes.append(f"dramatiq-worker@{n} did not start ({why}; journalctl -u dramatiq-worker@{n})")
            # Not left to Restart= nor to the tick's recovery: the fleet stays as it was before the step.
            # It never consumed, so it holds no message: no drain needed (SIGKILL where allowed, i.e. as root).
            try:
                fleet.kill([n])
            except FleetError:
                pass
            fleet.stop([n], timeout=stop_timeout)
            try:
                fleet.reset_failed([n])
            except FleetError:  # already gone (unloaded once inactive): nothing to reset
                pass
        good = [j for j in jobs if j.result == "done"]
        # Replacements that did start stand in for as many old instances; the rest keep serving.
        if good and not step.stop_first:
            drain(step.stop[: len(good)])
        rolled.replaced += list(zip(step.stop, (_number(j) for j in good)))
        rolled.failure = "; ".join(causes)
        return rolled
    progress("  " + " ".join(f"@{n}" for n in step.start) + f" ready in {time.monotonic() - began:.1f}s")
    if not step.stop_first:
        drain(step.stop)
    rolled.replaced += list(zip(step.stop, step.start))
    return rolled


def roll(
    fleet: Fleet,
    instances: Sequence[WorkerUnit],
    max_processes: int,
    *,
    batch: int = 1,
    progress: Progress = lambda line: None,
    reports: Mapping[int, InstanceReport] | None = None,
    now: float | None = None,
    seat: "Seat | None" = None,
) -> Rolled:
    """Replace every instance up now, ``batch`` at a time, idle ones first; stop at the first failure.

    ``seat`` (a host of a shared fleet): each step's replacements are claimed in the fleet
    before they start, and the claim drops back to what runs after it."""
    old = drain_order([u for u in instances if u.is_up], reports, now)
    rolled = Rolled()
    if not old:
        return rolled
    start_timeout, stop_timeout = fleet.timeouts(old[0])
    # With Restart=on-failure a start job outlives a start that timed out (systemd retries it): past
    # TimeoutStartSec and a little, the replacement is given up on (its Result= then names the timeout).
    start_timeout = _seconds(start_timeout, START_TIMEOUT_CAP) + 5.0
    stop_timeout = _seconds(stop_timeout, START_TIMEOUT_CAP) + 5.0
    taken = {u.number for u in instances if u.occupies or u.is_stopping or u.is_failed}
    running = sum(1 for u in instances if u.occupies)
    while old:
        limit, why = _limit(seat, running, max_processes, min(max(1, batch), len(old)))
        step = next_step(taken, running, old, limit, batch, why)
        replace_step(fleet, step, start_timeout=start_timeout, stop_timeout=stop_timeout, progress=progress, rolled=rolled)
        if seat is not None:
            seat.beat(running)  # the replaced instances are stopping: the claim is what runs again
        if rolled.failure:
            return rolled
        taken = (taken - set(step.stop)) | set(step.start)
        old = [n for n in old if n not in step.stop]
    return rolled


def _limit(seat: "Seat | None", running: int, max_processes: int, wanted: int) -> tuple[int, str]:
    """:func:`bound` for the next step; with a ``seat``, the replacements' places claimed in the fleet first."""
    wanted = min(wanted, max_processes - running)
    if seat is None or wanted <= 0:
        if seat is not None:
            seat.beat(running)
        return bound(max_processes)
    allowed, why = seat.room(running, wanted)
    return bound(max_processes, allowed, why)


# -- memory recycling (the tick) ---------------------------------------------------

@dataclass(frozen=True)
class Recycle:
    """An instance whose memory passed WORKER_RECYCLE_MEMORY."""

    number: int
    memory: int
    limit: int

    def __str__(self) -> str:
        from .settings import size_text

        return f"recycle @{self.number} ({size_text(self.memory)} > {size_text(self.limit)})"


def over_memory(instances: Sequence[WorkerUnit], limit: int) -> Recycle | None:
    """The running instance furthest past ``limit`` (bytes), if any (pure). One a tick;
    none while any instance fails (growing or churning the fleet then only adds failures)."""
    if not limit or any(u.is_failing for u in instances):
        return None
    over = [u for u in instances if u.active_state == "active" and not u.job and u.memory is not None and u.memory > limit]
    if not over:
        return None
    worst = max(over, key=lambda u: (u.memory, u.number))
    return Recycle(worst.number, worst.memory or 0, limit)


def recycle(
    fleet: Fleet, instances: Sequence[WorkerUnit], pick: Recycle, max_processes: int, *, start_timeout: float, stop_wait: float, seat: "Seat | None" = None
) -> Rolled:
    """Replace one instance (the tick): its replacement starts and consumes, then it drains.

    The tick waits ``stop_wait`` for the drain and leaves the rest to systemd; at
    MAX_PROCESSES (or, with a ``seat``, at the fleet's FLEET_MAX_PROCESSES beside the other
    hosts' claims) the old instance drains first and the tick waits for all of it, as
    its number is reused."""
    taken = {u.number for u in instances if u.occupies or u.is_stopping or u.is_failed}
    running = sum(1 for u in instances if u.occupies)
    limit, why = _limit(seat, running, max_processes, 1)
    step = next_step(taken, running, [pick.number], limit, 1, why)
    stop_timeout = stop_wait
    if step.stop_first:
        stop_timeout = _seconds(fleet.timeouts(pick.number)[1], START_TIMEOUT_CAP) + 5.0
    return replace_step(fleet, step, start_timeout=start_timeout, stop_timeout=stop_timeout)


# -- the marker a skipped tick reads ------------------------------------------------

def mark(state_dir: str, instances: Sequence[int], command: str = "restart") -> Path:
    """Write the marker (under the tick lock): this process rolls these instances."""
    path = Path(state_dir) / MARKER
    write_in_state_dir(path, json.dumps({"pid": os.getpid(), "since": time.time(), "instances": list(instances), "command": command}))
    return path


def unmark(state_dir: str) -> None:
    try:
        (Path(state_dir) / MARKER).unlink()
    except FileNotFoundError:
        pass


def in_progress(state_dir: str) -> str | None:
    """A phrase for a skipped tick when a live roll holds the lock, else None.

    A marker that cannot be read, or whose process is gone (killed mid-roll), is no roll."""
    try:
        data = json.loads(read_regular(Path(state_dir) / MARKER))
        pid, since, count = int(data["pid"]), float(data["since"]), len(data["instances"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # root's process, seen from the dramactl user: alive
        pass
    when = time.strftime("%H:%M:%S", time.localtime(since))
    return f"rolling restart of {count} instance(s) in progress since {when} (pid {pid}); autoscaling resumes when it ends"


def _seat(settings, paused: bool, progress: Progress) -> "Seat | None":
    """This host's seat in its fleet (FLEET_NAME), or None on one host."""
    if not settings.fleet_name:
        return None
    from .queue import connect
    from .seat import Seat

    return Seat(connect(settings), settings, paused=paused, report=progress)


def _number(job: JobResult) -> int:
    return int(job.unit.split("@")[1].split(".")[0])


def _shown(job: JobResult) -> str:
    return "still draining" if job.verb == "stop" and job.result == "pending" else job.result


def restart(settings, *, batch: int = 1, fleet: Fleet | None = None, progress: Progress = lambda line: None, wait: float | None = None):
    """``dramactl restart``: roll every instance under the tick lock; an Outcome for the journal.

    ``outcome.failure`` names the cause when a replacement did not start (the roll
    stopped there, the old instances still serving)."""
    from .policy import ScalingDecision
    from .scaler import Outcome, _locked, _probe_if_readable, pauses_ended, threads_of
    from .state import LOCK_WAIT
    from .worker import worker_argv

    if not 1 <= batch <= settings.max_processes:
        from .settings import SettingsError

        raise SettingsError("--batch", f"{batch} is out of range", f"use 1 to MAX_PROCESSES={settings.max_processes}")
    fleet = fleet or Fleet()
    began = time.monotonic()
    with _locked(settings, wait=float(LOCK_WAIT if wait is None else wait)) as store:
        state = store.load()
        worker_argv(settings, threads_of(settings, state))  # a command that cannot run stops us before any change
        probe = _probe_if_readable(settings)
        stats = probe.queues if probe is not None else None
        instances = fleet.instances()
        up = [u.number for u in instances if u.is_up]
        mark(settings.state_dir, up)
        seat = _seat(settings, state.paused, progress)
        if seat is not None:
            seat.beat(sum(1 for u in instances if u.occupies))
        try:
            progress(f"rolling restart of {len(up)} instance(s), {batch} at a time: " + (" ".join(f"@{n}" for n in up) or "nothing runs"))
            # On a host of a fleet the heartbeat is renewed while the roll holds the ticks.
            # A roll ends any wait (a replacement of a paused instance takes its number: unpaused).
            with seat.kept() if seat is not None else nullcontext(), pauses_ended(settings, probe, state):
                rolled = roll(
                    fleet, instances, settings.max_processes, batch=batch, progress=progress,
                    reports=probe.instances if probe is not None else None, now=probe.at if probe is not None else None, seat=seat,
                )
        finally:
            unmark(settings.state_dir)
        store.save(state.counted(len(rolled.started), len(rolled.stopped)))
        elapsed = time.monotonic() - began
        if rolled.failure:
            reason = f"rolling restart stopped after {len(rolled.replaced)} of {len(up)} instance(s)"
        else:
            reason = f"rolling restart: {len(rolled.replaced)} instance(s) replaced in {elapsed:.1f}s"
        if rolled.drained_first:
            reason += f"; {len(rolled.drained_first)} drained before their replacement ({rolled.drained_first[-1][1]})"
        if state.paused:
            reason += "; autoscaling paused"
        outcome = Outcome(ScalingDecision(len(up), len(up), reason), stats, paused=state.paused, instances=list(instances))
        outcome.started, outcome.stopped = rolled.started, rolled.stopped
        outcome.duration = round(elapsed, 3)
        outcome.failure = rolled.failure
        return outcome
