"""``python -m bench``: every trace x every policy, the table, then the targets.

Exit status 0 when every target passes, 1 otherwise. ``--intervals 10,15,30,180``
instead compares dramactl's default policy at several CHECK_INTERVALs.
"""

from __future__ import annotations

import argparse
import sys
import time

from .policies import lineup
from .report import table, verdicts
from .simulator import RunResult, WorkerModel, Workload, simulate
from .traces import standard

RECOMMENDED_INTERVAL = 15  # the CHECK_INTERVAL this benchmark recommends for POLICY=default


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


def report(seed: int, interval: int, overrides: dict[str, str]) -> tuple[str, bool]:
    """The header, table and target lines; and whether every target passed."""
    model = WorkerModel()
    results = run(seed, interval, model, overrides)
    lines = [
        f"dramactl bench, seed {seed}: {model.threads} threads/worker, prefetch {model.prefetch}, lognormal service "
        f"mean {model.mean_service:g}s cv {model.service_cv:g}, start-up {model.startup_low:g}-{model.startup_high:g}s; "
        "MIN 1, MAX 10",
        *(f"  {t.name}: {t.about}" for t in standard()),
        *([f"  dramactl settings: {', '.join(f'{k}={v}' for k, v in overrides.items())}"] if overrides else []),
        "policies: step = POLICY=step at CHECK_INTERVAL=180 (baseline); hpa/keda = HPA default behaviour on the same",
        f"  backlog and per-worker target ({model.threads}); static MAX = 10 always; dramactl = POLICY=default at CHECK_INTERVAL={interval}",
        "",
        table(results),
        "x bound: worker-seconds / fluid lower bound, the integral of max(MIN, rate x mean service / threads); blocks",
        "  count as served on arrival, so on burst and spike-idle a policy that lets them queue can come in under it.",
        "",
    ]
    checks = verdicts(results, results[-1].policy)
    lines += [str(v) for v in checks]
    return "\n".join(lines), all(v.passed for v in checks)


def sweep(seed: int, intervals: list[int], overrides: dict[str, str]) -> str:
    """dramactl's default policy per CHECK_INTERVAL: p95 wait, x bound, actions per trace."""
    lines = []
    for interval in intervals:
        results = run(seed, interval, overrides=overrides)
        mine = [r for r in results if r.policy == results[-1].policy]
        passed = sum(v.passed for v in verdicts(results, results[-1].policy))
        cells = "  ".join(f"{r.trace} {r.p95:5.1f}s x{r.ratio:.2f} {r.actions:3d}" for r in mine)
        lines.append(f"CHECK_INTERVAL={interval:<4} {cells}  targets {passed}/8")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="seed for arrivals, service and start-up times")
    parser.add_argument("--interval", type=int, default=RECOMMENDED_INTERVAL, help="dramactl default policy's CHECK_INTERVAL")
    parser.add_argument("--intervals", help="comma-separated CHECK_INTERVALs to compare instead of the table")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for dramactl's default policy")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    began = time.monotonic()
    if args.intervals:
        print(sweep(args.seed, [int(i) for i in args.intervals.split(",")], overrides))
        ok = True
    else:
        text, ok = report(args.seed, args.interval, overrides)
        print(text)
    print(f"\n({time.monotonic() - began:.1f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
