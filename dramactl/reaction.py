"""The fleet that reacts (pure): headroom for the arrivals before a growth consumes.

Erlang C (:mod:`dramactl.queueing`) sizes a *static* fleet: headroom such that the
arrivals at their measured rate rarely wait longer than the goal though no worker is
ever added. The fleet is not static: a message that finds every thread busy shows at
the next tick, which grows the fleet, and the growth consumes one start-up later. So
when ``horizon`` = CHECK_INTERVAL + start-up is within the wait goal, the fleet needs
threads for the messages present now (running, prefetched, ready, due, orphaned:
counted, not estimated) plus headroom for what arrives before a growth consumes.

The headroom keeps the goal's own share: at most 5 % of the arrivals wait past the
goal. An arrival waits only if it finds no free thread; it is then prefetched by a busy
worker and waits for the first of that worker's threads to end, which a growth does not
help: past the goal with probability exp(-threads x goal / E[S]) (memoryless). So the
share of the arrivals within the horizon allowed to find no free thread is 5 % over
that probability, and the headroom is the fewest free threads that keep it: arrivals a
Poisson count at the measured rate, less the running messages that end within the
horizon (each with probability horizon / E[S]).

It applies where a message outlasts the horizon on average (E[S] >= horizon): the
messages present then still hold their threads when a growth consumes, so their count
is the need, and a static fleet's headroom (about a standard deviation of the whole
load) mostly idles; the reacting fleet follows the work present as it rises and falls,
and is the need when it is the smaller. Shorter messages turn over within the horizon;
their count now is a snapshot of a queue that empties by itself, and Erlang's static
fleet stays their model. Nothing here names a workload: the horizon, the goal and the
5 % are the policy's own.
"""

from __future__ import annotations

import math

from .rates import WorkRates
from .settings import Settings
from .stats import FleetBacklog

SHARE = 0.05  # of the arrivals within the horizon, at most this share find no free thread
EXACT = 50  # more arrivals or running messages than this: the normal approximation


def reacts_within(interval: float, startup: float, wait: float, service: float) -> float | None:
    """The horizon (CHECK_INTERVAL + start-up) when a growth decided at the next tick
    consumes within ``wait`` (the wait goal) and a message outlasts it on average (mean
    ``service`` at least the horizon), else None. Shorter messages turn over within the
    horizon: the ones present now are gone before a growth consumes, their count is a
    snapshot of a queue that empties by itself, and the static fleet (Erlang C) is the
    model of their need."""
    horizon = interval + startup
    return horizon if horizon <= wait and service >= horizon else None


def headroom(arrivals: float, running: int, ends: float, share: float = SHARE, batch: float = 1.0) -> int:
    """Free threads to keep so that at most ``share`` of the arrivals within the horizon
    find none: the smallest h with E[(A - C - h)+] <= share x E[A], A the arrivals
    (Poisson of mean ``arrivals``; or ``batch`` at a time, a Poisson count of batches:
    :func:`_batch_headroom`), C those of the ``running`` messages that end within the
    horizon (each with probability ``ends``). The order within the horizon is ignored."""
    if arrivals <= 0:
        return 0
    p = min(1.0, max(0.0, ends))
    size = max(1, round(batch)) if math.isfinite(batch) else 1
    if size > 1:
        return _batch_headroom(arrivals, running, p, share, size)
    if arrivals > EXACT or running > EXACT:
        return _normal_headroom(arrivals - running * p, math.sqrt(arrivals + running * p * (1.0 - p)), share * arrivals)
    pa = [math.exp(-arrivals)]
    while len(pa) < arrivals + 12.0 * math.sqrt(arrivals) + 12.0:  # the tail beyond holds < 1e-12
        pa.append(pa[-1] * arrivals / len(pa))
    pc = [math.comb(running, j) * p**j * (1.0 - p) ** (running - j) for j in range(running + 1)]
    net: dict[int, float] = {}
    for a, wa in enumerate(pa):
        for c, wc in enumerate(pc):
            net[a - c] = net.get(a - c, 0.0) + wa * wc
    h, loss = 0, sum(w * d for d, w in net.items() if d > 0)  # E[(D - h)+]
    while loss > share * arrivals:
        loss -= sum(w for d, w in net.items() if d > h)  # E[(D - h - 1)+] = E[(D - h)+] - P(D > h)
        h += 1
    return h


