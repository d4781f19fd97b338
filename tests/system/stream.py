"""A steady stream of the system tests' messages, run inside the container as a transient unit:
one ``sysapp.work`` message every INTERVAL seconds, its send time recorded in ``stream:sent``
(ident -> epoch seconds) right after Redis took it, until OUT.stop exists.

``python stream.py OUT INTERVAL SECONDS``
"""

from __future__ import annotations

import os
import sys
import time

import sysapp


def main(out: str, interval: float, seconds: float) -> None:
    client = sysapp.broker.client
    i = 0
    while not os.path.exists(out + ".stop"):
        ident = f"s{i}"
        sysapp.work.send(ident, seconds)
        client.hset("stream:sent", ident, time.time())
        i += 1
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
