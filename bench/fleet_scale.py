"""What coordinating a fleet costs per tick, and how WATCH conflicts grow with the number of hosts.

Run: ``python -m bench.fleet_scale [--hosts 10,100,1000] [--seconds 20] [--interval 15]``
(needs Debian's redis-server; starts its own on a free loopback port).

1,000 dramactl processes do not fit a 2-core machine, so it measures the parts and combines them:

1. **The window**: one host's ``share.coordinate`` (the real code path: Redis' clock, HGETALL of the
   fleet's hash, parsing and validating every heartbeat, the decision, the WATCH/MULTI write) and
   ``share.settle``, timed alone against a fleet of N live hosts with a full hour of history
   (720 records). p50 / p99 in ms, the hash's size, and Redis' own CPU per tick (INFO
   commandstats, microseconds spent in the commands one tick sends).
2. **Conflicts**: N hosts as lightweight tasks (a pool of threads, each task one host ticking every
   INTERVAL seconds at its own phase, coordinate then settle, as ``dramactl tick`` does) driving the
   real code for ``--seconds``; counts attempts, retries and exhausted ticks (Contention), and
   p50 / p99 of a tick's coordination. Where the process itself cannot keep up (the tasks share one
   interpreter and its lock), ticks start late: the p99 of that lag is printed, and a tick's own
   figures then include waiting for the interpreter, which N separate hosts would not.
3. **The model**: an attempt conflicts when another host's write lands inside its window; with
   writes at 2N/INTERVAL per second, P(conflict) ~ 1 - exp(-2N/INTERVAL x window). Printed for each
   N from the measured window (the mean of coordinate's and settle's p50), next to what part 2 saw.
4. **The claim script of the design proposed for 1,000 hosts** (see the notes): its Redis CPU per
   call against N live claims, and what N hosts' ticks would cost Redis at that rate.

What the figures leave out: the network (loopback here, ~0.1 ms per round trip; a LAN adds ~0.2-0.5
ms per round trip: 3 per tick), the probe and systemd's part of a tick (bench.tick_budget), and
Redis' other load (Dramatiq's own traffic on the same server).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from dramactl import share  # noqa: E402
from dramactl.settings import parse  # noqa: E402
from dramactl.state import HISTORY_SECONDS  # noqa: E402
from dramactl.stats import FleetBacklog  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402


def settings_for(server: RedisServer, interval: int):
    return parse({**server.env, "FLEET_NAME": "bench", "MIN_PROCESSES": "1", "MAX_PROCESSES": "8", "CHECK_INTERVAL": str(interval), "WORKER_THREADS": "4"})


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(p / 100 * len(ordered))) - 1)]


def seed(client: redis.Redis, settings, n: int) -> None:
    """N live hosts (each one real coordinate + settle) and an hour of fleet history."""
    client.flushall()
    backlog = FleetBacklog(ready=50 * n)
    for i in range(n):
        view = share.coordinate(client, settings, backlog, up=2, starting=0, occupying=2, name=f"{i:032x}", label=f"host{i}")
        share.settle(client, settings, claim=view.decision.target, up=view.decision.target, name=f"{i:032x}")
    seconds, _ = client.time()
    records = [
        {"at": seconds - HISTORY_SECONDS + 5 * k, "backlog": 100, "workers": 2 * n, "target": 2 * n, "done": 10.0 * k, "busy": 5.0 * k, "startup": 2.5, "duration": 0.2}
        for k in range(share.HISTORY_RECORDS)
    ]
    share.write_history(client, settings, records)


def commandstats(client: redis.Redis) -> dict[str, tuple[int, float]]:
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in client.info("commandstats").items()}


def window(client: redis.Redis, settings, n: int, runs: int) -> dict:
    """Part 1: one host's coordinate and settle alone, against N hosts."""
    backlog = FleetBacklog(ready=50 * n)
    me = f"{0:032x}"
    coord, sett = [], []
    client.config_resetstat()
    for _ in range(runs):
        t = time.perf_counter()
        view = share.coordinate(client, settings, backlog, up=2, starting=0, occupying=2, name=me, label="host0")
        coord.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        share.settle(client, settings, claim=view.decision.target, up=view.decision.target, name=me)
        sett.append((time.perf_counter() - t) * 1e3)
    stats = commandstats(client)
    redis_us = sum(us for calls, us in stats.values()) / runs
    size = sum(len(k) + len(v) for k, v in client.hgetall(share.fleet_key(settings)).items())
    return {"coord50": pct(coord, 50), "coord99": pct(coord, 99), "settle50": pct(sett, 50), "settle99": pct(sett, 99), "redis_us": redis_us, "bytes": size}


