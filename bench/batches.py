"""``python -m bench.batches``: messages sent in batches, which ``python -m bench`` does not ship.

A producer that sends ten messages at once (a request that fans out into ten tasks), a
batch every 40 s on average at Poisson times, of 10 s tasks on workers of one or two
threads; and five at once every 20 s of 4 s tasks. :mod:`dramactl.rates` took each
batch for a block (a backlog to drain, not a rate to staff for: the median rate of the
window before it is 0, so ten at once is a surge) and cut the rate's window after it
(the step test counted ten messages as ten independent arrivals): the arrival rate read
0 in most ticks while 0.25 messages/s arrived, every batch grew the fleet for its drain
and the next ticks released it (78.3 and 79.0 actions/h against 18.0 and 41.3). Batches
are a rate now, their size in its noise (docs/policy.md, "Messages in batches are a
rate"). dramactl's default policy beside HPA/KEDA's control law, seeds 1,2,3 (means),
held to issue 20's calm target (actions/h <= 2 x HPA's, HPA counted as at least 4/h) and
to not being dominated by HPA/KEDA. Exit status 0 when every family passes;
``tests/unit/test_batches.py`` runs a CI-sized one.
"""

from __future__ import annotations

import random
import sys
from statistics import fmean as mean

from dramactl.sim.traces import Trace

from .long_tasks import SEEDS, calm, not_dominated, runs
from .report import seeds_main

SCHEDULE_SEED = 7  # the batches' times are drawn once, so every run seed sees the same schedule


def batches(size: int, gap: float, service: float, threads: int, duration: float = 3600.0) -> Trace:
    """``size`` messages at once at Poisson times ``gap`` seconds apart on average, of
    ``service``-second tasks on ``threads``-thread workers; nothing between batches."""
    rng, at, blocks = random.Random(SCHEDULE_SEED), 0.0, []
    while True:
        at += rng.expovariate(1.0 / gap)
        if at >= duration:
            break
        blocks.append((round(at, 3), size))
    return Trace(f"{size}x-{gap:g}s-{service:g}s-{threads}t", duration, lambda t: 0.0, 0.0, tuple(blocks),
                 about=f"{size} at once every {gap:g}s (Poisson) of {service:g}s tasks on {threads}-thread workers",
                 model=(("mean_service", service), ("threads", threads), ("prefetch", 2 * threads)))


FAMILIES = ((10, 40.0, 10.0, 1), (10, 40.0, 10.0, 2), (5, 20.0, 4.0, 2))


def report(seeds: tuple[int, ...] = SEEDS) -> tuple[str, bool]:
    head = f"{'family':<18} {'policy':<10} {'p95 s':>6} {'worker-s':>9} {'act/h':>6} {'flap/h':>7}"
    lines = [f"messages in batches, seeds {','.join(map(str, seeds))} (means)", "", head, "-" * len(head)]
    checks = []
    for family in FAMILIES:
        trace = batches(*family)
        r = runs(trace, seeds)
        for policy in ("dramactl", "hpa/keda"):
            xs = r[policy]
            lines.append(f"{trace.name:<18} {policy:<10} {mean([x.p95 for x in xs]):>6.1f} {mean([x.worker_seconds for x in xs]):>9.0f} "
                         f"{mean([x.actions_per_hour for x in xs]):>6.1f} {mean([x.flaps_per_hour for x in xs]):>7.1f}")
        checks += [calm(trace.name, r), not_dominated(trace.name, r)]
    lines += ["", *map(str, checks)]
    return "\n".join(lines), all(c.passed for c in checks)


def main(argv: list[str] | None = None) -> int:
    return seeds_main("python -m bench.batches", __doc__, report, SEEDS, argv)


if __name__ == "__main__":
    sys.exit(main())
