"""The scaling decision: pure functions of what a tick saw, no I/O.

``decide`` is the one entry point; ``POLICY=step`` selects the classic threshold
step operators know, ``POLICY=default`` sizes the fleet by work once the workers'
hook has reported some (:mod:`dramactl.rates`):

* the arrival rate λ and mean service time E[S] measured from the counters' deltas
  across ticks give the offered load a = λ·E[S] busy threads; the fleet for it is
  the smallest whose threads keep P(wait > MAX_QUEUE_WAIT/2) <= 5 % (Erlang C,
  :mod:`dramactl.queueing`): headroom where service is slow, little where it is fast; or
  the smaller fleet that reacts (:mod:`dramactl.reaction`) when messages are long; for
  messages that come in batches of D (:mod:`dramactl.rates`), the goal shortened by
  (D + 1) / 2 (Allen-Cunneen), and at least the load plus (D - 1) E[S] within
  MAX_QUEUE_WAIT/2 as often as a batch comes within the rate's window (a message waits
  behind its batch);
* plus the threads that drain what waits (waiting x E[S]) within what is left of half
  of MAX_QUEUE_WAIT after the oldest ready message's age and the start-up time
  (learned from the start jobs, or from systemd's timestamps when they outlast the
  tick's wait: :func:`dramactl.rates.measure_startup`); only what waits beyond the
  queue the fleet shows anyway under this load counts (Erlang C's 95th percentile,
  scaled by (1 + cv^2) / 2 for the measured service-time variability; for batches by
  (D + cv^2) / 2 and plus D - 1, what they add at most what the spare threads serve
  within the drain's time); messages
  prefetched beyond the threads wait behind a ready backlog, or behind tasks that
  outlast a tick and a start-up;
* a block of messages that lands at a regular period (three blocks, two gaps that
  agree, counted from the counters even when the fleet absorbed them,
  :mod:`dramactl.recurring`) is met by a fleet started ahead: from the start-up plus
  two ticks before it is due, the fleet that serves the last block within one tick
  is started, or kept within the block's own noise; and its fleet is not stopped while
  the next block is due within SCALE_DOWN_STABILIZATION (at least 300 s, HPA's and
  KEDA's default horizon) plus that lead;
* growth for the arrivals alone while nothing waits needs the load two standard errors
  down to need more (:mod:`dramactl.calm`): the evidence a shrink needs, so the fleet
  does not ratchet up on the estimate's noise;
* never shrink while a backlog drains (more than half a tick of the fleet's work
  waits), while an instance is starting or within the start-up of the last growth;
  shrink at once when drained, but never below the fleet for the load two standard
  errors up (at the rate now, where the rate falls beyond its noise), nor below the
  arrivals' fleet of any tick in SCALE_DOWN_STABILIZATION within that noise, nor below a
  recurring block's fleet while it is due, nor, once two backlogs came within
  SCALE_DOWN_STABILIZATION, below the largest fleet they needed (a
  backlog that comes back within the window is a need that did not stay low,
  :mod:`dramactl.calm`), nor, while the arrival rate rises beyond its noise, below the
  fleet for the rate its slope reaches within SCALE_DOWN_STABILIZATION (no further ahead
  than the span it was measured over: a shrink under a rising load is undone by its next
  backlog).

Before any counter exists (a new queue, workers without the hook) it sizes by count
(:mod:`dramactl.bycount`). Every sizing keeps MIN/MAX_PROCESSES, grows within
MAX_SCALE_UP_STEP and grows when the oldest ready message waited past MAX_QUEUE_WAIT
(:mod:`dramactl.limits`); and:

* never grow into failing instances: hold and say so;
* the size invariant (:func:`safeguard`): never more than MAX_PROCESSES instances
  up or coming back by themselves; failed instances are reset and started again to
  restore the floor (MIN_PROCESSES, or the manual size while paused) after a backoff
  that grows while they keep failing.

The scaler is a oneshot, so everything needed across ticks comes in ``history``:
the :class:`~dramactl.state.TickRecord` each earlier tick saved from
:meth:`ScalingDecision.record`. ``python -m bench`` measures the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .calm import load_high_now, rate_growth, returning_backlog, rising_floor, starting_hold
from .bycount import count_target
from .instance import WorkerUnit
from .limits import Sized, clamp, grow, latency_guard
from .queueing import queue_quantile, workers_for
from .rates import RATE_WINDOW, WorkRates, learned_startup, work_rates
from .reaction import reacting
from .recurring import Recurring, recurring, recurring_keep, recurring_need  # noqa: F401 - recurring: the tests and the bench import it from here
from .settings import Settings
from .state import Recovery, TickRecord, stabilization_window, window_edge
from .stats import FleetBacklog


@dataclass(frozen=True)
class ScalingDecision:
    """How many instances there should be, and why (one line for the journal).

    ``wanted`` is the raw recommendation before step limits, stabilization and the
    failing-unit hold: the figure a scale-down window must remember, because the
    target alone would hide how much was needed while a limit or a hold applied.
    """

    current: int
    target: int
    reason: str
    held: bool = False  # True when the policy wanted more but refused (failing units)
    wanted: int | None = None
    starting: int = 0  # up instances not consuming yet: activating, before READY=1
    reset: tuple[int, ...] = ()  # failed instances to reset-failed before acting
    recovery: Recovery = field(default=Recovery(), compare=False)  # the backoff state to remember
    for_rate: int | None = None  # workers the measured arrivals need (work-based sizing only)
    figures: Mapping[str, object] | None = field(default=None, compare=False)  # what the sizing rested on (policyview)

    @property
    def delta(self) -> int:
        return self.target - self.current

    def record(self, now: float, backlog: FleetBacklog) -> TickRecord:
        """What the scaler appends to history after this tick (the next tick's input)."""
        return TickRecord(
            at=now,
            backlog=backlog.backlog,
            workers=self.current,
            target=self.target,
            oldest_age=backlog.oldest_age,
            wanted=self.target if self.wanted is None else self.wanted,
            done=backlog.done_total,
            busy=backlog.busy_seconds_total,
            for_rate=self.for_rate,
        )

    def to_dict(self) -> dict:
        return {
            "current": self.current,
            "target": self.target,
            "delta": self.delta,
            "reason": self.reason,
            "held": self.held,
            "wanted": self.wanted,
            "starting": self.starting,
            "reset": list(self.reset),
            "recovery": self.recovery.__dict__,
            "for_rate": self.for_rate,
        }


def decide(
    backlog: FleetBacklog,
    instances: Sequence[WorkerUnit],
    settings: Settings,
    history: Sequence[TickRecord] = (),
    now: float = 0.0,
    *,
    paused: bool = False,
    size: int | None = None,
    recovery: Recovery = Recovery(),
) -> ScalingDecision:
    """The decision for one tick. ``history`` holds earlier ticks, oldest first.

    ``paused`` with a manual ``size`` keeps that size (restored after a reboot or a
    crash); paused without one holds whatever runs. ``recovery`` is the backoff state
    the previous tick returned in :attr:`ScalingDecision.recovery`.
    """
    up = [u for u in instances if u.is_up]
    current = len(up)
    starting = sum(1 for u in up if is_starting(u))
    decision = aim(backlog, current, starting, settings, history, now, paused=paused, size=size)
    if paused and size is None:
        return replace(decision, recovery=recovery)
    floor = size if paused and size is not None else settings.min_processes
    return safeguard(decision, instances, settings, recovery, now, floor)


def aim(
    backlog: FleetBacklog,
    current: int,
    starting: int,
    settings: Settings,
    history: Sequence[TickRecord] = (),
    now: float = 0.0,
    *,
    paused: bool = False,
    size: int | None = None,
) -> ScalingDecision:
    """The policy's target for ``current`` instances up (``starting`` of them not
    consuming yet), before :func:`safeguard`: what :func:`decide` asks of one host,
    and what :mod:`dramactl.share` asks of the whole fleet across hosts."""
    if paused and size is None:
        reason = "paused: autoscaling is off until `dramactl resume`"
        return ScalingDecision(current, current, reason, wanted=current, starting=starting)
    if paused:
        reason = f"manual size {size}, autoscaling paused until `dramactl resume`"
        return ScalingDecision(current, size, reason, wanted=size, starting=starting)
    if settings.policy == "step":
        target, reason = step_target(backlog, current, settings)
        return ScalingDecision(current, target, reason, wanted=target, starting=starting)
    sized = default_target(backlog, current, starting, settings, history, now)
    return ScalingDecision(current, sized.target, sized.reason, wanted=sized.wanted, starting=starting, for_rate=sized.for_rate, figures=sized.figures)


BACKOFF_FIRST = 10.0  # seconds before a second reset of failed instances
BACKOFF_CAP = 300.0  # the longest wait between resets: the bound on recovery time
QUIET_SECONDS = 120.0  # no failing instance this long ends a failure streak (the unit's StartLimitIntervalSec)


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th reset in a row before the next one."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


def safeguard(
    decision: ScalingDecision,
    instances: Sequence[WorkerUnit],
    settings: Settings,
    recovery: Recovery,
    now: float,
    floor: int,
) -> ScalingDecision:
    """The size invariant and the recovery of failed instances, over any policy's target.

    * MAX: instances that systemd brings back by itself (auto-restart, or cleaning up
      after a crash before restarting) count against MAX_PROCESSES with the up ones.
    * Failed instances (start limit hit, exit 2, a failed stop) are reset-failed: at
      once the first time; when they fail again, after 10 s, 20 s, ... up to 5 min
      from when the failure is seen; the streak ends after 2 quiet minutes.
    * While anything fails, the fleet only restores ``floor`` (MIN_PROCESSES, or the
      manual size), never grows beyond it, and during a backoff starts nothing.
    """
    current, target, reason = decision.current, decision.target, decision.reason
    coming = [u.number for u in instances if u.is_coming_back]
    failed = [u.number for u in instances if u.is_failed]
    failing = sorted(u.number for u in instances if u.is_failing)
    if failing:
        recovery = replace(recovery, failing_at=now)
    elif recovery.attempts and (recovery.failing_at is None or now - recovery.failing_at >= QUIET_SECONDS):
        recovery = Recovery()
    notes = []
    room = settings.max_processes - len(coming)
    if target > room:
        target = max(0, room)
        notes.append(f"{len(coming)} coming back ({_names(coming)}) count toward MAX_PROCESSES={settings.max_processes}")
    reset: tuple[int, ...] = ()
    allowed = target
    if failed and recovery.attempts and not recovery.next_at:
        # Failed again after a reset: the wait starts now.
        recovery = replace(recovery, next_at=now + backoff(recovery.attempts))
    if failed and now >= recovery.next_at:
        reset = tuple(failed)
        attempts = recovery.attempts + 1
        recovery = Recovery(attempts=attempts, next_at=0.0, failing_at=now)
        notes.append(f"recover: reset-failed {_names(failed)} (attempt {attempts}; if they fail again, the next waits {backoff(attempts):.0f}s)")
        allowed = max(current, floor - len(coming))
    elif failed:
        notes.append(f"waiting {recovery.next_at - now:.0f}s before resetting {_names(failed)} (backoff after {recovery.attempts} attempt(s))")
        allowed = current
    elif failing:
        allowed = max(current, floor - len(coming))
    held = target > allowed
    if held:
        reason = f"hold: {len(failing)} failing instance(s) ({_names(failing)}); {reason}"
        target = allowed
    if notes:
        reason += " | " + "; ".join(notes)
    return replace(decision, target=target, reason=reason, held=held, reset=reset, recovery=recovery)


def _names(numbers: Sequence[int]) -> str:
    return ", ".join(f"@{n}" for n in numbers)


def is_starting(unit: WorkerUnit) -> bool:
    """Up but not consuming yet: activating. Instances are Type=notify and the
    readiness hook sends READY=1 once Dramatiq's consumers run, so systemd's
    "active" already means consuming; no grace period after it is needed, and
    ``ListUnitsByPatterns`` alone tells (no per-instance timestamp to read)."""
    return unit.is_up and unit.active_state == "activating"


def step_target(backlog: FleetBacklog, current: int, settings: Settings) -> tuple[int, str]:
    """The baseline: one more when depth > N x up, one fewer when depth < N x down."""
    depth = backlog.depth
    if current < settings.min_processes:
        return settings.min_processes, f"below MIN_PROCESSES={settings.min_processes}"
    if current > settings.max_processes:
        return settings.max_processes, f"above MAX_PROCESSES={settings.max_processes}"
    up = current * settings.scale_up_multiplier
    down = current * settings.scale_down_multiplier
    if depth > up and current < settings.max_processes:
        return current + 1, f"step: depth {depth} > {up:g}"
    if depth < down and current > settings.min_processes:
        return current - 1, f"step: depth {depth} < {down:g}"
    return current, f"step: depth {depth} within [{down:g}, {up:g}]"


def default_target(
    backlog: FleetBacklog,
    current: int,
    starting: int,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> Sized:
    """By work when the counters allow it (:func:`work_target`), else by count
    (:func:`dramactl.bycount.count_target`, ``for_rate`` None)."""
    rates = work_rates(history, backlog, now, max_gap=4.0 * settings.check_interval)
    if rates is not None:
        return work_target(backlog, current, starting, settings, history, now, rates)
    return count_target(backlog, current, starting, settings, history, now)


WAIT_FRACTION = 0.5  # the fleet for the arrivals keeps P(wait > this x MAX_QUEUE_WAIT) ...
WAIT_QUANTILE = 0.95  # ... within 1 - this
NOISE_SIGMAS = 2.0  # a measured rate this many standard errors below the window's is a decline, not noise


def drain_seconds(settings: Settings, startup: float, age: float | None = None) -> float:
    """The time to drain what waits: what is left of half of MAX_QUEUE_WAIT for the
    oldest ready message after its ``age`` (none ready: the waiting ones are prefetched
    and about to start) and the start-up, at least one interval."""
    return max(float(settings.check_interval), settings.max_queue_wait / 2.0 - (age or 0.0) - startup)


def work_target(
    backlog: FleetBacklog,
    current: int,
    starting: int,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
    rates: WorkRates,
) -> Sized:
    """Size by work: the fleet the arrivals need plus the threads that drain the queue,
    or a recurring block's fleet while it is due (:func:`recurring_need`).

    Growth is immediate (the rate is a median over ticks, the drain is what waits now);
    a shrink goes to the larger of this tick's need, the recurring block's, and the
    arrivals' need of any tick in SCALE_DOWN_STABILIZATION within the noise of the
    rate now (:func:`_work_down`); the drain part is not held: a drained queue is
    measured, not noise. ``wanted`` is this tick's own need: a fleet started ahead of a
    block is not recorded as one, so the block still shows when it lands.
    """
    threads = settings.worker_threads
    service = rates.service
    startup = learned_startup(history)
    waiting = backlog.depth + backlog.orphaned
    if backlog.depth or service >= float(settings.check_interval) + startup:
        # Behind a ready backlog, messages prefetched beyond the threads wait too; so do they
        # behind tasks that outlast a tick and a start-up (each waits for a long task of its
        # worker to end: no growth helps it, and every arrival until one finds no free
        # thread). With short tasks and none ready they are the queue the arrivals'
        # headroom is sized for, not a backlog.
        waiting += max(0, backlog.in_flight - current * threads)
    if rates.load is None:
        load = float(min(backlog.in_flight, current * threads))  # first tick with counters: what runs now
        measured = f"E[S] {service:.2f}s, {load:.0f} busy"
    else:
        load = rates.load
        batches = f" in batches of {rates.dispersion:.1f}" if rates.dispersion > 1.0 else ""
        none = f" (none in {rates.span:.0f}s)" if rates.arrival == 0 and rates.span > 0 else ""  # none in the rate's span (rates: a stop)
        measured = f"λ {rates.arrival:.2f}/s{none}{batches} x E[S] {service:.2f}s = {load:.1f} busy threads"
    limit = max(settings.max_processes, current) + 1
    # Arrivals in batches (dispersion D: a count's variance over Poisson's) queue longer at the
    # same load: Allen-Cunneen scales the M/M/c wait by (c_a^2 + c_s^2) / 2, c_a^2 = D, so
    # the goal is met by the Poisson fleet for a goal that much shorter.
    goal_wait = WAIT_FRACTION * settings.max_queue_wait / max(1.0, (rates.dispersion + 1.0) / 2.0)
    # And a message waits behind the rest of its own batch, however idle the fleet: the
    # batch an arrival lands in holds D messages on average (size-biased), and its last
    # waits (D - 1) E[S] / (spare threads); so D - 1 messages' work within the goal (not
    # shortened: this is the batch itself, not the queue's variability), on top of the load
    # (0 for single arrivals), as often as a batch comes within the rate's window (rarer
    # batches are blocks, drained when they land: dramactl.rates).
    goal = WAIT_FRACTION * settings.max_queue_wait
    batch = (rates.dispersion - 1.0) * service / goal if rates.dispersion > 1.0 and goal > 0 else 0.0
    if batch > 0:
        batch *= min(1.0, (rates.arrival or 0.0) * RATE_WINDOW / rates.dispersion)

    def rate_fleet(busy: float) -> int:
        fleet = workers_for(busy, service, threads, goal_wait, WAIT_QUANTILE, limit)
        if batch <= 0 or busy <= 0:
            return fleet
        with_batch = (busy + batch) / threads  # damaged counters can make it inf: one worker past the limit
        return max(fleet, math.ceil(with_batch - 1e-9) if math.isfinite(with_batch) else limit + 1)

    for_rate = rate_fleet(load)
    react = reacting(backlog, rates, settings, startup, current, WAIT_FRACTION * settings.max_queue_wait)
    static, for_rate = for_rate, for_rate if react is None else min(for_rate, react)
    drain = drain_seconds(settings, startup, backlog.oldest_age)
    # Noise, not backlog: the queue the current fleet shows 95 % of the time under the
    # measured load (Erlang C: P(Nq >= k) = C rho^k). Growing to drain that much would be
    # undone at the next tick, when the queue has emptied as the model says it does;
    # only what waits beyond it (or waited past MAX_QUEUE_WAIT: the latency guard) is
    # evidence of more load than measured.
    # Service times more variable than exponential make longer queues at the same load:
    # Allen-Cunneen scales the M/M/c queue by (1 + cv^2) / 2 (Poisson arrivals).
    noise = queue_quantile(load, current * threads, WAIT_QUANTILE) if rates.load is not None else 0
    # Arrivals in batches (dramactl.rates: dispersion D) scale it by (D + cv^2) / 2 instead, and
    # the batch an arrival lands in queues behind its first message however idle the fleet:
    # D - 1 more. What batches add to the noise is at most what this fleet's spare threads
    # serve within what is left of the goal (the drain's time): beyond that, a batch is a
    # backlog like any other (near saturation the scaled quantile runs to thousands).
    poisson = math.ceil(noise * max(1.0, (1.0 + rates.service_cv2) / 2.0))
    spare = max(0.0, current * threads - load) * drain / service if service > 0 else 0.0
    batched = math.ceil(noise * max(1.0, (rates.dispersion + rates.service_cv2) / 2.0)) - poisson + math.ceil(rates.dispersion - 1.0 - 1e-9)
    own = min(batched, math.floor(spare)) if math.isfinite(spare) and rates.dispersion > 1.0 else 0
    noise = poisson + own
    backlogged = max(0, waiting - noise)
    # With nothing waiting (ready, or prefetched beyond the threads; for batches, no more than their share of the
    # noise), growth for the rate needs evidence beyond its noise; not growth to the reacting fleet, which rests
    # on the messages present, counted.
    nothing_waits = waiting <= own and backlog.in_flight <= current * threads
    grow_for, noted = (for_rate, "") if for_rate == react else rate_growth(for_rate, current, nothing_waits, rates, NOISE_SIGMAS, rate_fleet)
    # A backlog beyond the batches' share of the noise is drained by the spare threads that
    # share counted on too: the last of both waits up to twice the drain's time, which is
    # within MAX_QUEUE_WAIT (the drain's time is what is left of half of it), where the
    # latency guard fires. Draining the share as well grows the fleet for a batch a message
    # over it, and the next tick releases it (28.7 actions/h against 25.3 on the CI-sized
    # batches of tests/unit/test_batches.py).
    drained = (load + backlogged * service / drain) / threads
    # A damaged but finite counter can make the load overflow to inf: then one worker past the limit.
    wanted = max(grow_for, math.ceil(drained - 1e-9) if math.isfinite(drained) else limit)
    needs = {"arrivals": for_rate, "drain": wanted if backlogged else None, "latency_guard": None, "recurring": None}
    why = f"{measured} needs {for_rate}{noted if wanted < for_rate else ''}"
    if for_rate < static:  # the fleet reacts within the goal: no static headroom (:mod:`dramactl.reaction`)
        why += f" reacting ({backlog.backlog} present; {static} if it could not)"
    if backlogged:
        why += f", {waiting} waiting drain in {drain:.0f}s with {wanted}"
    elif waiting:
        why += f", {waiting} waiting within the queue {current} show under this load ({noise})"
    guard = latency_guard(backlog.oldest_age, current, starting, settings)
    if guard is not None:
        why += f"; {guard[1]}"
        wanted = max(wanted, guard[0])
        needs["latency_guard"] = guard[0]
    if starting:
        why += f"; {starting} starting"
    interval = float(settings.check_interval)
    again = recurring(history, 2.0 * interval, max_gap=4.0 * interval)  # the blocks' schedule, once a tick
    ahead = recurring_need(again, now, startup + 2.0 * interval, 2.0 * interval, load, service, settings, rate_fleet, rates.span)
    needs["recurring"] = None if ahead is None else ahead[0]
    rise = rising_floor(rates, NOISE_SIGMAS, settings.scale_down_stabilization, rate_fleet)
    needs["rising"] = None if rise is None else rise[0]
    figures = {
        "by": "work",
        "arrival_rate": None if rates.arrival is None else round(rates.arrival, 3),
        "service_time": round(service, 3),
        "busy_threads": round(load, 2),
        "waiting": waiting,
        "drain_seconds": round(drain, 1),
        "needs": needs,
    }
    goal = wanted
    if ahead is not None:
        need, low, high, text = ahead
        why += f"; {text}"
        # A fleet between the needs of a block one standard deviation smaller and one larger
        # (Poisson: sqrt of its count) is kept as it is: the block's size is known to no
        # better, and moving by that jitter right before it lands is an action undone by
        # the next one.
        goal = max(wanted, current if low <= current <= high else need)
    elif (kept := recurring_keep(again, now, startup + 2.0 * interval, 2.0 * interval, load, service, settings, current, rate_fleet, rates.span)) and kept[0] > wanted:
        why, goal = f"{why}; {kept[1]}", kept[0]  # the block's need recurs within the window: not a need that stayed low
    bounded = clamp(goal, settings)
    if current > settings.max_processes:
        return Sized(settings.max_processes, wanted, f"{why}: down to MAX_PROCESSES={settings.max_processes}", for_rate, figures)
    if bounded > current:
        # ``wanted`` stays this tick's own need: a fleet started ahead of a recurring load is no backlog.
        target, _, reason = grow(current, goal, bounded, why, settings)
        return Sized(target, wanted, reason, for_rate, figures)
    if bounded == current:
        at_max = f" (MAX_PROCESSES; {goal} wanted)" if goal > current else ""
        return Sized(current, wanted, f"{why}: steady at {current}{at_max}", for_rate, figures)
    if waiting * service > current * threads * interval / 2.0:
        # More than half a tick of work waits for this fleet: draining, not drained.
        return Sized(current, wanted, f"{why}: holding {current} until the backlog is drained", for_rate, figures)
    hold = starting_hold(history, now, starting, startup)
    if hold is not None:
        return Sized(current, wanted, f"{why}: holding {current}, {hold}", for_rate, figures)
    high, falling = load_high_now(rates, NOISE_SIGMAS)
    within_noise = None if high is None else rate_fleet(high)
    floor = within_noise if react is None or within_noise is None else min(within_noise, react)
    if floor is not None and floor > goal:
        # Shrink no lower than the load NOISE_SIGMAS standard errors up needs (the rate's
        # and the mean service time's errors): a smaller fleet is undone by the next
        # tick's growth whenever the load was only a dip in its own noise (about 1 time
        # in 40 at 2 sigma, rather than 1 in 2 at the estimate); or the reacting fleet's, if smaller.
        why += f"; {falling}the load {NOISE_SIGMAS:g} sigma up ({high:.1f} busy threads) needs {within_noise}" + (f", reacting {floor}" if floor != within_noise else "")
        goal = clamp(floor, settings)
        if goal >= current:
            return Sized(current, wanted, f"{why}: holding {current}", for_rate, figures)
    elif falling and (counted := rates.load_high(NOISE_SIGMAS)) is not None and (
            at_count := rate_fleet(counted)) > goal:
        why += f"; {falling}the load {NOISE_SIGMAS:g} sigma up ({high:.1f} busy threads) needs {within_noise}, not {at_count}"
    # A shrink under a load rising to the fleet is undone by its next backlog (:func:`dramactl.calm.rising_floor`);
    # where the fleet reacts to the messages present, no higher than the reacting fleet, as the noise floor.
    if rise is not None and (rising := rise[0] if react is None else min(rise[0], react)) > goal:
        why += f"; {rise[1]}" + (f", reacting {rising}" if rising != rise[0] else "")
        goal = clamp(rising, settings)
        if goal >= current:
            return Sized(current, wanted, f"{why}: holding {current}", for_rate, figures)
    # Backlogs that come back keep their fleet where a drained one would be released within a
    # tick or two (tasks shorter than a tick and a start-up); with longer tasks the fleet
    # follows the messages present, and a message waiting for a thread is the next arrival.
    returning = service < interval + startup
    target, reason = _work_down(current, goal, why, settings, history, now, within_noise, returning)
    return Sized(target, wanted, reason, for_rate, figures)


def _work_down(
    current: int, wanted: int, why: str, settings: Settings, history: Sequence[TickRecord], now: float,
    within_noise: int | None, returning: bool,
) -> tuple[int, str]:
    """Down to ``wanted``, but not below the arrivals' fleet of a tick in the window (the
    whole window in the history) unless the rate now is below it beyond its noise:
    ``within_noise`` is the fleet for the load :data:`NOISE_SIGMAS` standard errors up.
    A measured decline is followed; a dip within the rate's noise is not. With
    ``returning``, nor, once two backlogs came within the window, below the largest fleet
    they needed (:func:`dramactl.calm.returning_backlog`)."""
    window = settings.scale_down_stabilization
    floor = clamp(wanted, settings)
    if window > 0:
        seen = stabilization_window(history, now, window, settings.check_interval)
        if seen is None:
            return current, f"{why}: holding {current} until {window:g}s of history (SCALE_DOWN_STABILIZATION)"
        rated = [r.for_rate for r in seen if r.for_rate is not None]
        held = max(rated, default=0)
        if within_noise is not None and held > max(within_noise, floor):
            why += f"; arrivals needed {held} within {window:g}s, {within_noise} at {NOISE_SIGMAS:g} sigma above the load now"
            held = within_noise
        elif held > floor:
            why += f"; arrivals needed {held} within {window:g}s"
        if held > floor:
            floor = clamp(held, settings)
        # A need that came back within the window did not stay low for the window.
        again = returning_backlog(history, now, window + window_edge(settings.check_interval), settings.max_queue_wait) if returning else None
        if again is not None and again[1] > floor:
            why += f"; {again[0]} backlogs within {window:g}s, the largest needing {again[1]}"
            floor = clamp(again[1], settings)
    if floor >= current:
        return current, f"{why}: holding {current}"
    step = settings.max_scale_down_step
    target = max(floor, current - step) if step else floor
    return target, f"{why}: down {current} -> {target}"


