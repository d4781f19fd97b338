"""Replay the recorded history under other settings: ``dramactl replay`` and ``dramactl tune``'s runs.

The journal keeps, for every tick, each queue's backlog (ready + due + in flight +
orphaned) and the worker hook's cumulative counters (``done_total``: messages
completed, ``busy_seconds_total``: seconds spent on them, ``busy_sq_total``: the sum
of those seconds squared) in ``DRAMACTL_QUEUES``, and
the instances up before the step (``DRAMACTL_CURRENT``). Between two entries

    arrivals = (done now - done before) + (backlog now - backlog before)

(a counter that went down was reset: its new value is what was done since). An
entry's figures are placed when the tick read them (its stamp less its
``DRAMACTL_DURATION``: it acts, then writes). The read bounds when they came: the
queue is first in, first out, so its ready messages all came after the oldest of
them (``oldest_age`` before the read) and no later than the newest (``newest_age``,
the list's tail; the read itself when an entry lacks it), and the rest before; within
those bounds they are spread at random (:func:`spread`). The k-th message rebuilt gets the mean service
time of the interval in which the k-th completion was counted (the queue is served
first in, first out), drawn lognormal around it with the coefficient of variation
the hook's ``busy_sq_total`` (sum of squared busy seconds) gives, pooled within
intervals, or ``SERVICE_CV`` for a history without it (an older hook). The backlog
of the first entry arrives at its start.

The rebuilt messages go through :mod:`dramactl.sim.simulator` with the real policy
(:class:`~dramactl.sim.controllers.DramactlController`), the same messages for every
run: the settings in force, each ``--set`` variant, static MAX, HPA, and the lower
bound of :mod:`dramactl.sim.bound`. A run with the recorded CHECK_INTERVAL ticks when
the recorded ticks read the queues (:func:`schedule`); its actions are counted in the
range, as the recorded ones; their worker-hours over one common period, to when the
last of them rests (:func:`charge`). The settings-in-force run is compared with what was
recorded (fleet size and backlog at each recorded tick): the fit error.

Damaged or hostile histories are bounded: :func:`counter` leaves out a counter no float
holds, :func:`rebuild` refuses more than MAX_MESSAGES messages and a mean service above
MAX_SERVICE, :func:`check_span` a range shorter than two ticks or longer than MAX_TICKS,
and every run stops at RUN_TICKS (:func:`simulate`): one line each (ReplayError).

Pure apart from :func:`read_samples` (the journal); nothing here changes anything.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from .settings import Settings, SettingsError, parse

SERVICE_CV = 1.0  # the spread of service times assumed (exponential-like) when the history has no busy_sq_total
MAX_MESSAGES = 2_000_000  # a replay holds every message rebuilt in memory (~100 bytes each)
#: The longest mean service time an interval may show: a day. Dramatiq's time limit defaults to 10 minutes; a
#: mean above a day is a damaged counter (busy_seconds_total 1e12 on one message would be replayed as one
#: service of 30 000 years, the simulator ticking until it ends).
MAX_SERVICE = 86_400.0
#: The most ticks a run may take over the range (range / the smallest tick interval of the runs), checked before
#: any run: a week at CHECK_INTERVAL=3 (201 600), a month at 15 s (172 800). The simulator runs the real policy
#: once a tick, 0.8-1 ms each (docs/replay.md#cost): a few minutes a run at most.
MAX_TICKS = 250_000
#: The most ticks a run may take in all, the drain after the range included (a bound, not an estimate: a run that
#: does not end by then is refused in one line rather than left to run for hours).
RUN_TICKS = 2 * MAX_TICKS
#: The settings a replay (and ``tune``) may change: those the policy and the drain read.
CHANGEABLE = (
    "POLICY", "MIN_PROCESSES", "MAX_PROCESSES", "WORKER_THREADS", "CHECK_INTERVAL", "MAX_QUEUE_WAIT",
    "TARGET_BACKLOG_PER_WORKER", "SCALE_DOWN_STABILIZATION", "MAX_SCALE_UP_STEP", "MAX_SCALE_DOWN_STEP",
    "SCALE_UP_THRESHOLD_MULTIPLIER", "SCALE_DOWN_THRESHOLD_MULTIPLIER", "GRACEFUL_SHUTDOWN_TIMEOUT",
)
HPA_INTERVAL = 15.0

Progress = Callable[[], None]


@dataclass(frozen=True)
class Sample:
    """The few numbers of one journal entry a replay needs."""

    at: float
    tick: bool  # a tick (the timer's), not a manual change
    current: int
    backlog: int
    counters: tuple[tuple[str, float, float], ...]  # (queue, done_total, busy_seconds_total) known
    acted: bool
    ready: int = 0  # ready messages, all queues
    oldest_age: float | None = None  # seconds the oldest ready message had waited (None: nothing ready)
    took: float = 0.0  # the tick's DRAMACTL_DURATION: the entry is written when its jobs ended
    squares: tuple[tuple[str, float], ...] = ()  # (queue, busy_sq_total) known: a hook that counts them
    newest_age: float | None = None  # seconds since the newest ready message was sent (None: unknown, or an older entry)
    unread: tuple[str, ...] = ()  # the queues whose read failed: their figures in the entry are zeros
    backlogs: tuple[tuple[str, int], ...] = ()  # (queue, backlog) of the queues read

    @property
    def probe(self) -> float:
        """When the figures were read: a tick reads Redis first, then acts (start jobs last until
        READY=1, stop jobs until the drain), and the journal stamps its entry at the end."""
        return self.at - self.took

    @classmethod
    def of(cls, entry) -> "Sample":
        """From a :class:`dramactl.history.Entry`; damaged per-queue figures are left out (:func:`counter`)."""
        from .history import MAX_COUNT

        counters, squares, unread, backlogs = [], [], [], []
        for q in entry.queues if isinstance(entry.queues, list) else ():
            if not isinstance(q, dict):
                continue
            if q.get("error"):
                unread.append(str(q.get("name", "")))
            elif (backlog := counter(q.get("backlog"))) is not None and backlog <= MAX_COUNT:
                backlogs.append((str(q.get("name", "")), int(backlog)))
            done, busy = counter(q.get("done_total")), counter(q.get("busy_seconds_total"))
            if done is not None and busy is not None:
                counters.append((str(q.get("name", "")), done, busy))
                sq = counter(q.get("busy_sq_total"))
                if sq is not None:
                    squares.append((str(q.get("name", "")), sq))
        took = entry.duration if isinstance(entry.duration, (int, float)) and 0 <= entry.duration < 3600 else 0.0
        age = entry.oldest_age if isinstance(entry.oldest_age, (int, float)) and 0 <= entry.oldest_age < math.inf else None
        newest = entry.newest_age if isinstance(entry.newest_age, (int, float)) and 0 <= entry.newest_age < math.inf else None
        return cls(entry.at, entry.kind == "tick", entry.current, entry.backlog, tuple(counters), bool(entry.started or entry.stopped),
                   max(0, entry.ready), age, float(took), tuple(squares), newest, tuple(unread), tuple(backlogs))


def counter(value) -> float | None:
    """One of the hook's cumulative counters as a float, or None when it cannot be one: not a number (a string,
    a bool, null), negative, or not finite (Infinity, NaN, or an integer no float holds, such as a 400-digit one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if 0 <= number < math.inf else None


def read_samples(since: float | None, until: float | None, progress: Progress | None = None) -> list[Sample]:
    """The samples of the journal's entries in the range (history's access rules: JournalUnreadable)."""
    from . import history

    out = []
    for entry in history.entries(since, until):
        out.append(Sample.of(entry))
        if progress is not None:
            progress()
    return out


class ReplayError(ValueError):
    """The range cannot be replayed; the message says why and what to do."""


@dataclass
class Rebuilt:
    """The messages rebuilt from a range, and what was recorded in it (times from its start)."""

    start: float
    duration: float
    arrivals: list[float]
    services: list[float]
    initial: int  # instances up at the first entry
    recorded: list[tuple[float, int, int]]  # (at, instances up, backlog) at each recorded tick
    actions: int
    mean_service: float
    startup: tuple[float, float] = (3.0, 6.0)  # instances' start-up, drawn uniformly in this range (seconds)
    startup_source: str = "assumed"
    service_cv: float = SERVICE_CV  # the spread drawn around each interval's mean
    cv_source: str = "assumed"  # "measured by the hook" when its sums of squares gave it
    left: int = 0  # messages that left the backlog without completing (a purge, expiry, dead-lettering): not replayed

    @property
    def schedule(self) -> list[float]:
        """When the recorded ticks read the queues."""
        return [r[0] for r in self.recorded]

    @property
    def interval(self) -> float:
        """The median spacing of the recorded ticks."""
        gaps = [b[0] - a[0] for a, b in zip(self.recorded, self.recorded[1:])]
        return statistics.median(gaps) if gaps else 0.0

    def recorded_figures(self) -> dict:
        """Worker-hours, actions/hour and peak of what really ran."""
        ws = sum(a[1] * (b[0] - a[0]) for a, b in zip(self.recorded, self.recorded[1:]))
        hours = max(self.duration, 1e-9) / 3600.0
        return {"p95_wait": None, "worker_hours": ws / 3600.0, "actions_per_hour": self.actions / hours,
                "peak_workers": max((r[1] for r in self.recorded), default=0)}


def spread(rng: random.Random, count: int, start: float, end: float, ready: int, oldest_age: float | None,
           newest_age: float | None = None) -> list[float]:
    """When the ``count`` messages that arrived between two reads (at ``start`` and ``end``)
    came, sorted. The read at ``end`` bounds them: the queue is served first in, first out,
    so its ``ready`` messages all came after the oldest of them (``oldest_age`` before
    ``end``, which is when that one came) and no later than the newest (``newest_age``
    before ``end``, when that one came), and the others before the oldest. Within those
    bounds they are spread at random (a burst at one moment shows at that moment). A
    ``newest_age`` that is absent (an older entry), out of order with ``oldest_age`` or
    outside the interval bounds nothing: the ready ones then spread up to ``end``."""
    if count <= 0:
        return []
    split = end - oldest_age if oldest_age is not None else start
    if not start < split <= end:  # nothing ready, or its oldest came before this interval: no bound inside it
        return sorted(rng.uniform(start, end) for _ in range(count))
    top = end - newest_age if newest_age is not None else math.nan
    bounded = split <= top <= end  # False for NaN: no newest, or not one of these ready messages
    late = min(count, max(1, ready))
    early = [rng.uniform(start, split) for _ in range(count - late)]
    if late == 1:
        return sorted(early) + [split]
    middle = [rng.uniform(split, top if bounded else end) for _ in range(late - 2)]
    last = top if bounded else rng.uniform(split, end)  # the newest at its moment, when the read gave it
    return sorted(early) + [split] + sorted(middle + [last])


def rebuild(samples: Sequence[Sample], *, seed: int = 0, cv: float | None = None) -> Rebuilt:
    """Arrivals and service times from the entries' counters (see the module docstring);
    ``cv``: the spread of service times; by default the one the hook's sums of squares give
    (the variance within each interval, pooled), else ``SERVICE_CV``.

    A queue's counters count from when its hook first ran, so at its first appearance in the
    range (the first entry, or a later one when its probe failed before) they are the starting
    point: nothing is counted for it until the next entry. A counter that went down was reset
    and counts from zero. A backlog that falls by more than the completions explain lost
    messages without completing (a purge, expired or dead-lettered ones): the part the hook's
    flush could still count late (at most the next interval's completions) is carried to the
    next interval, the rest is taken out of the newest messages rebuilt (first in, first out:
    they were the ones waiting) and counted in ``left``. A queue whose read failed (its figures
    zeros) stands at its last backlog read, not at zero: its messages did not leave.

    ReplayError (one line) for a range with too few counters, more than MAX_MESSAGES messages,
    counters that add up to more than a float holds, or an interval whose mean service is above
    MAX_SERVICE (both name the entry's time)."""
    samples = sorted(samples, key=lambda s: s.probe)
    with_counters = [s for s in samples if s.counters]
    if len(with_counters) < 2:
        raise ReplayError("fewer than two entries with the worker hook's counters in this range: "
                          "widen it with --since/--until (the workers need dramactl's hook, which `dramactl install` sets up)")
    first = with_counters[0]
    t0 = first.probe
    too_many = ReplayError(f"the range holds more than {MAX_MESSAGES:,} messages, more than a replay keeps in memory: "
                           "narrow it with --since/--until")
    if first.backlog > MAX_MESSAGES:  # checked before the list is made (a backlog of 10**10 is 80 GB of it)
        raise too_many

    # The counters, interval by interval: completions, their mean service, their spread.
    done_marks: list[float] = []  # cumulative completions at the end of each interval
    means: list[float] = []  # the mean service of the completions counted in each interval
    counted: list[float] = []  # the completions counted in each interval (of with_counters[1:])
    prev = {name: (done, busy) for name, done, busy in first.counters}
    prev_sq = dict(first.squares)
    spread_sums = [0.0, 0.0]  # within-interval variance of service times, summed; what a CV of 1 would give
    total_done, total_busy = 0.0, 0.0
    for s in with_counters[1:]:
        d_done = d_busy = d_sq = 0.0
        squares, all_squared = dict(s.squares), True
        for name, done, busy in s.counters:
            before = prev.get(name)
            if before is None:  # first seen in the range: counts since its hook first ran, the starting point
                prev[name] = (done, busy)
                if name in squares:
                    prev_sq[name] = squares[name]
                continue
            if done < before[0] or busy < before[1]:
                before = (0.0, 0.0)  # its counters were reset: what they say now was done since
                prev_sq.pop(name, None)
            d_done += done - before[0]
            d_busy += busy - before[1]
            prev[name] = (done, busy)
            sq, sq_before = squares.get(name), prev_sq.get(name, 0.0 if before == (0.0, 0.0) else None)
            if done > before[0] and (sq is None or sq_before is None or sq < sq_before):
                all_squared = False  # a queue's completions without their squares: this interval's spread is unknown
            elif sq is not None and sq_before is not None:
                d_sq += sq - sq_before
            if sq is not None:
                prev_sq[name] = sq
            else:
                prev_sq.pop(name, None)
        for value, name in ((d_done, "done_total"), (d_busy, "busy_seconds_total")):
            if not math.isfinite(value):
                raise ReplayError(f"the entry of {_when(s.at)}: the queues' {name} (DRAMACTL_QUEUES) add up to more than a float "
                                  "holds, a damaged counter: leave that entry out of the range with --since/--until")
        if d_done > 0 and not d_busy / d_done <= MAX_SERVICE:
            raise ReplayError(f"the entry of {_when(s.at)}: its busy_seconds_total (DRAMACTL_QUEUES) gives a mean service of "
                              f"{d_busy / d_done:.3g}s over {d_done:g} messages, more than a day ({MAX_SERVICE:.0f}s), a damaged "
                              "counter: leave that entry out of the range with --since/--until")
        if d_done > 0 and not (math.isfinite(d_sq) and d_sq <= d_busy * d_busy * (1.0 + 1e-9) + 1e-9):
            all_squared = False  # squares no service times could give (their sum above the busy time's square): unknown
        if all_squared and d_done > 0:
            squared_mean = d_busy * d_busy / d_done
            spread_sums[0] += max(0.0, d_sq - squared_mean)
            spread_sums[1] += squared_mean
        counted.append(d_done)
        if d_done > 0:
            total_done += d_done
            total_busy += d_busy
            done_marks.append(total_done)
            means.append(d_busy / d_done)
    mean_all = total_busy / total_done if total_done > 0 else 0.0
    if mean_all <= 0:
        raise ReplayError("no completed message counted in this range: nothing to replay (widen it with --since/--until)")

    # The arrivals: completions + the change of the backlog, interval by interval.
    rng = random.Random(f"{seed}/replay/arrivals")
    arrivals: list[float] = [0.0] * first.backlog
    prev_backlog, prev_at, carry, left = first.backlog, t0, 0.0, 0
    known = dict(first.backlogs)  # each queue's last backlog read: one whose read failed stands at it, not at zero
    for k, s in enumerate(with_counters[1:]):
        backlog = s.backlog + sum(known.get(name, 0) for name in s.unread)
        known.update(s.backlogs)
        n = counted[k] + (backlog - prev_backlog) + carry
        if not n <= MAX_MESSAGES - len(arrivals) + 0.5:  # before any rounding or allocation (and false for NaN)
            raise too_many
        count = int(math.floor(n + 0.5))
        carry = n - count  # the rounding's remainder, within half a message
        if count < 0:  # the backlog fell more than the completions explain
            late = min(-count, int(counted[k + 1]) if k + 1 < len(counted) else 0)  # the hook's flush counts them next
            gone = min(-count - late, len(arrivals))  # left without completing: the newest rebuilt were waiting
            if gone:
                del arrivals[len(arrivals) - gone:]
            left += gone
            carry -= late
            count = 0
        if count:
            arrivals.extend(spread(rng, count, prev_at - t0, s.probe - t0, s.ready, s.oldest_age, s.newest_age))
        prev_backlog, prev_at = backlog, s.probe

    measured = math.sqrt(spread_sums[0] / spread_sums[1]) if spread_sums[1] > 0 else None
    if measured is not None and not math.isfinite(measured):
        measured = None  # sums too large to add up: the spread is unknown
    if cv is None:
        cv = SERVICE_CV if measured is None else measured
    srng = random.Random(f"{seed}/replay/services")
    sigma = math.sqrt(math.log(1.0 + cv**2))
    services = []
    for k in range(len(arrivals)):
        i = bisect.bisect_left(done_marks, k + 1)
        mean = means[i] if i < len(means) else mean_all
        mean = mean if mean > 0 else mean_all
        services.append(srng.lognormvariate(math.log(mean) - sigma**2 / 2.0, sigma) if sigma > 0 else mean)
    ticks = [s for s in samples if s.tick and s.probe >= t0]
    recorded = [(s.probe - t0, s.current, s.backlog) for s in ticks]
    return Rebuilt(t0, with_counters[-1].probe - t0, arrivals, services, first.current, recorded,
                   sum(1 for s in ticks if s.acted), mean_all, service_cv=cv,
                   cv_source="measured by the hook" if measured is not None and cv == measured else "assumed", left=left)


# ---- settings ----------------------------------------------------------------------


def parse_sets(texts: Iterable[str]) -> list[dict[str, str]]:
    """``--set NAME=VALUE[,NAME=VALUE]`` options: one variant each; SettingsError (one line) when bad."""
    variants = []
    for text in texts:
        variant: dict[str, str] = {}
        for part in text.split(","):
            name, eq, value = part.partition("=")
            name = name.strip().upper()
            if not eq or not name:
                raise SettingsError(f"--set {text}", "not NAME=VALUE", "write e.g. --set MAX_QUEUE_WAIT=30")
            if name not in CHANGEABLE:
                raise SettingsError(f"--set {name}", "not a setting a replay can change", "use one of " + ", ".join(CHANGEABLE))
            if not value.strip():  # NAME= would replay the default, not what was asked
                raise SettingsError(f"--set {name}=", "has no value (it would replay the default)", f"give it one: --set {name}=VALUE (the values each takes: docs/configuration.md)")
            variant[name] = value.strip()
        variants.append(variant)
    return variants


def variant(values: Mapping[str, str], changes: Mapping[str, str]) -> Settings:
    """The settings in force (raw ``values``) with ``changes``: SettingsError names a bad value and its fix."""
    return parse({**values, **changes})


def label(changes: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in changes.items())


# ---- runs ---------------------------------------------------------------------------


@dataclass
class Row:
    """One run's figures (None: not measured for this row)."""

    name: str
    p95_wait: float | None
    worker_hours: float
    actions_per_hour: float | None
    peak_workers: int | None
    changes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def workload(rebuilt: Rebuilt, threads: int, seed: int = 0):
    """The rebuilt messages as a simulator workload for ``threads``-thread workers."""
    from .sim.simulator import WorkerModel, Workload
    from .sim.traces import Trace

    model = WorkerModel(threads=threads, prefetch=2 * threads, mean_service=rebuilt.mean_service, service_cv=rebuilt.service_cv,
                        startup_low=rebuilt.startup[0], startup_high=rebuilt.startup[1])
    trace = Trace("replay", max(rebuilt.duration, 1e-6), lambda t: 0.0, 0.0)
    startups = model.startup_delays(random.Random(f"{seed}/replay/startup"), 4096)
    return Workload(trace, model, rebuilt.arrivals, rebuilt.services, startups, seed)


def schedule(rebuilt: Rebuilt, settings: Settings, recorded: Settings | None) -> list[float]:
    """When a run ticks: at the recorded ticks' reads when it keeps the CHECK_INTERVAL they ran
    at (``recorded``: the settings in force), so that it meets the traffic at the same moments
    of the timer's period as the real scaler did (a burst just before or just after a tick
    is a tick's difference in reaction); else every CHECK_INTERVAL from the start (empty).
    Not either when the recorded ticks did not come every CHECK_INTERVAL in force (give or
    take the timer's accuracy window and the process start): it was changed since."""
    if recorded is None or settings.check_interval != recorded.check_interval:
        return []
    if abs(rebuilt.interval - recorded.check_interval) > max(2.0, 0.2 * recorded.check_interval):
        return []
    return rebuilt.schedule


def simulate(workload, controller, **options):
    """:func:`dramactl.sim.simulator.simulate` bounded to RUN_TICKS ticks: a run that has not served every
    message and come to rest by then is a ReplayError (one line), never a run for hours."""
    from .sim import simulator

    try:
        return simulator.simulate(workload, controller, max_ticks=RUN_TICKS, **options)
    except simulator.TooLong:
        raise ReplayError(f"the run of {options.get('policy')} had not served every rebuilt message after {RUN_TICKS:,} ticks "
                          "(a backlog or service times too large for it): narrow the range with --since/--until") from None


def run_policy(rebuilt: Rebuilt, settings: Settings, name: str, *, recorded: Settings | None = None):
    """The real policy with ``settings`` on the rebuilt messages: a RunResult (with its ticks);
    ``recorded``: the settings the range ran under (see :func:`schedule`). ReplayError when it
    takes more than RUN_TICKS ticks."""
    from .sim.controllers import DramactlController

    return simulate(
        workload(rebuilt, settings.worker_threads), DramactlController(settings, roundtrip=False), policy=name,
        interval=float(settings.check_interval), initial_workers=min(max(rebuilt.initial, settings.min_processes), settings.max_processes),
        min_workers=settings.min_processes, keep_ticks=True, grace=float(settings.graceful_shutdown_timeout),
        schedule=schedule(rebuilt, settings, recorded),
    )


def check_span(rebuilt: Rebuilt, in_force: Settings, tried: Iterable[Settings] = (), hpa: bool = False) -> None:
    """ReplayError (one line) before any run, for a range that cannot give figures or would not end:

    * shorter than two ticks at the CHECK_INTERVAL in force: a run ticks once or twice in it, and its
      figures per hour are one action over a few seconds (7 200 actions/hour on a half-second range);
    * more than MAX_TICKS ticks at the smallest tick interval of the runs (the settings in force, each of
      ``tried``, HPA's 15 s when ``hpa``), or than the recorded ticks the settings in force's run follows:
      two entries a year apart are two million ticks of the real policy, hours of CPU a run."""
    tick = float(in_force.check_interval)
    span = f"{_when(rebuilt.start)} .. {_when(rebuilt.start + rebuilt.duration)}"
    if rebuilt.duration < 2 * tick:
        raise ReplayError(f"the range with the hook's counters ({span}) is {rebuilt.duration:.1f}s long, less than two ticks at "
                          f"CHECK_INTERVAL={in_force.check_interval}: too short for figures per hour; widen it with --since/--until")
    smallest = min([in_force.check_interval, *(s.check_interval for s in tried)])
    ticks = max(len(rebuilt.recorded), rebuilt.duration / smallest)
    if hpa and rebuilt.duration / HPA_INTERVAL > MAX_TICKS:
        raise ReplayError(f"the range ({span}) is {rebuilt.duration / HPA_INTERVAL:,.0f} ticks of the HPA/KEDA run ({HPA_INTERVAL:.0f}s), "
                          f"more than a replay simulates ({MAX_TICKS:,}): narrow the range with --since/--until")
    if ticks > MAX_TICKS:
        raise ReplayError(f"the range ({span}) is {ticks:,.0f} ticks at CHECK_INTERVAL={smallest}, more than a replay simulates "
                          f"({MAX_TICKS:,}): narrow the range with --since/--until or raise CHECK_INTERVAL")


def actions_per_hour(result) -> float:
    """Ticks that started or stopped instances, per hour of the range, as the recorded ones
    are counted: the run goes on after the range until every message is served and the fleet
    rests (its worker-hours count that time: :func:`charge`), but the recorded history has
    no ticks there."""
    acted = sum(1 for t in result.ticks if t.acted and t.at <= result.duration + 1e-6)
    return acted * 3600.0 / max(result.duration, 1e-9)


def row_of(result, name: str, changes: Mapping[str, str] | None = None) -> Row:
    """One run's row; its worker-hours up to its own end (``result.horizon``) until :func:`charge` sets them."""
    return Row(name, result.p95, result.worker_seconds / 3600.0, actions_per_hour(result), result.peak_workers, dict(changes or {}))


@dataclass
class Ran:
    """A run's row, with what :func:`charge` needs of it (the run itself, its waits, is not kept)."""

    row: Row
    horizon: float  # the run's own end: its last completion or action, or the range's end (seconds from its start)
    resting: int  # instances up from then on: the fleet at rest, as its last tick left it

    @classmethod
    def of(cls, result, name: str, changes: Mapping[str, str] | None = None) -> "Ran":
        last = result.ticks[-1] if result.ticks else None  # the runs keep their ticks
        resting = 0 if last is None else last.target if last.acted else last.workers
        return cls(row_of(result, name, changes), result.horizon, resting)


def charge(runs: Sequence[Ran]) -> list[Row]:
    """The runs' rows, every one's worker-hours over one common period: from the range's start to the
    latest end among them (the last completion or action of the run that rests last), each fleet counted
    until then, at rest at its last size after its own end.

    Each run's own end is not a common measure: a policy that scales down after the range was charged
    until that scale-down, a fleet that never acts only until its last completion, so a smaller fleet
    could cost more than static MAX (and tune recommended MIN_PROCESSES=2 as cheaper than 1). Cut at the
    range's end instead, a run that leaves its backlog for after the range would not pay for serving it,
    and the lower bound (the work of the whole range) would not hold. Over the common period every run has
    served every message, the rows of one table compare like for like, and no row goes under the lower
    bound (a row only grows). The period is the table's: compare the rows of one table, not of two."""
    end = max((r.horizon for r in runs), default=0.0)
    for r in runs:
        r.row.worker_hours += r.resting * (end - r.horizon) / 3600.0
    return [r.row for r in runs]


def references(rebuilt: Rebuilt, settings: Settings) -> list:
    """Static MAX and HPA/KEDA (15 s, its default behaviour) on the rebuilt messages."""
    from .bycount import backlog_per_worker
    from .sim.controllers import HpaController, StaticController

    w = workload(rebuilt, settings.worker_threads)
    low, high = settings.min_processes, settings.max_processes
    grace = float(settings.graceful_shutdown_timeout)
    static = simulate(w, StaticController(high), policy=f"static MAX ({high})", interval=float(settings.check_interval),
                      initial_workers=high, min_workers=low, grace=grace, keep_ticks=True)
    hpa = simulate(w, HpaController(backlog_per_worker(settings), low, high), policy="hpa/keda 15s", interval=HPA_INTERVAL,
                   initial_workers=min(max(rebuilt.initial, low), high), min_workers=low, victim="random", grace=grace, keep_ticks=True)
    return [static, hpa]


def fit(result, recorded: Sequence[tuple[float, int, int]]) -> dict:
    """How far the replay of the settings in force is from what was recorded, tick by tick:
    the mean absolute error of the fleet size (instances up before each tick's step) and of
    the backlog, beside their recorded means."""
    ats = [t.at for t in result.ticks]
    fleet_err, backlog_err = [], []
    for at, current, backlog in recorded:
        i = bisect.bisect_right(ats, at + 1e-6) - 1
        if i < 0:
            continue
        t = result.ticks[i]
        fleet_err.append(abs(t.workers - current))
        backlog_err.append(abs(t.ready + t.in_flight - backlog))
    n = max(1, len(fleet_err))
    return {
        "ticks": len(fleet_err),
        "fleet_mae": sum(fleet_err) / n,
        "fleet_mean": sum(r[1] for r in recorded) / max(1, len(recorded)),
        "backlog_mae": sum(backlog_err) / n,
        "backlog_mean": sum(r[2] for r in recorded) / max(1, len(recorded)),
    }


@dataclass
class Report:
    since: float
    until: float
    messages: int
    ticks: int
    mean_service: float
    interval: float
    startup: tuple[float, float]
    startup_source: str
    fit: dict
    rows: list[Row]
    service_cv: float = SERVICE_CV
    cv_source: str = "assumed"
    left: int = 0  # messages that left the backlog without completing: not replayed

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "rows"}, "rows": [r.to_dict() for r in self.rows]}


