"""The comparison table (several seeds per trace, their spread) and the issue's targets as PASS/FAIL lines."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .policies import CLAIRVOYANT, REFERENCE
from dramactl.sim.simulator import RunResult

BASELINE, HPA, STATIC = "step 180s (baseline)", "hpa/keda 15s", "static MAX"


@dataclass(frozen=True)
class Summary:
    """One policy on one trace over its seeds: means, and the spread of p95 and x bound."""

    trace: str
    policy: str
    runs: tuple[RunResult, ...]

    def mean(self, attr: str) -> float:
        return statistics.fmean(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str) -> tuple[float, float]:
        values = [getattr(r, attr) for r in self.runs]
        return min(values), max(values)

    @property
    def p95(self) -> float:
        return self.mean("p95")

    @property
    def worker_seconds(self) -> float:
        return self.mean("worker_seconds")

    @property
    def ratio(self) -> float:
        return self.mean("ratio")

    @property
    def actions_per_hour(self) -> float:
        return self.mean("actions_per_hour")

    @property
    def flaps_per_hour(self) -> float:
        return self.mean("flaps_per_hour")


def summarize(results: Sequence[RunResult]) -> dict[tuple[str, str], Summary]:
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.trace, r.policy), []).append(r)
    return {k: Summary(k[0], k[1], tuple(v)) for k, v in groups.items()}


def table(results: Sequence[RunResult]) -> str:
    """One row per trace and policy (means over seeds, [min-max] spread), plus each trace's lower bound."""
    head = (f"{'trace':<11} {'policy':<21} {'p50 s':>6} {'p95 s':>6} {'p95 spread':>12} {'max s':>6} {'worker-s':>8} "
            f"{'x bound':>7} {'x spread':>11} {'peak':>4} {'act/h':>6} {'flap/h':>6} {'discard s':>9}")
    lines = [head, "-" * len(head)]
    last = None
    for (trace, policy), s in summarize(results).items():
        if trace != last:
            if last is not None:
                lines.append("")
            lines.append(f"{trace:<11} {'lower bound':<21} {'':>6} {'':>6} {'':>12} {'':>6} {s.mean('lower_bound'):>8.0f} {1.0:>7.2f}")
            last = trace
        lo, hi = s.spread("p95")
        rlo, rhi = s.spread("ratio")
        lines.append(
            f"{'':<11} {policy:<21} {s.mean('p50'):>6.1f} {s.p95:>6.1f} {f'{lo:.1f}-{hi:.1f}':>12} {s.mean('max_wait'):>6.0f} "
            f"{s.worker_seconds:>8.0f} {s.ratio:>7.2f} {f'{rlo:.2f}-{rhi:.2f}':>11} {max(r.peak_workers for r in s.runs):>4} {s.actions_per_hour:>6.1f} {s.flaps_per_hour:>6.1f} {s.mean('discarded'):>9.0f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: reported, not a target
    line: str

    def __str__(self) -> str:
        return f"{'INFO' if self.passed is None else 'PASS' if self.passed else 'FAIL'}  {self.line}"


def _dominates(a: Summary, b: Summary) -> bool:
    """a no worse than b on p95 wait and worker-seconds, strictly better on one."""
    no_worse = a.p95 <= b.p95 and a.worker_seconds <= b.worker_seconds
    return no_worse and (a.p95 < b.p95 or a.worker_seconds < b.worker_seconds)


REFERENCE_FACTOR = 1.25  # bursty traces: p95 within this of the causal reference's
STEADY_FACTOR = 1.3  # steady traces: worker-seconds within this of the lower bound
CALM_FACTOR = 2.0  # every trace: actions/h within this of HPA's ...
CALM_FLOOR = 4.0  # ... counted as at least this many an hour


def verdicts(results: Sequence[RunResult], default: str, steady: Sequence[str], low_rate: Sequence[str] = (), interval: float = 15.0) -> list[Verdict]:
    """The targets for the policy named ``default`` (means over seeds), as issue 20 states them:

    * bursty traces (neither steady nor low-rate): p95 <= 1.25 x the causal reference's
      (:class:`~bench.policies.ReferenceController`, ``python -m bench.oracle``);
    * steady traces: worker-seconds <= 1.3 x the lower bound (dramactl/sim/bound.py);
    * low-rate traces: p95 <= HPA's + one tick, at <= HPA's worker-seconds;
    * every trace: not dominated by HPA; actions/h <= 2 x HPA's (HPA counted as at least 4/h);
      no instance stopped within its start-up of being started (before its READY=1).
    """
    by = summarize(results)
    traces = list(dict.fromkeys(r.trace for r in results))
    out: list[Verdict] = []
    for t in traces:
        if t not in steady and t not in low_rate:
            d, ref = by[t, default], by[t, REFERENCE]
            limit = REFERENCE_FACTOR * ref.p95
            out.append(Verdict(d.p95 <= limit, f"{t}: p95 wait {d.p95:.1f}s <= {REFERENCE_FACTOR:g}x the causal reference's {ref.p95:.1f}s ({limit:.1f}s)"))
    dominated = [t for t in traces if _dominates(by[t, HPA], by[t, default])]
    for t in traces:
        h, d = by[t, HPA], by[t, default]
        out.append(Verdict(t not in dominated, f"{t}: not dominated by HPA/KEDA (p95 {d.p95:.1f}s vs {h.p95:.1f}s, worker-s {d.worker_seconds:.0f} vs {h.worker_seconds:.0f})"))
    for t in traces:
        if t in steady:
            d = by[t, default]
            out.append(Verdict(d.ratio <= STEADY_FACTOR, f"{t}: worker-seconds {d.worker_seconds:.0f} = {d.ratio:.2f}x lower bound <= {STEADY_FACTOR:g}x"))
    for t in traces:
        if t in low_rate:
            d, h = by[t, default], by[t, HPA]
            out.append(Verdict(d.p95 <= h.p95 + interval and d.worker_seconds <= h.worker_seconds,
                               f"{t}: p95 wait {d.p95:.1f}s <= HPA's {h.p95:.1f}s + one tick ({interval:g}s), worker-s {d.worker_seconds:.0f} <= HPA's {h.worker_seconds:.0f}"))
    for t in traces:
        d, h = by[t, default], by[t, HPA]
        limit = CALM_FACTOR * max(CALM_FLOOR, h.actions_per_hour)
        out.append(Verdict(d.actions_per_hour <= limit, f"{t}: {d.actions_per_hour:.1f} actions/h <= {CALM_FACTOR:g}x HPA's {h.actions_per_hour:.1f} (at least {CALM_FLOOR:g}): {limit:.1f}; flaps {d.flaps_per_hour:.1f}/h vs HPA's {h.flaps_per_hour:.1f}/h"))
    for t in traces:
        d, h = by[t, default], by[t, HPA]
        young = sum(r.stopped_starting for r in d.runs)
        out.append(Verdict(young == 0, f"{t}: no instance stopped within its start-up of being started: {young} "
                                       f"(HPA's {sum(r.stopped_starting for r in h.runs)}, over {len(d.runs)} seeds)"))
    for t in traces:
        if t not in steady:
            d, c = by[t, default], by[t, CLAIRVOYANT]
            out.append(Verdict(None, f"{t}: vs clairvoyant: worker-seconds {d.worker_seconds / c.worker_seconds:.2f}x ({d.ratio:.2f}x vs {c.ratio:.2f}x bound), p95 {d.p95:.1f}s vs {c.p95:.1f}s"))
    return out


def seeds_main(prog: str, doc: str | None, report: Callable[[tuple[int, ...]], tuple[str, bool]], seeds: Sequence[int], argv: list[str] | None) -> int:
    """A bench command over ``--seeds``: print ``report``'s text and its wall time; exit 0 when every target passed."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--seeds", default=",".join(map(str, seeds)))
    args = parser.parse_args(argv)
    began = time.monotonic()
    text, ok = report(tuple(int(s) for s in args.seeds.split(",")))
    print(text)
    print(f"\n({time.monotonic() - began:.1f}s)")
    return 0 if ok else 1
