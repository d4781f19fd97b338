"""READY=1 means the instance can consume: its broker's Redis answered.

Dramatiq's consumers retry a connection error for ever, so a worker that could never reach
Redis (a deploy with a wrong REDIS_PORT in the app's settings) used to send READY=1 at boot,
and `dramactl restart` replaced a healthy fleet with processes that consumed nothing, exit 0
(a review showed it in a booted systemd). Now READY=1 waits for Redis to answer; until then the
unit stays activating and its status line says why, and TimeoutStartSec= fails the start if
Redis never answers."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import dramatiq
import pytest

from tests.integration.test_follow_ups import make_broker, wait_for
from tests.integration.test_hook import StoppableRedis, install_hook, server  # noqa: F401 - the fixture


class NotifySocket:
    """systemd's side of sd_notify: every datagram's lines, as they arrive."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.lines: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.done.is_set():
            try:
                self.lines += self.sock.recv(4096).decode().splitlines()
            except (socket.timeout, BlockingIOError):
                continue

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


def test_ready_waits_until_redis_answers_and_says_why_meanwhile(server: StoppableRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    notified = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    server.stop()  # nothing listens on the broker's port: what a wrong REDIS_PORT gives
    broker = make_broker(server)
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="ready")
    def work(i: int) -> None:
        done.append(i)

    install_hook(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    began = time.monotonic()
    worker.start()
    try:
        assert time.monotonic() - began < 10, "the boot waited for Redis"
        time.sleep(3.0)
        assert "READY=1" not in notified.lines, f"ready while Redis cannot be reached: {notified.lines}"
        waiting = [line for line in notified.lines if line.startswith("STATUS=waiting for Redis before READY=1: ")]
        assert waiting and "Connection" in waiting[0], notified.lines

        server.start()
        assert wait_for(lambda: "READY=1" in notified.lines, 10), notified.lines
        assert notified.lines[notified.lines.index("READY=1") + 1] == "STATUS=consuming ready,ready.DQ with 2 threads"
        work.send(1)
        assert wait_for(lambda: done == [1], 10)
    finally:
        worker.stop(timeout=5000)
        notified.close()


def test_ready_at_once_when_redis_answers(server: StoppableRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    notified = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    broker = make_broker(server)

    @dramatiq.actor(broker=broker, queue_name="ready")
    def work() -> None:
        pass

    install_hook(broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert wait_for(lambda: "READY=1" in notified.lines, 2), notified.lines
        assert not any(line.startswith("STATUS=waiting") for line in notified.lines)
    finally:
        worker.stop(timeout=5000)
        notified.close()
