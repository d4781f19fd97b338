"""One scaling step, and the manual verbs, wiring queue -> policy -> fleet.

Every function here takes the lock first, reads everything, decides, validates,
and only then changes the fleet: an error before the last step leaves workers as
they were.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from . import intake, queue, victims
from .fleet import Fleet, JobResult
from .instance import WorkerUnit, unit_name
from .policy import ScalingDecision, decide, is_starting, safeguard
from .rates import measure_startup
from .settings import Settings, SettingsError
from .state import LOCK_WAIT, Recovery, ScalerState, StateStore
from .stats import FleetBacklog, InstanceReport, QueueStats
from .worker import worker_argv

if TYPE_CHECKING:  # share is imported only with FLEET_NAME: a single host's tick does not pay for it
    import redis

    from . import share
    from .seat import Seat


log = logging.getLogger("dramactl.scaler")
START_WAIT = 30.0  # seconds a tick waits for start jobs (READY=1); a slower one is seen as activating next tick
STOP_WAIT_FLOOR = 10.0  # a tick waits at least this for its stop jobs: an idle Dramatiq worker exits within its one-second
                        # polls (the drains in docs/deploys.md took 2.0-3.6 s), with room for a loaded host


def stop_wait(settings: Settings, elapsed: float | None = None) -> float:
    """How long a tick waits for its stop jobs (the drain): GRACEFUL_SHUTDOWN_TIMEOUT + 5 s, at
    most 30 s; within a tick that began ``elapsed`` seconds ago, also no later than a second
    before the next tick is due. The timer does not start a tick while one runs, so a longer
    wait would put off the next tick's reaction to whatever arrives meanwhile (and shift every
    later tick); a drain still under way is shown as "draining" and read next tick as a unit
    stopping (not up: neither MAX nor the fleet's claim counts it, as for drains past 30 s
    before). At least STOP_WAIT_FLOOR, so an idle instance's stop is reported as done."""
    wait = min(settings.graceful_shutdown_timeout + 5.0, 30.0)
    if elapsed is not None:
        wait = min(wait, max(STOP_WAIT_FLOOR, float(settings.check_interval) - elapsed - 1.0))
    return wait


class Busy(RuntimeError):
    """Another tick or manual change holds the lock."""


@dataclass(frozen=True)
class Plan:
    """Which instance numbers to start and stop to reach a target; ``picks`` says why
    each stopped one was chosen, ``waiting`` the ones a scale-down waits for (long tasks)."""

    start: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    picks: tuple[victims.Pick, ...] = field(default=(), compare=False)
    waiting: tuple[victims.Pick, ...] = field(default=(), compare=False)


def plan(
    instances: Sequence[WorkerUnit],
    target: int,
    reset: Sequence[int] = (),
    *,
    reports: dict[int, InstanceReport] | None = None,
    now: float = 0.0,
    long_after: float | None = None,
    waiting_since: float | None = None,
) -> Plan:
    """Grow with the lowest free numbers; shrink from the least busy (pure, :mod:`dramactl.victims`:
    idle first, the most recently started work next, ties and no reports to the highest number).

    A number is free when its unit is gone, or failed and reset by this step; a
    unit that is stopping, coming back or failed keeps its number. ``long_after``
    (seconds; None for a manual command): a stop that would cut off a task older than
    this waits, since ``waiting_since``, up to :data:`victims.WAIT_LIMIT`.
    """
    up = sorted(u.number for u in instances if u.is_up)
    if target > len(up):
        busy = {u.number for u in instances if u.occupies or u.is_stopping or (u.is_failed and u.number not in reset)}
        free = (n for n in range(1, 10**6) if n not in busy)
        return Plan(start=tuple(next(free) for _ in range(target - len(up))))
    if target < len(up):
        choice = victims.choose(up, len(up) - target, reports, now, long_after=long_after, waiting_since=waiting_since)
        return Plan(stop=choice.numbers, picks=choice.stop, waiting=choice.waiting)
    return Plan()