def contention(server: RedisServer, settings, n: int, seconds: float, interval: float, threads: int) -> dict:
    """Part 2: N hosts ticking every ``interval`` s at random phases, for ``seconds``."""
    attempts = {"n": 0}
    lock = threading.Lock()
    original = redis.client.Pipeline.watch

    def counted(self, *names):
        with lock:
            attempts["n"] += 1
        return original(self, *names)

    redis.client.Pipeline.watch = counted
    pool = redis.ConnectionPool(host="127.0.0.1", port=server.port, max_connections=threads + 4)
    backlog = FleetBacklog(ready=50 * n)
    durations: list[float] = []
    lags: list[float] = []
    exhausted = {"n": 0}
    start = time.monotonic() + 0.5
    due = sorted((start + random.uniform(0, interval), i) for i in range(n))
    schedule: list[tuple[float, int]] = []
    end = start + seconds
    for first, i in due:
        t = first
        while t < end:
            schedule.append((t, i))
            t += interval
    schedule.sort()

    def tick(at: float, i: int) -> None:
        client = redis.Redis(connection_pool=pool)
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lag = max(0.0, -delay) * 1e3
        t = time.perf_counter()
        try:
            view = share.coordinate(client, settings, backlog, up=2, starting=0, occupying=2, name=f"{i:032x}", label=f"host{i}")
            share.settle(client, settings, claim=view.decision.target, up=view.decision.target, name=f"{i:032x}")
        except share.Contention:
            with lock:
                exhausted["n"] += 1
        with lock:
            durations.append((time.perf_counter() - t) * 1e3)
            lags.append(lag)

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            list(ex.map(lambda s: tick(*s), schedule))
    finally:
        redis.client.Pipeline.watch = original
    ticks = len(schedule)
    return {
        "ticks": ticks, "asked": n / interval, "lag99": pct(lags, 99),
        "retries": (attempts["n"] - 2 * ticks) / max(ticks, 1), "exhausted": exhausted["n"],
        "p50": pct(durations, 50), "p99": pct(durations, 99),
    }


# Part 4: the claim step of the design proposed for 1,000 hosts (docs: "The design for 1,000
# hosts"), as a script: the room under the target and cap from every live claim, this host's
# grant written, in one call, no WATCH. Not used by dramactl; measured to size that design.
CLAIM = """
local now = tonumber(redis.call('TIME')[1])
local me, want, up, target, cap, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local flat = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #flat, 2 do
  if flat[i] ~= me then
    local claim, expires = string.match(flat[i + 1], '^(%d+) (%d+)$')
    if claim and tonumber(expires) > now then others = others + tonumber(claim) end
  end
end
local grant = want
if want > up then grant = up + math.max(0, math.min(want - up, math.min(target, cap) - others)) end
redis.call('HSET', KEYS[1], me, grant .. ' ' .. (now + ttl))
return grant
"""


def claim_cost(client: redis.Redis, n: int, runs: int) -> tuple[float, float]:
    """(µs of Redis CPU per call, ms per call from Python) of CLAIM against N live claims."""
    key = "bench:claims"
    client.delete(key)
    seconds, _ = client.time()
    client.hset(key, mapping={f"{i:032x}": f"2 {seconds + 600}" for i in range(n)})
    script = client.register_script(CLAIM)
    client.config_resetstat()
    t = time.perf_counter()
    for k in range(runs):
        script(keys=[key], args=[f"{k % n:032x}", 3, 2, 2 * n, 2 * n, 75])
    wall = (time.perf_counter() - t) * 1e3 / runs
    stats = commandstats(client)
    return sum(us for calls, us in stats.values()) / runs, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--runs", type=int, default=60)
    args = ap.parse_args()
    server = RedisServer()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        settings = settings_for(server, args.interval)
        print(f"fleet coordination, CHECK_INTERVAL={args.interval}s, Redis {client.info('server')['redis_version']} on loopback")
        print(f"{'hosts':>6} {'hash KB':>8} {'coord p50/p99 ms':>17} {'settle p50/p99':>15} {'Redis us/tick':>13} "
              f"{'ticks/s':>7} {'start lag p99 ms':>16} {'retries/tick':>12} {'exhausted':>9} {'tick p50/p99 ms':>16} {'P(conflict) model':>17}")
        for n in (int(x) for x in args.hosts.split(",")):
            seed(client, settings, n)
            w = window(client, settings, n, args.runs)
            c = contention(server, settings, n, args.seconds, args.interval, args.threads)
            rate = 2 * n / args.interval
            model = 1 - math.exp(-rate * (w["coord50"] + w["settle50"]) / 2 / 1e3)
            print(f"{n:>6} {w['bytes'] / 1024:>8.1f} {w['coord50']:>8.2f}/{w['coord99']:<8.2f} {w['settle50']:>6.2f}/{w['settle99']:<8.2f} {w['redis_us']:>13.0f} "
                  f"{c['asked']:>7.1f} {c['lag99']:>16.1f} {c['retries']:>12.3f} {c['exhausted']:>9} {c['p50']:>7.1f}/{c['p99']:<8.1f} {model:>17.3f}")
        print("\nthe proposed claim script (not used by dramactl): one call per tick, no WATCH")
        print(f"{'hosts':>6} {'Redis us/call':>13} {'ms/call':>8} {'Redis CPU at N/interval calls/s':>32}")
        for n in (int(x) for x in args.hosts.split(",")):
            us, wall = claim_cost(client, n, args.runs * 5)
            print(f"{n:>6} {us:>13.0f} {wall:>8.2f} {us * n / args.interval / 1e6:>31.1%}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
