"""Several hosts, one fleet: heartbeats, one fleet-wide decision and each host's share,
kept in the Redis the hosts already share with Dramatiq.

Off unless ``FLEET_NAME`` is set (the single-host tick never imports this module, nor
fleetrecords, fleetplan and claims). Hosts with the same name (on the same Redis and
namespace) form one fleet. Its HASH ``<namespace>:__dramactl__.fleet.<FLEET_NAME>`` holds:

* ``host:<machine-id>``: a :class:`HostEntry`, the host's heartbeat, written by that host
  alone (a plain HSET). A host is its /etc/machine-id (the hostname when there is none; the
  hostname is kept as a label for display), so cloned VMs sharing a hostname are distinct
  hosts. It says how many instances the host runs, its claim, its own MAX_PROCESSES, whether
  its instances are failing (and how many work), the digest of its own fleet-wide settings,
  and when it expires (Redis' clock + FLEET_HOST_TTL);
* ``decision``: the last :class:`FleetDecision`: the fleet-wide target, for which hosts, and
  their shares; replaced only by compare-and-set (:func:`dramactl.claims.publish`);
* ``settings``: the fleet's settings record (MIN_PROCESSES, FLEET_MAX_PROCESSES, the
  policy's settings): every host decides with it, whatever its own env file says
  (:func:`following`); the first host writes it (HSETNX), with its heartbeat in the same
  MULTI/EXEC, so no host reads the record without its writer live beside it;
* ``silence``: the last span in which no host could tick (:class:`Silence`).

Beside it, a LIST ``<namespace>:__dramactl__.fleet-history.<FLEET_NAME>`` holds the fleet's
tick records (one per decision, the last hour), so the stabilization windows and the
measured rates are the fleet's; and a HASH ``<namespace>:__dramactl__.fleet-claims.<FLEET_NAME>``
holds each host's claim, changed only by the claim script (dramactl.claims) and by a host's own
settle. Every value read back is validated (dramactl.fleetrecords): a damaged one is left out
and named once in the journal, never a traceback, never a negative or infinite target.

One tick (:func:`coordinate`), with no WATCH and nothing to retry:

1. read the hash and Redis' clock (one round trip); drop the hosts whose heartbeat expired;
2. reuse the last decision when it is younger than half a CHECK_INTERVAL and was made for
   the same hosts; otherwise decide anew (:func:`dramactl.fleetplan.plan_share`: the policy
   over the whole fleet, with the fleet's history) and publish it by compare-and-set: of the
   hosts that found it stale at the same instant one wins, the others apply its decision;
3. split the target into shares (equal within each host's MAX_PROCESSES; paused and failing
   hosts keep their working instances and get none, so MIN and the target move to hosts
   that can serve);
4. claim: this host's share, but growth only into the room the other hosts' claims leave
   under the fleet's target and cap, granted and written atomically by one script
   (:func:`dramactl.claims.claim`): the fleet never passes its cap;
5. write this host's heartbeat (a plain HSET of its own field).

Manual sizes (scale-to, scale-up/down) on a host of a fleet claim their room first
(:func:`reserve`, the same script): beyond FLEET_MAX_PROCESSES they are refused or capped.

No host is special and there is no daemon: a host that stops ticking expires after
FLEET_HOST_TTL (its claim with it) and the next decision shares the fleet among the others.
When Redis cannot be reached the tick stops before this step, as on one host. When it is
back, the first host to write its heartbeat (a tick, the settle of a tick that waited through
it, a size by hand) records the silence (:class:`Silence`: no heartbeat for longer than a live
host goes without one, :func:`silence_gap`), kept with the few before it, and the heartbeats and
claims written before each get its length after them added: an outage does not make the hosts that come
back first take the shares of those that tick a little later, nor delete their entries.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, replace
from typing import Mapping

import redis

from . import claims
from .claims import HISTORY_RECORDS, KEY_LIFETIME
from .fleetplan import (  # noqa: F401  (the fleet's names, re-exported for callers and tests)
    FORGET_AFTER, LISTED, Coordinated, fleet_cap, following, forgotten, granted, held, is_failing, lost_note, plan_share, records_lost, room_for,
    silence_before, silence_gap, split,
)
from .fleetrecords import (  # noqa: F401
    FLEET_SETTINGS, LONGEST, MOST, SKEW, FleetDecision, HostEntry, Silence, _decision, _history, _hosts, _named, _record, _records, _silence,
    WrongType, claims_key, damaged, differences, digest, fleet_key, fleet_values, history_key, kept_types, parse_values, read_history, typed,
    write_history,
)
from .settings import Settings, SettingsError

MACHINE_ID = "/etc/machine-id"


def scope(settings: Settings) -> str:
    """What a manual command acts on, for its message: '' on one host."""
    if not settings.fleet_name:
        return ""
    return f"this host only, in fleet {settings.fleet_name}: the other hosts keep autoscaling and count its instances toward the fleet's target"


def host_name() -> str:
    """This host's name for display: its hostname (clones may share it)."""
    return socket.gethostname()


