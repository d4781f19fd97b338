"""Reading Dramatiq's Redis queues: its key layout and a one-round-trip probe.

Dramatiq's RedisBroker keeps, for queue ``Q`` in namespace ``ns``:

- ``ns:Q``          LIST of ready message ids (producers RPUSH, workers LPOP the head);
- ``ns:Q.msgs``     HASH id -> JSON body for ready *and* fetched-but-unacked messages,
                    so held = HLEN(ns:Q.msgs) - LLEN(ns:Q);
- ``ns:Q.DQ.msgs``  HASH of delayed messages (bodies carry ``options.eta`` in ms);
- ``ns:Q.XQ``       ZSET of dead-lettered ids;
- ``ns:__heartbeats__``          ZSET worker id -> last heartbeat (ms);
- ``ns:__acks__.<worker>.Q``     SET of the ids that worker fetched and has not acked.

Every body carries ``message_timestamp`` (ms), kept across retries, so the head
message gives the age of the oldest waiting message, and the tail (the one pushed
last) the age of the newest: ``dramactl replay`` places the ready messages between the
two. The timestamp is when the message was built, not when it was pushed: a message
moved back to the list (one a stopping worker or maintenance requeued), a retry, a
delayed message come due, and a pipeline's next step or a group's callback (built when
the pipeline was) all carry an earlier one. Older than the head's, the tail's age is
left out; newer, the bound comes early (the replay's waits then run long, not short). A held message whose worker's
heartbeat is older than the heartbeat timeout (``ns:__dramactl__.heartbeat_timeout``,
ms, published by the worker hook; Dramatiq's 60 s when absent) is *orphaned*: no live
worker runs it, and it waits for Dramatiq's maintenance to requeue it.

The worker hook also keeps, per queue, ``ns:__dramactl__.work.Q``: a HASH of the
cumulative ``done`` (messages completed), ``busy`` (seconds spent on them) and
``busy_sq`` (the sum of those seconds squared: their spread, for ``dramactl replay``)
counters; the probe returns them (one HMGET), and rates come from their deltas
between ticks (:mod:`dramactl.rates`).

A value the probe cannot use is read past and named, once per probe, in :attr:`Probe.damaged`
(status lists it, each tick logs it), never an error that fails the whole read: a heartbeat
timeout that is not a positive, finite number of ms (Dramatiq's 60 s is used), and a head
message whose timestamp cannot be read (the queue's oldest wait is then unknown, so the
latency guard leaves it out).

All figures of all queues are read by one Lua script, against Redis' own clock, with
a bounded amount of work per queue whatever the queue sizes: bodies are decoded
(cjson) only for at most ``DUE_SAMPLE`` delayed messages, and for a head or tail message whose
timestamp is not where Dramatiq's encoder writes it, the body's end (then up to ``DUE_BYTE_BUDGET`` bytes).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .settings import Settings, SettingsError, redact
from . import reports
from .stats import InstanceReport, QueueStats

log = logging.getLogger("dramactl.queue")

# Reading and decoding a body costs Redis ~5 us plus ~4 us per KB (bench/probe_time.py),
# so at most ~2.5 ms per queue whatever the sizes: the due count is exact up to this
# many delayed messages in a queue ...
EXACT_DUE_LIMIT = 128
# ... and above it estimated from this many randomly chosen ones (HRANDFIELD) ...
DUE_SAMPLE = 128
# ... either way stopping once this many bytes were decoded: with bodies over 4 KB,
# an estimate from the bodies read.
DUE_BYTE_BUDGET = 512 * 1024
# Dramatiq's own default heartbeat timeout (ms), when the hook has not published one.
DEFAULT_HEARTBEAT_TIMEOUT_MS = 60_000
# Dead workers looked at per probe (oldest heartbeats first).
DEAD_WORKER_LIMIT = 100
# Values per queue in the script's reply.
FIELDS = 12
# Keys per queue the script reads.
KEYS_PER_QUEUE = 5

PROBE = """
-- KEYS[1] ns:__heartbeats__, KEYS[2] ns:__dramactl__.heartbeat_timeout,
-- KEYS[3] ns:__dramactl__.instances.<host> (the hook's per-instance reports),
-- then per queue: ns:Q, ns:Q.msgs, ns:Q.DQ.msgs, ns:Q.XQ, ns:__dramactl__.work.Q.
-- ARGV: exact_limit, sample, byte_budget, default_timeout_ms, dead_limit,
--       acks prefix ('ns:__acks__.'), report field limit, then the queue names in KEYS order.
-- Reply: now_ms, then per queue
--   ready, held, delayed, due, dead, head_ts (-1: unknown), tail_ts (the newest ready
--   message's: head_ts when one is ready, -1: unknown), orphaned,
--   done, busy, busy_sq (the hook's counters as strings, '' when absent), error ('' if none);
-- then the damaged values the probe read past: {what, key, detail, what, key, detail ...}
--   (what: 'heartbeat_timeout' (detail: its value), 'heartbeat_timeout_type' (detail: the key's type)
--   or 'head' (detail: '<message id>\\n<why>'));
-- last, the instance reports: {error ('' if none), field, value, field, value ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exact_limit = tonumber(ARGV[1])
local sample = tonumber(ARGV[2])
local byte_budget = tonumber(ARGV[3])
local acks_prefix = ARGV[6]
local out = {now}
local damaged = {}

-- A finite number in 0 .. 2^53 (epoch ms, a timeout), or nil: tonumber takes 'nan', 'inf', '1e400'.
local function bounded(n)
  if n == nil or n ~= n or n < 0 or n > 9007199254740992 then return nil end
  return n
end

-- A body's decoded JSON object, or nil when it is not one (never an error).
local function decode(body)
  local ok, msg = pcall(cjson.decode, body)
  if ok and type(msg) == 'table' then return msg end
  return nil
end

-- The top-level message_timestamp and options.eta only: never anything in args/kwargs.
-- A timestamp is read from the body's last bytes, where Dramatiq's JSON encoder writes it
-- (the message's last field, then the closing brace: a value nested in args/kwargs or a
-- string ends otherwise), so a body of any size costs a few bytes; only a body of another
-- layout is decoded, and not above the byte budget.
-- Returns the timestamp, or nil and why it cannot be read.
local function timestamp_of(body)
  local last = string.match(string.sub(body, -40), '"message_timestamp":(%d+)}$')
  if last then
    local ts = bounded(tonumber(last))
    if ts then return ts end
    return nil, 'its message_timestamp ' .. string.sub(last, 1, 24) .. ' is not epoch ms'
  end
  if #body > byte_budget then return nil, 'its ' .. #body .. '-byte body does not end with message_timestamp' end
  local msg = decode(body)
  if not msg or #msg > 0 then return nil, 'its body is not a JSON object' end  -- #msg: an array's length
  local raw = msg.message_timestamp
  local ts = (type(raw) == 'number' or type(raw) == 'string') and bounded(tonumber(raw)) or nil
  if ts then return ts end
  if raw == nil then return nil, 'its body has no message_timestamp' end
  return nil, 'its message_timestamp is not epoch ms'
end
local function is_due(body)
  local msg = decode(body)
  if not msg or type(msg.options) ~= 'table' then return false end
  local eta = tonumber(msg.options.eta)
  return eta ~= nil and eta <= now
end

-- Due delayed messages: every body when there are few, else a random sample whose
-- hit rate is scaled up; either way at most `sample` bodies and ~byte_budget bytes.
local function count_due(key, delayed)
  if delayed == 0 then return 0 end
  local ids
  if delayed <= exact_limit then
    ids = redis.call('HKEYS', key)
  else
    ids = redis.call('HRANDFIELD', key, sample)
  end
  local hits, seen, bytes = 0, 0, 0
  for _, id in ipairs(ids) do
    if bytes >= byte_budget then break end
    local body = redis.call('HGET', key, id)
    if body then
      bytes = bytes + #body
      seen = seen + 1
      if is_due(body) then hits = hits + 1 end
    end
  end
  if seen >= delayed then return hits end
  if seen == 0 then return 0 end
  return math.floor(delayed * hits / seen + 0.5)
end

-- What a key must be ('none': absent, i.e. empty); a message when it is something else.
local function wrong_type(key, want, what)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' or kind == want then return nil end
  return key .. ' is a ' .. kind .. ', not a Dramatiq ' .. what
end

-- The heartbeat timeout the hook published (ms): Dramatiq's default when absent, or when it is not
-- a positive, finite number (NaN passed on made ZRANGEBYSCORE fail the whole probe), then named.
local timeout = tonumber(ARGV[4])
local timeout_kind = redis.call('TYPE', KEYS[2])['ok']
if timeout_kind == 'string' then
  local length = redis.call('STRLEN', KEYS[2])
  local value = redis.call('GETRANGE', KEYS[2], 0, 39)
  local n = length <= 40 and bounded(tonumber(value)) or nil
  if n and n > 0 then
    timeout = n
  else
    local shown = length <= 40 and value or (value .. '... (' .. length .. ' bytes)')
    for _, v in ipairs({'heartbeat_timeout', KEYS[2], shown}) do table.insert(damaged, v) end
  end
elseif timeout_kind ~= 'none' then
  for _, v in ipairs({'heartbeat_timeout_type', KEYS[2], timeout_kind}) do table.insert(damaged, v) end
end

-- Workers whose heartbeat is older than the timeout (bounded, oldest first).
local dead_workers = {}
if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then
  dead_workers = redis.call('ZRANGEBYSCORE', KEYS[1], 0, now - timeout, 'LIMIT', 0, tonumber(ARGV[5]))
end

-- Messages of queue `name` fetched by a dead worker and never acked.
local function orphaned_in(name)
  local n = 0
  for _, worker in ipairs(dead_workers) do
    local ok, count = pcall(redis.call, 'SCARD', acks_prefix .. worker .. '.' .. name)
    if ok then n = n + count end
  end
  return n
end

-- The hook's cumulative work counters of a queue ('' when absent or not a hash).
local function work_of(key)
  local ok, values = pcall(redis.call, 'HMGET', key, 'done', 'busy', 'busy_sq')
  if not ok then return '', '', '' end
  return values[1] or '', values[2] or '', values[3] or ''
end

for i = 1, (#KEYS - 3) / 5 do
  local list, msgs, delayed_msgs, xq = KEYS[5 * i - 1], KEYS[5 * i], KEYS[5 * i + 1], KEYS[5 * i + 2]
  local err = wrong_type(list, 'list', 'queue list')
    or wrong_type(msgs, 'hash', 'message hash')
    or wrong_type(delayed_msgs, 'hash', 'delayed message hash')
    or wrong_type(xq, 'zset', 'dead-letter zset')
  if err then
    for _ = 1, 8 do table.insert(out, 0) end
    for _ = 1, 3 do table.insert(out, '') end
    table.insert(out, err)
  else
    local ready = redis.call('LLEN', list)
    local delayed = redis.call('HLEN', delayed_msgs)
    local head_ts, tail_ts = -1, -1
    if ready > 0 then
      local id = redis.call('LINDEX', list, 0)
      local body = redis.call('HGET', msgs, id)
      if body then  -- no body: an id requeued after its ack (Dramatiq's fetch skips it), not damage
        local ts, why = timestamp_of(body)
        if ts then
          head_ts = ts
        else
          for _, v in ipairs({'head', msgs, string.sub(id, 1, 64) .. '\\n' .. why}) do table.insert(damaged, v) end
        end
      end
      tail_ts = head_ts
    end
    if ready > 1 then  -- Dramatiq RPUSHes: the tail is the newest (O(1) either end)
      local body = redis.call('HGET', msgs, redis.call('LINDEX', list, -1))
      tail_ts = body and timestamp_of(body) or -1  -- unknown: only replay's bound is lost
    end
    table.insert(out, ready)
    table.insert(out, redis.call('HLEN', msgs))
    table.insert(out, delayed)
    table.insert(out, count_due(delayed_msgs, delayed))
    table.insert(out, redis.call('ZCARD', xq))
    table.insert(out, head_ts)
    table.insert(out, tail_ts)
    table.insert(out, orphaned_in(ARGV[7 + i]))
    local done, busy, squares = work_of(KEYS[5 * i + 3])
    table.insert(out, done)
    table.insert(out, busy)
    table.insert(out, squares)
    table.insert(out, '')
  end
end

table.insert(out, damaged)

-- This host's instance reports (bounded: a host runs at most MAX_PROCESSES instances).
local reports = {''}
local err = wrong_type(KEYS[3], 'hash', 'instance report hash')
local fields = 0
if not err then fields = redis.call('HLEN', KEYS[3]) end
if err then
  reports[1] = err
elseif fields > tonumber(ARGV[7]) then
  reports[1] = KEYS[3] .. ' has more than ' .. ARGV[7] .. ' fields'
elseif fields > 0 then
  for _, v in ipairs(redis.call('HGETALL', KEYS[3])) do table.insert(reports, v) end
end
table.insert(out, reports)
return out
"""


def queue_keys(namespace: str, queue: str) -> list[str]:
    """The keys the probe reads for one queue, in the script's order."""
    base = f"{namespace}:{queue}"
    return [base, f"{base}.msgs", f"{base}.DQ.msgs", f"{base}.XQ", work_key(namespace, queue)]


def work_key(namespace: str, queue: str) -> str:
    """Where the worker hook adds up a queue's completed messages and busy seconds."""
    return f"{namespace}:__dramactl__.work.{queue}"


def probe_call(namespace: str, queues: Sequence[str], host: str | None = None) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the probe for these queues (and this host's instance reports)."""
    keys = [f"{namespace}:__heartbeats__", f"{namespace}:__dramactl__.heartbeat_timeout", reports.instances_key(namespace, host)]
    keys += [k for q in queues for k in queue_keys(namespace, q)]
    args: list[str | int] = [EXACT_DUE_LIMIT, DUE_SAMPLE, DUE_BYTE_BUDGET, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEAD_WORKER_LIMIT, f"{namespace}:__acks__.", reports.FIELD_LIMIT]
    return keys, args + list(queues)


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis; nothing is sent until first use."""
    # No retries: redis-py 8 otherwise retries ~4 s before a down Redis is reported.
    opts = {"socket_connect_timeout": 3, "socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url, **opts)
    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        **opts,
    )


def probe(client: redis.Redis, namespace: str, queues: Sequence[str], host: str | None = None) -> list:
    """Run the probe (EVALSHA, loading the script on NOSCRIPT) and return its raw reply."""
    keys, args = probe_call(namespace, queues, host)
    return client.register_script(PROBE)(keys=keys, args=args, client=client)


@dataclass(frozen=True)
class Probe:
    """One probe: the queues, and what this host's instances run (their reports)."""

    queues: list[QueueStats]
    instances: dict[int, InstanceReport] = field(default_factory=dict)
    damaged: tuple[str, ...] = ()  # damaged values read past (heartbeat timeout, head message, instance report fields), one line each
    at: float = 0.0  # this host's clock when read (epoch seconds): the reports' ages are against it


def read_probe(settings: Settings, client: redis.Redis | None = None, *, strict: bool = True) -> Probe:
    """Queues and this host's instance reports in one round trip. ``strict``: a queue
    that cannot be read is a SettingsError (as :func:`read`), else its ``error`` is set."""
    client = client or connect(settings)
    with redis_errors(settings):
        raw = probe(client, settings.namespace, settings.queues)
    now = time.time()
    found, damaged = parse_reports(raw[-1], now, reports.instances_key(settings.namespace))
    damaged = parse_damaged(raw[1 + FIELDS * len(settings.queues)]) + damaged  # after the queues, before the reports
    result = Probe(parse_probe(settings.queues, raw), found, damaged, at=now)
    if strict:
        for q in result.queues:
            if q.error:
                raise queue_error(q)
    return result


def read_each(settings: Settings, client: redis.Redis | None = None) -> list[QueueStats]:
    """Figures for every configured queue, in one round trip; a queue Redis holds
    something else under comes back with ``error`` set instead of failing the rest.

    Raises :class:`SettingsError` naming the setting to fix when Redis cannot be
    reached, refuses us or answers with an error.
    """
    return read_probe(settings, client, strict=False).queues


def read(settings: Settings, client: redis.Redis | None = None) -> list[QueueStats]:
    """Like :func:`read_each`, but a queue that cannot be read is a SettingsError too,
    so the caller can stop before touching the fleet."""
    return read_probe(settings, client).queues


def queue_error(q: QueueStats) -> SettingsError:
    """The SettingsError for a queue the probe could not read."""
    return SettingsError("DRAMATIQ_QUEUE_NAME", f"queue {q.name!r}: {q.error}", "remove it from DRAMATIQ_QUEUE_NAME or fix the key")


@contextmanager
def redis_errors(settings: Settings, progress: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn Redis' refusals, outages and error replies into a SettingsError naming what to fix.

    ``progress()`` says how far the caller got (e.g. "after sending 3 of 10 messages").
    """
    where = f"Redis at {settings.redis_location}"
    setting = "REDIS_URL" if settings.redis_url else "REDIS_HOST"
    after = f" {progress()}" if progress else ""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise SettingsError("REDIS_PASSWORD", f"{where} refused it ({redact(str(exc), settings)})", "set the password Redis expects") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise SettingsError("REDIS_PASSWORD", f"{where} refused it ({redact(str(exc), settings)})", "set the password Redis expects") from None
        message = " ".join(str(exc).split())  # one line, whatever the server sent
        raise SettingsError(
            setting, f"{where} answered with an error{after}: {message}", "point REDIS_HOST/REDIS_PORT/REDIS_URL at Dramatiq's Redis (6.2 or later), as a user allowed to run scripts"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise SettingsError(setting, f"cannot reach {where}{after} ({redact(str(exc), settings)})", "start Redis or fix REDIS_HOST/REDIS_PORT/REDIS_URL") from None


def parse_probe(queues: Sequence[str], raw: Sequence[int | bytes | str]) -> list[QueueStats]:
    """Turn the script's flat reply into QueueStats (pure, so it is testable alone)."""
    now_ms = int(raw[0])
    stats = []
    for i, name in enumerate(queues):
        *numbers, error = raw[1 + FIELDS * i : 1 + FIELDS * (i + 1)]
        if isinstance(error, bytes):
            error = error.decode("utf-8", "replace")
        if error:
            stats.append(QueueStats(name=name, error=str(error)))
            continue
        *counts, done, busy, squares = numbers
        ready, held, delayed, due, dead, head_ts, tail_ts, orphans = (int(v) for v in counts)
        # A dead worker's ack set may name ids already gone; only held messages count.
        orphaned = min(orphans, max(0, held - ready))
        stats.append(
            QueueStats(
                name=name,
                ready=ready,
                delayed=delayed,
                due=due,
                in_flight=max(0, held - ready - orphaned),
                orphaned=orphaned,
                dead=dead,
                oldest_age=max(0.0, (now_ms - head_ts) / 1000.0) if head_ts >= 0 else None,
                newest_age=newest_age(head_ts, tail_ts, now_ms),
                done_total=_counter(done, f"__dramactl__.work.{name} field done", HINCRBY_MAX),
                busy_seconds_total=_counter(busy, f"__dramactl__.work.{name} field busy"),
                busy_sq_total=_counter(squares, f"__dramactl__.work.{name} field busy_sq"),
            )
        )
    return stats


def newest_age(head_ts: int, tail_ts: int, now_ms: int) -> float | None:
    """Seconds since the newest ready message was sent (the tail's timestamp), or None when
    its timestamp cannot be the newest's: unknown (-1: absent, not a number), newer than
    Redis' clock, or older than the head's (a message moved back to the list, or a head
    whose own timestamp is unknown). Only the read's bound is lost: nothing else changes."""
    if head_ts < 0 or not head_ts <= tail_ts <= now_ms:
        return None
    return (now_ms - tail_ts) / 1000.0


def parse_reports(raw: Sequence | bytes | str, now: float, key: str = "the instance report hash") -> tuple[dict[int, InstanceReport], tuple[str, ...]]:
    """The probe's last element: the instance reports, and the damaged fields named."""
    if not isinstance(raw, (list, tuple)) or not raw:
        return {}, ()
    error = raw[0].decode("utf-8", "replace") if isinstance(raw[0], bytes) else str(raw[0])
    if error:
        return {}, (f"{error}; instance reports ignored (the worker hook rewrites them: delete the key)",)
    found, damaged = reports.parse(raw[1:], now, key=key)
    return found, tuple(damaged)


def _str(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_damaged(raw: Sequence | None) -> tuple[str, ...]:
    """The probe's damaged values (``{what, key, detail, ...}``), one line each naming the key
    and the fix: what the probe used instead, never an error that fails the whole read."""
    if not isinstance(raw, (list, tuple)):
        return ()
    lines = []
    for i in range(0, len(raw) - 2, 3):
        what, key, detail = (_str(v) for v in raw[i : i + 3])
        if what in ("heartbeat_timeout", "heartbeat_timeout_type"):
            held = f"holds {detail!r}, not" if what == "heartbeat_timeout" else f"is a {detail}, not the string of"
            lines.append(
                f"{key} {held} a heartbeat timeout (a positive number of ms); dead workers are found with"
                f" Dramatiq's {DEFAULT_HEARTBEAT_TIMEOUT_MS // 1000} s instead (the worker hook rewrites it every few seconds;"
                f" delete it with redis-cli DEL {key} if it stays)"
            )
        elif what == "head":
            ident, _, why = detail.rpartition("\n")
            lines.append(
                f"{key} message {ident!r}, the oldest ready one: {why}; its wait is unknown, so the latency guard"
                " (MAX_QUEUE_WAIT) leaves this queue out while that message heads it (Dramatiq's encoder writes"
                " message_timestamp last: check what enqueued it)"
            )
    return tuple(lines)


HINCRBY_MAX = 2**63 - 1  # Redis' HINCRBY refuses to go past a signed 64-bit integer


def _counter(value: int | bytes | str | None, where: str = "work counter", most: float = math.inf) -> float | None:
    """A work counter from the reply: None when absent or not a finite, non-negative
    number (``1e400``, ``inf``, ``nan``, ``-3``: named in the journal and left out), or
    above ``most`` (the hook's ``done`` is a HINCRBY counter: ``1e300`` was written by
    something else)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and 0 <= number <= most:
        return number
    log.warning("ignoring damaged %s in Redis (%r is not a finite count); rates start again from the next good value", where, value[:40] if isinstance(value, str) else value)
    return None
