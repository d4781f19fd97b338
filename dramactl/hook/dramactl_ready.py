"""Tells systemd a worker instance is consuming (``Type=notify``) and still healthy.

Dramatiq imports this module in each worker process after the app's broker
(``dramatiq app dramactl_ready``). It lives alone in its directory and needs only
Dramatiq and the stdlib, so it can be put on the path of an app's own virtualenv.
"""

from __future__ import annotations

import os
import socket
import threading

import dramatiq
from dramatiq.middleware import Middleware


def notify(state: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd's advice), or None when the unit has no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None


class ReadyNotifier(Middleware):
    """READY=1 once the worker threads and consumers run; WATCHDOG=1 while they all
    live (a dead consumer thread means a worker that no longer takes messages, and
    systemd restarts it); STOPPING=1 on shutdown."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        queues = ",".join(sorted(getattr(worker, "consumers", None) or broker.get_declared_queues()))
        notify(f"READY=1\nSTATUS=consuming {queues} with {worker.worker_threads} threads")
        interval = watchdog_interval()
        if interval:
            threading.Thread(target=self._watchdog, args=(worker, interval), name="dramactl-watchdog", daemon=True).start()

    def _watchdog(self, worker, interval: float) -> None:
        while not self.stopping.wait(interval):
            threads = list(getattr(worker, "consumers", {}).values()) + list(getattr(worker, "workers", []))
            if threads and all(t.is_alive() for t in threads):
                notify("WATCHDOG=1")

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        notify("STOPPING=1\nSTATUS=draining: finishing or requeueing held messages")


dramatiq.get_broker().add_middleware(ReadyNotifier())