def host_id(path: str | None = None) -> str:
    """This host's identity in the fleet: :func:`dramactl.reports.host_identity` (the
    machine-id, else the hostname), the one its instances' reports are filed under."""
    from .reports import host_identity

    return host_identity(path or MACHINE_ID)


@dataclass(frozen=True)
class Snapshot:
    """The fleet's hash as read once: Redis' clock, the valid entries, the silence heartbeats
    are judged with, and the fleet's settings record (None: not written yet or damaged)."""

    now: float
    hosts: list[HostEntry]
    decision: FleetDecision | None
    silence: Silence | None
    ended: Silence | None  # the silence this read ends (no heartbeat for longer than fleetplan.silence_gap)
    record: dict | None

    def live(self, but: str = "") -> list[HostEntry]:
        return [h for h in self.hosts if h.live(self.now, self.silence) and h.name != but]


def _snapshot(raw: Mapping[bytes, bytes], now: float, settings: Settings) -> Snapshot:
    key = fleet_key(settings)
    hosts = _hosts(raw, key, now)
    kept = _silence(raw, key, now)
    ended = silence_before(hosts, now, silence_gap(settings), kept)
    return Snapshot(now, hosts, _decision(raw, key, now), ended or kept, ended, _record(raw, key))


def read(client: redis.Redis, settings: Settings) -> tuple[float, list[HostEntry], FleetDecision | None, Silence | None]:
    """(Redis' clock, every host entry, the last decision, the silence heartbeats are
    judged with), in one round trip, without writing; the history is not parsed."""
    snap = snapshot(client, settings)
    return snap.now, snap.hosts, snap.decision, snap.silence


@typed
def snapshot(client: redis.Redis, settings: Settings) -> Snapshot:
    """The fleet's hash and Redis' clock in one round trip, without writing."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(fleet_key(settings))
    (seconds, micros), raw = pipe.execute()
    return _snapshot(raw, seconds + micros / 1e6, settings)


def _write_record(
    client: redis.Redis, key: str, record: dict, settings: Settings, raw: Mapping[bytes, bytes], heartbeat: Mapping[str, str],
) -> tuple[Settings, dict]:
    """Write the fleet's settings record; the first host's wins (HSETNX) when there was none,
    so two hosts that start at once with different settings do not take turns. Returns (the
    settings this host decides with, the record in force).

    This host's ``heartbeat`` goes in the same step (one HSET, or MULTI/EXEC), so no host reads
    the record without its writer among the live hosts: one that did would find every live host
    agreeing with its own settings (none left to disagree) and replace the record a moment after
    it was written (seen in a booted fleet: MIN 2 from one host's first tick, replaced by
    another's MIN 1, the fleet's target 2, then 1). Empty while the fleet's records are lost
    (Redis restarted empty): the record goes alone then, and the heartbeat at the tick's end."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if b"settings" in raw:  # damaged, or replaced because every live host agrees on new settings
        client.hset(key, mapping={"settings": text, **heartbeat})
        return replace(settings, **record), record
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, "settings", text)
    if heartbeat:
        pipe.hset(key, mapping=heartbeat)
    pipe.hget(key, "settings")
    first, *_, current = pipe.execute()
    if first:
        return replace(settings, **record), record
    won = _record({b"settings": current}, key) or record
    return replace(settings, **won), won