@dataclass
class Outcome:
    """What a tick or manual command saw, decided and did."""

    decision: ScalingDecision
    queues: list[QueueStats] | None = field(default_factory=list)  # None: not read (Redis unreachable for a manual command)
    started: list[JobResult] = field(default_factory=list)
    stopped: list[JobResult] = field(default_factory=list)
    restarted: list[JobResult] = field(default_factory=list)
    dry_run: bool = False
    paused: bool = False
    instances: list[WorkerUnit] = field(default_factory=list)  # as listed before acting
    fleet: share.Coordinated | None = None  # FLEET_NAME set: the fleet's decision and this host's share
    at: float | None = None  # when the tick ran (epoch seconds)
    duration: float | None = None  # seconds the tick took
    actions: dict[str, int] = field(default_factory=dict)  # instances started ("up") / stopped ("down"), ever
    stopped_by: dict[str, int] = field(default_factory=dict)  # scale-downs' stops by what they ran when chosen (victims.KINDS), ever
    plan: Plan = field(default_factory=Plan)  # what was started and stopped, and why those
    reports: dict[int, InstanceReport] = field(default_factory=dict)  # what each instance ran (worker hook)
    waiting_since: float | None = None  # a scale-down has waited for long tasks since (epoch seconds)
    intake_paused: tuple[int, ...] = ()  # instances waited for whose intake the tick pauses (intake.py)
    failure: str | None = None  # why a rolling restart or recycle stopped short (rollout.py)
    recycled: str | None = None  # "recycle @3 (612 MiB > 512 MiB)": this tick replaced an instance for its memory
    recycles: int | None = None  # instances recycled, ever (dramactl_recycles_total), after a tick
    drained_first: str | None = None  # "@3 drained before its replacement (FLEET_MAX_PROCESSES reached: ...)"

    @property
    def backlog(self) -> FleetBacklog:
        return FleetBacklog.of(self.queues or [])

    @property
    def ok(self) -> bool:
        return self.failure is None and all(j.ok for j in self.started + self.stopped + self.restarted)

    def summary(self) -> str:
        """One line with inputs, decision, reason and actions: the journal record of a tick."""
        b = self.backlog
        age = "-" if b.oldest_age is None else f"{b.oldest_age:.1f}s"
        d = self.decision
        parts = [
            f"workers {d.current} -> {d.target}" + (" on this host" if self.fleet else "") + (" (dry run)" if self.dry_run else ""),
            d.reason,
        ]
        if self.queues is not None:  # figures never read are left out, not shown as zeros
            queues = f"queues ready={b.ready} delayed={b.delayed} due={b.due} in_flight={b.in_flight} orphaned={b.orphaned} dead={b.dead} oldest={age}"
            parts.insert(0, queues)
        if d.reset and not self.dry_run:
            parts.append("reset-failed " + " ".join(f"@{n}" for n in d.reset))
        if self.plan.picks:
            parts.append(("would stop " if self.dry_run else "stop ") + " ".join(str(p) for p in self.plan.picks))
        if self.plan.waiting:
            waited = 0.0 if self.waiting_since is None or self.at is None else max(0.0, self.at - self.waiting_since)
            parts.append(
                "scale-down waits for long tasks: "
                + " ".join(str(p) for p in self.plan.waiting)
                + f", waited {waited:.0f}s of {victims.WAIT_LIMIT:.0f}s"
                + ("; intake paused: " + " ".join(f"@{n}" for n in self.intake_paused) if self.intake_paused else "")
            )
        if self.recycled:
            parts.append(self.recycled + (f"; {self.drained_first}" if self.drained_first else ""))
        for label, jobs in (("started", self.started), ("stopped", self.stopped), ("restarted", self.restarted)):
            if jobs:
                parts.append(f"{label} " + " ".join(f"@{j.unit.split('@')[1].split('.')[0]}:{_shown(j)}" for j in jobs))
        if self.failure:
            parts.append(self.failure)
        if d.held or not self.ok:
            # A recycle's failure says itself what follows (its replacement is already reset; recycles wait).
            recycle = self.recycled is not None and not d.held
            parts.append("see journalctl -u 'dramatiq-worker@*'" + ("" if recycle else "; dramactl resets failed instances by itself, with backoff"))
        return " | ".join(parts)

    def to_dict(self) -> dict:
        return {
            "decision": self.decision.to_dict(),
            "queues": None if self.queues is None else [q.to_dict() for q in self.queues],
            "totals": None if self.queues is None else {"backlog": self.backlog.backlog, "oldest_age": self.backlog.oldest_age},
            "started": [j.__dict__ for j in self.started],
            "stopped": [j.__dict__ for j in self.stopped],
            "restarted": [j.__dict__ for j in self.restarted],
            "dry_run": self.dry_run,
            "paused": self.paused,
            "fleet": None if self.fleet is None else self.fleet.to_dict(),
            "victims": [{"instance": p.number, "why": p.why, "chosen": p.kind} for p in self.plan.picks],
            "waiting": [{"instance": p.number, "why": p.why} for p in self.plan.waiting],
            "waiting_since": self.waiting_since,
            "intake_paused": list(self.intake_paused),
        }

    def victims_text(self) -> str | None:
        """Why each stopped instance was chosen, for the history ('@3 idle; @2 busy 1/4, oldest 3s')."""
        if not self.plan.picks and not self.plan.waiting:
            return None
        text = "; ".join(f"@{p.number} {p.why}" for p in self.plan.picks)
        if self.plan.waiting:
            text += ("; " if text else "") + "waiting: " + "; ".join(f"@{p.number} {p.why}" for p in self.plan.waiting)
        return text


