"""Several hosts, one fleet: heartbeats, one fleet-wide decision and each host's share,
kept in the Redis the hosts already share with Dramatiq.

Off unless ``FLEET_NAME`` is set. Hosts with the same name (on the same Redis and
namespace) form one fleet. Everything lives in one HASH,
``<namespace>:__dramactl__.fleet.<FLEET_NAME>``:

* ``host:<machine-id>``: a :class:`HostEntry`, the host's heartbeat. A host is its
  /etc/machine-id (the hostname when there is none; the hostname is kept as a label
  for display), so cloned VMs or containers sharing a hostname are distinct hosts. It
  says how many instances the host runs, how many it may run before its next tick (its
  *claim*), its own MAX_PROCESSES, whether its instances are failing (and how many
  work), the digest of its own fleet-wide settings, and when it expires (Redis' clock
  + FLEET_HOST_TTL);
* ``decision``: the last :class:`FleetDecision`: the fleet-wide target, for which
  hosts, and their shares;
* ``settings``: the fleet's settings record (MIN_PROCESSES, FLEET_MAX_PROCESSES, the
  policy's settings): every host decides with it, whatever its own env file says
  (:func:`following`);
* ``silence``: the last span in which no host could tick (:class:`Silence`).

Beside it, a LIST ``<namespace>:__dramactl__.fleet-history.<FLEET_NAME>`` holds the
fleet's tick records (one JSON record per decision, the last hour, at most
HISTORY_RECORDS), so the stabilization windows and the measured rates are the
fleet's, and every host shrinks on the same evidence. It is out of the WATCHed hash:
a tick reads it only when it makes a new decision, and appends to it only inside the
transaction that writes the decision, so the data every tick reads and every
conflict re-reads stays small whatever the history's length.
Every value read from the hash is validated like the state file: a damaged entry is
left out and named once in the journal, never a traceback, never a negative or
infinite target (:func:`damaged`).

One tick, inside a WATCH/MULTI transaction on that key (retried, after a jittered
exponential wait, when another host wrote it in between; :class:`Contention` after
ATTEMPTS tries, which is not a configuration error):

1. read the hash and Redis' clock; drop the hosts whose heartbeat expired;
2. reuse the last decision when it is younger than half a CHECK_INTERVAL and was
   made for the same hosts; otherwise decide anew: :func:`dramactl.policy.aim` over
   the whole fleet (the probe's backlog, every live host's instances, the fleet's
   history), within MIN_PROCESSES and the fleet's cap, and append it to the history;
3. split the target into shares (:func:`split`: equal, each within its host's
   MAX_PROCESSES, the remainder to the hosts that had it; paused hosts keep their
   instances and get none; failing hosts keep their working instances and get none,
   so MIN and the target move to hosts that can serve);
4. this host's target is its share, but it grows only into the room the other
   hosts' claims leave under the fleet's target and cap (:func:`room_for`), so a host
   that has not shrunk yet is never overtaken: the fleet never passes its cap;
5. write this host's heartbeat with its claim, and the decision.

Manual sizes (scale-to, scale-up/down) on a host of a fleet claim their room first
(:func:`reserve`): beyond FLEET_MAX_PROCESSES they are refused (scale-to) or capped.

No host is special and there is no daemon: a host that stops ticking (powered off,
bad config, no systemd) expires after FLEET_HOST_TTL and the next decision shares
the fleet among the others, within CHECK_INTERVAL + FLEET_HOST_TTL. Its messages
come back through Dramatiq's own maintenance (dead workers' acks). When Redis
cannot be reached the tick stops before this step, as on one host: every host
keeps its fleet as it is. When it is back, the first host to tick records the
silence (no heartbeat from anyone for longer than FLEET_HOST_TTL: :class:`Silence`)
and the heartbeats written before it get its length added, for liveness and for
forgetting alike: an outage does not make the hosts that come back first take the
shares of those that tick a little later, nor delete their entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Sequence, TypeVar

import redis

from .scaler import Busy
from .policy import QUIET_SECONDS, ScalingDecision, aim, clamp
from .settings import POLICIES, Settings, SettingsError
from .state import HISTORY_SECONDS, DamagedState, Recovery, TickRecord, _fields, _flag, _number, _short, _tick, _whole

T = TypeVar("T")
log = logging.getLogger("dramactl.share")
ATTEMPTS = 20  # WATCH conflicts (another host's tick wrote the fleet in between) before giving up
BACKOFF = (0.005, 0.25)  # seconds: first and longest wait between attempts (exponential, full jitter)
KEY_LIFETIME = 7 * 86400  # a fleet nobody ticks for a week is forgotten
HISTORY_RECORDS = 720  # the fleet's history LIST keeps at most this many records (an hour at two decisions per 10 s)
FORGET_AFTER = 3600.0  # an expired host stays listed (status shows it down) this long, then is removed
MOST = 100_000  # the largest count a heartbeat or decision may hold (FLEET_MAX_PROCESSES' own limit)
LONGEST = 86_400.0  # the longest a heartbeat may last (FLEET_HOST_TTL's own limit)
SKEW = 300.0  # seconds a record's time may be ahead of Redis' clock before it is taken as damaged
LISTED = 12  # hosts named in a tick's journal line (all of them in `dramactl status`)
MACHINE_ID = "/etc/machine-id"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")

# The fleet-wide settings: one record in the fleet's hash (``settings``), followed by every host.
FLEET_SETTINGS = {
    "min_processes": ("MIN_PROCESSES", int),
    "fleet_max_processes": ("FLEET_MAX_PROCESSES", int),
    "policy": ("POLICY", str),
    "scale_up_multiplier": ("SCALE_UP_MULTIPLIER", float),
    "scale_down_multiplier": ("SCALE_DOWN_MULTIPLIER", float),
    "target_backlog_per_worker": ("TARGET_BACKLOG_PER_WORKER", float),
    "max_queue_wait": ("MAX_QUEUE_WAIT", float),
    "max_scale_up_step": ("MAX_SCALE_UP_STEP", int),
    "scale_down_stabilization": ("SCALE_DOWN_STABILIZATION", float),
    "max_scale_down_step": ("MAX_SCALE_DOWN_STEP", int),
}


class Contention(Busy):
    """Too many hosts wrote the fleet's key at the same instant: the tick gave up this time
    (nothing was written), and the next one tries again. Not a configuration error: like
    Busy, a tick reports it as skipped and a manual command exits 4."""


_named: set[tuple[str, str, str]] = set()


def damaged(key: str, fld: str, problem: str) -> None:
    """A value read from the fleet's hash that cannot be used: named once in the journal
    (once per process, however often a retry reads it again); the caller ignores it."""
    if (key, fld, problem) in _named:
        return
    _named.add((key, fld, problem))
    log.warning("fleet: ignoring damaged %s field %s in Redis (%s); the next write of this field replaces it", key, fld, problem)


def scope(settings: Settings) -> str:
    """What a manual command acts on, for its message: '' on one host."""
    if not settings.fleet_name:
        return ""
    return f"this host only, in fleet {settings.fleet_name}: the other hosts keep autoscaling and count its instances toward the fleet's target"


def fleet_key(settings: Settings) -> str:
    return f"{settings.namespace}:__dramactl__.fleet.{settings.fleet_name}"


def history_key(settings: Settings) -> str:
    """The fleet's tick records (a LIST); a name no fleet's hash can have ('.' is allowed in FLEET_NAME)."""
    return f"{settings.namespace}:__dramactl__.fleet-history.{settings.fleet_name}"


def host_name() -> str:
    """This host's name for display: its hostname (clones may share it)."""
    return socket.gethostname()


