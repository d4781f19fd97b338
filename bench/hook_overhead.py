"""Throughput cost of the worker hook's work report, on 5 ms messages (or ``--service``).

``python -m bench.hook_overhead [--messages 3000] [--rounds 16] [--threads 8] [--service 0.005]``
starts its own redis-server on a free loopback port and runs a real Dramatiq ``Worker`` on
``--messages`` messages of an actor that sleeps ``--service`` seconds, once without and once
with the :class:`WorkReporter` middleware, alternating the order round by round (ABBA) so
both see the same machine load. The reporter runs as in an instance (``DRAMACTL_INSTANCE``
set, as ``dramactl worker-exec`` sets it): its report, its read of the intake pause and
its fetch wrapper are all on. With ``--service 1`` or more the reporter's gate
(:class:`FreeThreads`) fetches only for free threads: the cost measured is then also a
freed thread's wait for its next message. Throughput is messages / seconds from the
worker's start to the last completion. Prints each round, the medians, the mean of the rounds' paired
overheads with its 95 % interval, and a PASS/FAIL line against the budget: the median throughput with the
reporter >= 99 % of the median without.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dramatiq  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402

from tests.conftest import RedisServer  # noqa: E402

BUDGET = 0.99


def hook_module():
    dramatiq.set_broker(StubBroker())  # its import installs itself on the current broker
    sys.path.insert(0, str(REPO / "dramactl" / "hook"))
    return importlib.import_module("dramactl_ready")


def one_run(port: int, messages: int, threads: int, reporter, service: float) -> float:
    """Messages per second through a real worker, with ``reporter`` (or none) installed."""
    broker = RedisBroker(host="127.0.0.1", port=port, namespace=f"bench{time.monotonic_ns()}")
    if reporter is not None:
        broker.add_middleware(reporter)
    dramatiq.set_broker(broker)
    done = [0]
    lock = threading.Lock()
    finished = threading.Event()
    last = [0.0]

    @dramatiq.actor(queue_name="overhead", max_retries=0, broker=broker)
    def work() -> None:
        time.sleep(service)
        with lock:
            done[0] += 1
            if done[0] == messages:
                last[0] = time.perf_counter()
                finished.set()

    pipe_messages = [work.message() for _ in range(messages)]
    for m in pipe_messages:
        broker.enqueue(m)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    began = time.perf_counter()
    worker.start()
    finished.wait(600)
    worker.stop()
    broker.client.flushdb()
    broker.close()
    return messages / (last[0] - began)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--service", type=float, default=0.005, help="seconds each message sleeps")
    args = ap.parse_args(argv)
    os.environ.setdefault("DRAMACTL_INSTANCE", "1")  # as `dramactl worker-exec N` sets it: the report, the pause, the fetch wrapper
    hook = hook_module()
    server = RedisServer()
    try:
        version = server.client.info("server")["redis_version"]
        print(f"hook overhead: {args.messages} messages of {args.service * 1000:g} ms per run, 1 worker x {args.threads} threads, "
              f"redis-server {version} on loopback; {args.rounds} rounds, order alternating")
        one_run(server.port, min(500, args.messages), args.threads, None, args.service)  # warm-up: imports, connections
        without, with_ = [], []
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for use in order:
                rate = one_run(server.port, args.messages, args.threads, hook.WorkReporter() if use else None, args.service)
                (with_ if use else without).append(rate)
            print(f"  round {r + 1}: without {without[-1]:7.1f} msg/s   with {with_[-1]:7.1f} msg/s")
        a, b = statistics.median(without), statistics.median(with_)
        ratio = b / a
        print(f"median: without {a:.1f} msg/s, with {b:.1f} msg/s: {ratio * 100:.2f} % ({(1 - ratio) * 100:+.2f} % overhead)")
        if args.rounds >= 2:
            # Each round's pair ran back to back: the overhead per round, its mean and the mean's 95 % interval
            # (normal approximation) say how far the figure can be trusted at this machine's noise.
            paired = [100.0 * (1.0 - w / o) for o, w in zip(without, with_)]
            mean, half = statistics.fmean(paired), 1.96 * statistics.stdev(paired) / len(paired) ** 0.5
            print(f"paired by round: overhead {mean:+.2f} % on average, 95 % interval {mean - half:+.2f} .. {mean + half:+.2f} %")
        ok = ratio >= BUDGET
        print(f"{'PASS' if ok else 'FAIL'}  work report overhead {(1 - ratio) * 100:.2f} % <= {(1 - BUDGET) * 100:g} % of throughput on {args.service * 1000:g} ms messages")
        return 0 if ok else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
