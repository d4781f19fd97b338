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
within TimeoutStartSec) ends the roll: started first, no old instance was stopped for it
and the old ones keep serving; at MAX_PROCESSES (or the fleet's cap) its old instance was
drained first to make room, so that one is not running any more (:attr:`Rolled.lost`,
:func:`lost_text`). The cause is one line. The planning is pure
(:func:`bound`, :func:`next_step`, :func:`drain_order`); the fleet is driven through ``fleet.py``.

When the tick recycles, and when not, is dramactl/recycle.py's; the step is :func:`recycle`.

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
    from .recycle import Recycle
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
    lost: list[tuple[int, str]] = field(default_factory=list)  # drained first, and its replacement did not start: gone (why it drained)

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
            # Not left to Restart= nor to the tick's recovery: stopped and reset now. Started first, the
            # fleet stays as it was before the step; drained first (stop_first), its old instance is gone
            # too (``rolled.lost``), and the caller says so (lost_text).
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
        if step.stop_first and not good:
            rolled.lost += [(n, step.why or AT_MAX) for n in step.stop]
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


# -- the replace step of a memory recycle (the tick; when: dramactl/recycle.py) --------

def recycle(
    fleet: Fleet, instances: Sequence[WorkerUnit], pick: Recycle, max_processes: int, *, stop_wait: float,
    start_timeout: float | None = None, seat: "Seat | None" = None,
) -> Rolled:
    """Replace one instance (the tick): its replacement starts and consumes, then it drains.

    The replacement gets the unit's own TimeoutStartSec (+5 s, at most an hour), as a rolling
    restart's do, unless ``start_timeout``. The tick waits ``stop_wait`` for the drain and leaves
    the rest to systemd; at MAX_PROCESSES (or, with a ``seat``, at the fleet's FLEET_MAX_PROCESSES
    beside the other hosts' claims) the old instance drains first and the tick waits for all of
    it, as its number is reused."""
    taken = {u.number for u in instances if u.occupies or u.is_stopping or u.is_failed}
    running = sum(1 for u in instances if u.occupies)
    limit, why = _limit(seat, running, max_processes, 1)
    step = next_step(taken, running, [pick.number], limit, 1, why)
    unit_start, unit_stop = fleet.timeouts(pick.number)
    if start_timeout is None:
        start_timeout = _seconds(unit_start, START_TIMEOUT_CAP) + 5.0
    stop_timeout = stop_wait
    if step.stop_first:
        stop_timeout = _seconds(unit_stop, START_TIMEOUT_CAP) + 5.0
    return replace_step(fleet, step, start_timeout=start_timeout, stop_timeout=stop_timeout)


def lost_text(rolled: Rolled, paused_without_size: bool) -> tuple[str, str]:
    """What a step that drained first and whose replacement did not start left (``rolled.lost``), and what
    brings the instance back, as two phrases. The tick's policy starts what the fleet needs (a manual
    size while paused included) and resets a start that fails with backoff (policy.safeguard); paused
    without a manual size, a tick holds what runs, so nothing does."""
    names = " ".join(f"@{n}" for n, _ in rolled.lost)
    why = rolled.lost[-1][1]
    one = len(rolled.lost) == 1
    what = (
        f"{names} {'was' if one else 'were'} drained first to make room ({why}) and {'its replacement' if one else 'their replacements'}"
        f" did not start: {names} {'is' if one else 'are'} not running"
    )
    if paused_without_size:
        then = f"autoscaling is paused with no manual size, so no tick starts {'it' if one else 'them'} again: `dramactl scale-up` or `dramactl resume` does"
    else:
        then = "the next tick starts what the fleet needs again, and resets a start that fails, with backoff"
    return what, then

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


def _seat(settings, state, progress: Progress) -> "Seat | None":
    """This host's seat in its fleet (FLEET_NAME), or None on one host."""
    if not settings.fleet_name:
        return None
    from .queue import connect
    from .scaler import fleet_marks
    from .seat import Seat

    return Seat(connect(settings), settings, paused=state.paused, report=progress, marks=fleet_marks(settings, state))


def _number(job: JobResult) -> int:
    return int(job.unit.split("@")[1].split(".")[0])


def _shown(job: JobResult) -> str:
    return "still draining" if job.verb == "stop" and job.result == "pending" else job.result


def restart(settings, *, batch: int = 1, fleet: Fleet | None = None, progress: Progress = lambda line: None, wait: float | None = None):
    """``dramactl restart``: roll every instance under the tick lock; an Outcome for the journal.

    ``outcome.failure`` names the cause when a replacement did not start (the roll
    stopped there) and what that left: the instances not yet replaced still serving, and
    an instance drained first to make room (at MAX_PROCESSES) not running (:func:`after_failure`)."""
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
        seat = _seat(settings, state, progress)
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
        store.save(state.counted(sum(j.ok for j in rolled.started), sum(j.ok for j in rolled.stopped)).wait_ended())  # as scaler._counted
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
        outcome.failure = None if rolled.failure is None else f"{rolled.failure}; {after_failure(rolled, up, state.paused and state.size is None)}"
        return outcome


def after_failure(rolled: Rolled, up: Sequence[int], paused_without_size: bool) -> str:
    """What a roll that stopped at a replacement that did not start left, for its one line (pure):
    the instances not yet replaced keep serving; one drained first to make room is not running."""
    done = {old for old, _ in rolled.replaced}
    gone = {n for n, _ in rolled.lost}
    waiting = [n for n in up if n not in done and n not in gone]
    if not rolled.lost:
        return "the instances not yet replaced keep serving"
    what, then = lost_text(rolled, paused_without_size)
    return "; ".join([what, *(["the instances not yet replaced keep serving"] if waiting else []), then])