@typed
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
    claimed_at: float | None = None,
    lost_at: float | None = None,
) -> Coordinated:
    """One fleet tick: read the fleet (one round trip), decide or reuse the fleet's decision,
    claim this host's room atomically (one script), write its heartbeat. No WATCH: nothing
    another host writes meanwhile can make it start again.

    ``up``, ``starting``, ``occupying``: this host's instances up, activating, and up or
    coming back. ``pinned``: this host is paused and holds that many instances (its
    own decision); it is counted in the fleet, and given no share. ``failing``: this
    host's instances fail (``is_failing``); ``working``: those up and not failing.

    ``write`` False (``tick --dry-run``): the same view, nothing written.

    ``claimed_at``, ``lost_at``: from this host's state, when it last wrote its claim and when it
    found the fleet's records lost (:func:`dramactl.fleetplan.records_lost`: then it does not grow
    for FLEET_HOST_TTL); the view carries both, updated, for the state.

    Redis errors propagate (the caller turns them into its one line, as for the probe)
    and the host leaves its instances as they are.
    """
    label = label if label is not None else (name if name else host_name())
    name = name or host_id()
    key = fleet_key(settings)
    mine = digest(fleet_values(settings))
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(key)
    (seconds, micros), raw = pipe.execute()
    now = seconds + micros / 1e6
    snap = _snapshot(raw, now, settings)
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
    lost_at = records_lost(old, claimed_at, lost_at, now, settings.host_ttl)
    if rewrite and write:
        # While the records are lost the heartbeat waits for the end of the tick: written now, a tick that
        # failed after it would leave the next one finding its heartbeat and not the loss (records_lost).
        early = _heartbeat(name, me, snap.ended) if lost_at is None else {}
        used, record = _write_record(client, key, record, settings, raw, early)
    view, rec = plan_share(used, me, live, backlog, lambda: read_history(client, settings, now), snap.decision, now, occupying)
    if rec is not None and write:
        won, current = claims.publish(client, settings, raw.get(b"decision"), view.fleet, json.dumps(asdict(rec), separators=(",", ":")))
        other = None if won else _decision({b"decision": current} if current else {}, key, now)
        if other is not None:  # another host published first: its decision is the fleet's
            view, _ = plan_share(used, me, live, backlog, (), other, now, occupying, reuse=True)
    if write:
        cap = min(view.fleet.cap, fleet_cap(used, [me, *live]))
        deadline = now + silence_gap(settings)  # past it, the claim script grants no growth (a hung Redis ran it late)
        if pinned is None:
            got = claims.claim(
                client, settings, name, "tick", share=view.share if lost_at is None else min(view.share, up), up=up, occupying=occupying,
                target=view.fleet.target, cap=cap, failing=failing, serving=me.serving, silence=snap.silence, fleet_max=used.fleet_max_processes,
                deadline=deadline,
            )
            view = granted(view, me, got.grant, got.unclaimed, lost_note(lost_at, now, settings.host_ttl) or late_note(got.late))
        else:
            got = claims.claim(client, settings, name, "hold", share=pinned if lost_at is None else min(pinned, up), up=up, occupying=occupying,
                               cap=cap, silence=snap.silence, fleet_max=used.fleet_max_processes, deadline=deadline)
            view = held(view, me, pinned, got.grant, got.unclaimed, lost_note(lost_at, now, settings.host_ttl) or late_note(got.late))
        me = replace(me, claim=got.written if got.written is not None else me.claim, share=view.share)
        view = replace(view, claim=got.written, claimed_at=now if got.written is not None else claimed_at, lost_at=lost_at)
    else:
        target = view.decision.target if pinned is None else pinned
        if pinned is not None:
            view = held(view, me, pinned, pinned)
        me = replace(me, claim=max(occupying, target + occupying - up), share=view.share)
    differs = tuple(differences(settings, record))
    view = replace(view, hosts=tuple(sorted([me, *live], key=lambda h: h.name)), settings=record, differs=differs)
    if differs:
        note = "this host's settings differ from the fleet's record (" + "; ".join(differs) + "): following the fleet's"
        view = replace(view, decision=replace(view.decision, reason=f"{view.decision.reason} | {note}"))
    if not write:
        return view
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=_heartbeat(name, me, snap.ended))
    pipe.expire(key, KEY_LIFETIME)
    pipe.execute()
    if gone:  # rare: checked again inside the script, so a host back meanwhile is kept
        claims.forget(client, settings, {g: raw[f"host:{g}".encode()] for g in gone}, snap.silence)
    return view


