"""The comparison table and the issue's targets as PASS/FAIL lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .simulator import RunResult

BASELINE, HPA, STATIC = "step 180s (baseline)", "hpa/keda 15s", "static MAX"


def table(results: Sequence[RunResult]) -> str:
    """One row per trace and policy, plus each trace's fluid lower bound."""
    head = f"{'trace':<11} {'policy':<21} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'worker-s':>9} {'x bound':>7} {'peak':>4} {'actions':>7}"
    lines = [head, "-" * len(head)]
    last = None
    for r in results:
        if r.trace != last:
            if last is not None:
                lines.append("")
            lines.append(f"{r.trace:<11} {'fluid lower bound':<21} {'':>7} {'':>7} {'':>7} {r.lower_bound:>9.0f} {1.0:>7.2f}")
            last = r.trace
        lines.append(
            f"{'':<11} {r.policy:<21} {r.p50:>7.1f} {r.p95:>7.1f} {r.max_wait:>7.1f} "
            f"{r.worker_seconds:>9.0f} {r.ratio:>7.2f} {r.peak_workers:>4} {r.actions:>7}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    line: str

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.line}"


def _dominates(a: RunResult, b: RunResult) -> bool:
    """a no worse than b on p95 wait and worker-seconds, strictly better on one."""
    no_worse = a.p95 <= b.p95 and a.worker_seconds <= b.worker_seconds
    return no_worse and (a.p95 < b.p95 or a.worker_seconds < b.worker_seconds)


def verdicts(results: Sequence[RunResult], default: str) -> list[Verdict]:
    """The issue's four targets for the policy named ``default``."""
    by = {(r.trace, r.policy): r for r in results}
    traces = list(dict.fromkeys(r.trace for r in results))
    out: list[Verdict] = []

    for name in ("burst", "ramp"):
        d, b = by[name, default], by[name, BASELINE]
        out.append(Verdict(d.p95 <= b.p95 / 5, f"{name}: p95 wait {d.p95:.1f}s <= 1/5 of baseline {b.p95:.1f}s ({b.p95 / 5:.1f}s)"))
    worse = [t for t in traces if by[t, default].p95 > by[t, BASELINE].p95]
    detail = ", ".join(f"{t} {by[t, default].p95:.1f}s vs {by[t, BASELINE].p95:.1f}s" for t in traces)
    out.append(Verdict(not worse, f"no trace with p95 wait worse than baseline ({detail})"))

    for name in ("diurnal", "ramp"):
        d = by[name, default]
        out.append(Verdict(d.ratio <= 1.3, f"{name}: worker-seconds {d.worker_seconds:.0f} = {d.ratio:.2f}x fluid bound <= 1.3x"))

    dominated = [t for t in traces if _dominates(by[t, HPA], by[t, default])]
    dominating = [t for t in traces if _dominates(by[t, default], by[t, HPA])]
    out.append(Verdict(not dominated, f"vs HPA/KEDA: dominated on no trace (dominated on: {', '.join(dominated) or 'none'})"))
    out.append(Verdict(len(dominating) >= 2, f"vs HPA/KEDA: dominates on >= 2 traces (dominates on: {', '.join(dominating) or 'none'})"))

    d, b = by["diurnal", default], by["diurnal", BASELINE]
    out.append(Verdict(
        d.actions_per_hour <= b.actions_per_hour,
        f"diurnal: {d.actions_per_hour:.1f} scaling actions/h <= baseline {b.actions_per_hour:.1f}/h",
    ))
    return out
