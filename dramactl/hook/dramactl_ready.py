"""Tells systemd a worker instance is consuming (``Type=notify``).

Dramatiq imports this module in each worker process after the app's broker
(``dramatiq app dramactl_ready``). It lives alone in its directory and needs only
Dramatiq and the stdlib, so it can be put on the path of an app's own virtualenv.
"""

from __future__ import annotations

import os
import socket

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


class ReadyNotifier(Middleware):
    """READY=1 once the worker threads and consumers run; STOPPING=1 on shutdown."""

    def after_worker_boot(self, broker, worker) -> None:
        queues = ",".join(sorted(getattr(worker, "consumers", None) or broker.get_declared_queues()))
        notify(f"READY=1\nSTATUS=consuming {queues} with {worker.worker_threads} threads")

    def before_worker_shutdown(self, broker, worker) -> None:
        notify("STOPPING=1\nSTATUS=draining: finishing or requeueing held messages")


dramatiq.get_broker().add_middleware(ReadyNotifier())