def _batch_headroom(arrivals: float, running: int, p: float, share: float, size: int) -> int:
    """:func:`headroom` for arrivals ``size`` at a time (dramactl.rates: batches of D): A =
    size x K, K a Poisson count of mean ``arrivals`` / ``size``, summed exactly over K
    (normal only when many batches come), C binomial (normal beyond :data:`EXACT` running
    messages); the smallest h found by bisection, so that a few large batches cost a few
    evaluations, not one per thread."""
    batches = arrivals / size
    allowed = share * arrivals
    mean_c, var_c = running * p, running * p * (1.0 - p)
    if batches > EXACT:
        return _normal_headroom(arrivals - mean_c, math.sqrt(size * arrivals + var_c), allowed)
    pk = [math.exp(-batches)]
    while len(pk) < batches + 12.0 * math.sqrt(batches) + 12.0:  # the tail beyond holds < 1e-12
        pk.append(pk[-1] * batches / len(pk))
    if running <= EXACT:
        pc = [math.comb(running, j) * p**j * (1.0 - p) ** (running - j) for j in range(running + 1)]

        def loss(h: int) -> float:
            return sum(wk * wc * (k * size - c - h) for k, wk in enumerate(pk) for c, wc in enumerate(pc) if k * size - c > h)
    else:
        sd = math.sqrt(var_c)

        def loss(h: int) -> float:  # E[(m - C')+] for C' = C - mean_c about normal: sd phi(z) + m (1 - Phi(z)), z = -m / sd
            total = 0.0
            for k, wk in enumerate(pk):
                m = k * size - h - mean_c
                if sd <= 0:
                    total += wk * max(0.0, m)
                    continue
                z = -m / sd
                total += wk * (sd * math.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi) + m * 0.5 * math.erfc(z / math.sqrt(2.0)))
            return total

    low, high = 0, len(pk) * size  # loss(high) is 0 for the exact count, about 0 beyond the normal's reach
    if loss(low) <= allowed:
        return 0
    while high - low > 1:
        mid = (low + high) // 2
        if loss(mid) <= allowed:
            high = mid
        else:
            low = mid
    return high


def _normal_headroom(mean: float, sd: float, allowed: float) -> int:
    """:func:`headroom` for many arrivals (or many batches) or running messages: the net
    count is about normal, E[(D - h)+] = sd phi(z) + (mean - h)(1 - Phi(z)) at
    z = (h - mean) / sd."""
    h = max(0, math.floor(mean))
    while True:
        z = (h - mean) / sd
        loss = sd * math.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi) + (mean - h) * 0.5 * math.erfc(z / math.sqrt(2.0))
        if loss <= allowed:
            return h
        h += 1


def reacting_fleet(present: int, rate: float, service: float, running: int, horizon: float, wait: float, threads: int,
                   batch: float = 1.0) -> int:
    """Workers (``threads`` each) for the ``present`` messages plus the :func:`headroom`
    for the arrivals at ``rate`` within ``horizon``, of which the running messages (mean
    ``service`` seconds) end within it with probability horizon / service. The share of
    arrivals allowed to find no free thread is :data:`SHARE` over the chance that such a
    message waits past ``wait``: prefetched by a busy worker, it waits for the first of
    that worker's threads to end, past ``wait`` with probability exp(-threads x wait /
    service) (memoryless): for tasks that end within seconds, hardly ever."""
    ends = horizon / service if service > 0 else 1.0
    past = math.exp(-threads * wait / service) if service > 0 else 0.0
    share = min(1.0, SHARE / past) if past > 0 else 1.0
    need = math.ceil((present + headroom(rate * horizon, running, ends, share, batch)) / max(1, threads) - 1e-9)
    return max(need, 1) if rate > 0 else need  # with no worker, nothing takes an arrival until a growth


def reacting(backlog: FleetBacklog, rates: WorkRates, settings: Settings, startup: float, current: int, wait: float) -> int | None:
    """The policy's reacting fleet for this tick: the messages present (ready, due, in
    flight, orphaned) plus the headroom, when a growth consumes within ``wait``; None
    before a rate exists, when the horizon is longer, or when the arrivals within the
    horizon are more than one worker's threads. A fleet sized by the count present
    follows the count, and between two decisions the count moves by about the arrivals
    within the horizon (and as many ends): when that is more than a worker, every
    decision moves the fleet by its Poisson swing, down and back up (on 1-thread workers
    each message is a worker), and the static fleet's headroom, which absorbs those
    swings, is the calm model; so it is when messages come in batches larger than a
    worker's threads (dramactl.rates: the dispersion D), each a worker's swing or more.
    Where fewer arrive than a worker's threads, the count changes by less than a worker
    a decision and following it costs few actions; batches of D are in the headroom."""
    horizon = reacts_within(float(settings.check_interval), startup, wait, rates.service)
    if horizon is None or rates.arrival is None:
        return None
    if max(rates.arrival * horizon, rates.dispersion) > settings.worker_threads:
        return None  # the count moves by more than a worker between decisions, or a batch at a time (above)
    running = min(backlog.in_flight, current * settings.worker_threads)
    return reacting_fleet(backlog.backlog, rates.arrival, rates.service, running, horizon, wait, settings.worker_threads, rates.dispersion)