def host_id(path: str | None = None) -> str:
    """This host's identity in the fleet: /etc/machine-id (unique per installation, kept
    across reboots, unlike a hostname that clones and containers share), else the hostname."""
    try:
        with open(path or MACHINE_ID, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return host_name()
    return text if _MACHINE_ID.match(text) else host_name()


def fleet_values(settings: Settings) -> dict:
    """The fleet-wide settings of ``settings``, as the record holds them."""
    return {k: getattr(settings, k) for k in FLEET_SETTINGS}


def digest(values: Mapping) -> str:
    """A short fingerprint of fleet-wide settings, carried in each heartbeat."""
    return hashlib.blake2s(json.dumps(dict(values), sort_keys=True).encode(), digest_size=6).hexdigest()


def parse_values(raw: bytes | str) -> dict:
    """The settings record, validated (DamagedState when it cannot be used)."""
    d = _fields(json.loads(raw), "settings")
    out = {}
    for k, (_, kind) in FLEET_SETTINGS.items():
        if k not in d:
            raise DamagedState(f"settings.{k}: missing")
        if kind is int:
            out[k] = _whole(d, k, f"settings.{k}", low=0, high=MOST)
        elif kind is float:
            out[k] = _number(d, k, f"settings.{k}")
        else:
            if d[k] not in POLICIES:
                raise DamagedState(f"settings.{k}: {_short(d[k])} is not a policy")
            out[k] = d[k]
    if out["fleet_max_processes"] and out["fleet_max_processes"] < out["min_processes"]:
        raise DamagedState(f"settings: FLEET_MAX_PROCESSES {out['fleet_max_processes']} below MIN_PROCESSES {out['min_processes']}")
    if out["scale_down_multiplier"] >= out["scale_up_multiplier"]:
        raise DamagedState("settings: SCALE_DOWN_MULTIPLIER not below SCALE_UP_MULTIPLIER")
    return out


def differences(settings: Settings, fleet: Mapping) -> list[str]:
    """Where this host's own fleet-wide settings differ from the fleet's record, one phrase each."""
    mine = fleet_values(settings)
    return [f"{FLEET_SETTINGS[k][0]}={mine[k]!s} here, {fleet[k]!s} for the fleet" for k in FLEET_SETTINGS if k in fleet and mine[k] != fleet[k]]


def _count(d: dict, key: str, where: str) -> int:
    return _whole(d, key, where, low=0, high=MOST, default=0)


@dataclass(frozen=True)
class HostEntry:
    """One host's heartbeat. ``name``: its identity (machine-id); ``label``: its hostname,
    for display. ``claim``: instances it may have up or coming back before its next tick
    (at least those it runs, and what it is starting); ``share``: what the last decision
    gave it; ``failing``: its instances fail (failed, restart loop, recovery backoff), so
    the fleet does not count on it to serve; ``working``: its instances up and not failing;
    ``settings``: the digest of its own fleet-wide settings. Times are Redis' clock, in seconds."""

    name: str
    max: int
    up: int = 0
    starting: int = 0
    claim: int = 0
    share: int = 0
    at: float = 0.0
    expires: float = 0.0
    paused: bool = False
    startup: float | None = None  # seconds its last start jobs took (learned start-up)
    label: str = ""
    failing: bool = False
    working: int | None = None  # None: as ``up`` (an entry written before failing hosts were reported)
    settings: str = ""

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def serving(self) -> int:
        """Instances that consume: its working ones."""
        return self.up if self.working is None else min(self.working, self.up)

    def live(self, now: float, silence: "Silence | None" = None) -> bool:
        """Its heartbeat has not expired; one written before a fleet-wide ``silence``
        gets the silence's length added (nobody could tick then)."""
        extra = silence.end - silence.start if silence is not None and self.at <= silence.start else 0.0
        return self.expires + extra > now

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "name"}, separators=(",", ":"))

    @classmethod
    def parse(cls, name: str, raw: bytes | str, now: float | None = None) -> "HostEntry":
        """The entry, validated like the state file: DamagedState names what is wrong."""
        try:
            d = _fields(json.loads(raw), "heartbeat")
        except ValueError as exc:
            raise DamagedState(f"not JSON ({exc})") from None
        at = _number(d, "at", "at", default=0.0)
        expires = _number(d, "expires", "expires")
        if expires - at > LONGEST or expires < at:
            raise DamagedState(f"expires: {expires} is not within {LONGEST:g}s after at={at}")
        if now is not None and at > now + SKEW:
            raise DamagedState(f"at: {at} is ahead of Redis' clock ({now:.0f})")
        label = d.get("label", "")
        if not isinstance(label, str) or len(label) > 255:
            raise DamagedState(f"label: {_short(label)} is not a host name")
        dig = d.get("settings", "")
        if not isinstance(dig, str) or len(dig) > 64:
            raise DamagedState(f"settings: {_short(dig)} is not a digest")
        working = _whole(d, "working", "working", low=0, high=MOST, optional=True)
        return cls(
            name=name,
            max=_whole(d, "max", "max", low=0, high=MOST),
            up=_count(d, "up", "up"),
            starting=_count(d, "starting", "starting"),
            claim=_count(d, "claim", "claim"),
            share=_count(d, "share", "share"),
            at=at,
            expires=expires,
            paused=_flag(d, "paused", "paused"),
            startup=_number(d, "startup", "startup", optional=True),
            label=label,
            failing=_flag(d, "failing", "failing"),
            working=working,
            settings=dig,
        )

    @classmethod
    def from_json(cls, name: str, raw: bytes | str, now: float | None = None) -> "HostEntry | None":
        """The entry, or None when it cannot be read: such a host is left out, as if it had not ticked."""
        try:
            return cls.parse(name, raw, now)
        except DamagedState:
            return None


