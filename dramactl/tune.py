"""``dramactl tune --p95 SECONDS``: the cheapest settings that would have met a p95 wait on the recorded range.

It replays the rebuilt messages (:mod:`dramactl.replay`) under every combination of
the knobs below (the fleet's MIN..MAX stays as configured; MIN_PROCESSES is tried
from MIN up; under ``POLICY=step``, which reads neither MAX_QUEUE_WAIT nor
SCALE_DOWN_STABILIZATION, MIN_PROCESSES alone) and keeps, among those whose p95 wait
is at most the target, the one with the fewest worker-hours over one common period
(:func:`dramactl.replay.charge`; then the fewest actions). It prints the env lines to
apply and the figures before and after; it changes nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Sequence

from .replay import Progress, Ran, Rebuilt, Row, _when, charge, check_span, label, run_policy, table, variant

WAITS = ("5", "10", "20", "30", "60", "120")  # MAX_QUEUE_WAIT
WINDOWS = ("30", "60", "120", "300")  # SCALE_DOWN_STABILIZATION
EXTRA_MIN = 2  # MIN_PROCESSES tried: MIN .. MIN + 2 and MAX


def candidates(values: Mapping[str, str]) -> list[dict[str, str]]:
    """The combinations tried (the settings in force first); under POLICY=step MIN_PROCESSES alone (the step
    policy reads neither MAX_QUEUE_WAIT nor SCALE_DOWN_STABILIZATION: their combinations would be the same run)."""
    settings = variant(values, {})
    low, high = settings.min_processes, settings.max_processes
    mins = [str(n) for n in sorted({*range(low, min(high, low + EXTRA_MIN) + 1), high})]  # MIN=MAX: static MAX
    out = [{}]
    if settings.policy == "step":
        return out + [{"MIN_PROCESSES": least} for least in mins]
    for least, wait, window in itertools.product(mins, WAITS, WINDOWS):
        if least == str(high) and (wait, window) != (WAITS[-1], WINDOWS[-1]):
            continue  # MIN=MAX: a static fleet, whatever the other knobs say
        out.append({"MIN_PROCESSES": least, "MAX_QUEUE_WAIT": wait, "SCALE_DOWN_STABILIZATION": window})
    return out


@dataclass
class Tuned:
    target: float
    tried: int
    before: Row
    after: Row | None  # None: no combination met the target
    closest: Row  # the lowest p95 tried

    @property
    def met(self) -> bool:
        return self.after is not None

    def to_dict(self) -> dict:
        return {"p95_target": self.target, "tried": self.tried, "met": self.met, "before": self.before.to_dict(),
                "after": None if self.after is None else self.after.to_dict(), "closest": self.closest.to_dict(),
                "env": env_lines(self.after.changes) if self.after else []}


def tune(rebuilt: Rebuilt, values: Mapping[str, str], p95: float, progress: Progress | None = None,
         tried: Sequence[Mapping[str, str]] | None = None) -> Tuned:
    """Every combination's run; ReplayError (one line) for a range too short or too long to replay, or a run
    that does not end (:mod:`dramactl.replay`). Worker-hours over one common period (:func:`charge`)."""
    tick = progress or (lambda: None)
    combos = list(candidates(values) if tried is None else tried)
    runs = []
    in_force = variant(values, {})
    every = [variant(values, changes) for changes in combos]
    check_span(rebuilt, in_force, every)
    for changes, settings in zip(combos, every):
        name = label(changes) or "settings in force"
        runs.append(Ran.of(run_policy(rebuilt, settings, name, recorded=in_force), name, changes))
        tick()
    rows = charge(runs)
    before = rows[0]
    meeting = [r for r in rows if r.p95_wait is not None and r.p95_wait <= p95]
    after = min(meeting, key=lambda r: (round(r.worker_hours, 6), r.actions_per_hour or 0.0)) if meeting else None
    closest = min(rows, key=lambda r: (r.p95_wait or 0.0, r.worker_hours))
    return Tuned(p95, len(rows), before, after, closest)


def env_lines(changes: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in changes.items()]


def render(result: Tuned, rebuilt: Rebuilt) -> str:
    span = f"{_when(rebuilt.start)} .. {_when(rebuilt.start + rebuilt.duration)}"
    if result.after is None:
        return "\n".join([
            f"no combination tried ({result.tried}) meets p95 wait <= {result.target:g}s on {span}; the closest:",
            *table([result.before, result.closest]),
            "Nothing was changed. Raise MAX_PROCESSES (or WORKER_THREADS), or ask for a larger --p95.",
        ])
    after = result.after
    lines = [f"the cheapest of {result.tried} combinations that meets p95 wait <= {result.target:g}s on {span}:"]
    lines += env_lines(after.changes) if after.changes else ["(the settings in force are the cheapest: nothing to change)"]
    before = Row("before (settings in force)", result.before.p95_wait, result.before.worker_hours, result.before.actions_per_hour, result.before.peak_workers)
    lines += ["", *table([before, Row("after", after.p95_wait, after.worker_hours, after.actions_per_hour, after.peak_workers)]), "",
              "Nothing was changed: put these lines in the env file the scaler reads (e.g. /etc/dramactl/dramactl.env)."]
    return "\n".join(lines)
