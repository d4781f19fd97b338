"""Several hosts, one fleet: heartbeats, one fleet-wide decision and each host's share,
kept in the Redis the hosts already share with Dramatiq.

Off unless ``FLEET_NAME`` is set. Hosts with the same name (on the same Redis and
namespace) form one fleet. Everything lives in one HASH,
``<namespace>:__dramactl__.fleet.<FLEET_NAME>``:

* ``host:<hostname>``: a :class:`HostEntry`, the host's heartbeat. It says how many
  instances the host runs, how many it may run before its next tick (its *claim*),
  its own MAX_PROCESSES, and when it expires (Redis' clock + FLEET_HOST_TTL);
* ``decision``: the last :class:`FleetDecision`: the fleet-wide target, for which
  hosts, and their shares;
* ``history``: the fleet's tick records, so the stabilization windows and the
  measured rates are the fleet's, and every host shrinks on the same evidence.

One tick, inside a WATCH/MULTI transaction on that key (retried when another host
wrote it in between, so two hosts ticking at once act one after the other):

1. read the hash and Redis' clock; drop the hosts whose heartbeat expired;
2. reuse the last decision when it is younger than half a CHECK_INTERVAL and was
   made for the same hosts; otherwise decide anew: :func:`dramactl.policy.aim` over
   the whole fleet (the probe's backlog, every live host's instances, the fleet's
   history), within MIN_PROCESSES and the fleet's cap, and append it to the history;
3. split the target into shares (:func:`split`: equal, in host-name order, each
   within its host's MAX_PROCESSES; paused hosts keep their instances and get none);
4. this host's target is its share, but it grows only into the room the other
   hosts' claims leave under the fleet's target (:func:`room_for`), so a host that
   has not shrunk yet is never overtaken: the fleet never passes its target or cap;
5. write this host's heartbeat with its claim, and the decision.

No host is special and there is no daemon: a host that stops ticking (powered off,
bad config, no systemd) expires after FLEET_HOST_TTL and the next decision shares
the fleet among the others, within CHECK_INTERVAL + FLEET_HOST_TTL. Its messages
come back through Dramatiq's own maintenance (dead workers' acks). When Redis
cannot be reached the tick stops before this step, as on one host: every host
keeps its fleet as it is. When it is back, the first host to tick records the
silence (no heartbeat from anyone for longer than FLEET_HOST_TTL: :class:`Silence`)
and the heartbeats written before it get its length added: an outage does not make
the hosts that come back first take the shares of those that tick a little later.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Sequence, TypeVar

import redis

from .policy import ScalingDecision, aim, clamp
from .settings import Settings, SettingsError
from .state import HISTORY_SECONDS, DamagedState, TickRecord, _tick
from .stats import FleetBacklog

T = TypeVar("T")
ATTEMPTS = 20  # WATCH conflicts (another host's tick wrote the fleet in between) before giving up
KEY_LIFETIME = 7 * 86400  # a fleet nobody ticks for a week is forgotten
HISTORY_RECORDS = 720  # the fleet's history is rewritten every decision: an hour, at most this many records
FORGET_AFTER = 3600.0  # an expired host stays listed (status shows it down) this long, then is removed


def scope(settings: Settings) -> str:
    """What a manual command acts on, for its message: '' on one host."""
    if not settings.fleet_name:
        return ""
    return f"this host only, in fleet {settings.fleet_name}: the other hosts keep autoscaling and count its instances toward the fleet's target"


def fleet_key(settings: Settings) -> str:
    return f"{settings.namespace}:__dramactl__.fleet.{settings.fleet_name}"


def host_name() -> str:
    """This host's name in the fleet: its hostname (unique per host, as in a journal)."""
    return socket.gethostname()


