"""The fleet's two atomic steps, each one Lua script run by Redis (dramactl.share).

* :func:`claim`: what this host may run before its next tick. The script sums the other live
  hosts' claims (the HASH ``<namespace>:__dramactl__.fleet-claims.<FLEET_NAME>``, one value
  per host: claim, counted, at, expires, packed in 24 bytes by :func:`pack`), grants this host
  its growth only into the room they leave under the fleet's target and cap (shrinking is
  never held back), and writes
  this host's claim, all in one call: no host can grow into room another one took meanwhile,
  so the cap holds by the script's atomicity, with no WATCH and nothing to retry.
* :func:`publish`: one decision per half CHECK_INTERVAL. A host that found the fleet's decision
  stale writes its own only if the stored one is still the one it read (compare-and-set), and
  appends its tick record to the fleet's history in the same call; a host that lost the race
  gets the winner's decision back and applies it.

A claim's ``counted`` is what it counts under the fleet's target: a failing host's working
instances only (its looping units do not serve), while every claim counts in full against the
cap. A claim lives as long as its host's heartbeat (FLEET_HOST_TTL), stretched by a fleet-wide
silence like the heartbeat (:class:`dramactl.fleetrecords.Silence`). A damaged value in the
claims HASH is left out of the sums and named by the caller (:func:`dramactl.fleetrecords.damaged`).
The script's cost grows with the number of claims: ``python -m bench.fleet_scale`` measures it.
Imported only with FLEET_NAME set.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping, NamedTuple

import redis

from .reports import FIELD_LIMIT, STALE_SECONDS, instances_prefix
from .fleetrecords import LONGEST, MOST, SKEW, FleetDecision, HostEntry, Silence, claims_key, damaged, fleet_key, history_key, kept_types
from .settings import Settings

KEY_LIFETIME = 7 * 86400  # a fleet nobody ticks for a week is forgotten
HISTORY_RECORDS = 720  # the fleet's history LIST keeps at most this many records (an hour at two decisions per 10 s)

# Shared by the claim and forget scripts: (claim, counted, live) of a claims value, or nil when it is
# damaged (a claim written before a silence ended gets the part of it after the claim was written
# added, for each silence kept, as dramactl.fleetrecords.Silence.extra: the silence starts at the
# newest heartbeat, and a tick's claim is written a moment after the clock its heartbeat carries, or
# without a heartbeat when Redis went between the two, or while a hung Redis resumed); and how many
# worker processes of this fleet a host runs by their own reports (dramactl.reports: the worker hook
# rewrites its field every second and keeps the host's HASH alive REPORTS_TTL past the last write),
# counted for a host whose claim has expired. Both need spans (the silences, {{start, end}, ...},
# oldest first), last (the last one's end), most, skew, longest, now, prefix (the reports HASHes'
# key prefix), stale (ms), limit and fleet (FLEET_NAME) in scope.
_COMMON = """
local function read(v)
  if #v ~= 24 then return nil end
  local c, k, at, ex = struct.unpack('>IIdd', v)
  if not (ex == ex and at == at) or ex == math.huge or at < 0 or c > most or k > c or at > now + skew or ex < at or ex - at > longest then
    return nil
  end
  if at < last then  -- written before the last silence ended (rare): the spans are in order
    for _, span in ipairs(spans) do
      if at < span[2] then ex = ex + span[2] - math.max(at, span[1]) end
    end
  end
  return c, k, ex > now
