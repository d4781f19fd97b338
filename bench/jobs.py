"""``python -m bench.jobs``: a job every minute, which ``python -m bench`` does not ship.

A block of messages every 60 to 66 s (a cron job each minute) is too frequent for the
three-block rule of :mod:`dramactl.recurring` (at a 15 s tick its period must exceed two
tolerances, 60 s), so without more each job's backlog grew the fleet and each drain
released it: two actions a job, about 120 an hour. A backlog that comes back within
SCALE_DOWN_STABILIZATION keeps its fleet (:func:`dramactl.calm.returning_backlog`); and
blocks that come as a stream, more often than the rate's window, are batches of one rate,
staffed for with their size in its noise (:mod:`dramactl.rates`), not drained one by one.
dramactl's default policy beside HPA/KEDA's control law, seeds 1,2,3 (means), held to
issue 20's calm target (actions/h <= 2 x HPA's, HPA counted as at least 4/h). Exit status
0 when it passes on every family; ``tests/unit/test_returning_backlogs.py`` runs a
CI-sized one.
"""

from __future__ import annotations

import sys
from statistics import fmean as mean

from .long_tasks import SEEDS, calm, runs
from .report import seeds_main
from .traces import periodic

PERIODS = (60.0, 62.0, 66.0)  # a minute, and periods a tick's 15 s does not divide


def report(seeds: tuple[int, ...] = SEEDS) -> tuple[str, bool]:
    head = f"{'family':<10} {'policy':<10} {'p95 s':>6} {'worker-s':>9} {'act/h':>6} {'flap/h':>7}"
    lines = [f"a job every minute: 120 msgs every 60-66 s on 0.5/s, seeds {','.join(map(str, seeds))} (means)", "", head, "-" * len(head)]
    checks = []
    for every in PERIODS:
        trace = periodic(count=120, every=every)
        name = f"job-{every:g}s"
        r = runs(trace, seeds)
        for policy in ("dramactl", "hpa/keda"):
            xs = r[policy]
            lines.append(f"{name:<10} {policy:<10} {mean([x.p95 for x in xs]):>6.1f} {mean([x.worker_seconds for x in xs]):>9.0f} "
                         f"{mean([x.actions_per_hour for x in xs]):>6.1f} {mean([x.flaps_per_hour for x in xs]):>7.1f}")
        checks.append(calm(name, r))
    lines += ["", *map(str, checks)]
    return "\n".join(lines), all(c.passed for c in checks)


def main(argv: list[str] | None = None) -> int:
    return seeds_main("python -m bench.jobs", __doc__, report, SEEDS, argv)


if __name__ == "__main__":
    sys.exit(main())
