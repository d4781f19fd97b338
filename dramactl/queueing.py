"""How many workers a measured load needs (pure): Erlang C staffing.

With ``c`` threads serving an offered load of ``a`` busy threads (a = λ x E[S]), the
M/M/c queue waits longer than ``t`` with probability

    P(W > t) = C(c, a) x exp(-(c - a) t / E[S]),

C being Erlang's delay probability. :func:`workers_for` is the smallest fleet whose
threads keep that probability within ``1 - quantile`` at ``wait``: tiny fast messages
run their threads nearly full (the queue empties in milliseconds), slow ones keep
more headroom. Erlang B is computed by its stable recursion, O(c) for the whole search.
"""

from __future__ import annotations

import math


def workers_for(load: float, service: float, threads: int, wait: float, quantile: float = 0.95, limit: int = 10_000) -> int:
    """The smallest number of workers (``threads`` each) for which P(wait > ``wait``)
    <= 1 - ``quantile`` under ``load`` busy threads of mean ``service`` seconds;
    ``limit + 1`` when even ``limit`` workers are not enough. 0 for no load."""
    if load <= 0:
        return 0
    if service <= 0:
        return max(1, math.ceil(load / threads))
    b = 1.0  # Erlang B with k servers
    k = 0
    for n in range(1, limit + 1):
        for k in range(k + 1, n * threads + 1):
            b = load * b / (k + load * b)
        c = n * threads
        if c <= load:
            continue
        delay = c * b / (c - load * (1.0 - b))  # Erlang C
        if delay * math.exp(-(c - load) * wait / service) <= 1.0 - quantile:
            return n
    return limit + 1


def queue_quantile(load: float, threads: int, quantile: float = 0.95) -> int:
    """How many messages the M/M/c queue of ``threads`` servers under ``load`` busy
    threads has waiting at most, with probability ``quantile``: P(Nq >= k) = C x rho^k
    (C Erlang's delay probability, rho = load / threads), so k = ln((1 - q) / C) / ln rho.
    0 when the queue is not stable (load >= threads: any waiting is a real backlog)."""
    if load <= 0 or threads <= 0:
        return 0
    if load >= threads:
        return 0
    b = 1.0
    for k in range(1, threads + 1):
        b = load * b / (k + load * b)
    delay = threads * b / (threads - load * (1.0 - b))
    if delay <= 1.0 - quantile:
        return 0
    rho = load / threads
    return max(0, math.ceil(math.log((1.0 - quantile) / delay) / math.log(rho) - 1e-9))
