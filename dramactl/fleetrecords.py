"""What the fleet's Redis holds, and how each value read back is validated (dramactl.share).

Every value read from the fleet's hash, its history LIST and its claims is checked like the
state file: a damaged one is left out and named once in the journal (:func:`damaged`), never
a traceback, never a negative or infinite count. Imported only with FLEET_NAME set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import wraps
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import redis

from .settings import LONGEST_HOST_TTL, POLICIES, Settings, SettingsError
from .settings import parse as parse_settings
from .state import HISTORY_SECONDS, DamagedState, TickRecord, _fields, _flag, _number, _short, _tick, _whole

T = TypeVar("T")

log = logging.getLogger("dramactl.share")

MOST = 100_000  # the largest count a heartbeat or decision may hold (FLEET_MAX_PROCESSES' own limit)
LONGEST = float(LONGEST_HOST_TTL)  # the longest a heartbeat may last (FLEET_HOST_TTL's own limit)
SKEW = 300.0  # seconds a record's time may be ahead of Redis' clock before it is taken as damaged


# The fleet-wide settings: one record in the fleet's hash (``settings``), followed by every host.
FLEET_SETTINGS = {
    "min_processes": ("MIN_PROCESSES", int),
    "fleet_max_processes": ("FLEET_MAX_PROCESSES", int),
    "policy": ("POLICY", str),
    "scale_up_multiplier": ("SCALE_UP_THRESHOLD_MULTIPLIER", float),
    "scale_down_multiplier": ("SCALE_DOWN_THRESHOLD_MULTIPLIER", float),
    "target_backlog_per_worker": ("TARGET_BACKLOG_PER_WORKER", float),
    "max_queue_wait": ("MAX_QUEUE_WAIT", float),
    "max_scale_up_step": ("MAX_SCALE_UP_STEP", int),
    "scale_down_stabilization": ("SCALE_DOWN_STABILIZATION", float),
    "max_scale_down_step": ("MAX_SCALE_DOWN_STEP", int),
}


_named: set[tuple[str, str, str]] = set()


def damaged(key: str, fld: str, problem: str) -> None:
    """A value read from the fleet's hash that cannot be used: named once in the journal
    (once per process, however often a retry reads it again); the caller ignores it."""
    if (key, fld, problem) in _named:
        return
    _named.add((key, fld, problem))
    log.warning("fleet: ignoring damaged %s field %s in Redis (%s); the next write of this field replaces it", key, fld, problem)


class WrongType(SettingsError):
    """A fleet key that holds another kind of value than dramactl keeps there (Redis' WRONGTYPE)."""


@contextmanager
def kept_types(client: redis.Redis, settings: Settings) -> Iterator[None]:
    """Redis' WRONGTYPE on one of the fleet's keys (its hash, claims HASH, history LIST) becomes one line naming
    the key and the fix (delete it: the fleet writes it again), not a raw reply every tick."""
    try:
        yield
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        for key, kind, what in (
            (claims_key(settings), "hash", "claims HASH"), (history_key(settings), "list", "history LIST"), (fleet_key(settings), "hash", "fleet's HASH"),
        ):
            try:
                held = client.type(key)
            except redis.RedisError:
                continue
            held = held.decode() if isinstance(held, bytes) else str(held)
            if held not in (kind, "none"):
                raise WrongType(
                    "FLEET_NAME", f"Redis key {key} holds a {held}, not the {what} dramactl keeps there (WRONGTYPE)",
                    f"delete it (redis-cli DEL {key}): the fleet's next tick writes it again",
                ) from None
        raise


def typed(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn(client, settings, ...)`` run under :func:`kept_types`."""

    @wraps(fn)
    def run(client: redis.Redis, settings: Settings, *args, **kwargs) -> T:
        with kept_types(client, settings):
            return fn(client, settings, *args, **kwargs)

    return run


def fleet_key(settings: Settings) -> str:
    return f"{settings.namespace}:__dramactl__.fleet.{settings.fleet_name}"


def history_key(settings: Settings) -> str:
    """The fleet's tick records (a LIST); a name no fleet's hash can have ('.' is allowed in FLEET_NAME)."""
    return f"{settings.namespace}:__dramactl__.fleet-history.{settings.fleet_name}"


def claims_key(settings: Settings) -> str:
    """Each live host's claim, ``id -> claim, counted, at, expires`` (dramactl.claims.pack; a HASH changed only by the
    claim script, dramactl.claims, and by a host's own settle)."""
    return f"{settings.namespace}:__dramactl__.fleet-claims.{settings.fleet_name}"


def fleet_values(settings: Settings) -> dict:
    """The fleet-wide settings of ``settings``, as the record holds them."""
    return {k: getattr(settings, k) for k in FLEET_SETTINGS}


def _json_record(raw: bytes | str, what: str) -> dict:
    """The fields of a JSON record (DamagedState naming what is wrong: not JSON, not an object)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        raise DamagedState(f"not JSON ({exc})") from None
    return _fields(data, what)


def digest(values: Mapping) -> str:
    """A short fingerprint of fleet-wide settings, carried in each heartbeat."""
    return hashlib.blake2s(json.dumps(dict(values), sort_keys=True).encode(), digest_size=6).hexdigest()


def parse_values(raw: bytes | str) -> dict:
    """The settings record, validated (DamagedState when it cannot be used)."""
    d = _json_record(raw, "settings")
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
        raise DamagedState("settings: SCALE_DOWN_THRESHOLD_MULTIPLIER not below SCALE_UP_THRESHOLD_MULTIPLIER")
    held_as_settings(out)
    return out


def held_as_settings(values: Mapping) -> None:
    """DamagedState unless each of the record's ``values`` passes the checks a host's own setting
    of that name passes (its range, and the checks between the fleet-wide ones): the record is
    read back through :func:`dramactl.settings.parse`, the one place those bounds are written,
    so a host never follows a value it would refuse in its own configuration (``max_queue_wait``
    0 divided every tick of a host that followed it)."""
    env = {FLEET_SETTINGS[k][0]: repr(v) if isinstance(v, float) else str(v) for k, v in values.items()}
    # MAX_PROCESSES is each host's own, not the fleet's: only MIN_PROCESSES' own range applies to the record's.
    env["MAX_PROCESSES"] = str(max(1, values["min_processes"]))
    try:
        parse_settings(env)
    except SettingsError as exc:
        names = {name: k for k, (name, _) in FLEET_SETTINGS.items()}
        where = f"settings.{names[exc.setting]}" if exc.setting in names else "settings"
        raise DamagedState(f"{where}: {exc.problem} (refused as a host's own {exc.setting}: {exc.fix})") from None


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
        """Its heartbeat has not expired; one written before a fleet-wide ``silence`` ends
        gets the silence's length after it added (nobody could tick then): :meth:`Silence.extra`."""
        extra = silence.extra(self.at) if silence is not None else 0.0
        return self.expires + extra > now

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "name"}, separators=(",", ":"))

    @classmethod
    def parse(cls, name: str, raw: bytes | str, now: float | None = None) -> "HostEntry":
        """The entry, validated like the state file: DamagedState names what is wrong."""
        d = _json_record(raw, "heartbeat")
        plain = _plain(cls, name, d, now)
        if plain is not None:
            return plain
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


