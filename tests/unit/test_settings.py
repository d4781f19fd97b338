"""Settings: defaults, sources and their order, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramactl.settings import EXAMPLE_COMMAND, EXAMPLE_QUEUES, Settings, SettingsError, load, parse, redact


def test_defaults_are_the_documented_ones() -> None:
    s = parse({})
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_password) == ("localhost", 6379, 0, "")
    assert (s.min_processes, s.max_processes, s.check_interval) == (1, 10, 180)
    assert (s.scale_up_multiplier, s.scale_down_multiplier) == (5.0, 2.5)
    assert (s.log_level, s.graceful_shutdown_timeout, s.watchdog_sec) == ("INFO", 30, 60)
    assert s.dramatiq_command == EXAMPLE_COMMAND and s.queues == EXAMPLE_QUEUES
    assert s.namespace == "dramatiq" and s.policy == "default"
    assert s.worker_shutdown_timeout_ms == 30000


def test_own_command_defaults_to_dramatiqs_default_queue() -> None:
    assert parse({"DRAMATIQ_COMMAND": "dramatiq app.tasks"}).queues == ("default",)


def test_queue_list_is_split_and_trimmed() -> None:
    assert parse({"DRAMATIQ_QUEUE_NAME": " a, b.x ,c-1,"}).queues == ("a", "b.x", "c-1")
    assert parse({"DRAMATIQ_QUEUE_NAME": "a,b,a"}).queues == ("a", "b"), "a queue named twice is read once"
    assert parse({"REDIS_URL": "redis://db:6379/0", "REDIS_HOST": "h" * 300}).redis_url, "REDIS_HOST is not used beside REDIS_URL"


def test_values_are_parsed() -> None:
    s = parse(
        {
            "REDIS_HOST": "redis.internal",
            "REDIS_PORT": "6380",
            "REDIS_DB": "3",
            "REDIS_PASSWORD": "s3cret",
            "MIN_PROCESSES": "2",
            "MAX_PROCESSES": "20",
            "CHECK_INTERVAL": "15",
            "SCALE_UP_THRESHOLD_MULTIPLIER": "8",
            "SCALE_DOWN_THRESHOLD_MULTIPLIER": "1.5",
            "LOG_LEVEL": "debug",
            "POLICY": "STEP",
        }
    )
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_password) == ("redis.internal", 6380, 3, "s3cret")
    assert (s.min_processes, s.max_processes, s.check_interval) == (2, 20, 15)
    assert (s.scale_up_multiplier, s.scale_down_multiplier, s.log_level, s.policy) == (8.0, 1.5, "DEBUG", "step")


def test_redis_location_never_shows_the_password() -> None:
    s = parse({"REDIS_URL": "redis://:hunter2@db:6379/1"})
    assert "hunter2" not in s.redis_location and "db:6379/1" in s.redis_location


@pytest.mark.parametrize(
    ("values", "location"),
    [
        ({"REDIS_URL": "redis://:hunter2@db:6379/1"}, "redis://***@db:6379/1"),
        ({"REDIS_URL": "rediss://app:hunter2@db:6380/0"}, "rediss://***@db:6380/0"),
        ({"REDIS_URL": "redis://:hun@ter2@db/0"}, "redis://***@db/0"),
        ({"REDIS_URL": "rediss://db:6379/0?password=hunter2&ssl_cert_reqs=none"}, "rediss://db:6379/0?password=***&ssl_cert_reqs=none"),
        ({"REDIS_URL": "unix:///run/redis.sock?db=2&password=x"}, "unix:///run/redis.sock?db=2&password=***"),
        ({"REDIS_HOST": "db", "REDIS_PASSWORD": "hunter2"}, "db:6379/0"),
    ],
)
def test_every_way_of_writing_the_password_is_redacted(values: dict[str, str], location: str) -> None:
    s = parse(values)
    assert s.redis_location == location
    assert redact(f"cannot reach Redis at {values.get('REDIS_URL', '')}", s) == f"cannot reach Redis at {location if 'REDIS_URL' in values else ''}"


def test_the_password_is_redacted_inside_any_message() -> None:
    """REDIS_PASSWORD's value (and a URL's, as written or decoded) wherever it would appear, e.g. in a redis-py error."""
    s = parse({"REDIS_PASSWORD": "correct-horse-battery"})
    assert redact("AUTH correct-horse-battery failed (xcorrect-horse-batteryx)", s) == "AUTH *** failed (x***x)"
    s = parse({"REDIS_URL": "redis://:p%40ss@db/0"})
    assert redact("password 'p@ss' or p%40ss; pass", s) == "password '***' or ***; pass"
    # A short password is hidden where it stands alone, not inside other words.
    s = parse({"REDIS_URL": "unix:///run/redis.sock?password=x"})
    assert redact("Error connecting to unix socket /run/redis.sock with x", s) == "Error connecting to unix socket /run/redis.sock with ***"
    assert redact("rediss://u:v@h/0 and redis://h/0?password=y", None) == "rediss://***@h/0 and redis://h/0?password=***"
    # redis-py takes no 'Password=' option (REDIS_URL refuses it), but a message quoting one hides it all the same.
    assert redact("redis://db/0?Password=hun%74er2", None) == "redis://db/0?Password=***"


BAD = [
    ({"REDIS_PORT": "abc"}, "REDIS_PORT", "not a whole number"),
    ({"REDIS_PORT": "0"}, "REDIS_PORT", "out of range"),
    ({"REDIS_PORT": "70000"}, "REDIS_PORT", "out of range"),
    ({"REDIS_DB": "-1"}, "REDIS_DB", "out of range"),
    ({"MIN_PROCESSES": "-1"}, "MIN_PROCESSES", "out of range"),
    ({"MIN_PROCESSES": "two"}, "MIN_PROCESSES", "not a whole number"),
    ({"MAX_PROCESSES": "0"}, "MAX_PROCESSES", "out of range"),
    ({"MAX_PROCESSES": "1.5"}, "MAX_PROCESSES", "not a whole number"),
    ({"MIN_PROCESSES": "5", "MAX_PROCESSES": "3"}, "MIN_PROCESSES", "above MAX_PROCESSES=3"),
    ({"CHECK_INTERVAL": "0"}, "CHECK_INTERVAL", "out of range"),
    ({"CHECK_INTERVAL": "3m"}, "CHECK_INTERVAL", "not a whole number"),
    ({"SCALE_UP_THRESHOLD_MULTIPLIER": "x"}, "SCALE_UP_THRESHOLD_MULTIPLIER", "not a number"),
    ({"SCALE_UP_THRESHOLD_MULTIPLIER": "0"}, "SCALE_UP_THRESHOLD_MULTIPLIER", "too small"),
    ({"SCALE_UP_THRESHOLD_MULTIPLIER": "nan"}, "SCALE_UP_THRESHOLD_MULTIPLIER", "not a finite number"),
    ({"SCALE_DOWN_THRESHOLD_MULTIPLIER": "-1"}, "SCALE_DOWN_THRESHOLD_MULTIPLIER", "too small"),
    ({"SCALE_DOWN_THRESHOLD_MULTIPLIER": "5"}, "SCALE_DOWN_THRESHOLD_MULTIPLIER", "not below SCALE_UP_THRESHOLD_MULTIPLIER=5"),
    ({"SCALE_DOWN_THRESHOLD_MULTIPLIER": "6", "SCALE_UP_THRESHOLD_MULTIPLIER": "4"}, "SCALE_DOWN_THRESHOLD_MULTIPLIER", "not below"),
    ({"DRAMATIQ_QUEUE_NAME": " , "}, "DRAMATIQ_QUEUE_NAME", "no queue named"),
    ({"DRAMATIQ_QUEUE_NAME": "ok,bad name"}, "DRAMATIQ_QUEUE_NAME", "not a Dramatiq queue name"),
    ({"REDIS_HOST": "h" * 300}, "REDIS_HOST", "is not a host name"),
    ({"DRAMATIQ_COMMAND": "celery -A app worker"}, "DRAMATIQ_COMMAND", "is not the dramatiq command"),
    ({"DRAMATIQ_COMMAND": "dramatiq --threads 2"}, "DRAMATIQ_COMMAND", "names no app module"),
    ({"DRAMATIQ_COMMAND": "dramatiq 'app"}, "DRAMATIQ_COMMAND", "cannot be split"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "not a log level"),
    ({"POLICY": "magic"}, "POLICY", "not a policy"),
    ({"REDIS_URL": "http://db:6379"}, "REDIS_URL", "not a Redis URL"),
    ({"GRACEFUL_SHUTDOWN_TIMEOUT": "0"}, "GRACEFUL_SHUTDOWN_TIMEOUT", "out of range"),
    ({"WATCHDOG_SEC": "2"}, "WATCHDOG_SEC", "out of range"),
    ({"WATCHDOG_SEC": "1m"}, "WATCHDOG_SEC", "not a whole number"),
    ({"WORKER_THREADS": "0"}, "WORKER_THREADS", "out of range"),
    ({"WORKER_DIRECTORY": "relative/dir"}, "WORKER_DIRECTORY", "is relative"),
]


@pytest.mark.parametrize(("values", "setting", "problem"), BAD, ids=[f"{b[1]}={list(b[0].values())[-1]}" for b in BAD])
def test_bad_value_names_setting_and_fix(values: dict[str, str], setting: str, problem: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse(values)
    message = str(err.value)
    assert err.value.setting == setting
    assert message.startswith(f"{setting}: ") and problem in message
    assert "\n" not in message and err.value.fix, "one line that says how to fix it"


def test_environment_beats_dotenv_beats_system_file(tmp_path: Path) -> None:
    system = tmp_path / "dramactl.env"
    system.write_text("MIN_PROCESSES=2\nMAX_PROCESSES=7\nCHECK_INTERVAL=30\n")
    (tmp_path / ".env").write_text("MAX_PROCESSES=8\nCHECK_INTERVAL=20\n")
    s = load({"DRAMACTL_ENV_FILE": str(system), "CHECK_INTERVAL": "10"}, cwd=tmp_path, euid=1000)
    assert (s.min_processes, s.max_processes, s.check_interval) == (2, 8, 10)
    assert s.sources == (str(tmp_path / ".env"), str(system))


def test_roots_commands_read_the_installed_file_not_a_directorys_dotenv(tmp_path: Path) -> None:
    """Root's `dramactl status` run in an app directory read its .env over the installed file: it
    showed another Redis than the fleet's, and a REDIS_HOST there had root send REDIS_PASSWORD
    to that host (a review caught `HELLO 3 AUTH default <password>` on a listener)."""
    from dramactl.settings import unread_settings

    system = tmp_path / "dramactl.env"
    system.write_text("REDIS_HOST=redis.internal\nREDIS_PASSWORD=s3cr3t-pw\n")
    (tmp_path / ".env").write_text("REDIS_HOST=127.0.0.2\n")
    environ = {"DRAMACTL_ENV_FILE": str(system)}
    s = load(environ, cwd=tmp_path, euid=0)
    assert (s.redis_host, s.sources) == ("redis.internal", (str(system),))
    assert unread_settings(environ, cwd=tmp_path, euid=0) == [f"{tmp_path / '.env'} not read: root's commands use {system}, the file the units read"]
    # another user (a worker's worker-exec in its app directory, a developer) reads it as before
    assert load(environ, cwd=tmp_path, euid=1000).redis_host == "127.0.0.2"
    assert unread_settings(environ, cwd=tmp_path, euid=1000) == []
    # and root reads it where nothing is installed (a checkout)
    assert load({"DRAMACTL_ENV_FILE": str(tmp_path / "absent.env")}, cwd=tmp_path, euid=0).redis_host == "127.0.0.2"


def test_a_state_dir_in_the_installed_file_is_not_read_and_check_says_so(tmp_path: Path) -> None:
    """dramactl.service keeps its state in StateDirectory= (STATE_DIRECTORY wins), so a
    DRAMACTL_STATE_DIR in the installed file gave root's commands and the workers another lock
    and state than the ticks': a tick ran mid-roll, and ignored a `scale-to`'s pause."""
    from dramactl.settings import DEFAULT_STATE_DIR, unread_settings

    system = tmp_path / "dramactl.env"
    system.write_text("DRAMACTL_STATE_DIR=/srv/dstate\n")
    environ = {"DRAMACTL_ENV_FILE": str(system)}
    assert load(environ, cwd=tmp_path, euid=0).state_dir == DEFAULT_STATE_DIR
    assert unread_settings(environ, cwd=tmp_path, euid=0) == [
        f"DRAMACTL_STATE_DIR in {system} not read: dramactl.service keeps its state and lock in its StateDirectory= "
        f"({DEFAULT_STATE_DIR}), and every command must use the same; remove it there"
    ]
    assert load({**environ, "DRAMACTL_STATE_DIR": "/tmp/x"}, cwd=tmp_path, euid=0).state_dir == "/tmp/x"  # a run outside the units


def test_unreadable_or_missing_files_are_skipped(tmp_path: Path) -> None:
    s = load({"DRAMACTL_ENV_FILE": str(tmp_path / "absent.env")}, cwd=tmp_path)
    assert s == Settings(sources=())


def test_bad_value_in_a_file_is_reported_like_any_other(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('MAX_PROCESSES="lots"\n')
    with pytest.raises(SettingsError, match=r"^MAX_PROCESSES: 'lots' is not a whole number"):
        load({"DRAMACTL_ENV_FILE": str(tmp_path / "none")}, cwd=tmp_path)


def test_state_directory_from_systemd_wins(tmp_path: Path) -> None:
    assert parse({"STATE_DIRECTORY": "/var/lib/dramactl", "DRAMACTL_STATE_DIR": "/x"}).state_dir == "/var/lib/dramactl"
    assert parse({"DRAMACTL_STATE_DIR": "/x"}).state_dir == "/x"


def test_memory_sizes_parse_like_systemd_and_bad_ones_name_the_setting() -> None:
    from dramactl.install import drop_ins

    s = parse({"WORKER_MEMORY_HIGH": "768M", "WORKER_MEMORY_MAX": "1G", "WORKER_RECYCLE_MEMORY": "512MiB"})
    assert (s.worker_memory_high, s.worker_memory_max, s.worker_recycle_memory) == (768 << 20, 1 << 30, 512 << 20)
    assert parse({"WORKER_RECYCLE_MEMORY": "0"}).worker_recycle_memory == 0
    text = drop_ins(s)["dramatiq-worker@.service.d/50-memory.conf"]
    assert text.endswith("[Service]\nMemoryHigh=805306368\nMemoryMax=1073741824\n")
    assert "dramatiq-worker@.service.d/50-memory.conf" not in drop_ins(parse({}))
    for values, line in [
        ({"WORKER_MEMORY_MAX": "lots"}, "WORKER_MEMORY_MAX: 'lots' is not a size"),
        ({"WORKER_RECYCLE_MEMORY": "1M"}, "WORKER_RECYCLE_MEMORY: 1M is below 16 MiB"),
        ({"WORKER_MEMORY_MAX": "512M", "WORKER_RECYCLE_MEMORY": "512M"}, "WORKER_RECYCLE_MEMORY: 512 MiB is not below WORKER_MEMORY_MAX=512 MiB"),
        ({"WORKER_MEMORY_MAX": "512M", "WORKER_MEMORY_HIGH": "1G"}, "WORKER_MEMORY_HIGH: 1 GiB is above WORKER_MEMORY_MAX=512 MiB"),
    ]:
        with pytest.raises(SettingsError) as err:
            parse(values)
        assert str(err.value).startswith(line), str(err.value)


def test_the_hook_is_loaded_after_every_module_of_the_app(tmp_path: Path) -> None:
    """Dramatiq imports the broker module, then the other modules in order; the hook goes
    after all of them, so its guard is the last middleware even when a module adds one.
    (An app's own dramatiq by its path: the .deb's build runs this without Dramatiq.)"""
    from dramactl.worker import HOOK_MODULE, worker_argv

    dramatiq = tmp_path / "dramatiq"
    dramatiq.write_text("#!/bin/sh\n")
    dramatiq.chmod(0o755)
    s = parse({"DRAMATIQ_COMMAND": f"{dramatiq} app.broker app.tasks app.more --queues a b"})
    argv = worker_argv(s, 4)
    i = argv.index(HOOK_MODULE)
    assert argv[i - 3 : i] == ["app.broker", "app.tasks", "app.more"] and argv[i + 1] == "--queues", argv
    s = parse({"DRAMATIQ_COMMAND": f"{dramatiq} app.broker"})
    argv = worker_argv(s, 1)
    assert argv[argv.index("app.broker") + 1] == HOOK_MODULE


@pytest.mark.parametrize("interval", [28790, 28791, 40000, 86399])
def test_the_default_heartbeat_never_outlasts_what_the_fleet_accepts(interval: int) -> None:
    """FLEET_HOST_TTL unset: 3 x CHECK_INTERVAL + 30 is capped at the longest heartbeat or claim the fleet's own
    validation keeps (fleetrecords.LONGEST), yet still outlasts a tick interval."""
    from dramactl.fleetrecords import LONGEST

    s = parse({"FLEET_NAME": "f", "CHECK_INTERVAL": str(interval)})
    assert s.host_ttl == min(3 * interval + 30, 86400)
    assert interval < s.host_ttl <= LONGEST


def test_a_check_interval_no_heartbeat_can_outlast_is_refused_in_a_fleet() -> None:
    with pytest.raises(SettingsError) as err:
        parse({"FLEET_NAME": "f", "CHECK_INTERVAL": "86400"})
    assert err.value.setting == "CHECK_INTERVAL" and "FLEET_HOST_TTL" in str(err.value) and "below 86400" in str(err.value)
    assert parse({"CHECK_INTERVAL": "86400"}).check_interval == 86400  # a single host has no heartbeat


PW = "pw-Secret-4711"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PW}@127.0.0.1:notaport/0",
        f"redis://:{PW}@127.0.0.1:99999/0",
        f"redis://:{PW}@127.0.0.1:-5/0",
        f"redis://:{PW}@[bad/0",
        f"redis://127.0.0.1:6379/0?socket_timeout=abc&password={PW}",
        f"redis://:{PW}@127.0.0.1:6379/0?db=abc",
        f"redis://:{PW}@127.0.0.1:6379/0?foo=bar",
        f"redis://:{PW}@127.0.0.1:6379/0?protocol=9",
    ],
    ids=["port-not-a-number", "port-above-65535", "port-negative", "bad-ipv6", "socket_timeout", "db-query", "unknown-option", "protocol"],
)
def test_a_redis_url_redis_py_cannot_read_is_one_line_without_the_password(url: str) -> None:
    """redis.Redis.from_url raised ValueError (a traceback in check, status, metrics); now one line at settings load."""
    with pytest.raises(SettingsError) as err:
        parse({"REDIS_URL": url})
    message = str(err.value)
    assert err.value.setting == "REDIS_URL" and message.startswith("REDIS_URL: redis-py cannot read it (")
    assert PW not in message and "\n" not in message and err.value.fix


@pytest.mark.parametrize("secret", ["s3cr3tA/xyz", "s3cr3tA#xyz", "s3cr3tA?xyz", "s3cr3tA/b64+/=="])
@pytest.mark.parametrize("user", ["", "app"])
def test_a_password_that_ends_the_urls_host_part_is_named_and_never_shown(secret: str, user: str) -> None:
    """'/', '?' or '#' in a password (base64 holds '/') end a URL's host part: redis-py read the
    password's head as the port and its error quoted it (`Port could not be cast to integer value as
    's3cr3tA'`), into every tick's journal line and the workers'."""
    with pytest.raises(SettingsError) as err:
        parse({"REDIS_URL": f"redis://{user}:{secret}@127.0.0.1:6379/0"})
    assert str(err.value) == (
        "REDIS_URL: its user or password holds '/', '?' or '#', which end a URL's host part; percent-encode them in the URL (%2F, %3F, %23)"
    )
    assert "s3cr3t" not in str(err.value)


def test_a_url_without_a_scheme_is_not_echoed_when_it_holds_a_password() -> None:
    with pytest.raises(SettingsError) as err:
        parse({"REDIS_URL": "s3cr3tL@127.0.0.1:16399"})
    assert str(err.value) == "REDIS_URL: it is not a Redis URL; use redis://host:port/db, with ':password@' before the host when Redis needs one"


def test_redis_urls_redis_py_reads_are_kept_as_they_are() -> None:
    """What redis-py (and so Dramatiq's broker) reads is taken, a path that is not a number too: both read it
    as database 0, so the fleet and its workers agree; refusing it would stop a fleet that works at an upgrade."""
    for url in ("redis://db", "redis://db/", "redis://db:6380/3", "redis://db/%33", "unix:///run/redis.sock?db=2", "redis://db/zz"):
        assert parse({"REDIS_URL": url}).redis_url == url


def test_the_redis_url_fix_survives_the_redaction() -> None:
    """The hint was 'use redis://[:password@]host:port/db', which the URL redaction turned into 'redis://***@]host'."""
    with pytest.raises(SettingsError) as err:
        parse({"REDIS_URL": "http://x"})
    assert redact(str(err.value)) == str(err.value)
    assert str(err.value) == "REDIS_URL: 'http' is not a Redis URL; use redis://host:port/db, with ':password@' before the host when Redis needs one"


def test_an_empty_state_dir_is_the_default_and_a_relative_one_is_refused() -> None:
    """A relative (or empty) DRAMACTL_STATE_DIR put state.json and the lock in whatever directory a command ran in."""
    from dramactl.settings import DEFAULT_STATE_DIR

    assert parse({"DRAMACTL_STATE_DIR": ""}).state_dir == DEFAULT_STATE_DIR
    assert parse({"DRAMACTL_STATE_DIR": "  "}).state_dir == DEFAULT_STATE_DIR
    assert parse({"STATE_DIRECTORY": ":", "DRAMACTL_STATE_DIR": ""}).state_dir == DEFAULT_STATE_DIR
    for values, setting in [
        ({"DRAMACTL_STATE_DIR": "state"}, "DRAMACTL_STATE_DIR"),
        ({"DRAMACTL_STATE_DIR": "./x"}, "DRAMACTL_STATE_DIR"),
        ({"STATE_DIRECTORY": "rel", "DRAMACTL_STATE_DIR": "/abs"}, "STATE_DIRECTORY"),
    ]:
        with pytest.raises(SettingsError) as err:
            parse(values)
        assert err.value.setting == setting and str(err.value).endswith(f"is relative; give an absolute path, or leave it empty for {DEFAULT_STATE_DIR}")


@pytest.mark.parametrize("name", ["WORKER_MEMORY_HIGH", "WORKER_MEMORY_MAX", "WORKER_RECYCLE_MEMORY"])
@pytest.mark.parametrize("raw", ["9" * 400, "999999999999999T", "16777216T", str(2**64 - 1), "9" * 5000 + "T"])
def test_a_size_above_what_systemd_takes_is_one_line(name: str, raw: str) -> None:
    """int(float('9' * 400)) raised OverflowError; 999999999999999T was written into MemoryMax=, which systemd ignores."""
    with pytest.raises(SettingsError) as err:
        parse({name: raw})
    message = str(err.value)
    assert message.startswith(f"{name}: ") and "is more than systemd takes (at most 2**64 - 2 bytes, 16 EiB)" in message
    assert len(message) < 200, message


def test_the_largest_sizes_systemd_takes_are_kept_exactly() -> None:
    assert parse({"WORKER_MEMORY_MAX": str(2**64 - 2)}).worker_memory_max == 2**64 - 2
    assert parse({"WORKER_MEMORY_MAX": "16777215T"}).worker_memory_max == 16777215 * 2**40
    assert parse({"WORKER_MEMORY_MAX": "1.5G"}).worker_memory_max == 3 << 29


@pytest.mark.parametrize("raw", ["1_0", "١٢", "１２", "1_000.5"])
@pytest.mark.parametrize(("name", "what"), [("MAX_PROCESSES", "a whole number"), ("REDIS_PORT", "a whole number"), ("MAX_QUEUE_WAIT", "a number")])
def test_numbers_with_underscores_or_non_ascii_digits_are_refused(name: str, what: str, raw: str) -> None:
    """int() and float() read '1_0' as 10 and '١٢' or '１２' as 12; the size settings (and systemd) do not."""
    with pytest.raises(SettingsError, match=rf"^{name}: '{raw}' is not {what}"):
        parse({name: raw})


@pytest.mark.parametrize(
    ("values", "start"),
    [
        ({"MAX_PROCESSES": "9" * 5000}, "MAX_PROCESSES: '99999999"),
        ({"MAX_PROCESSES": "9" * 300}, "MAX_PROCESSES: 99999999"),
        ({"MAX_QUEUE_WAIT": "x" * 5000}, "MAX_QUEUE_WAIT: 'xxxxxxxx"),
        ({"WORKER_MEMORY_MAX": "y" * 5000}, "WORKER_MEMORY_MAX: 'yyyyyyy"),
        ({"DRAMACTL_STATE_DIR": "z" * 5000}, "DRAMACTL_STATE_DIR: 'zzzzzz"),
    ],
)
def test_a_long_bad_value_is_cut_in_the_error_line(values: dict[str, str], start: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse(values)
    message = str(err.value)
    assert message.startswith(start) and "..." in message and len(message) < 200, message