@dataclass(frozen=True)
class FleetDecision:
    """The fleet-wide target one host decided for the live hosts, and their shares."""

    at: float
    by: str
    target: int
    cap: int
    reason: str
    hosts: tuple[str, ...]  # the autoscaling hosts that serve, it was made for, sorted
    shares: Mapping[str, int] = field(default_factory=dict)
    pinned: int = 0  # instances of paused hosts and the working ones of failing hosts (no share in ``shares``)
    wanted: int | None = None
    for_rate: int | None = None
    failing: tuple[str, ...] = ()  # hosts left out of the split because their instances fail

    def to_json(self) -> str:
        d = asdict(self)
        d["hosts"] = list(self.hosts)
        d["failing"] = list(self.failing)
        d["shares"] = dict(self.shares)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: bytes | str, now: float | None = None) -> "FleetDecision":
        try:
            d = _fields(json.loads(raw), "decision")
        except ValueError as exc:
            raise DamagedState(f"not JSON ({exc})") from None
        names = d.get("hosts")
        failing = d.get("failing", [])
        shares = d.get("shares", {})
        if not isinstance(names, list) or not all(isinstance(h, str) for h in names):
            raise DamagedState("hosts: not a list of host names")
        if not isinstance(failing, list) or not all(isinstance(h, str) for h in failing):
            raise DamagedState("failing: not a list of host names")
        if not isinstance(shares, dict):
            raise DamagedState("shares: not a mapping")
        target = _whole(d, "target", "target", low=0, high=MOST)
        cap = _whole(d, "cap", "cap", low=0, high=MOST)
        if target > cap:
            raise DamagedState(f"target: {target} is above cap {cap}")
        parsed = {str(k): _whole(shares, k, f"shares.{k}", low=0, high=MOST) for k in shares}
        if sum(parsed.values()) > target:
            raise DamagedState(f"shares: they add up to {sum(parsed.values())}, above target {target}")
        at = _number(d, "at", "at")
        if now is not None and at > now + SKEW:
            raise DamagedState(f"at: {at} is ahead of Redis' clock ({now:.0f})")
        by, reason = d.get("by"), d.get("reason", "")
        if not isinstance(by, str) or not isinstance(reason, str):
            raise DamagedState("by/reason: not text")
        return cls(
            at=at,
            by=by,
            target=target,
            cap=cap,
            reason=reason,
            hosts=tuple(names),
            shares=parsed,
            pinned=_whole(d, "pinned", "pinned", low=0, high=MOST, default=0),
            wanted=_whole(d, "wanted", "wanted", low=0, high=MOST, optional=True),
            for_rate=_whole(d, "for_rate", "for_rate", low=0, high=MOST, optional=True),
            failing=tuple(failing),
        )

    @classmethod
    def from_json(cls, raw: bytes | str | None, now: float | None = None) -> "FleetDecision | None":
        if raw is None:
            return None
        try:
            return cls.parse(raw, now)
        except DamagedState:
            return None


