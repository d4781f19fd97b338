"""Redis server time of one queue probe, by delay-queue size.

``python -m bench.probe_time [--runs N] [--sizes 0,5000,50000] [--body 4096]``
starts its own redis-server on a free loopback port, fills one queue with that many
delayed messages of about ``--body`` bytes each (Dramatiq's JSON, a quarter of them
due, each with a decoy ``eta=1`` kwarg), runs the probe ``--runs`` times per size and
prints the server time per call from ``INFO commandstats`` (cmdstat_evalsha, after
CONFIG RESETSTAT) and from the SLOWLOG (every call logged), the due figures against
the exact count, and a PASS/FAIL line per size against the budget: at most 5 ms of
server time per queue. Exit status 0 when every size passes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dramatiq import Message  # noqa: E402

from dramactl import queue  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402

BUDGET_MS = 5.0
NAMESPACE = "dramatiq"
QUEUE = "bench"


def fill(client, count: int, body_bytes: int, now_ms: int) -> int:
    """``count`` delayed messages in Dramatiq's shape (HSET + RPUSH, pipelined); returns how many are due."""
    delayed = f"{NAMESPACE}:{QUEUE}.DQ"
    client.delete(delayed, f"{delayed}.msgs")
    due = 0
    pipe = client.pipeline(transaction=False)
    payload = "x" * max(0, body_bytes - 300)  # the envelope is about 300 bytes
    for i in range(count):
        is_due = i % 4 == 0
        due += is_due
        mid = str(uuid.uuid4())
        eta = now_ms - 1000 if is_due else now_ms + 3_600_000
        body = Message(
            queue_name=f"{QUEUE}.DQ", actor_name="work", args=(payload,), kwargs={"eta": 1}, options={"eta": eta, "redis_message_id": mid}
        ).encode()
        pipe.hset(f"{delayed}.msgs", mid, body)
        pipe.rpush(delayed, mid)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return due


def measure(client, runs: int) -> tuple[float, list[float], list[int]]:
    """(commandstats usec per call, slowlog durations in usec, due figures) over ``runs`` probes."""
    queue.probe(client, NAMESPACE, [QUEUE])  # loads the script: EVALSHA from here on
    client.config_resetstat()
    client.slowlog_reset()
    dues = []
    for _ in range(runs):
        raw = queue.probe(client, NAMESPACE, [QUEUE])
        dues.append(queue.parse_probe([QUEUE], raw)[0].due)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    calls = stats.get("calls", 0)
    slow = [e["duration"] for e in client.slowlog_get(100_000) if e["command"].split(b" ")[0].upper() == b"EVALSHA"]
    return (stats.get("usec", 0) / calls if calls else float("nan")), slow, dues


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--sizes", default="0,5000,50000")
    ap.add_argument("--body", type=int, default=4096, help="bytes per message body")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    server = RedisServer()
    try:
        client = server.client
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)  # commands inside the script are logged too
        version = client.info("server")["redis_version"]
        print(
            f"dramactl probe, one queue: delayed messages of ~{args.body} B (a quarter due), {args.runs} probes per size; "
            f"redis-server {version} on 127.0.0.1:{server.port}; exact due count up to {queue.EXACT_DUE_LIMIT}, "
            f"else a sample of {queue.DUE_SAMPLE}"
        )
        print(f"{'delayed':>8} {'fill s':>7} {'usec/call':>10} {'slowlog p50':>12} {'slowlog max':>12} {'exact due':>10} {'due: mean':>10} {'min':>7} {'max':>7}")
        verdicts = []
        for size in sizes:
            t0 = time.monotonic()
            exact = fill(client, size, args.body, int(time.time() * 1000))
            filled = time.monotonic() - t0
            per_call, slow, dues = measure(client, args.runs)
            p50 = statistics.median(slow) if slow else float("nan")
            worst = max(slow) if slow else float("nan")
            print(f"{size:>8} {filled:>7.1f} {per_call:>10.0f} {p50:>12.0f} {worst:>12.0f} {exact:>10} {statistics.mean(dues):>10.0f} {min(dues):>7} {max(dues):>7}")
            ok = per_call <= BUDGET_MS * 1000
            verdicts.append(f"{'PASS' if ok else 'FAIL'}  {size} delayed: {per_call / 1000:.2f} ms per probe (commandstats) <= {BUDGET_MS:g} ms per queue")
        print()
        for line in verdicts:
            print(line)
        return 0 if all(v.startswith("PASS") for v in verdicts) else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