@typed
def settle(
    client: redis.Redis, settings: Settings, *, claim: int, up: int | None, startup: float | None = None, name: str | None = None, failing: bool | None = None,
    working: int | None = None, claimed_at: float | None = None,
) -> None:
    """After acting: the host's claim drops to what it now runs (stops handed to systemd),
    so the others may grow into the room at their next tick; a start-up timing is kept.
    ``failing``: its start jobs failed just now, so the others take its share at once.
    The heartbeat and the claim are written with a fresh expiry (Redis' clock): a tick that
    waited for its jobs longer than FLEET_HOST_TTL must not leave what it started unclaimed.
    ``up`` None: as the heartbeat says (a renewal while the host acts, dramactl.seat: the
    claim is kept or lowered, the rest, its counted instances when failing, as it was).
    A heartbeat that is gone is not written again: the fleet's records were lost (Redis
    restarted empty), and the host's next tick holds its growth (``records_lost``). Its claim
    is, when this host claimed less than FORGET_AFTER ago (``claimed_at``, Redis' clock: the
    records were lost, not this host forgotten), so the other hosts count what runs here.
    Only this host writes its heartbeat and its claim: no transaction is needed."""
    name = name or host_id()
    key = fleet_key(settings)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hget(key, f"host:{name}")
    (seconds, micros), raw = pipe.execute()
    now = seconds + micros / 1e6
    entry = HostEntry.from_json(name, raw or b"")
    if entry is None:
        if records_lost(None, claimed_at, None, now, settings.host_ttl) is not None:  # what runs here stays counted, the heartbeat gone
            _claim_only(client, settings, name, claim, min(claim, working) if failing and working is not None else claim, now)
        return
    ended = None
    if now - entry.at > silence_gap(settings):  # rare (its tick waited through an outage): the newest heartbeat may be as old
        ended = _snapshot(client.hgetall(key), now, settings).ended
    entry = replace(entry, claim=claim, up=entry.up if up is None else up, startup=startup if startup is not None else entry.startup, at=now,
                    expires=now + settings.host_ttl)
    if failing is not None:
        entry = replace(entry, failing=failing or entry.failing, working=working if working is not None else entry.working)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=_heartbeat(name, entry, ended))
    pipe.hset(claims_key(settings), name, claims.value(entry))
    pipe.execute()


def _claim_only(client: redis.Redis, settings: Settings, name: str, claim: int, counted: int, now: float) -> None:
    """This host's claim without its heartbeat, while the fleet's records are lost (Redis' clock ``now``)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(claims_key(settings), name, claims.pack(claim, counted, now, now + settings.host_ttl))
    pipe.expire(claims_key(settings), KEY_LIFETIME)
    pipe.execute()


def late_note(late: bool) -> str:
    """Why a tick whose claim Redis ran past its deadline does not grow (its journal line)."""
    return " (Redis ran this host's claim long after the tick read the fleet: it hung meanwhile; no growth until the next tick)" if late else ""


def _heartbeat(name: str, entry: HostEntry, ended: Silence | None) -> dict[str, str]:
    """The fields one HSET writes for this host's heartbeat: with the silence it ends, when no
    host wrote one for longer than a live host goes without one (:func:`silence_gap`). Whatever
    writes a host's first heartbeat after an outage (a tick, the settle of a tick that waited on a
    start job through it, a size by hand) records the silence, in the same command, so no host
    reads the fresh heartbeat without it and takes the heartbeats and claims written before the
    outage for expired."""
    fields = {f"host:{name}": entry.to_json()}
    if ended is not None:
        fields["silence"] = ended.to_json()
    return fields


class RecordsLost(SettingsError):
    """Room asked for while the fleet's records in Redis are lost (:func:`dramactl.fleetplan.records_lost`)."""