@dataclass(frozen=True)
class HostEntry:
    """One host's heartbeat. ``claim``: instances it may have up or coming back before
    its next tick (at least those it runs, and what it is starting); ``share``: what
    the last decision gave it; times are Redis' clock, in seconds."""

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

    def live(self, now: float, silence: "Silence | None" = None) -> bool:
        """Its heartbeat has not expired; one written before a fleet-wide ``silence``
        gets the silence's length added (nobody could tick then)."""
        extra = silence.end - silence.start if silence is not None and self.at <= silence.start else 0.0
        return self.expires + extra > now

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, raw: bytes | str) -> "HostEntry | None":
        """The entry, or None when it cannot be read (a newer or damaged writer): such a
        host is left out, as if it had not ticked."""
        try:
            d = json.loads(raw)
            return cls(
                name=name,
                max=int(d["max"]),
                up=int(d.get("up", 0)),
                starting=int(d.get("starting", 0)),
                claim=int(d.get("claim", 0)),
                share=int(d.get("share", 0)),
                at=float(d.get("at", 0.0)),
                expires=float(d["expires"]),
                paused=bool(d.get("paused", False)),
                startup=None if d.get("startup") is None else float(d["startup"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class FleetDecision:
    """The fleet-wide target one host decided for the live hosts, and their shares."""

    at: float
    by: str
    target: int
    cap: int
    reason: str
    hosts: tuple[str, ...]  # the autoscaling hosts it was made for, sorted
    shares: Mapping[str, int] = field(default_factory=dict)
    pinned: int = 0  # instances of paused hosts, inside the target
    wanted: int | None = None
    for_rate: int | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["hosts"] = list(self.hosts)
        d["shares"] = dict(self.shares)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "FleetDecision | None":
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            return cls(
                at=float(d["at"]),
                by=str(d["by"]),
                target=int(d["target"]),
                cap=int(d["cap"]),
                reason=str(d.get("reason", "")),
                hosts=tuple(str(h) for h in d["hosts"]),
                shares={str(k): int(v) for k, v in dict(d.get("shares", {})).items()},
                pinned=int(d.get("pinned", 0)),
                wanted=None if d.get("wanted") is None else int(d["wanted"]),
                for_rate=None if d.get("for_rate") is None else int(d["for_rate"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


# --- the pure part -------------------------------------------------------------------


def split(total: int, hosts: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Shares of ``total`` among ``hosts`` (name, MAX_PROCESSES): as equal as their
    limits allow, the remainder to the first names in sorted order. Every host that
    sees the same hosts computes the same shares; their sum is min(total, sum of MAX)."""
    shares = {name: 0 for name, _ in hosts}
    limits = dict(hosts)
    left = max(0, total)
    while left > 0:
        open_ = sorted(n for n in shares if shares[n] < limits[n])
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
    def from_json(cls, raw: bytes | str | None) -> "Silence | None":
        try:
            d = json.loads(raw) if raw is not None else None
            return cls(float(d["start"]), float(d["end"])) if d else None
        except (ValueError, TypeError, KeyError):
            return None


def silence_before(hosts: Sequence[HostEntry], now: float, ttl: float) -> Silence | None:
    """The silence this tick ends, when no host (this one included) wrote a heartbeat
    for longer than ``ttl``; else None."""
    newest = max((h.at for h in hosts), default=None)
    return Silence(newest, now) if newest is not None and now - newest > ttl else None


def room_for(me: str, share: int, up: int, occupying: int, hosts: Sequence[HostEntry], target: int) -> int:
    """This host's target (instances up): its ``share``, but growth only into the room
    that the other hosts' claims and its own ``occupying`` instances (up or coming
    back) leave under the fleet's ``target``. Shrinking is never held back."""
    if share <= up:
        return share
    others = sum(h.claim for h in hosts if h.name != me)
    room = target - others - occupying
    return up + max(0, min(share - up, room))


@dataclass(frozen=True)
class Coordinated:
    """What this host's tick does in the fleet: its target and the fleet's view."""

    decision: ScalingDecision  # this host's, before the safeguard: current = its instances up
    fleet: FleetDecision
    hosts: tuple[HostEntry, ...]  # live hosts, this one included, sorted by name
    share: int
    floor: int  # this host's part of MIN_PROCESSES: what the safeguard restores after failures
    fresh: bool  # this tick made the fleet's decision (else it applied another host's)

    def summary(self) -> str:
        f = self.fleet
        shares = ", ".join(f"{h.name} {'paused ' + str(h.claim) if h.paused else f.shares.get(h.name, 0)}" for h in self.hosts)
        made = "decided here" if self.fresh else f"decided by {f.by}"
        return f"fleet target {f.target} of cap {f.cap} over {len(self.hosts)} host(s) ({shares}; {made})"

    def to_dict(self) -> dict:
        return {"fleet": asdict(self.fleet) | {"hosts": list(self.fleet.hosts), "shares": dict(self.fleet.shares)}, "share": self.share, "fresh": self.fresh}


def plan_share(
    settings: Settings,
    me: HostEntry,
    others: Sequence[HostEntry],
    backlog: FleetBacklog,
    history: Sequence[TickRecord],
    last: FleetDecision | None,
    now: float,
    occupying: int,
) -> tuple[Coordinated, TickRecord | None]:
    """The pure heart of a fleet tick: (what this host does, the history record to
    append when this tick made a new fleet decision). ``me`` carries this host's
    instances up and starting; ``others`` are the live other hosts."""
    hosts = sorted([me, *others], key=lambda h: h.name)
    scaling = [h for h in hosts if not h.paused]
    pinned = sum(h.claim for h in hosts if h.paused)
    names = tuple(h.name for h in scaling)
    cap = fleet_cap(settings, hosts)
    fresh = last is None or now - last.at >= settings.check_interval / 2.0 or last.hosts != names or last.cap != cap
    record = None
    if fresh:
        current = sum(h.up for h in hosts)
        starting = sum(h.starting for h in hosts)
        bounds = replace(settings, max_processes=max(cap, 1), min_processes=min(settings.min_processes, cap))
        startups = [h.startup for h in hosts if h.startup is not None]
        aimed = aim(backlog, current, starting, bounds, history, now)
        target = min(clamp(aimed.target, bounds), cap)
        shares = split(target - pinned, [(h.name, h.max) for h in scaling])
        decision = FleetDecision(now, me.name, target, cap, aimed.reason, names, shares, pinned, aimed.wanted, aimed.for_rate)
        record = replace(aimed.record(now, backlog), target=target, startup=max(startups) if startups else None)
    else:
        assert last is not None
        decision = last
        target = last.target
        shares = dict(last.shares)
    share = 0 if me.paused else shares.get(me.name, 0)
    mine = room_for(me.name, share, me.up, occupying, hosts, target)
    floor = split(settings.min_processes - pinned, [(h.name, h.max) for h in scaling]).get(me.name, 0)
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
    reason = f"{view.summary()}: this host's share {share}{note}; fleet: {decision.reason}"
    return replace(view, decision=replace(local, reason=reason)), record


# --- Redis ---------------------------------------------------------------------------


def _history(raw: bytes | str | None) -> list[TickRecord]:
    if raw is None:
        return []
    try:
        items = json.loads(raw)
        return [_tick(r, f"fleet history[{i}]") for i, r in enumerate(items)] if isinstance(items, list) else []
    except (ValueError, DamagedState):
        return []  # damaged: the fleet starts its history again, as one host does with a damaged state file


def read(client: redis.Redis, settings: Settings) -> tuple[float, list[HostEntry], FleetDecision | None, Silence | None]:
    """(Redis' clock, every host entry, the last decision, the silence heartbeats are
    judged with), in one round trip, without writing; the history is not parsed."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(fleet_key(settings))
    (seconds, micros), raw = pipe.execute()
    now = seconds + micros / 1e6
    hosts = _hosts(raw)
    return now, hosts, FleetDecision.from_json(raw.get(b"decision")), silence_before(hosts, now, settings.host_ttl) or Silence.from_json(raw.get(b"silence"))


def _clock(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def _hosts(raw: Mapping[bytes, bytes]) -> list[HostEntry]:
    hosts = []
    for k, v in raw.items():
        if k.startswith(b"host:"):
            entry = HostEntry.from_json(k[5:].decode("utf-8", "replace"), v)
            if entry is not None:
                hosts.append(entry)
    return sorted(hosts, key=lambda h: h.name)


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
    write: bool = True,
) -> Coordinated:
    """One fleet tick's read-decide-write, atomic against the other hosts' (WATCH/MULTI).

    ``up``, ``starting``, ``occupying``: this host's instances up, activating, and up or
    coming back. ``pinned``: this host is paused and holds that many instances (its
    own decision); it is counted in the fleet, and given no share.

    ``write`` False (``tick --dry-run``): the same view, nothing written.

    Redis errors propagate before anything was written (the caller turns them into
    its one line, as for the probe) and the host leaves its fleet as it is.
    """
    name = name or host_name()
    key = fleet_key(settings)

    def tick(pipe: redis.client.Pipeline) -> Coordinated:
        now = _clock(pipe)
        raw = pipe.hgetall(key)
        hosts = _hosts(raw)
        ended = silence_before(hosts, now, settings.host_ttl)
        silence = ended or Silence.from_json(raw.get(b"silence"))
        live = [h for h in hosts if h.live(now, silence) and h.name != name]
        gone = [h.name for h in hosts if now > h.expires + FORGET_AFTER and h.name != name]
        old = next((h for h in hosts if h.name == name), None)
        me = HostEntry(
            name, settings.max_processes, up, starting, occupying if pinned is None else max(occupying, pinned + occupying - up), 0,
            now, now + settings.host_ttl, pinned is not None,
            startup if startup is not None else (old.startup if old else None),
        )
        history = _history(raw.get(b"history"))
        view, record = plan_share(settings, me, live, backlog, history, FleetDecision.from_json(raw.get(b"decision")), now, occupying)
        mine = view.decision.target if pinned is None else pinned
        me = replace(me, claim=max(occupying, mine + occupying - up), share=view.share)
        view = replace(view, hosts=tuple(sorted([me, *live], key=lambda h: h.name)))
        if not write:
            pipe.unwatch()
            return view
        pipe.multi()
        pipe.hset(key, f"host:{name}", me.to_json())
        if ended is not None:
            pipe.hset(key, "silence", ended.to_json())
        if gone:
            pipe.hdel(key, *[f"host:{g}" for g in gone])
        if record is not None:
            kept = ([r for r in history if r.at >= now - HISTORY_SECONDS] + [record])[-HISTORY_RECORDS:]
            pipe.hset(key, mapping={"decision": view.fleet.to_json(), "history": json.dumps([asdict(r) for r in kept], separators=(",", ":"))})
        pipe.expire(key, KEY_LIFETIME)
        pipe.execute()
        return view

    return _transaction(client, key, tick, settings)


def _transaction(client: redis.Redis, key: str, body: Callable[[redis.client.Pipeline], T], settings: Settings) -> T:
    """``body(pipe)`` with ``key`` WATCHed: it reads at once, then writes after
    ``pipe.multi()``; run again when another host wrote the key in between."""
    with client.pipeline() as pipe:
        for _ in range(ATTEMPTS):
            try:
                pipe.watch(key)
                return body(pipe)
            except redis.WatchError:
                time.sleep(0.01)
    raise SettingsError("FLEET_NAME", f"fleet {settings.fleet_name!r}: {ATTEMPTS} conflicting writes in a row", "too many hosts tick at the same instant; try again")


def settle(client: redis.Redis, settings: Settings, *, claim: int, up: int, startup: float | None = None, name: str | None = None) -> None:
    """After acting: the host's claim drops to what it now runs (stops handed to systemd),
    so the others may grow into the room at their next tick; a start-up timing is kept."""
    name = name or host_name()
    key = fleet_key(settings)

    def update(pipe: redis.client.Pipeline) -> None:
        entry = HostEntry.from_json(name, pipe.hget(key, f"host:{name}") or b"")
        if entry is None:
            pipe.unwatch()
            return
        pipe.multi()
        pipe.hset(key, f"host:{name}", replace(entry, claim=claim, up=up, startup=startup if startup is not None else entry.startup).to_json())
        pipe.execute()

    _transaction(client, key, update, settings)


def view(settings: Settings, client: redis.Redis) -> dict:
    """The fleet for ``status --json``: ``fleet`` (the last decision) and ``hosts``."""
    now, hosts, decision, silence = read(client, settings)
    shares = dict(decision.shares) if decision else {}
    return {
        "fleet": {
            "name": settings.fleet_name,
            "target": decision.target if decision else None,
            "cap": decision.cap if decision else None,
            "min": settings.min_processes,
            "decided_at": decision.at if decision else None,
            "decided_by": decision.by if decision else None,
            "reason": decision.reason if decision else None,
            "host_ttl": settings.host_ttl,
            "this_host": host_name(),
        },
        "hosts": [
            {
                "name": h.name,
                "up": h.up,
                "share": h.claim if h.paused else shares.get(h.name, 0),
                "max": h.max,
                "claim": h.claim,
                "last_tick": h.at,
                "live": h.live(now, silence),
                "paused": h.paused,
                "expires_in": round(h.expires - now, 1),
            }
            for h in hosts
        ],
    }


