"""No surface prints a Redis password: check, status, the tick's (journal) error line, the dashboard.

Against real redis-servers: one that requires a password (also on a unix socket) and
a port where nothing listens.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from dramactl import dashboard
from dramactl import settings as settings_mod
from dramactl.cli import EXIT_CONFIG, main
from tests.conftest import RedisServer, free_port
from tests.integration.test_cli import NO_SYSTEM_BUS

UNREACHABLE = [  # every way a password can be written, pointing where no Redis listens
    "redis://:{pw}@127.0.0.1:{port}/0",
    "redis://default:{pw}@127.0.0.1:{port}/0",
    "rediss://user:{pw}@127.0.0.1:{port}/0",
    "redis://127.0.0.1:{port}/0?password={pw}",
    "unix:///nonexistent/dramactl-test/redis.sock?password={pw}",
]


def reachable(server: RedisServer) -> dict[str, dict[str, str]]:
    """Settings that reach the password-protected server, one per way of giving the password."""
    pw, port = server.password, server.port
    return {
        "userinfo": {"REDIS_URL": f"redis://:{pw}@127.0.0.1:{port}/0"},
        "user-and-password": {"REDIS_URL": f"redis://default:{pw}@127.0.0.1:{port}/0"},
        "query": {"REDIS_URL": f"redis://127.0.0.1:{port}/0?password={pw}"},
        "unix-query": {"REDIS_URL": f"unix://{server.socket}?password={pw}"},
        "REDIS_PASSWORD": {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": pw},
    }


@pytest.fixture
def run(redis_with_password: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "DRAMATIQ_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    base = {**NO_SYSTEM_BUS, "DRAMACTL_STATE_DIR": str(tmp_path / "state"), "DRAMACTL_ENV_FILE": str(tmp_path / "none.env")}

    def invoke(*args: str, **env: str):
        return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("form", ["userinfo", "user-and-password", "query", "unix-query", "REDIS_PASSWORD"])
def test_check_shows_where_redis_is_without_the_password(run, redis_with_password: RedisServer, form: str) -> None:
    env = reachable(redis_with_password)[form]
    res = run("check", **env)
    assert res.exit_code == 0, res.output
    assert redis_with_password.password not in res.output
    (line,) = [l for l in res.output.splitlines() if l.startswith("redis ok at ")]
    expected = settings_mod.redact(env.get("REDIS_URL", ""), None) or f"127.0.0.1:{redis_with_password.port}/0"
    assert line.startswith(f"redis ok at {expected}: ")
    assert "***" in expected or form == "REDIS_PASSWORD"


@pytest.mark.parametrize("url", UNREACHABLE)
def test_status_error_line_hides_the_password(run, url: str) -> None:
    pw = "pw-Secret-4711"
    res = run("status", REDIS_URL=url.format(pw=pw, port=free_port()))
    assert res.exit_code == 2, res.output  # Redis could not be read
    assert pw not in res.output
    (line,) = [l for l in res.output.splitlines() if l.startswith("error: redis: ")]
    assert line.startswith("error: redis: REDIS_URL: cannot reach Redis at ") and "***" in line, line
    errors = json.loads(run("status", "--json", REDIS_URL=url.format(pw=pw, port=free_port())).output)["errors"]
    assert [e for e in errors if e.startswith("redis: ")] and not [e for e in errors if pw in e], errors


@pytest.mark.parametrize("url", UNREACHABLE)
def test_tick_error_line_hides_the_password(run, url: str) -> None:
    """The line a failing tick writes to stderr, i.e. to the journal of dramactl.service."""
    pw = "pw-Secret-4711"
    res = run("tick", REDIS_URL=url.format(pw=pw, port=free_port()))
    assert res.exit_code == EXIT_CONFIG
    (line,) = res.output.splitlines()
    assert line.startswith("dramactl: REDIS_URL: cannot reach Redis at ") and "***" in line, line
    assert pw not in line


@pytest.mark.parametrize("form", ["query", "unix-query", "REDIS_PASSWORD"])
def test_a_refused_password_is_named_not_shown(run, redis_with_password: RedisServer, form: str) -> None:
    wrong = "wrong-pw-0815-long"
    env = {k: v.replace(redis_with_password.password, wrong) for k, v in reachable(redis_with_password)[form].items()}
    res = run("tick", **env)
    assert res.exit_code == EXIT_CONFIG
    (line,) = res.output.splitlines()
    assert line.startswith("dramactl: REDIS_PASSWORD: Redis at ") and "refused it" in line, line
    assert wrong not in line


def page(settings: settings_mod.Settings) -> tuple[str, str]:
    """The dashboard's HTML page and status.json, served for real with the real collect."""
    server = dashboard.make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(server.url, timeout=20) as r:
            html = r.read().decode()
        with urllib.request.urlopen(server.url + "status.json", timeout=20) as r:
            body = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return html, body


@pytest.mark.parametrize("form", ["userinfo", "query", "unix-query"])
def test_dashboard_header_hides_the_password(redis_with_password: RedisServer, tmp_path: Path, form: str) -> None:
    env = {**reachable(redis_with_password)[form], "DRAMACTL_STATE_DIR": str(tmp_path)}
    settings = settings_mod.parse(env)
    html, body = page(settings)
    assert redis_with_password.password not in html and redis_with_password.password not in body
    assert f"· Redis {settings_mod.redact(env['REDIS_URL'])}</span>" in html
    data = json.loads(body)  # Redis was reached: its queues are there, and no Redis error
    assert [q["name"] for q in data["queues"]] == list(settings.queues)
    assert [e for e in data["errors"] if e.startswith("redis:")] == []


@pytest.mark.parametrize("url", UNREACHABLE)
def test_dashboard_errors_hide_the_password(tmp_path: Path, url: str) -> None:
    pw = "pw-Secret-4711"
    settings = settings_mod.parse({"REDIS_URL": url.format(pw=pw, port=free_port()), "DRAMACTL_STATE_DIR": str(tmp_path)})
    html, body = page(settings)
    assert pw not in html and pw not in body
    assert "redis: REDIS_URL: cannot reach Redis at " in html and "***" in html