end
-- The worker processes of this fleet (their report's "fleet" is ``fleet``) in a host's reports
-- HASH that write together: the most fields whose last writes lie within ``stale`` ms of each
-- other (the times are that host's clock, compared only with each other; a field left by a dead
-- process, or one far off, is not in the live processes' group). 0 when the HASH has no expiry (a
-- hook older than REPORTS_TTL: its fields may be a dead host's) or is out of shape.
local function running(host)
  local key = prefix .. host
  -- another kind of value there is that host's own probe's to name (its one line): not counted here
  if redis.call('TYPE', key).ok ~= 'hash' or redis.call('PTTL', key) <= 0 or redis.call('HLEN', key) > limit then return 0 end
  local ats = {}
  for _, v in ipairs(redis.call('HVALS', key)) do
    local ok, d = pcall(cjson.decode, v)
    if ok and type(d) == 'table' and d.fleet == fleet and type(d.at) == 'number' and d.at == d.at and d.at > -math.huge and d.at < math.huge then
      ats[#ats + 1] = d.at
    end
  end
  table.sort(ats)
  local best, first = 0, 1
  for i = 1, #ats do
    while ats[i] - ats[first] > stale do first = first + 1 end
    if i - first + 1 > best then best = i - first + 1 end
  end
  return best
end
"""

# KEYS: the claims HASH. ARGV: me, mode ("tick": grow only into the room under the target and
# the cap; "manual": a size by hand, under the cap only, refused or capped; "hold": a paused
# host's own size, under the cap only, never cut), share (what it asks for), up, occupying,
# target, cap (-1: none), failing (1/0), serving, ttl, the silences (JSON [[start, end], ...]), the
# deadline ('' for none: no growth is granted when the script runs after it), partial
# (manual: 1 claims what there is, 0 writes nothing when the room is short), most, skew,
# longest, key lifetime, the reports HASHes' prefix, stale ms, field limit, FLEET_NAME,
# FLEET_MAX_PROCESSES (-1: not set). A host whose claim expired while its worker processes of this
# fleet still report (its ticks stopped: timer stopped, a config broken after it started, a tick
# that hangs) counts with those processes against FLEET_MAX_PROCESSES: they hold the resource that
# cap guards. (They are not counted under the target, nor against the default cap, the live hosts'
# MAX_PROCESSES added up: both leave that host's own capacity out, and its processes run on it.)
# Returns {grant, claim written (-1: nothing written), processes counted for hosts whose claim
# expired, 1 when it ran past the deadline (else 0), ids of damaged claims...}.
CLAIM = """
local me, mode = ARGV[1], ARGV[2]
local share, up, occupying = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local target, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local failing, serving, ttl = ARGV[8] == '1', tonumber(ARGV[9]), tonumber(ARGV[10])
local spans = cjson.decode(ARGV[11])
local last = #spans > 0 and spans[#spans][2] or -math.huge
local deadline = tonumber(ARGV[12])
local most, skew, longest = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local prefix, stale, limit, fleet = ARGV[18], tonumber(ARGV[19]), tonumber(ARGV[20]), ARGV[21]
local fleet_max = tonumber(ARGV[22])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
""" + _COMMON + """
-- Every claim (HVALS: half the reply of HGETALL), then this host's own taken out again.
local all, counted, damaged, expired = 0, 0, 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local c, k, live = read(v)
  if not c then
    damaged = damaged + 1
  elseif live then
    all, counted = all + c, counted + k
  else
    expired = expired + 1
  end
end
local old = redis.call('HGET', KEYS[1], me)
if old then
  local c, k, live = read(old)
  if c and live then all, counted = all - c, counted - k elseif c then expired = expired - 1 end
end
local out, unclaimed = {0, 0, 0, 0}, 0
if damaged > 0 or expired > 0 then  -- rare: name the damaged (the caller logs each once), count what expired hosts run
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do
    if flat[i] ~= me then
      local c, k, live = read(flat[i + 1])
      if not c then
        out[#out + 1] = flat[i]
      elseif not live and fleet_max >= 0 then
        unclaimed = unclaimed + running(flat[i])
      end
    end
  end
end
-- The room under the cap for growth beside ``held`` instances of this host (occupying, or those coming back).
local function under_cap(held)
  local room = math.huge
  if cap >= 0 then room = cap - all - held end
  if fleet_max >= 0 then room = math.min(room, fleet_max - all - unclaimed - held) end
  return room
end
-- A script run long after the view it was sent with was read (a hung Redis resumed it) would grow
-- beside claims that view stretched and it does not: no growth then, shrinking and the claim as asked.
local asked = share
if deadline and now > deadline and share > up then share, out[4] = up, 1 end
local grant, claim = share, 0
if mode == 'tick' then
  if share > up then
    local room = math.min(target - counted - occupying, under_cap(occupying))
    grant = up + math.max(0, math.min(share - up, room))
  end
elseif mode == 'manual' then
  -- instances coming back (occupying - up) take their room too: they will be up beside the grant
  grant = math.min(share, math.max(under_cap(occupying - up), math.min(up, share)))
  if grant < asked and ARGV[13] ~= '1' then
    out[1], out[2], out[3] = grant, -1, unclaimed
    return out
  end
elseif share > up then  -- hold: a paused host keeps what it runs, grows only under the cap
  grant = up + math.max(0, math.min(share - up, under_cap(occupying)))
end
claim = math.max(occupying, grant + occupying - up)
local mine = claim
if failing then mine = math.min(claim, serving) end
redis.call('HSET', KEYS[1], me, struct.pack('>IIdd', claim, mine, now, now + ttl))
redis.call('EXPIRE', KEYS[1], ARGV[17])
out[1], out[2], out[3] = grant, claim, unclaimed
return out
"""

# KEYS: the fleet's HASH, its history LIST. ARGV: the decision read ('' when there was none),
# the new decision, its tick record, HISTORY_RECORDS, KEY_LIFETIME. Returns {1} when written,
# else {0, the decision in force}.
PUBLISH = """
local current = redis.call('HGET', KEYS[1], 'decision') or ''
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[1], 'decision', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HDEL', KEYS[1], 'history')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1}
"""

# KEYS: the fleet's HASH, the claims HASH. ARGV: the silences (JSON [[start, end], ...]), '', most,
# skew, longest, the reports HASHes' prefix, stale ms, field limit, FLEET_NAME, then (host id, its
# heartbeat as read) pairs.
# Forgets a host (its heartbeat and its claim) only if its heartbeat is still the one read, its
# claim is not live and its worker processes do not report: a host that came back, or whose
# workers run on without ticks, is kept. Returns the ids forgotten. (A claim without a heartbeat is
# written only while the fleet's records are lost, by a host that claimed less than FORGET_AFTER
# ago: its next tick writes the heartbeat again; share.settle, share.reserve.)
FORGET = """
local spans = cjson.decode(ARGV[1])
local last = #spans > 0 and spans[#spans][2] or -math.huge
local most, skew, longest = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, stale, limit, fleet = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
""" + _COMMON + """
local gone = {}
for i = 10, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[1], 'host:' .. id) == ARGV[i + 1] then
    local claim = redis.call('HGET', KEYS[2], id)
    local c, k, live = nil, nil, false
    if claim then c, k, live = read(claim) end
    if not live and running(id) == 0 then
      redis.call('HDEL', KEYS[1], 'host:' .. id)
      redis.call('HDEL', KEYS[2], id)
      gone[#gone + 1] = id
    end
  end
end
return gone
"""


def _script(client: redis.Redis, source: str):
    """The script, run with EVALSHA (redis-py loads it again after a Redis restart)."""
    return client.register_script(source)


def pack(claim: int, counted: int, at: float, expires: float) -> bytes:
    """A claims-HASH value: 24 bytes, big-endian (claim and counted as 32-bit unsigned, at and
    expires as doubles), which the script unpacks several times faster than text."""
    return struct.pack(">IIdd", claim, counted, at, expires)


def unpack(raw: bytes) -> tuple[int, int, float, float]:
    """(claim, counted, at, expires) of a claims-HASH value (tools and tests); ValueError when damaged."""
    if len(raw) != 24:
        raise ValueError(f"{len(raw)} bytes, not 24")
    return struct.unpack(">IIdd", raw)


def value(entry: HostEntry) -> bytes:
    """A host's claims-HASH value for its heartbeat ``entry`` (a host's own settle writes it)."""
    mine = min(entry.claim, entry.serving) if entry.failing and not entry.paused else entry.claim
    return pack(entry.claim, mine, entry.at, entry.expires)


def claim(
    client: redis.Redis,
    settings: Settings,
    me: str,
    mode: str,
    *,
    share: int,
    up: int,
    occupying: int,
    target: int = 0,
    cap: int | None = None,
    failing: bool = False,
    serving: int = 0,
    silence: Silence | None = None,
    partial: bool = True,
    fleet_max: int | None = None,
    deadline: float | None = None,
) -> Claimed:
    """What this host may run, the claim written (None when nothing was) and the processes
    counted for hosts whose claim expired, in one atomic call. ``deadline`` (Redis' clock): when
    the script runs after it, no growth is granted (the ``silence`` it was given is from a read
    made before a hung Redis resumed it: the claims it did not stretch may look expired)."""
    args = [
        me, mode, share, up, occupying, target, -1 if cap is None else cap, int(failing), serving, settings.host_ttl,
        _spans(silence), "" if deadline is None else repr(deadline), int(partial), MOST, SKEW, LONGEST, KEY_LIFETIME, *_reports_args(settings),
        fleet_max or -1,
    ]
    key = claims_key(settings)
    with kept_types(client, settings):
        reply = _script(client, CLAIM)(keys=[key], args=args)
    for bad in reply[4:]:
        damaged(key, bad.decode("utf-8", "replace") if isinstance(bad, bytes) else str(bad), "not a claim (24 bytes: claim, counted, at, expires) within range: left out of the room")
    grant, written = int(reply[0]), int(reply[1])
    return Claimed(grant, written if written >= 0 else None, int(reply[2]), bool(int(reply[3])))


class Claimed(NamedTuple):
    """The claim script's answer: ``grant`` (what this host may run), ``written`` (its claim,
    None when nothing was written), ``unclaimed`` (worker processes of hosts whose claim
    expired, by their own reports, counted in the room), ``late`` (it ran past its deadline:
    no growth was granted)."""

    grant: int
    written: int | None
    unclaimed: int = 0
    late: bool = False


def _spans(silence: Silence | None) -> str:
    """The silences for the scripts: a JSON list of [start, end] (full precision, as Python writes floats)."""
    return json.dumps([list(span) for span in silence.spans()] if silence is not None else [])


def _reports_args(settings: Settings) -> list:
    """The claim and forget scripts' view of the instance reports: the HASHes' key prefix
    (``<namespace>:__dramactl__.instances.``: the host id follows), how far apart (ms) the writes
    of one host's live processes may be, the most fields a HASH may hold to be counted, and the
    fleet whose processes count (the ``fleet`` each report carries: its worker's FLEET_NAME)."""
    return [instances_prefix(settings.namespace), int(STALE_SECONDS * 1000), FIELD_LIMIT, settings.fleet_name]


def publish(client: redis.Redis, settings: Settings, read: bytes | None, decision: FleetDecision, record: str) -> tuple[bool, bytes | None]:
    """(True, None) when ``decision`` replaced the one this host ``read``; else (False, the
    decision another host published in between: the raw value, to validate and apply)."""
    with kept_types(client, settings):
        reply = _script(client, PUBLISH)(
            keys=[fleet_key(settings), history_key(settings)],
            args=[read or b"", decision.to_json(), record, HISTORY_RECORDS, KEY_LIFETIME],
        )
    if int(reply[0]) == 1:
        return True, None
    return False, reply[1] or None


def forget(client: redis.Redis, settings: Settings, heartbeats: Mapping[str, bytes], silence: Silence | None = None) -> list[str]:
    """Remove the hosts expired for FORGET_AFTER (``heartbeats``: id -> its heartbeat as read),
    each with its claim, unless it wrote a heartbeat since, its claim is live or its worker
    processes still report (:data:`FORGET`); the ids removed."""
    if not heartbeats:
        return []
    args = [_spans(silence), "", MOST, SKEW, LONGEST, *_reports_args(settings)]
    for host, raw in heartbeats.items():
        args += [host, raw]
    with kept_types(client, settings):
        reply = _script(client, FORGET)(keys=[fleet_key(settings), claims_key(settings)], args=args)
    return [r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r) for r in reply]
