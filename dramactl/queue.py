"""Reading Dramatiq's Redis queues: its key layout and a one-round-trip probe.

Dramatiq's RedisBroker keeps, for queue ``Q`` in namespace ``ns``:

- ``ns:Q``          LIST of ready message ids (producers RPUSH, workers LPOP the head);
- ``ns:Q.msgs``     HASH id -> JSON body for ready *and* fetched-but-unacked messages,
                    so in-flight = HLEN(ns:Q.msgs) - LLEN(ns:Q);
- ``ns:Q.DQ.msgs``  HASH of delayed messages (bodies carry ``options.eta`` in ms);
- ``ns:Q.XQ``       ZSET of dead-lettered ids.

Every body carries ``message_timestamp`` (ms), kept across retries, so the head
message gives the age of the oldest waiting message. All figures of all queues are
read by one Lua script, against Redis' own clock.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .settings import Settings, SettingsError, redact
from .stats import QueueStats

# Delay queues above this size are sampled for the due count rather than scanned.
EXACT_DUE_LIMIT = 5000
DUE_SAMPLE = 1000

PROBE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local exact_limit = tonumber(ARGV[1])
local sample = tonumber(ARGV[2])
local function is_due(body)
  local eta = string.match(body, '"eta"%s*:%s*(%d+)')
  return eta ~= nil and tonumber(eta) <= now
end
for i = 1, #KEYS, 4 do
  local ready = redis.call('LLEN', KEYS[i])
  local held = redis.call('HLEN', KEYS[i + 1])
  local delayed = redis.call('HLEN', KEYS[i + 2])
  local dead = redis.call('ZCARD', KEYS[i + 3])
  local due = 0
  if delayed > 0 then
    if delayed <= exact_limit then
      for _, body in ipairs(redis.call('HVALS', KEYS[i + 2])) do
        if is_due(body) then due = due + 1 end
      end
    else
      local pairs_ = redis.call('HRANDFIELD', KEYS[i + 2], sample, 'WITHVALUES')
      local hits, seen = 0, 0
      for j = 2, #pairs_, 2 do
        seen = seen + 1
        if is_due(pairs_[j]) then hits = hits + 1 end
      end
      if seen > 0 then due = math.floor(delayed * hits / seen + 0.5) end
    end
  end
  local head_ts = -1
  if ready > 0 then
    local head = redis.call('LINDEX', KEYS[i], 0)
    local body = redis.call('HGET', KEYS[i + 1], head)
    if body then
      local ts = string.match(body, '"message_timestamp"%s*:%s*(%d+)')
      if ts then head_ts = tonumber(ts) end
    end
  end
  table.insert(out, ready)
  table.insert(out, held)
  table.insert(out, delayed)
  table.insert(out, due)
  table.insert(out, dead)
  table.insert(out, head_ts)
end
return out
"""


def queue_keys(namespace: str, queue: str) -> list[str]:
    """The four keys the probe reads for one queue, in the script's order."""
    base = f"{namespace}:{queue}"
    return [base, f"{base}.msgs", f"{base}.DQ.msgs", f"{base}.XQ"]


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


def read(settings: Settings, client: redis.Redis | None = None) -> list[QueueStats]:
    """Figures for every configured queue, in one round trip.

    Raises :class:`SettingsError` naming the setting to fix when Redis cannot be
    reached or refuses us, so the caller can stop before touching the fleet.
    """
    client = client or connect(settings)
    keys = [k for q in settings.queues for k in queue_keys(settings.namespace, q)]
    with redis_errors(settings):
        raw = client.eval(PROBE, len(keys), *keys, EXACT_DUE_LIMIT, DUE_SAMPLE)
    return parse_probe(settings.queues, raw)


@contextmanager
def redis_errors(settings: Settings, progress: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn Redis' refusals and outages into a SettingsError naming what to fix.

    ``progress()`` says how far the caller got (e.g. "after sending 3 of 10 messages").
    """
    where = f"Redis at {settings.redis_location}"
    try:
        yield
    except redis.AuthenticationError as exc:
        raise SettingsError("REDIS_PASSWORD", f"{where} refused it ({redact(str(exc), settings)})", "set the password Redis expects") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise SettingsError("REDIS_PASSWORD", f"{where} refused it ({redact(str(exc), settings)})", "set the password Redis expects") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        setting = "REDIS_URL" if settings.redis_url else "REDIS_HOST"
        after = f" {progress()}" if progress else ""
        raise SettingsError(setting, f"cannot reach {where}{after} ({redact(str(exc), settings)})", "start Redis or fix REDIS_HOST/REDIS_PORT/REDIS_URL") from None


def parse_probe(queues: Sequence[str], raw: Sequence[int]) -> list[QueueStats]:
    """Turn the script's flat reply into QueueStats (pure, so it is testable alone)."""
    now_ms = int(raw[0])
    stats = []
    for i, name in enumerate(queues):
        ready, held, delayed, due, dead, head_ts = (int(v) for v in raw[1 + 6 * i : 7 + 6 * i])
        stats.append(
            QueueStats(
                name=name,
                ready=ready,
                delayed=delayed,
                due=due,
                in_flight=max(0, held - ready),
                dead=dead,
                oldest_age=max(0.0, (now_ms - head_ts) / 1000.0) if head_ts >= 0 else None,
            )
        )
    return stats