_COUNTS = ("up", "starting", "claim", "share")
_TEXT = (("label", 255), ("settings", 64))


def _plain(cls: type, name: str, d: dict, now: float | None) -> "HostEntry | None":
    """The entry when every field is plainly valid (what dramactl writes), checked in one pass:
    a tick parses every heartbeat of the fleet, 1,000 at 1,000 hosts. None otherwise, and the
    field-by-field checks of :meth:`HostEntry.parse` name what is wrong."""
    get = d.get
    most, at, expires, working, startup = get("max"), get("at", 0.0), get("expires"), get("working"), get("startup")
    if type(most) is not int or not 0 <= most <= MOST:
        return None
    counts = [get(k, 0) for k in _COUNTS]
    if any(type(v) is not int or not 0 <= v <= MOST for v in counts):
        return None
    if type(at) not in (int, float) or type(expires) not in (int, float) or not (0 <= at < math.inf and at <= expires <= at + LONGEST):
        return None
    if now is not None and at > now + SKEW:
        return None
    if working is not None and (type(working) is not int or not 0 <= working <= MOST):
        return None
    if startup is not None and (type(startup) not in (int, float) or not 0 <= startup < math.inf):
        return None
    paused, failing = get("paused", False), get("failing", False)
    if type(paused) is not bool or type(failing) is not bool:
        return None
    label, dig = get("label", ""), get("settings", "")
    if type(label) is not str or len(label) > 255 or type(dig) is not str or len(dig) > 64:
        return None
    return cls(name, most, *counts, float(at), float(expires), paused, None if startup is None else float(startup), label, failing, working, dig)


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
        d = _json_record(raw, "decision")
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


SILENCES_KEPT = 8  # the silences a fleet keeps (a few outages in a row; each stretches what was written before it)