class ClaimedLate(SettingsError):
    """Room asked for by a claim script that Redis ran past its deadline (it hung meanwhile)."""


@typed
def reserve(
    client: redis.Redis, settings: Settings, *, target: int, up: int, occupying: int, paused: bool, partial: bool = False, name: str | None = None,
    claimed_at: float | None = None, lost_at: float | None = None,
) -> int:
    """A manual size on this host of a fleet (scale-to, scale-up/down): the most it may run
    under FLEET_MAX_PROCESSES given the other live hosts' claims (``target``, or less), with
    this host's claim for it written (atomically, by the claim script) before it acts, so no
    other host grows into the same room. When the room is short, ``partial`` False writes
    nothing (the caller refuses); True claims what there is (the caller caps). Shrinking
    needs no room.

    ``claimed_at``, ``lost_at``: from this host's state, as for :func:`coordinate`. While the
    fleet's records are lost (Redis restarted empty: this host's heartbeat is gone though it
    claimed a moment ago, and every other host's claim with it) only what it runs is claimed
    (the others count it), no heartbeat is written (it would hide the loss from this host's next
    tick, which holds its growth for FLEET_HOST_TTL), and growth raises :class:`RecordsLost`.
    A claim Redis ran past its deadline (it hung) grants no growth: :class:`ClaimedLate`."""
    name = name or host_id()
    key = fleet_key(settings)
    snap = snapshot(client, settings)
    now = snap.now
    used, _, _ = following(settings, snap.record, False)
    live = snap.live(but=name)
    old = next((h for h in snap.hosts if h.name == name), None)
    lost = records_lost(old, claimed_at, lost_at, now, settings.host_ttl)
    if lost is not None:
        _claim_only(client, settings, name, occupying, occupying, now)
        if target <= up:
            return target
        raise RecordsLost(
            "FLEET_NAME",
            f"fleet {settings.fleet_name}'s records in Redis were lost (this host's heartbeat is gone though it wrote one, as after a Redis restart"
            " without persistence): no host of it grows until every host has claimed again",
            f"try again in {max(1.0, lost + settings.host_ttl - now):.0f}s",
        )
    # What only the tick knows (failing, working, its share, its starting instances) is carried from the old
    # heartbeat: a roll's renewals (dramactl.seat) must not clear a failing flag the other hosts cover for.
    me = HostEntry(name, settings.max_processes, up, old.starting if old else 0, max(occupying, target), old.share if old else 0,
                   now, now + settings.host_ttl, paused, old.startup if old else None, host_name(),
                   old.failing if old else False, old.working if old else up, digest(fleet_values(settings)))
    cap = fleet_cap(used, [*live, me]) if used.fleet_max_processes else None
    got = claims.claim(
        client, settings, name, "manual", share=target, up=up, occupying=occupying, cap=cap, silence=snap.silence, partial=partial,
        fleet_max=used.fleet_max_processes, deadline=now + silence_gap(settings),
    )
    if got.late and got.grant < target:
        raise ClaimedLate(
            "REDIS_URL", "Redis ran this host's claim long after it read the fleet (it hung meanwhile): no room claimed", "try again",
        )
    if got.written is None:
        return got.grant
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=_heartbeat(name, replace(me, claim=got.written), snap.ended))
    pipe.expire(key, KEY_LIFETIME)
    pipe.execute()
    return got.grant


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