# --- the pure part -------------------------------------------------------------------


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


@dataclass(frozen=True)
class Silence:
    """A span in which no host of the fleet wrote a heartbeat for longer than
    FLEET_HOST_TTL: Redis was unreachable for all of them, or the whole fleet was
    stopped. From the newest heartbeat before it to the first tick after it."""

    start: float
    end: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, raw: bytes | str, now: float | None = None) -> "Silence":
        try:
            d = _fields(json.loads(raw), "silence")
        except ValueError as exc:
            raise DamagedState(f"not JSON ({exc})") from None
        start, end = _number(d, "start", "start"), _number(d, "end", "end")
        if end < start or (now is not None and end > now + SKEW):
            raise DamagedState(f"{start}..{end} is not a span before Redis' clock")
        return cls(start, end)

    @classmethod
    def from_json(cls, raw: bytes | str | None, now: float | None = None) -> "Silence | None":
        try:
            return cls.parse(raw, now) if raw is not None else None
        except DamagedState:
            return None


def silence_before(hosts: Sequence[HostEntry], now: float, ttl: float) -> Silence | None:
    """The silence this tick ends, when no host (this one included) wrote a heartbeat
    for longer than ``ttl``; else None."""
    newest = max((h.at for h in hosts), default=None)
    return Silence(newest, now) if newest is not None and now - newest > ttl else None


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
) -> tuple[Coordinated, TickRecord | None]:
    """The pure heart of a fleet tick: (what this host does, the history record to
    append when this tick made a new fleet decision). ``me`` carries this host's
    instances up and starting; ``others`` are the live other hosts. ``settings``
    carry the fleet's settings record already.

    A failing host keeps its working instances (pinned, like a paused host's) and is
    left out of the split of the target and of MIN, unless every autoscaling host
    fails; the remainder goes to the hosts that already run more, so a recovered
    host does not take back instances that serve elsewhere."""
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
    fresh = (
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
    note = f" (grows {mine - me.up} now: the others' instances leave no more room under the target)" if mine < share and mine >= me.up else ""
    sick = " (this host's instances fail: it keeps its working ones, the others serve its share)" if me.name in decision.failing else ""
    reason = f"{view.summary()}: this host's share {share}{note}{sick}; fleet: {decision.reason}"
    return replace(view, decision=replace(local, reason=reason)), record


# --- Redis ---------------------------------------------------------------------------


def _history(raw: bytes | str | None, key: str = "") -> list[TickRecord]:
    """A history as one JSON list (the layout before the LIST; kept for tests and tools); a
    damaged record is left out and named, the others kept."""
    if raw is None:
        return []
    try:
        items = json.loads(raw)
    except ValueError as exc:
        damaged(key, "history", f"not JSON ({exc})")
        return []  # the fleet starts its history again, as one host does with a damaged state file
    if not isinstance(items, list):
        damaged(key, "history", "not a list of tick records")
        return []
    return _records(items, key)


def _records(items: Sequence[object], key: str) -> list[TickRecord]:
    records = []
    for i, r in enumerate(items):
        try:
            records.append(_tick(r, f"history[{i}]"))
        except DamagedState as exc:
            damaged(key, "history", str(exc))
    return records


def read_history(client: redis.Redis | redis.client.Pipeline, settings: Settings, now: float) -> list[TickRecord]:
    """The fleet's tick records of the last hour, oldest first; damaged ones left out and named."""
    key = history_key(settings)
    items = []
    for i, raw in enumerate(client.lrange(key, 0, -1)):
        try:
            items.append(json.loads(raw))
        except ValueError as exc:
            damaged(key, f"[{i}]", f"not JSON ({exc})")
    return [r for r in _records(items, key) if r.at >= now - HISTORY_SECONDS]


def write_history(client: redis.Redis, settings: Settings, records: Sequence[Mapping]) -> None:
    """Replace the fleet's history (tools and benchmarks)."""
    key = history_key(settings)
    pipe = client.pipeline()
    pipe.delete(key)
    if records:
        pipe.rpush(key, *[json.dumps(dict(r), separators=(",", ":")) for r in records])
    pipe.execute()


def _clock(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def _hosts(raw: Mapping[bytes, bytes], key: str = "", now: float | None = None, seen: dict | None = None) -> list[HostEntry]:
    """The valid heartbeats, sorted by identity. ``seen``: entries parsed by an earlier attempt
    of the same tick, by (field, value): a retry parses only what changed in between, which
    keeps the window in which another host's write forces one more retry short."""
    hosts = []
    for k, v in raw.items():
        if k.startswith(b"host:"):
            entry = seen.get((k, v)) if seen is not None else None
            try:
                if entry is None:
                    entry = HostEntry.parse(k[5:].decode("utf-8", "replace"), v)
                    if seen is not None:
                        seen[(k, v)] = entry
                if now is not None and entry.at > now + SKEW:
                    raise DamagedState(f"at: {entry.at} is ahead of Redis' clock ({now:.0f})")
                hosts.append(entry)
            except DamagedState as exc:
                damaged(key, k.decode("utf-8", "replace"), str(exc))
    return sorted(hosts, key=lambda h: h.name)


def _decision(raw: Mapping[bytes, bytes], key: str, now: float | None) -> FleetDecision | None:
    value = raw.get(b"decision")
    try:
        return FleetDecision.parse(value, now) if value is not None else None
    except DamagedState as exc:
        damaged(key, "decision", str(exc))
        return None


def _silence(raw: Mapping[bytes, bytes], key: str, now: float | None) -> Silence | None:
    value = raw.get(b"silence")
    try:
        return Silence.parse(value, now) if value is not None else None
    except DamagedState as exc:
        damaged(key, "silence", str(exc))
        return None


def _record(raw: Mapping[bytes, bytes], key: str) -> dict | None:
    value = raw.get(b"settings")
    try:
        return parse_values(value) if value is not None else None
    except (DamagedState, ValueError) as exc:
        damaged(key, "settings", str(exc))
        return None


@dataclass(frozen=True)
class Snapshot:
    """The fleet's hash as read once: Redis' clock, the valid entries, the silence heartbeats
    are judged with, and the fleet's settings record (None: not written yet or damaged)."""

    now: float
    hosts: list[HostEntry]
    decision: FleetDecision | None
    silence: Silence | None
    ended: Silence | None  # the silence this read ends (no heartbeat for longer than the TTL)
    record: dict | None

    def live(self, but: str = "") -> list[HostEntry]:
        return [h for h in self.hosts if h.live(self.now, self.silence) and h.name != but]


def _snapshot(raw: Mapping[bytes, bytes], now: float, settings: Settings, seen: dict | None = None) -> Snapshot:
    key = fleet_key(settings)
    hosts = _hosts(raw, key, now, seen)
    ended = silence_before(hosts, now, settings.host_ttl)
    return Snapshot(now, hosts, _decision(raw, key, now), ended or _silence(raw, key, now), ended, _record(raw, key))


def read(client: redis.Redis, settings: Settings) -> tuple[float, list[HostEntry], FleetDecision | None, Silence | None]:
    """(Redis' clock, every host entry, the last decision, the silence heartbeats are
    judged with), in one round trip, without writing; the history is not parsed."""
    snap = snapshot(client, settings)
    return snap.now, snap.hosts, snap.decision, snap.silence


def snapshot(client: redis.Redis, settings: Settings) -> Snapshot:
    """The fleet's hash and Redis' clock in one round trip, without writing."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(fleet_key(settings))
    (seconds, micros), raw = pipe.execute()
    return _snapshot(raw, seconds + micros / 1e6, settings)


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


def coordinate(
    client: redis.Redis,
    settings: Settings,
    backlog: FleetBacklog,
    *,
    up: int,
    starting: int,
    occupying: int,
    pinned: int | None = None,
    startup: float | None = None,
    name: str | None = None,
    label: str | None = None,
    failing: bool = False,
    working: int | None = None,
    write: bool = True,
) -> Coordinated:
    """One fleet tick's read-decide-write, atomic against the other hosts' (WATCH/MULTI).

    ``up``, ``starting``, ``occupying``: this host's instances up, activating, and up or
    coming back. ``pinned``: this host is paused and holds that many instances (its
    own decision); it is counted in the fleet, and given no share. ``failing``: this
    host's instances fail (``is_failing``); ``working``: those up and not failing.

    ``write`` False (``tick --dry-run``): the same view, nothing written.

    Redis errors propagate before anything was written (the caller turns them into
    its one line, as for the probe) and the host leaves its fleet as it is.
    """
    label = label if label is not None else (name if name else host_name())
    name = name or host_id()
    key = fleet_key(settings)
    mine = digest(fleet_values(settings))
    seen: dict = {}  # heartbeats parsed by this tick's earlier attempts

    def tick(pipe: redis.client.Pipeline) -> Coordinated:
        now = _clock(pipe)
        raw = pipe.hgetall(key)
        snap = _snapshot(raw, now, settings, seen)
        live = snap.live(but=name)
        gone = [h.name for h in snap.hosts if forgotten(h, now, snap.silence) and h.name != name]
        old = next((h for h in snap.hosts if h.name == name), None)
        agreed = all(h.settings == mine for h in live)
        used, record, rewrite = following(settings, snap.record, agreed)
        me = HostEntry(
            name, settings.max_processes, up, starting, occupying if pinned is None else max(occupying, pinned + occupying - up), 0,
            now, now + settings.host_ttl, pinned is not None,
            startup if startup is not None else (old.startup if old else None),
            label, failing, up if working is None else working, mine,
        )
        view, rec = plan_share(used, me, live, backlog, lambda: read_history(pipe, settings, now), snap.decision, now, occupying)
        target = view.decision.target if pinned is None else pinned
        me = replace(me, claim=max(occupying, target + occupying - up), share=view.share)
        differs = tuple(differences(settings, record))
        view = replace(view, hosts=tuple(sorted([me, *live], key=lambda h: h.name)), settings=record, differs=differs)
        if differs:
            note = "this host's settings differ from the fleet's record (" + "; ".join(differs) + "): following the fleet's"
            view = replace(view, decision=replace(view.decision, reason=f"{view.decision.reason} | {note}"))
        if not write:
            pipe.unwatch()
            return view
        pipe.multi()
        pipe.hset(key, f"host:{name}", me.to_json())
        if rewrite:
            pipe.hset(key, "settings", json.dumps(record, sort_keys=True, separators=(",", ":")))
        if snap.ended is not None:
            pipe.hset(key, "silence", snap.ended.to_json())
        if gone:
            pipe.hdel(key, *[f"host:{g}" for g in gone])
        if rec is not None:
            hist = history_key(settings)
            pipe.hset(key, "decision", view.fleet.to_json())
            pipe.rpush(hist, json.dumps(asdict(rec), separators=(",", ":")))
            pipe.ltrim(hist, -HISTORY_RECORDS, -1)
            pipe.expire(hist, KEY_LIFETIME)
            if b"history" in raw:
                pipe.hdel(key, "history")  # the layout before the LIST: its records are left behind once
        pipe.expire(key, KEY_LIFETIME)
        pipe.execute()
        return view

    return _transaction(client, key, tick, settings)


def _transaction(client: redis.Redis, key: str, body: Callable[[redis.client.Pipeline], T], settings: Settings) -> T:
    """``body(pipe)`` with ``key`` WATCHed: it reads at once, then writes after
    ``pipe.multi()``; run again when another host wrote the key in between, after an
    exponential wait with full jitter (hosts that collided do not collide again in step)."""
    with client.pipeline() as pipe:
        for attempt in range(ATTEMPTS):
            try:
                pipe.watch(key)
                return body(pipe)
            except redis.WatchError:
                pipe.reset()
                time.sleep(random.uniform(0.0, min(BACKOFF[1], BACKOFF[0] * 2**attempt)))
    raise Contention(f"fleet {settings.fleet_name}: {ATTEMPTS} conflicting writes in a row on {key} (contention: too many hosts ticked at that instant); nothing was written, the next tick tries again")


def settle(
    client: redis.Redis, settings: Settings, *, claim: int, up: int, startup: float | None = None, name: str | None = None, failing: bool | None = None, working: int | None = None
) -> None:
    """After acting: the host's claim drops to what it now runs (stops handed to systemd),
    so the others may grow into the room at their next tick; a start-up timing is kept.
    ``failing``: its start jobs failed just now, so the others take its share at once."""
    name = name or host_id()
    key = fleet_key(settings)

    def update(pipe: redis.client.Pipeline) -> None:
        entry = HostEntry.from_json(name, pipe.hget(key, f"host:{name}") or b"")
        if entry is None:
            pipe.unwatch()
            return
        entry = replace(entry, claim=claim, up=up, startup=startup if startup is not None else entry.startup)
        if failing is not None:
            entry = replace(entry, failing=failing or entry.failing, working=working if working is not None else entry.working)
        pipe.multi()
        pipe.hset(key, f"host:{name}", entry.to_json())
        pipe.execute()

    _transaction(client, key, update, settings)


def reserve(
    client: redis.Redis, settings: Settings, *, target: int, up: int, occupying: int, paused: bool, partial: bool = False, name: str | None = None
) -> int:
    """A manual size on this host of a fleet (scale-to, scale-up/down): the most it may run
    under FLEET_MAX_PROCESSES given the other live hosts' claims (``target``, or less), with
    this host's claim for it written before it acts, so no other host grows into the same
    room. When the room is short, ``partial`` False writes nothing (the caller refuses);
    True claims what there is (the caller caps). Shrinking needs no room."""
    name = name or host_id()
    key = fleet_key(settings)

    def body(pipe: redis.client.Pipeline) -> int:
        now = _clock(pipe)
        snap = _snapshot(pipe.hgetall(key), now, settings)
        used, _, _ = following(settings, snap.record, False)
        live = snap.live(but=name)
        old = next((h for h in snap.hosts if h.name == name), None)
        me = HostEntry(name, settings.max_processes, up, 0, max(occupying, target), 0, now, now + settings.host_ttl, paused,
                       old.startup if old else None, host_name(), False, up, digest(fleet_values(settings)))
        cap = fleet_cap(used, [*live, me]) if used.fleet_max_processes else None
        room = target if cap is None else max(0, cap - sum(h.claim for h in live))
        allowed = min(target, max(room, min(up, target)))
        if allowed < target and not partial:
            pipe.unwatch()
            return allowed
        pipe.multi()
        pipe.hset(key, f"host:{name}", replace(me, claim=max(occupying, allowed)).to_json())
        pipe.expire(key, KEY_LIFETIME)
        pipe.execute()
        return allowed

    return _transaction(client, key, body, settings)


def view(settings: Settings, client: redis.Redis) -> dict:
    """The fleet for ``status --json``: ``fleet`` (the last decision), ``hosts``, and the
    fleet's settings record with where this host's own differ."""
    snap = snapshot(client, settings)
    now, hosts, decision, silence = snap.now, snap.hosts, snap.decision, snap.silence
    shares = dict(decision.shares) if decision else {}
    failing = set(decision.failing) if decision else set()
    record = snap.record
    live = {h.name for h in hosts if h.live(now, silence)}

    def shown(h: HostEntry) -> str:
        """The hostname; with the id's start where it alone would be ambiguous (cloned hostnames,
        or an entry left by a reinstalled host): a live host keeps its plain hostname when it
        is the only live one with it."""
        same = [o for o in hosts if o.display == h.display and o is not h]
        if not same or (h.name in live and not any(o.name in live for o in same)):
            return h.display
        return f"{h.display}/{h.name[:8]}"

    return {
        "fleet": {
            "name": settings.fleet_name,
            "target": decision.target if decision else None,
            "cap": decision.cap if decision else None,
            "min": (record or fleet_values(settings))["min_processes"],
            "decided_at": decision.at if decision else None,
            "decided_by": decision.by if decision else None,
            "reason": decision.reason if decision else None,
            "host_ttl": settings.host_ttl,
            "this_host": host_id(),
            "settings": record,
            "settings_differ": differences(settings, record) if record else [],
        },
        "hosts": [
            {
                "name": shown(h),
                "id": h.name,
                "up": h.up,
                "share": h.claim if h.paused else h.share if h.name in failing else shares.get(h.name, 0),
                "max": h.max,
                "claim": h.claim,
                "last_tick": h.at,
                "live": h.live(now, silence),
                "paused": h.paused,
                "failing": h.failing or h.name in failing,
                "expires_in": round(h.expires - now, 1),
            }
            for h in hosts
        ],
    }
