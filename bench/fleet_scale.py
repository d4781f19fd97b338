"""What coordinating a fleet costs per tick as the number of hosts grows, and whether any tick gives up.

Run: ``python -m bench.fleet_scale [--hosts 10,100,1000] [--seconds 20] [--interval 15] [--procs 2]``
(needs Debian's redis-server; starts its own on a free loopback port).

1,000 dramactl processes do not fit a 2-core machine, so it measures the parts and combines them:

1. **One tick alone**: one host's ``share.coordinate`` (the real code path: Redis' clock and the
   fleet's hash in one round trip, parsing and validating every heartbeat, the decision or its
   reuse, the claim script, the heartbeat write) and ``share.settle``, timed alone against a
   fleet of N live hosts with a full hour of history (720 records): ticks that reuse the
   fleet's decision (most ticks), and ticks that find it stale, read the history, decide and
   publish (about one per half interval in the whole fleet). p50 / p99 in ms, the hash's size,
   Redis' own time per tick of each kind (SLOWLOG at a threshold of 0: microseconds spent in
   the commands one tick sends, scripts included), and the p99 and the longest of a single
   command (wall time in Redis: on a shared machine the longest includes being descheduled).
2. **N hosts ticking**: N hosts as lightweight tasks (``--procs`` processes, each a pool of
   threads; each task one host ticking every INTERVAL seconds at its own phase, coordinate then
   settle, as ``dramactl tick`` does) driving the real code for ``--seconds``; counts ticks that
   raised (gave up), decisions published and publications lost to another host's (that host
   applies the winner's), the most instances the hosts' claims ever added up to (sampled) against
   the cap, and p50 / p99 of a tick. Where the processes cannot keep up (tasks share an
   interpreter), ticks start late: the p99 of that lag is printed, and a tick's own figures then
   include waiting for the interpreter, which N separate hosts would not.
3. **The claim script** (dramactl.claims.CLAIM) against N live claims: Redis' CPU per call
   (commandstats), the p99 and the longest of its calls (SLOWLOG with a threshold of 0), and what
   N hosts' ticks cost Redis at N / INTERVAL calls a second.

What the figures leave out: the network (loopback here, ~0.1 ms per round trip; a LAN adds ~0.2-0.5
ms per round trip: 3 per tick, 5 for the host that decides), the probe and systemd's part of a
tick (bench.tick_budget), and Redis' other load (Dramatiq's own traffic on the same server).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import queue
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

from dramactl import claims, share  # noqa: E402
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
    """Part 1: one host's coordinate and settle alone, against N hosts: ``runs`` ticks that
    reuse the fleet's decision (most ticks), then ``runs`` that find it stale and decide
    (about one tick per half interval in the whole fleet)."""
    backlog = FleetBacklog(ready=50 * n)
    me = f"{0:032x}"
    out = {}
    for kind in ("reuse", "decide"):
        coord, sett = [], []
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 40 * runs)
        client.slowlog_reset()
        for _ in range(runs):
            if kind == "decide":
                client.hdel(share.fleet_key(settings), "decision")
            t = time.perf_counter()
            view = share.coordinate(client, settings, backlog, up=2, starting=0, occupying=2, name=me, label="host0")
            coord.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            share.settle(client, settings, claim=view.decision.target, up=view.decision.target, name=me)
            sett.append((time.perf_counter() - t) * 1e3)
            assert view.fresh == (kind == "decide")
        # Redis' own time for the commands the ticks sent (SLOWLOG at a threshold of 0: a
        # script's inner commands are logged from client '?:0' and are part of its own time).
        sent = [e for e in client.slowlog_get(40 * runs) if e["client_address"] != b"?:0" and e["command"].split()[0].upper() not in (b"HDEL", b"SLOWLOG", b"CONFIG")]
        client.config_set("slowlog-log-slower-than", 10000)
        out[f"{kind}_us"] = sum(e["duration"] for e in sent) / runs
        out[f"{kind}_longest"] = max(((e["duration"], e["command"].split()[0].decode()) for e in sent), default=(0, ""))
        out[f"{kind}_cmd99"] = pct([e["duration"] for e in sent], 99)
        out[f"{kind}50"], out[f"{kind}99"] = pct(coord, 50), pct(coord, 99)
        if kind == "reuse":
            out["settle50"], out["settle99"] = pct(sett, 50), pct(sett, 99)
    out["bytes"] = sum(len(k) + len(v) for k, v in client.hgetall(share.fleet_key(settings)).items())
    return out


def _hosts_part(port: int, settings, n: int, ids: list[int], start: float, seconds: float, interval: float, threads: int, out) -> None:
    """Part 2 in one process: the hosts ``ids`` ticking every ``interval`` s at random phases."""
    published = {"won": 0, "lost": 0}
    lock = threading.Lock()
    original = claims.publish

    def counted(*a, **kw):
        won, current = original(*a, **kw)
        with lock:
            published["won" if won else "lost"] += 1
        return won, current

    claims.publish = counted
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, max_connections=threads + 4)
    backlog = FleetBacklog(ready=50 * n)
    durations: list[float] = []
    lags: list[float] = []
    failed: list[str] = []
    end = start + seconds
    schedule: list[tuple[float, int]] = []
    for i in ids:
        t = start + random.uniform(0, interval)
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
        except Exception as exc:  # a tick that gives up: counted, whatever the reason
            with lock:
                failed.append(repr(exc))
        with lock:
            durations.append((time.perf_counter() - t) * 1e3)
            lags.append(lag)

    with ThreadPoolExecutor(max_workers=threads) as ex:
        list(ex.map(lambda s: tick(*s), schedule))
    out.put({"durations": durations, "lags": lags, "failed": failed, **published})


def contention(server: RedisServer, settings, n: int, seconds: float, interval: float, threads: int, procs: int) -> dict:
    """Part 2: N hosts ticking every ``interval`` s at random phases, for ``seconds``, split over
    ``procs`` processes; meanwhile the claims' sum is sampled against the cap."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.monotonic() + 0.5
    workers = [
        ctx.Process(target=_hosts_part, args=(server.port, settings, n, list(range(p, n, procs)), start, seconds, interval, threads, out))
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    peak, cap = 0, 0
    results = []
    while len(results) < procs:
        try:
            results.append(out.get(timeout=0.2))
        except queue.Empty:
            seconds_now, micros = client.time()
            now = seconds_now + micros / 1e6
            live = [claims.unpack(v) for v in client.hvals(share.claims_key(settings))]
            peak = max(peak, sum(c for c, _, _, ex in live if ex > now))
            _, _, decision, _ = share.read(client, settings)
            cap = max(cap, decision.cap if decision else 0)
    for w in workers:
        w.join()
    durations = [d for r in results for d in r["durations"]]
    lags = [d for r in results for d in r["lags"]]
    failed = [f for r in results for f in r["failed"]]
    return {
        "ticks": len(durations), "asked": n / interval, "lag99": pct(lags, 99), "failed": len(failed), "why": sorted(set(failed))[:3],
        "won": sum(r["won"] for r in results), "lost": sum(r["lost"] for r in results), "peak": peak, "cap": cap,
        "p50": pct(durations, 50), "p99": pct(durations, 99),
    }


def claim_cost(client: redis.Redis, settings, n: int, runs: int) -> tuple[float, float, float, float]:
    """(µs of Redis CPU per call, the p99 and the longest call in µs, ms per call from Python) of
    the claim script against N live claims."""
    key = share.claims_key(settings)
    client.delete(key)
    seconds, _ = client.time()
    client.hset(key, mapping={f"{i:032x}": claims.pack(2, 2, seconds, seconds + 600) for i in range(n)})
    client.config_resetstat()
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 6 * runs + 16)
    client.slowlog_reset()
    t = time.perf_counter()
    for k in range(runs):
        claims.claim(client, settings, f"{k % n:032x}", "tick", share=3, up=2, occupying=2, target=2 * n, cap=2 * n)
    wall = (time.perf_counter() - t) * 1e3 / runs
    calls_us = [e["duration"] for e in client.slowlog_get(6 * runs + 16) if e["command"].split()[0].lower() == b"evalsha"]
    client.config_set("slowlog-log-slower-than", 10000)
    stats = commandstats(client)
    calls, us = stats.get("evalsha", (runs, float("nan")))
    return us / max(calls, 1), pct(calls_us, 99), max(calls_us, default=float("nan")), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=60)
    args = ap.parse_args()
    server = RedisServer()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        settings = settings_for(server, args.interval)
        print(f"fleet coordination, CHECK_INTERVAL={args.interval}s, Redis {client.info('server')['redis_version']} on loopback, "
              f"hosts as tasks in {args.procs} processes x {args.threads} threads")
        print(f"{'hosts':>6} {'hash KB':>8} {'reuse p50/p99 ms':>17} {'decide p50/p99':>15} {'settle p50/p99':>15} {'Redis us reuse/decide':>21} {'command p99/max us':>24} "
              f"{'ticks/s':>7} {'start lag p99 ms':>16} {'gave up':>7} {'published/lost':>14} {'peak claims/cap':>15} {'tick p50/p99 ms':>16}")
        for n in (int(x) for x in args.hosts.split(",")):
            seed(client, settings, n)
            w = window(client, settings, n, args.runs)
            c = contention(server, settings, n, args.seconds, args.interval, args.threads, args.procs)
            print(f"{n:>6} {w['bytes'] / 1024:>8.1f} {w['reuse50']:>8.2f}/{w['reuse99']:<8.2f} {w['decide50']:>6.2f}/{w['decide99']:<8.2f} "
                  f"{w['settle50']:>6.2f}/{w['settle99']:<8.2f} {w['reuse_us']:>10.0f}/{w['decide_us']:<10.0f} {'%d/%d %s' % ((max(w['reuse_cmd99'], w['decide_cmd99']),) + max(w['reuse_longest'], w['decide_longest'])):>24} "
                  f"{c['asked']:>7.1f} {c['lag99']:>16.1f} {c['failed']:>7} {c['won']:>7}/{c['lost']:<6} {c['peak']:>7}/{c['cap']:<7} {c['p50']:>7.1f}/{c['p99']:<8.1f}")
            for why in c["why"]:
                print(f"       gave up: {why}")
        print("\nthe claim script (dramactl.claims.CLAIM): one call per tick, no WATCH")
        print(f"{'hosts':>6} {'Redis us/call':>13} {'p99/max us':>12} {'ms/call':>8} {'Redis CPU at N/interval calls/s':>32}")
        for n in (int(x) for x in args.hosts.split(",")):
            us, p99, longest, wall = claim_cost(client, settings, n, args.runs * 5)
            print(f"{n:>6} {us:>13.0f} {'%.0f/%.0f' % (p99, longest):>12} {wall:>8.2f} {us * n / args.interval / 1e6:>31.1%}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