@dataclass(frozen=True)
class Silence:
    """A span in which no host of the fleet wrote a heartbeat for longer than a live host goes
    without one (:func:`dramactl.fleetplan.silence_gap`): Redis was unreachable for all of them,
    or the whole fleet was stopped. From the newest heartbeat before it to the first write after
    it. ``earlier``: the silences before it, oldest first, as (start, end) spans that end before
    it starts (two outages in a row: a host that has written since neither is stretched by both)."""

    start: float
    end: float
    earlier: tuple[tuple[float, float], ...] = ()

    def spans(self) -> tuple[tuple[float, float], ...]:
        """Every silence kept, oldest first."""
        return (*self.earlier, (self.start, self.end))

    def extra(self, at: float) -> float:
        """What a heartbeat or claim written at ``at`` gets added: the part of each silence after it
        was written (the claim script's ``read`` does the same)."""
        return sum(e - max(at, s) for s, e in self.spans() if at < e)

    def after(self, start: float, end: float) -> "Silence":
        """A new silence ``start``..``end`` that ends this one's run: this one and its earlier kept
        behind it (the most recent SILENCES_KEPT in all), the ones it overlaps dropped."""
        kept = tuple((s, e) for s, e in self.spans() if e <= start)[-(SILENCES_KEPT - 1):]
        return Silence(start, end, kept)

    def to_json(self) -> str:
        d: dict = {"start": self.start, "end": self.end}
        if self.earlier:
            d["earlier"] = [list(span) for span in self.earlier]
        return json.dumps(d)

    @classmethod
    def parse(cls, raw: bytes | str, now: float | None = None) -> "Silence":
        d = _json_record(raw, "silence")
        start, end = _number(d, "start", "start"), _number(d, "end", "end")
        if end < start or (now is not None and end > now + SKEW):
            raise DamagedState(f"{start}..{end} is not a span before Redis' clock")
        earlier = d.get("earlier", [])
        if not isinstance(earlier, list) or len(earlier) >= SILENCES_KEPT:
            raise DamagedState(f"earlier is not a list of at most {SILENCES_KEPT - 1} spans")
        spans = []
        for span in earlier:
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in span)):
                raise DamagedState(f"earlier holds {str(span)[:40]}, not a [start, end] span")
            try:
                spans.append((float(span[0]), float(span[1])))
            except OverflowError:  # a JSON integer past a float's range
                raise DamagedState("earlier holds a number past a float's range") from None
        bounds = [x for span in spans for x in span] + [start]
        if not all(math.isfinite(x) for x in bounds) or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise DamagedState("earlier's spans are not in order, apart, before this one")
        return cls(start, end, tuple(spans))

    @classmethod
    def from_json(cls, raw: bytes | str | None, now: float | None = None) -> "Silence | None":
        try:
            return cls.parse(raw, now) if raw is not None else None
        except DamagedState:
            return None


def _history(raw: bytes | str | None, key: str = "") -> list[TickRecord]:
    """A history as one JSON list (the layout before the LIST; kept for tests and tools); a
    damaged record is left out and named, the others kept."""
    if raw is None:
        return []
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError) as exc:
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
    with kept_types(client, settings):
        raws = client.lrange(key, 0, -1)
    for i, raw in enumerate(raws):
        try:
            items.append(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            damaged(key, f"[{i}]", f"not JSON ({exc})")
    return [r for r in _records(items, key) if r.at >= now - HISTORY_SECONDS]


def write_history(client: redis.Redis, settings: Settings, records: Sequence[Mapping]) -> None:
    """Replace the fleet's history (tools and benchmarks)."""
    key = history_key(settings)
    pipe = client.pipeline()
    pipe.delete(key)
    if records:
        pipe.rpush(key, *[json.dumps(dict(r), separators=(",", ":")) for r in records])
    with kept_types(client, settings):
        pipe.execute()


def _hosts(raw: Mapping[bytes, bytes], key: str = "", now: float | None = None) -> list[HostEntry]:
    """The valid heartbeats, sorted by identity; a damaged one is left out and named."""
    hosts = []
    for k, v in raw.items():
        if k.startswith(b"host:"):
            try:
                hosts.append(HostEntry.parse(k[5:].decode("utf-8", "replace"), v, now))
            except DamagedState as exc:
                damaged(key, k.decode("utf-8", "replace"), str(exc))
    return sorted(hosts, key=lambda h: h.name)


def _field(raw: Mapping[bytes, bytes], key: str, name: str, parse: Callable[[bytes], T]) -> T | None:
    """One field of the fleet's hash parsed, or None when absent or damaged (named once)."""
    value = raw.get(name.encode())
    try:
        return parse(value) if value is not None else None
    except (DamagedState, ValueError) as exc:
        damaged(key, name, str(exc))
        return None


def _decision(raw: Mapping[bytes, bytes], key: str, now: float | None) -> FleetDecision | None:
    return _field(raw, key, "decision", lambda v: FleetDecision.parse(v, now))


def _silence(raw: Mapping[bytes, bytes], key: str, now: float | None) -> Silence | None:
    return _field(raw, key, "silence", lambda v: Silence.parse(v, now))


def _record(raw: Mapping[bytes, bytes], key: str) -> dict | None:
    return _field(raw, key, "settings", parse_values)