def replay(rebuilt: Rebuilt, values: Mapping[str, str], variants: Sequence[Mapping[str, str]], progress: Progress | None = None) -> Report:
    """Every run of ``dramactl replay`` on the rebuilt messages; ``values`` the settings in force (raw).
    ReplayError (one line) for a range too short or too long to replay (:func:`check_span`), or a run
    that does not end (:func:`simulate`); the worker-hours over one period (:func:`charge`)."""
    tick = progress or (lambda: None)
    in_force = variant(values, {})
    tried = [(label(v), variant(values, v), dict(v)) for v in variants]  # every bad value before any run
    check_span(rebuilt, in_force, [settings for _, settings, _ in tried], hpa=True)
    base = run_policy(rebuilt, in_force, "settings in force", recorded=in_force)
    tick()
    runs = [Ran.of(base, "settings in force")]
    for name, settings, changes in tried:
        runs.append(Ran.of(run_policy(rebuilt, settings, name, recorded=in_force), name, changes))
        tick()
    for result in references(rebuilt, in_force):
        runs.append(Ran.of(result, result.policy))
    tick()
    rows = [Row("recorded", **rebuilt.recorded_figures()), *charge(runs), Row("lower bound", None, base.lower_bound / 3600.0, None, None)]
    return Report(rebuilt.start, rebuilt.start + rebuilt.duration, len(rebuilt.arrivals), len(rebuilt.recorded),
                  rebuilt.mean_service, rebuilt.interval, rebuilt.startup, rebuilt.startup_source, fit(base, rebuilt.recorded), rows,
                  rebuilt.service_cv, rebuilt.cv_source, rebuilt.left)