def _shown(job: JobResult) -> str:
    """A job's result as the journal line shows it: a stop still running is draining."""
    return "draining" if job.verb == "stop" and job.result == "pending" else job.result


@contextmanager
def _locked(settings: Settings, wait: bool | float, *, write: bool = True) -> Iterator[StateStore]:
    """The state under the lock; ``wait``: False for a tick (skip when busy) or seconds (manual).

    ``write``: the caller may change the fleet and must save the state afterwards, so
    the directory is checked first (StateDirError, nothing changed) rather than after.
    """
    store = StateStore(settings.state_dir)
    if write:
        store.check_writable()
    try:
        with store.lock(wait=wait):
            yield store
    except BlockingIOError:
        if wait is False:
            raise Busy("another dramactl tick or manual change is running; try again in a moment") from None
        raise Busy(f"another dramactl tick or manual change holds {store.lock_path}; try again or raise --wait") from None


def threads_of(settings: Settings, state: ScalerState) -> int:
    """Threads per worker: the operator's last `start P T` or WORKER_THREADS."""
    return state.threads or settings.worker_threads


def _apply(
    fleet: Fleet, settings: Settings, instances: Sequence[WorkerUnit], changes: Plan, threads: int, reset: Sequence[int] = (),
    elapsed: float | None = None,
) -> tuple[list[JobResult], list[JobResult]]:
    """Stop, then start, and wait for the jobs; ``elapsed``: the seconds since the tick
    began (its stop jobs are waited for only until shortly before the next tick)."""
    if changes.picks:
        log.info("stop %s", " ".join(str(p) for p in changes.picks))
    if changes.start:
        worker_argv(settings, threads)  # a command that cannot run stops us before any change
    fleet.reset_failed(reset)
    stopped = fleet.stop(changes.stop, timeout=stop_wait(settings, elapsed))
    start_wait = START_WAIT
    started: list[JobResult] = []
    todo = list(changes.start)
    if todo and not any(u.is_up and u.active_state == "active" for u in instances):
        # No instance proves the command works: start one first, so a broken app
        # yields one failed unit to report rather than a whole batch.
        started = fleet.start(todo[:1], timeout=start_wait)
        todo = todo[1:] if started[0].result == "done" else []
    started += fleet.start(todo, timeout=start_wait)
    return started, stopped


