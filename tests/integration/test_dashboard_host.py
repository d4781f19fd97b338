"""The dashboard answers only requests naming it in their Host header: a DNS-rebinding page gets a 403, never the status.

A real server on a free port, read over HTTP with the Host header each case sends.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Iterator

import pytest

from dramactl import dashboard
from dramactl import settings as settings_mod

SECRET = "orders-queue-only-the-operator-may-see"


def fake_status(_settings) -> dict:
    return {"time": 1000.0, "queues": [{"name": SECRET, "ready": 1, "delayed": 0, "due": 0, "in_flight": 0, "orphaned": 0, "dead": 0,
                                        "oldest_age": 1.0, "backlog": 1}], "instances": [], "errors": []}


def start(host: str, tmp_path) -> dashboard.DashboardServer:
    settings = settings_mod.parse({"DRAMACTL_STATE_DIR": str(tmp_path)})
    server = dashboard.make_server(settings, host, 0, collect=fake_status, refresh=0, history=lambda: [])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def served(tmp_path) -> Iterator[dashboard.DashboardServer]:
    server = start("127.0.0.1", tmp_path)
    yield server
    server.shutdown()
    server.server_close()


def request(server: dashboard.DashboardServer, hosts: list[str], path: str = "/status.json", method: str = "GET") -> tuple[int, str]:
    """(status, body) of one request sent with exactly these Host headers (none: no Host header at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        for host in hosts:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_the_dashboard_answers_its_own_names_and_refuses_any_other_host(served) -> None:
    port = served.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", "localhost", f"LocalHost.:{port}", f"[::1]:{port}",
                 "localhost:9000"):  # an ssh tunnel's local port: the port is not checked
        code, body = request(served, [host])
        assert code == 200 and json.loads(body)["queues"][0]["name"] == SECRET, host
    assert request(served, [])[0] == 200  # HTTP/1.0 without a Host: no browser sends that

    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost.evil.example:{port}",
                 f"evil.example@127.0.0.1:{port}", "[::1", "127.0.0.1:80:80", ""):
        for path in ("/status.json", "/", "/metrics", "/nope"):
            code, body = request(served, [host], path)
            assert code == 403, (host, path, code)
            assert SECRET not in body and body.count("\n") == 1 and body.startswith("forbidden: the Host header"), body
    assert request(served, ["evil.example"], method="HEAD") == (403, "")
    assert request(served, [f"127.0.0.1:{port}", "evil.example"])[0] == 403  # two Host headers: which one would a proxy use?


def test_bound_to_every_interface_it_answers_the_machines_name_and_any_address_too(tmp_path) -> None:
    server = start("0.0.0.0", tmp_path)
    try:
        for host in (socket.gethostname(), f"{socket.gethostname().upper()}:{server.server_address[1]}", "192.0.2.7:8080", "[2001:db8::7]"):
            assert request(server, [host])[0] == 200, host
        assert request(server, ["evil.example"])[0] == 403
    finally:
        server.shutdown()
        server.server_close()


def test_the_allowed_names_follow_the_address_bound() -> None:
    hostname = socket.gethostname().lower()
    assert dashboard.allowed_names("127.0.0.1", "127.0.0.1") == {"localhost"}
    assert dashboard.allowed_names("::1", "::1") == {"localhost"}
    assert dashboard.allowed_names("Dash.Example.", "127.0.0.1") == {"localhost", "dash.example"}  # DASHBOARD_HOST, a name
    assert {"localhost", hostname} <= dashboard.allowed_names("0.0.0.0", "0.0.0.0")
    assert {"localhost", hostname} <= dashboard.allowed_names("::", "::")
    assert {"localhost", hostname} <= dashboard.allowed_names("192.0.2.7", "192.0.2.7")
    names = dashboard.allowed_names("127.0.0.1", "127.0.0.1")
    assert dashboard.host_allowed("[::ffff:127.0.0.1]:80", names) and not dashboard.host_allowed("::1", names)  # IPv6 in brackets only
    assert not dashboard.host_allowed("2130706433", names) and not dashboard.host_allowed("localhost evil", names)