def runs(variants: Sequence) -> int:
    """How many progress steps :func:`replay` makes."""
    return len(variants) + 2


# ---- text ---------------------------------------------------------------------------


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def table(rows: Sequence[Row]) -> list[str]:
    width = max([len(r.name) for r in rows] + [20])
    lines = [f"{'RUN':<{width}}  {'P95 WAIT':>9}  {'WORKER-H':>9}  {'ACTIONS/H':>9}  {'PEAK':>4}"]
    for r in rows:
        p95 = "-" if r.p95_wait is None else f"{r.p95_wait:.1f}s"
        act = "-" if r.actions_per_hour is None else f"{r.actions_per_hour:.1f}"
        peak = "-" if r.peak_workers is None else str(r.peak_workers)
        lines.append(f"{r.name:<{width}}  {p95:>9}  {r.worker_hours:>9.3f}  {act:>9}  {peak:>4}")
    return lines


def render(report: Report) -> str:
    f = report.fit
    return "\n".join([
        f"replay of {_when(report.since)} .. {_when(report.until)}: {report.ticks} ticks, {report.messages} messages rebuilt, "
        + (f"{report.left} more left the queues without completing (a backlog drop the counted completions do not explain: "
           "purged, expired or dead-lettered, or completions the hook did not count; not replayed), " if report.left else "")
        + f"mean service {report.mean_service:.2f}s (CV {report.service_cv:.2f}, {report.cv_source}), ticks every {report.interval:.0f}s, "
        f"start-up {report.startup[0]:.1f}-{report.startup[1]:.1f}s ({report.startup_source})",
        f"fit (settings in force vs recorded, {f['ticks']} ticks): fleet size off by {f['fleet_mae']:.2f} instances on average "
        f"(recorded mean {f['fleet_mean']:.2f}), backlog off by {f['backlog_mae']:.1f} messages (recorded mean {f['backlog_mean']:.1f})",
        "",
        *table(report.rows),
        "",
        "Nothing was changed. The lower bound: no policy keeping MIN_PROCESSES up can use fewer worker-hours.",
    ])