def tick(settings: Settings, *, dry_run: bool = False, fleet: Fleet | None = None, now: float | None = None) -> Outcome:
    """The timer's step: read the queues and the fleet, decide, act, remember."""
    fleet = fleet or Fleet()
    with _locked(settings, wait=False, write=not dry_run) as store:
        started = time.monotonic()
        client = queue.connect(settings)
        probe = queue.read_probe(settings, client)
        stats = probe.queues
        state = store.load()
        if state.threads and state.threads != settings.worker_threads:
            # The workers run the operator's `start P T` / `--threads T` (threads_of): size them by it.
            settings = replace(settings, worker_threads=state.threads)
        pending = state.history[-1].starting if state.history else ()
        probed = time.monotonic()
        instances = fleet.instances(timed=pending, memory=bool(settings.worker_recycle_memory))
        log.debug("redis probe %.1f ms, %d instances listed in %.1f ms", (probed - started) * 1e3, len(instances), (time.monotonic() - probed) * 1e3)
        now = time.time() if now is None else now
        timed, still = measure_startup(instances, pending, now)
        backlog = FleetBacklog.of(stats)
        decision = decide(backlog, instances, settings, state.history, now, paused=state.paused, size=state.size, recovery=state.recovery)
        coordinated = None
        if settings.fleet_name:
            coordinated = _in_fleet(client, settings, backlog, instances, state, decision, write=not dry_run)
            if not state.paused:
                decision = safeguard(coordinated.decision, instances, settings, state.recovery, now, coordinated.floor)
            elif coordinated.decision.target < decision.target:  # its paused size has no room under the fleet's cap yet
                decision = replace(decision, target=coordinated.decision.target, reason=coordinated.decision.reason)
        previous = state.history[-1] if state.history else None
        long_after = victims.long_after(settings.graceful_shutdown_timeout, victims.mean_service(backlog.done_total, backlog.busy_seconds_total))
        changes = plan(
            instances,
            decision.target,
            decision.reset,
            reports=probe.instances,
            now=probe.at,
            long_after=long_after,
            waiting_since=previous.waiting_since if previous is not None else None,
        )
        waiting_since = ((previous.waiting_since if previous is not None else None) or now) if changes.waiting else None
        waited = [p.number for p in changes.waiting]
        waits = victims.messages_wait(backlog.ready + backlog.due + backlog.orphaned, probe.instances, waited)
        paused = victims.to_pause(changes.waiting, long_after, waits, others_stay=decision.target > 0)
        outcome = Outcome(
            decision, stats, dry_run=dry_run, paused=state.paused, instances=list(instances), fleet=coordinated, at=now,
            plan=changes, reports=probe.instances, waiting_since=waiting_since, intake_paused=tuple(paused),
        )
        for line in probe.damaged:
            log.warning("%s", line)
        if dry_run:
            return outcome
        record = replace(
            decision.record(now, backlog),
            startup=None if timed is None else round(timed, 3),
            starting=still,
            victims=outcome.victims_text(),
            waiting_since=waiting_since,
        )
        recycled = 0
        waited_before = previous is not None and previous.waiting_since is not None
        with _seat_kept(client, settings, coordinated, state.paused) as seat, paused_through(
            settings, client, probe.instances, waited_before, paused, changes.stop, now
        ):
            if decision.delta or decision.reset:
                acting = time.monotonic()
                outcome.started, outcome.stopped = _apply(
                    fleet, settings, instances, changes, threads_of(settings, state), decision.reset, elapsed=acting - started)
                if outcome.started and not outcome.stopped and all(j.result == "done" for j in outcome.started):
                    # Start jobs end at READY=1 (Type=notify): how long an instance takes to consume.
                    took = round(time.monotonic() - acting, 3)
                    record = replace(record, startup=max(took, record.startup or 0.0))
                # Start jobs still pending after START_WAIT: systemd times them, read next tick.
                late = tuple(int(j.unit.split("@")[1].split(".")[0]) for j in outcome.started if j.result == "pending")
                record = replace(record, starting=tuple(sorted({*record.starting, *late})))
            elif settings.worker_recycle_memory and not decision.held:
                recycled = _recycle(  # in a fleet, the replacement's place is claimed first
                    fleet, settings, instances, outcome, seat, paused_without_size=state.paused and state.size is None)
        if coordinated is not None:
            _settle(client, settings, instances, decision, outcome, record.startup, waiting=len(changes.waiting), claimed_at=coordinated.claimed_at)
        outcome.duration = round(time.monotonic() - started, 3)
        record = replace(record, duration=outcome.duration)
        new = replace(state.with_tick(record), recovery=decision.recovery, recycles=state.recycles + recycled)
        if coordinated is not None:
            new = replace(new, fleet_claimed=coordinated.claimed_at, fleet_lost=coordinated.lost_at, fleet_in=settings.fleet_name)
        new = _counted(new, outcome)
        outcome.recycles = new.recycles
        store.save(new)
    if settings.metrics_textfile_dir:
        from . import metrics

        metrics.publish(settings.metrics_textfile_dir, outcome)
    return outcome


