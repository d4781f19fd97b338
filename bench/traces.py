"""Load traces: an arrival-rate curve plus blocks of messages landing at once.

Arrivals are a non-homogeneous Poisson process drawn by thinning, so one seed gives
every policy exactly the same messages (common random numbers: differences in the
table come from the policies, not from luck).
"""

from __future__ import annotations

import math
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

    def fluid_lower_bound(self, mean_service: float, threads: int, min_workers: int, dt: float = 1.0) -> float:
        """∫ max(MIN, λ(t)·s/threads) dt: worker-seconds of a fleet that keeps up at 100%
        utilisation with no start-up delay; a block counts as its work in one dt."""
        blocks: dict[int, int] = {}
        for at, count in self.blocks:
            if 0 <= at < self.duration:
                blocks[int(at // dt)] = blocks.get(int(at // dt), 0) + count
        total = 0.0
        for i in range(int(math.ceil(self.duration / dt))):
            offered = self.rate((i + 0.5) * dt) * dt + blocks.get(i, 0)
            total += max(min_workers * dt, offered * mean_service / threads)
        return total


def burst(background: float = 0.5, count: int = 600, duration: float = 3600.0) -> Trace:
    """Blocks of messages at once (a batch import) on a trickle. Four blocks, 15 min
    apart, landing 22.5/67.5/112.5/157.5 s before a 180 s tick (7.5 s before a 15 s
    one): every interval sees its average reaction time, not a lucky or unlucky one."""
    blocks = tuple((at, count) for at in (337.5, 1192.5, 2047.5, 2722.5))
    return Trace(
        "burst", duration, lambda t: background, background, blocks,
        f"4 x {count} msgs, 15 min apart, on {background:g}/s",
    )


def ramp(low: float = 0.5, high: float = 18.0, rise: float = 2700.0, duration: float = 3600.0) -> Trace:
    """Load climbing steadily (a launch, a morning), then holding at the top."""

    def rate(t: float) -> float:
        return low + (high - low) * min(1.0, t / rise)

    return Trace("ramp", duration, rate, high, about=f"{low:g} -> {high:g}/s over {rise / 60:g} min, then flat")


def diurnal(low: float = 0.5, high: float = 16.0, day: float = 4 * 3600.0) -> Trace:
    """One day as a sine, compressed into ``day`` seconds: trough at both ends, peak mid-day."""

    def rate(t: float) -> float:
        return low + (high - low) * (1.0 - math.cos(2.0 * math.pi * t / day)) / 2.0

    return Trace("diurnal", day, rate, high, about=f"sine {low:g}..{high:g}/s, 24 h in {day / 3600:g} h")


def spike_then_idle(
    background: float = 0.5, spike: float = 40.0, start: float = 120.0, length: float = 90.0, duration: float = 1800.0
) -> Trace:
    """A short overload (twice the MAX fleet's capacity), then nothing at all."""

    def rate(t: float) -> float:
        if t < start:
            return background
        return spike if t < start + length else 0.0

    return Trace(
        "spike-idle", duration, rate, spike, about=f"{spike:g}/s for {length:g}s at t={start:g}s, then idle"
    )


def standard() -> list[Trace]:
    """The issue's four traces, sized for WORKER_THREADS=8, 4 s mean service, MAX 10."""
    return [burst(), ramp(), diurnal(), spike_then_idle()]