# ---- the commands' bodies (cli.py only parses options and maps errors) --------------------


def prepare(since: str | None, until: str | None, sets: Sequence[str], environ: Mapping[str, str] | None = None):
    """(epoch range, settings in force as raw values, the --set variants), every input checked
    before the journal is read: ValueError for a time, SettingsError (one line) for a setting."""
    from . import history
    from .settings import read_sources

    start, end = (history.parse_time(t) if t else None for t in (since, until))
    if start is not None and end is not None and start > end:
        raise ValueError(f"--since {since!r} is after --until {until!r}: the range is reversed; swap them")
    values, _ = read_sources(environ)
    variants = parse_sets(sets)
    variant(values, {})
    for v in variants:
        try:
            variant(values, v)
        except SettingsError as exc:
            raise SettingsError(f"--set {exc.setting}", exc.problem, exc.fix) from None
    return start, end, values, variants


def recorded_startup(values: Mapping[str, str]) -> tuple[float, float] | None:
    """The range of the start-ups the scaler measured (its state file's last hour: start jobs
    until READY=1, or systemd's timestamps), or None when it has none or cannot be read."""
    import json

    from .state import ScalerState, StateStore

    try:  # read only: StateStore.load would set a damaged file aside, and replay changes nothing
        history = ScalerState.from_dict(json.loads(StateStore(variant(values, {}).state_dir).path.read_bytes())).history
    except Exception:  # noqa: BLE001 - absent, unreadable or damaged: the default start-up
        return None
    seen = [r.startup for r in history if r.startup]
    return (min(seen), max(seen)) if seen else None


def load(start: float | None, end: float | None, values: Mapping[str, str], progress: Progress | None = None) -> Rebuilt:
    """The range's rebuilt messages, with the start-up the scaler recorded when it has one."""
    rebuilt = rebuild(read_samples(start, end, progress))
    startup = recorded_startup(values)
    if startup is not None:
        rebuilt.startup, rebuilt.startup_source = startup, "measured by the scaler"
    return rebuilt