@contextmanager
def paused_through(
    settings: Settings, client: redis.Redis | None, reports: dict[int, InstanceReport] | None, waited_before: bool,
    paused: Sequence[int] = (), stopping: Sequence[int] = (), now: float | None = None,
) -> Iterator[None]:
    """The intake pauses (intake.py) around a step's jobs. Before them: exactly ``paused``,
    and every instance the step stops, until its stop job has run or the step stopped
    waiting for it, the SIGTERM sent either way (unpaused before the SIGTERM reaches
    Dramatiq's worker, its free threads would start messages the stop cuts;
    a report lags its mark by a flush, so all of them; marked, an instance fetches nothing
    in its drain, which would only requeue it). After them: ``paused`` alone. Nothing is
    written when no mark can exist and none is wanted (``waited_before``: the last tick
    waited); when the jobs fail, the marks stay for the next tick to rewrite."""
    if client is None or not intake.needs_write(paused, reports, waited_before):
        yield
        return
    _pause(client, settings, [*paused, *stopping], now)
    yield
    if stopping:
        _pause(client, settings, paused, now)


def pauses_ended(settings: Settings, probe: queue.Probe | None, state: ScalerState, stopping: Sequence[int] = ()):
    """A manual command or a rolling restart ends any wait: it pauses no instance, so the
    marks go once it has acted and no number started again, or kept, stays paused until the
    next tick (:func:`paused_through`)."""
    waited = bool(state.history) and state.history[-1].waiting_since is not None
    if probe is None:
        return paused_through(settings, None, None, waited)
    return paused_through(settings, queue.connect(settings), probe.instances, waited, (), stopping)


def _pause(client: redis.Redis, settings: Settings, numbers: Sequence[int], now: float | None = None) -> None:
    """Mark exactly ``numbers`` as paused (intake.py); a failure is one line in the journal."""
    problem = intake.write(client, settings.namespace, numbers, time.time() if now is None else now, settings.check_interval)
    if problem:
        log.warning("%s", problem)


@contextmanager
def _seat_kept(client: redis.Redis | None, settings: Settings, coordinated: share.Coordinated | None, paused: bool) -> Iterator[Seat | None]:
    """On a host of a fleet that wrote its claim: its seat (dramactl.seat) while the tick acts, the
    heartbeat and claim renewed every third of FLEET_HOST_TTL, so jobs that take longer than the
    TTL (start jobs waited for, a recycle's drain) never leave what runs here unclaimed. None
    otherwise (one host, a dry run)."""
    if client is None or coordinated is None or coordinated.claim is None:
        yield None
        return
    from .seat import Seat

    seat = Seat(client, settings, paused=paused, marks=(coordinated.claimed_at, coordinated.lost_at))
    seat.claim = coordinated.claim
    with seat.kept():
        yield seat


def _recycle(
    fleet: Fleet, settings: Settings, instances: Sequence[WorkerUnit], outcome: Outcome, seat: Seat | None = None,
    paused_without_size: bool = False,
) -> int:
    """WORKER_RECYCLE_MEMORY: dramactl/recycle.py decides and replaces (rollout.py's step)."""
    from . import recycle

    return recycle.step(fleet, settings, instances, outcome, seat, paused_without_size, stop_wait=stop_wait(settings))


def _in_fleet(
    client: redis.Redis, settings: Settings, backlog: FleetBacklog, instances: Sequence[WorkerUnit], state: ScalerState, local: ScalingDecision, *, write: bool
) -> share.Coordinated:
    """This host's heartbeat and share in the fleet (FLEET_NAME); a paused host holds
    its own decision (``local``) and is counted with it. ``write`` False (a dry run):
    what it would be, with nothing written."""
    from . import share

    up = [u for u in instances if u.is_up]
    claimed_at, lost_at = fleet_marks(settings, state)
    with queue.redis_errors(settings):
        return share.coordinate(
            client,
            settings,
            backlog,
            up=len(up),
            starting=sum(1 for u in up if is_starting(u)),
            occupying=sum(1 for u in instances if u.occupies),
            pinned=local.target if state.paused else None,
            failing=share.is_failing(instances, state.recovery, time.time()),
            working=sum(1 for u in up if not u.is_failing),
            write=write,
            claimed_at=claimed_at,
            lost_at=lost_at,
        )


