"""The pure part of several hosts, one fleet (dramactl.share): the split of a target into
shares, the cap, the room a host may grow into, the fleet's settings record, and one host's
view of a fleet tick (:func:`plan_share`). No I/O; imported only with FLEET_NAME set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Sequence

from .fleetrecords import FleetDecision, HostEntry, Silence, fleet_values
from .limits import clamp
from .policy import QUIET_SECONDS, ScalingDecision, aim
from .settings import LONGEST_HOST_TTL, Settings
from .state import Recovery, TickRecord

FORGET_AFTER = 3600.0  # an expired host stays listed (status shows it down) this long, then is removed
LISTED = 12  # hosts named in a tick's journal line (all of them in `dramactl status`)


def split(total: int, hosts: Sequence[tuple[str, int]], first: Sequence[str] = ()) -> dict[str, int]:
    """Shares of ``total`` among ``hosts`` (name, MAX_PROCESSES): as equal as their
    limits allow, the remainder to the hosts named in ``first`` (in that order: those
    already running more), then to the first names in sorted order. Every host that
    sees the same hosts computes the same shares; their sum is min(total, sum of MAX)."""
    shares = {name: 0 for name, _ in hosts}
    limits = dict(hosts)
    rank = {n: i for i, n in enumerate(first)}
    left = max(0, total)
    while left > 0:
        open_ = sorted((n for n in shares if shares[n] < limits[n]), key=lambda n: (rank.get(n, len(rank)), n))
        if not open_:
            break
        each, extra = divmod(left, len(open_))
        if each == 0:
            for n in open_[:extra]:
                shares[n] += 1
            break
        for n in open_:
            give = min(each, limits[n] - shares[n])
            shares[n] += give
            left -= give
    return shares


def fleet_cap(settings: Settings, hosts: Sequence[HostEntry]) -> int:
    """The most instances the fleet may run: the live hosts' MAX_PROCESSES added up
    (a paused host's at its instances), within FLEET_MAX_PROCESSES when set."""
    total = sum(h.claim if h.paused else h.max for h in hosts)
    return min(total, settings.fleet_max_processes) if settings.fleet_max_processes else total



TICK_SLACK = 2.0  # seconds a live host's heartbeats may lie further apart than CHECK_INTERVAL (the service's start, the tick's own reads)


def silence_gap(settings: Settings) -> float:
    """How long no host of a fleet may have written a heartbeat before that is a silence (pure).

    A live host writes one every CHECK_INTERVAL, give or take TICK_SLACK (a tick that acts longer
    renews it every third of FLEET_HOST_TTL); an outage longer than FLEET_HOST_TTL - CHECK_INTERVAL
    can expire the heartbeat of a host that wrote an interval before the newest one. So: halfway
    from the interval to the TTL, at most TTL - CHECK_INTERVAL, at least CHECK_INTERVAL + TICK_SLACK
    (a shorter gap would call a late tick a silence and keep dead hosts live), at most the TTL.
    With the default TTL (3 x CHECK_INTERVAL + 30) that is 2 x CHECK_INTERVAL + 15; a TTL below
    2 x CHECK_INTERVAL + TICK_SLACK leaves outages between the two unseen (docs/fleet.md)."""
    interval, ttl = settings.check_interval, settings.host_ttl
    return min(ttl, max(interval + TICK_SLACK, min((interval + ttl) / 2, ttl - interval)))


def short_ttl(settings: Settings) -> str | None:
    """``check``'s warning when FLEET_HOST_TTL leaves outages unseen (pure): below
    2 x CHECK_INTERVAL + TICK_SLACK an outage longer than TTL - CHECK_INTERVAL can expire a live
    host's heartbeat, yet is shorter than the :func:`silence_gap` that records it."""
    interval, ttl, gap = settings.check_interval, settings.host_ttl, silence_gap(settings)
    if gap <= ttl - interval:
        return None
    least = 2 * interval + TICK_SLACK
    if least > LONGEST_HOST_TTL:
        fix = f"no FLEET_HOST_TTL is that long (at most {LONGEST_HOST_TTL}s): set CHECK_INTERVAL to at most {(LONGEST_HOST_TTL - TICK_SLACK) // 2:g}"
    else:
        fix = f"set FLEET_HOST_TTL to at least {least:g}, or unset it"
    return (
        f"FLEET_HOST_TTL={ttl}s is below 2 x CHECK_INTERVAL + {TICK_SLACK:g}s ({least:g}s): a Redis outage of {ttl - interval}s"
        f" to {gap:g}s can expire the heartbeat of a host that still runs its instances without being recorded, and the host"
        f" back first may then take its share past the fleet's cap; {fix}"
    )


def silence_before(hosts: Sequence[HostEntry], now: float, gap: float, kept: Silence | None = None) -> Silence | None:
    """The silence this write ends, when no host (this one included) wrote a heartbeat for longer
    than ``gap`` (:func:`silence_gap`); else None. ``kept``: the silences recorded before, kept
    behind it (:meth:`Silence.after`)."""
    newest = max((h.at for h in hosts), default=None)
    if newest is None or now - newest <= gap:
        return None
    return kept.after(newest, now) if kept is not None else Silence(newest, now)


def forgotten(h: HostEntry, now: float, silence: Silence | None) -> bool:
    """An expired entry old enough to remove: judged with the silence, like ``live``, so a
    fleet-wide outage never makes the first host back delete the others' entries."""
    return not h.live(now - FORGET_AFTER, silence)


def room_for(me: str, share: int, up: int, occupying: int, hosts: Sequence[HostEntry], target: int, cap: int | None = None) -> int:
    """This host's target (instances up): its ``share``, but growth only into the room
    that the other hosts' claims and its own ``occupying`` instances (up or coming
    back) leave under the fleet's ``target``. A failing host's claim counts there with
    its working instances only (its others do not serve), but every claim counts in full
    against the ``cap``. Shrinking is never held back."""
    if share <= up:
        return share
    others = [h for h in hosts if h.name != me]
    serving = sum(min(h.claim, h.serving) if h.failing and not h.paused else h.claim for h in others)
    room = target - serving - occupying
    if cap is not None:
        room = min(room, cap - sum(h.claim for h in others) - occupying)
    return up + max(0, min(share - up, room))


def is_failing(instances: Sequence, recovery: Recovery, now: float) -> bool:
    """This host's instances fail: one is failed or in systemd's restart loop, or its
    failure streak (policy.safeguard) is not over yet (QUIET_SECONDS since the last)."""
    if any(u.is_failing for u in instances):
        return True
    return bool(recovery.attempts) and recovery.failing_at is not None and now - recovery.failing_at < QUIET_SECONDS


@dataclass(frozen=True)
class Coordinated:
    """What this host's tick does in the fleet: its target and the fleet's view."""

    decision: ScalingDecision  # this host's, before the safeguard: current = its instances up
    fleet: FleetDecision
    hosts: tuple[HostEntry, ...]  # live hosts, this one included, sorted by name
    share: int
    floor: int  # this host's part of MIN_PROCESSES: what the safeguard restores after failures
    fresh: bool  # this tick made the fleet's decision (else it applied another host's)
    settings: Mapping = field(default_factory=dict)  # the fleet's settings record in force
    differs: tuple[str, ...] = ()  # where this host's own settings differ from it
    claim: int | None = None  # the claim this tick wrote for the host (None: nothing written, a dry run)
    claimed_at: float | None = None  # Redis' clock when this tick wrote the host's claim (the state keeps it)
    lost_at: float | None = None  # Redis' clock when the host found the fleet's records lost (growth waits a TTL)

    def summary(self) -> str:
        f = self.fleet

        def shown(h: HostEntry) -> str:
            if h.paused:
                return f"{h.display} paused {h.claim}"
            return f"{h.display} {f.shares.get(h.name, 0)}" + (" failing" if h.name in f.failing else "")

        listed = [shown(h) for h in self.hosts[:LISTED]]
        if len(self.hosts) > LISTED:
            listed.append(f"{len(self.hosts) - LISTED} more: dramactl status")
        shares = ", ".join(listed)
        made = "decided here" if self.fresh else f"decided by {f.by}"
        return f"fleet target {f.target} of cap {f.cap} over {len(self.hosts)} host(s) ({shares}; {made})"

    def to_dict(self) -> dict:
        fleet = asdict(self.fleet) | {"hosts": list(self.fleet.hosts), "shares": dict(self.fleet.shares), "failing": list(self.fleet.failing)}
        return {"fleet": fleet, "share": self.share, "fresh": self.fresh, "settings_differ": list(self.differs)}


def plan_share(
    settings: Settings,
    me: HostEntry,
    others: Sequence[HostEntry],
    backlog: FleetBacklog,
    history: Sequence[TickRecord] | Callable[[], Sequence[TickRecord]],
    last: FleetDecision | None,
    now: float,
    occupying: int,
    reuse: bool = False,
) -> tuple[Coordinated, TickRecord | None]:
    """The pure heart of a fleet tick: (what this host does, the history record to
    append when this tick made a new fleet decision). ``me`` carries this host's
    instances up and starting; ``others`` are the live other hosts. ``settings``
    carry the fleet's settings record already.

    A failing host keeps its working instances (pinned, like a paused host's) and is
    left out of the split of the target and of MIN, unless every autoscaling host
    fails; the remainder goes to the hosts that already run more, so a recovered
    host does not take back instances that serve elsewhere.

    ``reuse``: apply ``last`` as it is (another host published it first, in this very tick),
    even where this host would have decided anew."""
    hosts = sorted([me, *others], key=lambda h: h.name)
    scaling = [h for h in hosts if not h.paused]
    serving = [h for h in scaling if not h.failing] or scaling
    held = [h for h in scaling if h.failing] if len(serving) < len(scaling) else []
    pinned = sum(h.claim for h in hosts if h.paused) + sum(min(h.serving, h.max) for h in held)
    names = tuple(h.name for h in serving)
    failing = tuple(h.name for h in held)
    before = dict(last.shares) if last is not None else {}
    first = [h.name for h in sorted(serving, key=lambda h: (-before.get(h.name, 0), h.name))]
    cap = fleet_cap(settings, hosts)
    fresh = not reuse and (
        last is None
        or now - last.at >= settings.check_interval / 2.0
        or last.hosts != names
        or last.failing != failing
        or last.cap != cap
        or last.pinned != pinned
        or now < last.at
    )
    record = None
    if fresh:
        current = sum(h.up for h in hosts)
        starting = sum(h.starting for h in hosts)
        bounds = replace(settings, max_processes=max(cap, 1), min_processes=min(settings.min_processes, cap))
        startups = [h.startup for h in hosts if h.startup is not None]
        aimed = aim(backlog, current, starting, bounds, history() if callable(history) else history, now)
        target = max(0, min(clamp(aimed.target, bounds), cap))
        shares = split(target - pinned, [(h.name, h.max) for h in serving], first)
        decision = FleetDecision(now, me.name, target, cap, aimed.reason, names, shares, pinned, aimed.wanted, aimed.for_rate, failing)
        record = replace(aimed.record(now, backlog), target=target, startup=max(startups) if startups else None)
    else:
        assert last is not None
        decision = last
        cap = min(cap, last.cap)  # a decision reused as it is (another host's, published first)
        target = last.target
        shares = dict(last.shares)
    # A failing host's share: what it has up (it stops nothing: a stop could hit a working
    # instance rather than a looping one; its safeguard deals with those), and no growth.
    share = 0 if me.paused else min(me.up, me.max) if me.name in decision.failing else shares.get(me.name, 0)
    mine = room_for(me.name, share, me.up, occupying, hosts, target, cap)
    floor = split(settings.min_processes - pinned, [(h.name, h.max) for h in serving], first).get(me.name, 0)
    local = ScalingDecision(
        me.up,
        mine,
        "",
        wanted=share,
        starting=me.starting,
        for_rate=decision.for_rate,
    )
    view = Coordinated(local, decision, tuple(hosts), share, floor, fresh)
    return granted(view, me, mine), record


def unclaimed_note(unclaimed: int) -> str:
    """The journal's words for worker processes counted by their own reports (dramactl.claims)."""
    if not unclaimed:
        return ""
    return (f" ({unclaimed} worker process(es) of hosts whose heartbeat expired still report, counted in the room: "
            "those hosts' ticks stopped while their workers run; see their dramactl.timer and journal)")


def granted(view: Coordinated, me: HostEntry, mine: int, unclaimed: int = 0, lost: str = "") -> Coordinated:
    """``view`` with this host's target set to ``mine`` (what it may run: the claim script's
    grant, dramactl.claims, at most its share), and the journal line's reason for it;
    ``unclaimed``: the processes of hosts whose claim expired that the grant counted;
    ``lost``: why it does not grow now (:func:`lost_note`)."""
    share, decision = view.share, view.fleet
    note = lost or (f" (grows {mine - me.up} now: the others' instances leave no more room under the target)" if mine < share and mine >= me.up else "")
    sick = " (this host's instances fail: it keeps its working ones, the others serve its share)" if me.name in decision.failing else ""
    reason = f"{view.summary()}: this host's share {share}{note}{sick}{unclaimed_note(unclaimed)}; fleet: {decision.reason}"
    return replace(view, decision=replace(view.decision, target=mine, reason=reason))


def records_lost(own: object, claimed_at: float | None, lost_at: float | None, now: float, ttl: float) -> float | None:
    """When this host found the fleet's records lost, while that still holds its growth back
    (else None). They are lost when its own heartbeat (``own``, None: missing) is gone though it
    wrote one (``claimed_at``) less than FORGET_AFTER ago: only the forget step removes a heartbeat,
    an hour after it expired, so Redis restarted empty or was flushed. Every host's claim went with
    them; a host that grew at once could take the room of hosts that have not ticked since. So it
    grows again once FLEET_HOST_TTL has passed (all the live hosts have claimed again by then)."""
    if own is None and claimed_at is not None and 0 <= now - claimed_at < FORGET_AFTER and (lost_at is None or now - lost_at >= ttl):
        lost_at = now
    return lost_at if lost_at is not None and 0 <= now - lost_at < ttl else None


def lost_note(lost_at: float | None, now: float, ttl: float) -> str:
    if lost_at is None:
        return ""
    return (f" (the fleet's records in Redis were lost: this host's heartbeat was gone though it wrote one, as after a Redis "
            f"restart without persistence; it grows again in {max(0.0, lost_at + ttl - now):.0f}s, once every host has claimed again)")


def held(view: Coordinated, me: HostEntry, pinned: int, grant: int, unclaimed: int = 0, lost: str = "") -> Coordinated:
    """A paused host's ``view``: it keeps what it runs and grows to its own size (``pinned``)
    only as far as the claim script's ``grant`` under the fleet's cap (after a reboot, say, the
    others may have taken the room); the target is the grant, with why when it is short."""
    if grant >= pinned:
        return replace(view, decision=replace(view.decision, target=pinned))
    why = lost or f": the other hosts' claims leave no more room under the fleet's cap{unclaimed_note(unclaimed)}"
    reason = f"{view.summary()}: this paused host's size {pinned}, {grant} for now{why}"
    return replace(view, decision=replace(view.decision, target=grant, reason=reason))


def following(settings: Settings, record: Mapping | None, agreed: bool) -> tuple[Settings, dict, bool]:
    """(the settings this host uses in the fleet, the record in force, whether to write it).

    No record yet (or a damaged one): this host's own become the record. A record that
    differs from this host's own is followed, unless every live host's heartbeat carries the
    digest of this host's settings (``agreed``): then the operator changed the settings on
    every host, and the record is replaced. Either way every host uses one set: no flapping."""
    mine = fleet_values(settings)
    if record is None or (record != mine and agreed):
        return settings, mine, True
    return replace(settings, **record), dict(record), False
