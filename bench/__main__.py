"""``python -m bench``: every trace x every policy, the table, then the targets.

Exit status 0 when every target passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from .policies import lineup
from .report import table, verdicts
from .simulator import RunResult, WorkerModel, Workload, simulate
from .traces import standard

RECOMMENDED_INTERVAL = 15


def run(
    seed: int = 1,
    interval: int = RECOMMENDED_INTERVAL,
    model: WorkerModel | None = None,
    overrides: dict[str, str] | None = None,
) -> list[RunResult]:
    """All runs, trace by trace, in lineup order; same seed, same results."""
    model = model or WorkerModel()
    results = []
    for trace in standard():
        workload = Workload.draw(trace, model, seed)
        for spec in lineup(interval, overrides):
            results.append(simulate(
                workload, spec.make(), policy=spec.name, interval=spec.interval,
                initial_workers=spec.initial_workers, min_workers=1,
            ))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="seed for arrivals, service and start-up times")
    parser.add_argument("--interval", type=int, default=RECOMMENDED_INTERVAL, help="dramactl default policy's CHECK_INTERVAL")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a dramactl setting for the default policy")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    began = time.monotonic()
    model = WorkerModel()
    results = run(args.seed, args.interval, model, overrides)
    print(
        f"dramactl bench: seed {args.seed}; {model.threads} threads/worker, lognormal service mean {model.mean_service:g}s "
        f"cv {model.service_cv:g}, start-up {model.startup_low:g}-{model.startup_high:g}s; MIN 1, MAX 10"
    )
    for trace in standard():
        print(f"  {trace.name}: {trace.about}")
    print()
    print(table(results))
    print()
    default = results[-1].policy
    checks = verdicts(results, default)
    for v in checks:
        print(v)
    print(f"\n({time.monotonic() - began:.1f}s)")
    return 0 if all(v.passed for v in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
