"""``python -m bench``: every trace x every policy x several seeds, the table, then the targets.

Exit status 0 when every target passes, 1 otherwise. ``--intervals 10,15,30,180``
instead compares dramactl's default policy at several CHECK_INTERVALs.
"""

from __future__ import annotations

import argparse
import sys
import time

from .policies import lineup
from dramactl.settings import SettingsError
from .report import summarize, table, verdicts
from dramactl.sim.simulator import RunResult, WorkerModel, Workload, simulate
from .traces import Trace, standard

RECOMMENDED_INTERVAL = 15  # the CHECK_INTERVAL this benchmark recommends for POLICY=default
SEEDS = (1, 2, 3)


def run_trace(trace: Trace, seed: int, interval: int = RECOMMENDED_INTERVAL, overrides: dict[str, str] | None = None) -> list[RunResult]:
    """Every policy on one trace and seed, in lineup order; same seed, same results."""
    workload = Workload.draw(trace, WorkerModel(), seed)
    specs = lineup(interval, overrides, max_workers=trace.max_workers, threads=workload.model.threads)
    return [
        simulate(workload, spec.make(workload), policy=spec.name, interval=spec.interval, initial_workers=spec.initial_workers, min_workers=1, victim=spec.victim)
        for spec in specs
    ]


def run(seeds: tuple[int, ...] = SEEDS, interval: int = RECOMMENDED_INTERVAL, overrides: dict[str, str] | None = None) -> list[RunResult]:
    return [r for trace in standard() for seed in seeds for r in run_trace(trace, seed, interval, overrides)]


def report(seeds: tuple[int, ...], interval: int, overrides: dict[str, str]) -> tuple[str, bool]:
    """The header, table and target lines; and whether every target passed."""
    model = WorkerModel()
    results = run(seeds, interval, overrides)
    traces = standard()
    lines = [
        f"dramactl bench, seeds {','.join(map(str, seeds))} (means; spread = min-max over seeds): {model.threads} threads/worker, "
        f"prefetch {model.prefetch}, lognormal service mean {model.mean_service:g}s cv {model.service_cv:g}, "
        f"start-up {model.startup_low:g}-{model.startup_high:g}s; MIN 1, MAX 10, unless a trace says otherwise",
        *(f"  {t.name}{' (steady)' if t.steady else ' (low rate)' if t.low_rate else ''}: {t.about}" for t in traces),
        *([f"  dramactl settings: {', '.join(f'{k}={v}' for k, v in overrides.items())}"] if overrides else []),
        "policies: step = POLICY=step at CHECK_INTERVAL=180 (baseline); hpa/keda = HPA default behaviour on the same",
        "  backlog and per-worker target (threads); static MAX = MAX always; clairvoyant = knows every arrival and service",
        "  time; causal reference = MAX within 1 s of a message waiting, 90 s after, and 45 s ahead of every block that",
        f"  three earlier ones predict (bench/policies.py); dramactl = POLICY=default at CHECK_INTERVAL={interval}. Ticks",
        "  take time (starts wait for READY, stops for the drain); runs go on until every message is served",
        "  and the fleet has not acted for 600 s (its stops after the work are counted).",
        "flap/h: actions undone by an opposite action within the next two ticks, per hour. Scale-downs stop the least busy",
        "  instance (dramactl's rule; hpa/keda: a random one); discard s = task-seconds cut off by scale-downs and redone",
        "  (python -m bench.victim_rules).",
        "",
        table(results),
        "x bound: worker-seconds / lower bound MIN x H + Q(H) / threads, Q(H) the work left at the trace's end H in a",
        "  fluid queue drained at MIN x threads (dramactl/sim/bound.py proves no policy can go under it).",
        "",
    ]
    checks = verdicts(results, results[-1].policy, [t.name for t in traces if t.steady], [t.name for t in traces if t.low_rate], interval)
    lines += [str(v) for v in checks]
    return "\n".join(lines), all(v.passed is not False for v in checks)


def sweep(seeds: tuple[int, ...], intervals: list[int], overrides: dict[str, str]) -> str:
    """dramactl's default policy per CHECK_INTERVAL: p95 wait, x bound, actions/h per trace."""
    lines = []
    for interval in intervals:
        results = run(seeds, interval, overrides)
        mine = [s for s in summarize(results).values() if s.policy == results[-1].policy]
        traces = standard()
        checks = [v for v in verdicts(results, results[-1].policy, [t.name for t in traces if t.steady], [t.name for t in traces if t.low_rate], interval) if v.passed is not None]
        cells = "  ".join(f"{s.trace} {s.p95:5.1f}s x{s.ratio:.2f} {s.actions_per_hour:4.1f}/h" for s in mine)
        lines.append(f"CHECK_INTERVAL={interval:<4} {cells}  targets {sum(v.passed for v in checks)}/{len(checks)}")
    return "\n".join(lines)


# The settings --set may change: those of dramactl's default policy that the simulator models alike
# for it and its workers. The fleet's shape (MIN/MAX_PROCESSES, WORKER_THREADS) is each trace's, for
# every policy and for the simulated workers: set through --set it reached dramactl's policy only,
# which sized 4-thread workers while the simulator ran 8-thread ones (ramp's p95 1135 s).
# CHECK_INTERVAL is --interval's; POLICY is the lineup's; GRACEFUL_SHUTDOWN_TIMEOUT is the
# simulator's grace for every policy.
POLICY_SETTINGS = ("MAX_QUEUE_WAIT", "SCALE_DOWN_STABILIZATION", "MAX_SCALE_UP_STEP", "MAX_SCALE_DOWN_STEP", "TARGET_BACKLOG_PER_WORKER")


def settings_for_dramactl(parser: argparse.ArgumentParser, items: list[str], interval: int) -> dict[str, str]:
    """``--set NAME=VALUE`` items as dramactl's settings, or one line naming the bad one (exit 2),
    checked as every trace's lineup reads them (its MAX_PROCESSES and threads)."""
    overrides: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set {item!r}: write NAME=VALUE, for example --set SCALE_DOWN_STABILIZATION=300")
        if name not in POLICY_SETTINGS:
            parser.error(f"--set {name}: not a setting the bench varies; use one of {', '.join(POLICY_SETTINGS)} "
                         "(each trace sets MIN/MAX_PROCESSES and WORKER_THREADS; --interval sets CHECK_INTERVAL)")
        overrides[name] = value
    for trace in standard():
        try:
            lineup(interval, overrides, max_workers=trace.max_workers, threads=dict(trace.model).get("threads", WorkerModel.threads))
        except SettingsError as exc:
            parser.error(f"--set {exc} (on {trace.name}, MAX_PROCESSES={trace.max_workers})")
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds for arrivals, service and start-up times")
    parser.add_argument("--interval", type=int, default=RECOMMENDED_INTERVAL, help="dramactl default policy's CHECK_INTERVAL")
    parser.add_argument("--intervals", help="comma-separated CHECK_INTERVALs to compare instead of the table")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for dramactl's default policy")
    args = parser.parse_args(argv)
    overrides = settings_for_dramactl(parser, args.set, args.interval)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    began = time.monotonic()
    if args.intervals:
        print(sweep(seeds, [int(i) for i in args.intervals.split(",")], overrides))
        ok = True
    else:
        text, ok = report(seeds, args.interval, overrides)
        print(text)
    print(f"\n({time.monotonic() - began:.1f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