def fleet_marks(settings: Settings, state: ScalerState) -> tuple[float | None, float | None]:
    """(when this host last wrote its claim, when it found the fleet's records lost) from its state,
    for dramactl.fleetplan.records_lost; none for a state written in another fleet (FLEET_NAME
    changed): it never had this host's heartbeat to lose."""
    if state.fleet_in != settings.fleet_name:
        return None, None
    return state.fleet_claimed, state.fleet_lost


def _settle(
    client: redis.Redis, settings: Settings, instances: Sequence[WorkerUnit], decision: ScalingDecision, outcome: Outcome, startup: float | None,
    waiting: int = 0, claimed_at: float | None = None,
) -> None:
    """After acting, the claim drops to what this host now runs (its stops are with
    systemd; ``waiting``: instances a scale-down waits for still run), so the other hosts
    can grow into the room at their next tick. Best effort: when Redis went away
    meanwhile, the claim expires with the heartbeat. ``claimed_at``: when this tick claimed
    (share.settle: what runs stays claimed if the fleet's records were lost meanwhile)."""
    import redis

    from . import share

    coming = sum(1 for u in instances if u.is_coming_back)
    failed_starts = sum(1 for j in outcome.started if not j.ok)
    up = decision.target + waiting - failed_starts  # instances a scale-down waits for still run
    working = min(up, sum(1 for u in instances if u.is_up and not u.is_failing) + sum(1 for j in outcome.started if j.ok))
    try:
        # A start that failed just now: this host reports failing at once, so the others take
        # its share at their next tick rather than one tick later.
        share.settle(
            client, settings, claim=up + coming, up=up, startup=startup, failing=failed_starts > 0, working=working, claimed_at=claimed_at,
        )
    except (OSError, redis.RedisError, SettingsError) as exc:
        log.warning("fleet %s: could not update this host's claim after acting (%s); it expires with the heartbeat", settings.fleet_name, exc)


def scale_to(
    settings: Settings,
    target: int,
    *,
    threads: int | None = None,
    fleet: Fleet | None = None,
    pause: bool = True,
    wait: float = LOCK_WAIT,
) -> Outcome:
    """Set the fleet size by hand; pauses autoscaling so the next tick keeps it."""
    if not 0 <= target <= settings.max_processes:
        raise SettingsError("MAX_PROCESSES", f"cannot scale to {target}: allowed 0..{settings.max_processes}", "ask for fewer or raise MAX_PROCESSES")
    return _resize(settings, lambda up: target, threads=threads, fleet=fleet, pause=pause, wait=wait, exact=True)


def scale_by(settings: Settings, delta: int, *, fleet: Fleet | None = None, wait: float = LOCK_WAIT) -> Outcome:
    """scale-up/scale-down by ``delta`` instances, clamped to 0..MAX_PROCESSES."""
    return _resize(settings, lambda up: max(0, min(settings.max_processes, up + delta)), fleet=fleet, wait=wait)


