"""A load trace: an arrival-rate curve plus blocks of messages landing at once.

Arrivals are a non-homogeneous Poisson process drawn by thinning, so one seed gives
every policy exactly the same messages (common random numbers: differences in the
table come from the policies, not from luck). The trace families are in ``bench/traces.py``;
``dramactl replay`` builds its traces from the journal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

RateCurve = Callable[[float], float]


@dataclass(frozen=True)
class Trace:
    """``rate(t)`` messages/s over ``duration`` seconds, plus ``blocks`` of (at, count)."""

    name: str
    duration: float
    rate: RateCurve
    peak_rate: float  # an upper bound of rate(t), for thinning
    blocks: tuple[tuple[float, int], ...] = field(default=())
    about: str = ""
    model: tuple[tuple[str, float], ...] = ()  # WorkerModel fields this trace changes (threads, service, start-up)
    max_workers: int = 10  # MAX_PROCESSES for every policy on this trace
    steady: bool = False  # a steady trace: worker-seconds target against the bound
    low_rate: bool = False  # under one arrival per tick: targets against HPA's p95 and worker-seconds

    def arrivals(self, rng: random.Random) -> list[float]:
        """Sorted arrival times of every message in the trace."""
        times: list[float] = []
        t = 0.0
        if self.peak_rate > 0:
            while True:
                t += rng.expovariate(self.peak_rate)
                if t >= self.duration:
                    break
                if rng.random() * self.peak_rate < self.rate(t):
                    times.append(t)
        for at, count in self.blocks:
            if 0 <= at < self.duration:
                times.extend([at] * count)
        times.sort()
        return times
