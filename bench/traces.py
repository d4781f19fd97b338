"""Load traces: an arrival-rate curve plus blocks of messages landing at once.

Arrivals are a non-homogeneous Poisson process drawn by thinning, so one seed gives
every policy exactly the same messages (common random numbers: differences in the
table come from the policies, not from luck).
"""

from __future__ import annotations

import math

from dramactl.sim.traces import RateCurve, Trace  # noqa: F401  (RateCurve: re-exported)


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

    return Trace("ramp", duration, rate, high, about=f"{low:g} -> {high:g}/s over {rise / 60:g} min, then flat", steady=True)


def diurnal(low: float = 0.5, high: float = 16.0, day: float = 4 * 3600.0) -> Trace:
    """One day as a sine, compressed into ``day`` seconds: trough at both ends, peak mid-day."""

    def rate(t: float) -> float:
        return low + (high - low) * (1.0 - math.cos(2.0 * math.pi * t / day)) / 2.0

    return Trace("diurnal", day, rate, high, about=f"sine {low:g}..{high:g}/s, 24 h in {day / 3600:g} h", steady=True)


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


def heavy_tailed(rate: float = 8.0, cv: float = 3.0, duration: float = 3600.0) -> Trace:
    """Steady arrivals whose service times are heavy-tailed (lognormal, cv 3): a few
    messages take minutes."""
    return Trace("heavy-tail", duration, lambda t: rate, rate, about=f"{rate:g}/s flat, service cv {cv:g}",
                 model=(("service_cv", cv),), steady=True)


def tiny_fast(rate: float = 300.0, service: float = 0.05, duration: float = 600.0) -> Trace:
    """Many tiny messages: a large count that is little work."""
    return Trace("tiny-fast", duration, lambda t: rate, rate, about=f"{rate:g}/s of {service * 1000:g} ms messages",
                 model=(("mean_service", service),), steady=True)


def periodic(count: int = 150, every: float = 180.0, background: float = 0.5, duration: float = 3600.0) -> Trace:
    """Short bursts on a schedule (a cron job): the same block every few minutes."""
    blocks = tuple((at, count) for at in [every * k + 7.5 for k in range(int(duration // every))])
    return Trace("periodic", duration, lambda t: background, background, blocks, f"{count} msgs every {every:g}s on {background:g}/s")


def one_thread(low: float = 0.25, high: float = 2.0, day: float = 3600.0) -> Trace:
    """1-thread workers (WORKER_THREADS=1, prefetch 2) on a compressed day."""

    def rate(t: float) -> float:
        return low + (high - low) * (1.0 - math.cos(2.0 * math.pi * t / day)) / 2.0

    return Trace("1-thread", day, rate, high, about=f"1 thread/worker, sine {low:g}..{high:g}/s in {day / 3600:g} h",
                 model=(("threads", 1), ("prefetch", 2)), steady=True)


def big_burst(count: int = 20_000, background: float = 0.5, duration: float = 1800.0) -> Trace:
    """One very large block (a backfill) with MAX_PROCESSES=64."""
    return Trace("big-burst", duration, lambda t: background, background, ((307.5, count),),
                 f"{count} msgs at once on {background:g}/s, MAX 64", max_workers=64)


def slow_start(count: int = 600) -> Trace:
    """The burst trace with instances that take ~30 s to start (a heavy app import)."""
    base = burst(count=count)
    return Trace("slow-start", base.duration, base.rate, base.peak_rate, base.blocks, base.about + ", start-up 28-32 s",
                 model=(("startup_low", 28.0), ("startup_high", 32.0)))


def long_tasks(rate: float = 0.06, service: float = 120.0, duration: float = 3600.0) -> Trace:
    """Long tasks at a low rate: 0.9 arrivals per 15 s tick, each 2 min on average, on
    2-thread workers (a heavy job per thread): most ticks see no arrival at all, yet the
    fleet needs several workers (rate x service = 7.2 busy threads)."""
    return Trace("long-low", duration, lambda t: rate, rate, about=f"{rate:g}/s of {service:g}s tasks, 2 threads/worker",
                 model=(("mean_service", service), ("threads", 2), ("prefetch", 4)), low_rate=True)


def slow_climb(low: float = 0.5, high: float = 10.0, rise: float = 2700.0, duration: float = 3600.0) -> Trace:
    """A slow climb with instances that take ~60 s to start (longer than a tick's 30 s
    wait for its start jobs): the start-up must be learned from systemd, not the wait."""
    base = ramp(low, high, rise, duration)
    return Trace("slow-climb", duration, base.rate, high, about=f"{low:g} -> {high:g}/s over {rise / 60:g} min, start-up 58-62 s",
                 model=(("startup_low", 58.0), ("startup_high", 62.0)), steady=True)


def standard() -> list[Trace]:
    """The issue's four traces, its six new families, and issue 20's two (long tasks at a
    low rate, a slow climb with 60 s start-ups), sized for 4 s mean service and 8
    threads unless a trace says otherwise."""
    return [burst(), ramp(), diurnal(), spike_then_idle(), heavy_tailed(), tiny_fast(), periodic(), one_thread(), big_burst(),
            slow_start(), long_tasks(), slow_climb()]