def _resize(
    settings: Settings,
    target_for: Callable[[int], int],
    *,
    threads: int | None = None,
    fleet: Fleet | None = None,
    pause: bool = True,
    wait: float = LOCK_WAIT,
    exact: bool = False,
) -> Outcome:
    """The manual verbs: ``target_for(instances up)`` is decided under the lock, on one listing.

    On a host of a fleet, growth must fit FLEET_MAX_PROCESSES beside the other hosts' claims:
    ``exact`` (scale-to) refuses in one line when it does not, otherwise it is capped; the
    claim is written to the fleet before any start."""
    if threads is not None and not 1 <= threads <= 1024:
        raise SettingsError("WORKER_THREADS", f"{threads} threads per worker is out of range", "use 1 to 1024")
    fleet = fleet or Fleet()
    with _locked(settings, wait=float(wait)) as store:
        state = store.load()
        probe = _probe_if_readable(settings)
        stats = probe.queues if probe is not None else None
        instances = fleet.instances()
        up = sorted(u.number for u in instances if u.is_up)
        target = target_for(len(up))
        paused = pause or state.paused
        new_threads = threads or threads_of(settings, state)
        if target:
            worker_argv(settings, new_threads)
        capped = ""
        if settings.fleet_name and target > len(up):
            target, capped = _fleet_room(settings, target, len(up), sum(1 for u in instances if u.occupies), paused, exact, fleet_marks(settings, state))
        # The operator asked for this size: it is kept across reboots while paused, and
        # failed instances are reset now (an explicit command overrides the backoff).
        reset = [u.number for u in instances if u.is_failed]
        # The operator asked for this size now: the least busy instances stop, with no wait.
        changes = plan(instances, target, reset, reports=probe.instances if probe else None, now=probe.at if probe else time.time())
        new_state = replace(state, paused=paused, threads=threads or state.threads, size=target if paused else None, recovery=Recovery()).wait_ended()
        # Instances that stay restart to take a new thread count.
        restart = [n for n in up if n not in changes.stop] if new_threads != threads_of(settings, state) else []
        store.save(new_state)  # before any start: instances read the thread count from it
        reason = "manual" + ("; autoscaling paused" if new_state.paused else "") + capped
        if settings.fleet_name:
            from .share import scope

            reason += f"; {scope(settings)}"
        outcome = Outcome(
            ScalingDecision(len(up), target, reason, reset=tuple(reset)), stats, paused=new_state.paused, instances=list(instances),
            plan=changes, reports=probe.instances if probe else {},
        )
        with pauses_ended(settings, probe, state, changes.stop):
            outcome.started, outcome.stopped = _apply(fleet, settings, instances, changes, new_threads, reset)
        store.save(_counted(new_state, outcome))
        outcome.restarted = fleet.restart(restart)
        return outcome


def _counted(state: ScalerState, outcome: Outcome) -> ScalerState:
    """``state`` with the counters after ``outcome``'s jobs, put in ``outcome`` too: the jobs that went
    through (done, or pending: still draining or starting). A failed or canceled job changed nothing,
    and the next tick chooses its instance again: counted then, once, if it goes through."""
    stopped = {j.unit for j in outcome.stopped if j.ok}
    new = state.counted(sum(j.ok for j in outcome.started), len(stopped), [p for p in outcome.plan.picks if unit_name(p.number) in stopped])
    outcome.actions = {"up": new.actions[0], "down": new.actions[1]}
    outcome.stopped_by = new.stops_by_kind()
    return new


def _fleet_room(
    settings: Settings, target: int, up: int, occupying: int, paused: bool, exact: bool, marks: tuple[float | None, float | None] = (None, None),
) -> tuple[int, str]:
    """(the size this host of a fleet may grow to, a note for the journal line when capped),
    its claim written to the fleet first. Redis must answer: growth the fleet cannot count
    could pass its cap (shrinking needs no Redis); nor must the fleet's records be lost
    (share.RecordsLost, one line). ``marks``: :func:`fleet_marks`."""
    from . import share

    with queue.redis_errors(settings):
        client = queue.connect(settings)
        allowed = share.reserve(client, settings, target=target, up=up, occupying=occupying, paused=paused, partial=not exact,
                                claimed_at=marks[0], lost_at=marks[1])
    if allowed >= target:
        return target, ""
    if exact:
        raise SettingsError(
            "FLEET_MAX_PROCESSES",
            f"cannot scale this host to {target}: fleet {settings.fleet_name}'s other hosts leave room for {allowed} under the fleet's cap",
            f"ask for at most {allowed}, shrink another host, or raise FLEET_MAX_PROCESSES on every host",
        )
    return allowed, f"; capped at {allowed} by FLEET_MAX_PROCESSES (the other hosts' claims)"


def _probe_if_readable(settings: Settings) -> queue.Probe | None:
    """The queues for a manual command's journal line and the instance reports for its
    choice of which to stop (one probe), or None: Redis being down or a queue unreadable
    must not block a manual scale, it only leaves the figures out (and stops the highest numbers)."""
    try:
        return queue.read_probe(settings)
    except SettingsError as exc:
        log.debug("manual change without queue figures: %s", exc)
        return None


def set_paused(settings: Settings, paused: bool, *, wait: float = LOCK_WAIT) -> ScalerState:
    """pause/resume: whether ticks may change the fleet."""
    with _locked(settings, wait=float(wait)) as store:
        state = store.load()
        # resume hands the size back to the policy; pause alone holds whatever runs.
        new = replace(state, paused=paused, size=state.size if paused else None)
        store.save(new)
        return new
