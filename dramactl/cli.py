"""The ``dramactl`` command: a thin click skin over the library.

Every command is one call into ``dramactl`` (scaler, status, install, ...); this
module only parses options, renders text or JSON and maps errors to exit codes.
Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import click

from . import settings as settings_mod
from .settings import Settings, SettingsError
from .state import LOCK_WAIT

EXIT_OK = 0
EXIT_FAILED = 1  # a start/stop job did not finish "done"
EXIT_CONFIG = 2  # a setting is wrong, Redis cannot be used with it, or the state directory is not writable
EXIT_SYSTEMD = 3  # systemd unreachable or refused
EXIT_BUSY = 4  # another change holds the lock (manual commands only)


class CommandError(click.ClickException):
    """A one-line error with a specific exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        # Messages carrying Redis' words are redacted where they are made; this catches any URL that slipped by.
        click.echo(f"dramactl: {settings_mod.redact(self.format_message())}", err=True)


def load_settings() -> Settings:
    """Settings, with LOG_LEVEL applied to dramactl's own log (stderr, hence the journal)."""
    try:
        settings = settings_mod.load()
    except SettingsError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    return settings


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a library call, turning its errors into one line and an exit code."""
    from .fleet import FleetError
    from .install import InstallError
    from .scaler import Busy
    from .state import StateDirError

    try:
        return fn()
    except (SettingsError, StateDirError) as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except FleetError as exc:
        raise CommandError(str(exc), EXIT_SYSTEMD) from None
    except InstallError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    except Busy as exc:
        raise CommandError(str(exc), EXIT_BUSY) from None


def wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--wait SECONDS: how long a manual change waits for a tick or another change to finish."""
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=LOCK_WAIT,
        show_default=True,
        metavar="SECONDS",
        help="How long to wait for a running tick or manual change; then exit 4.",
    )(fn)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def finish(outcome: Any, as_json: bool) -> None:
    """Log an Outcome to the journal with its fields (dramactl.history), print it; exit 1 when a job failed.

    Under systemd stdout is the journal: the text line is not echoed a second time.
    """
    from . import history

    if not outcome.dry_run:
        history.send(history.fields(outcome, click.get_current_context().info_name or "tick", outcome.duration))
    if as_json:
        echo_json(outcome.to_dict())
    elif outcome.dry_run or not history.stdout_is_journal():
        from .render import printable  # not on a timer's tick: its line goes to the journal alone

        click.echo(printable(outcome.summary()))  # stop reasons can quote what the hook reported through Redis
    if not outcome.ok:
        sys.exit(EXIT_FAILED)


class _Commands(click.Group):
    """The command group; a command's bad option or argument is one line and exit 2 (click prints a
    usage block of four lines), as a bad setting is."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if exc.ctx is None or exc.ctx.command is self:  # the group's own: click's message as it is
                raise
            where = exc.ctx.command_path
            raise CommandError(f"{exc.format_message().rstrip('.')}; see '{where} --help'", EXIT_CONFIG) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dramactl")
def main() -> None:
    """Run Dramatiq workers as systemd units and size the fleet to the queue.

    Settings come from the environment, ./.env and /etc/dramactl/dramactl.env.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status(as_json: bool) -> None:
    """Queues, instances, limits and the timer.

    Everything that can be read is printed; the exit code says whether all of it was:
    0 yes, 2 Redis (or one of its queues) could not be read, 3 only systemd could not.

    Example: dramactl status --json | jq .totals
    """
    from .render import render_status
    from .status import collect

    settings = load_settings()
    data = guarded(lambda: collect(settings))
    if as_json:
        echo_json(data)
    else:
        click.echo(render_status(data))
    sys.exit(status_exit_code(data["unread"]))


def status_exit_code(unread: list[str]) -> int:
    """0 when every source was read; 2 when Redis could not be (a queue, the fleet hash or all of it), else 3 for systemd."""
    if "redis" in unread:
        return EXIT_CONFIG
    if "systemd" in unread:
        return EXIT_SYSTEMD
    return EXIT_OK


@main.command()
@click.option("--dry-run", is_flag=True, help="Decide and print, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def tick(dry_run: bool, as_json: bool) -> None:
    """One scaling step (what dramactl.timer runs).

    Example: dramactl tick --dry-run
    """
    from .scaler import tick as run_tick

    settings = load_settings()
    try:
        outcome = guarded(lambda: run_tick(settings, dry_run=dry_run))
    except CommandError as exc:
        if exc.exit_code == EXIT_BUSY:  # a manual change is running: this tick has nothing to do
            from .rollout import in_progress

            click.echo(f"skipped: {in_progress(settings.state_dir) or exc.message}")
            return
        raise
    finish(outcome, as_json)


@main.command()
@click.option("--since", metavar="TIME", help="From this time: -2h, '30 min ago', today, '2026-11-24 12:00', 12:00.")
@click.option("--until", metavar="TIME", help="Up to this time (same forms).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list instead of text.")
def history(since: str | None, until: str | None, as_json: bool) -> None:
    """Every tick and manual change in a time range, from the journal, newest last.

    Example: dramactl history --since -1h
    """
    from . import history as hist

    try:
        start, end = (hist.parse_time(t, option=o) if t else None for t, o in ((since, "--since"), (until, "--until")))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    try:
        entries = hist.read(start, end)
    except hist.JournalUnreadable as exc:
        raise CommandError(str(exc), EXIT_SYSTEMD) from None
    if as_json:
        echo_json([e.to_dict() for e in entries])
    else:
        click.echo(hist.render(entries))


@contextlib.contextmanager
def progress(length: int, label: str) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr when it is a terminal; a no-op step otherwise."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield lambda: bar.update(1)


def _replayed(since: str | None, until: str | None, sets: Sequence[str]) -> tuple:
    """The range's rebuilt messages, the settings in force and the variants, or one line and an exit code."""
    from . import history as hist
    from . import replay as rp

    try:
        for text, option in ((since, "--since"), (until, "--until")):
            if text:
                hist.parse_time(text, option=option)  # a bad time named by its option; prepare reads it again
        start, end, values, variants = rp.prepare(since, until, sets)
        return rp.load(start, end, values), values, variants
    except (ValueError, SettingsError) as exc:  # a time, a setting, a range with nothing to replay
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except hist.JournalUnreadable as exc:
        raise CommandError(str(exc), EXIT_SYSTEMD) from None


@main.command()
@click.option("--since", help="Start of the range (journalctl-like: -2h, '30 min ago', today, '2026-11-24 12:00').")
@click.option("--until", help="End of the range (default: now).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE[,NAME=VALUE]", help="A variant to replay beside the settings in force (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def replay(since: str | None, until: str | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Replay the recorded traffic under the settings in force, each --set variant, static MAX and HPA; changes nothing.

    Example: dramactl replay --since -1h --set MAX_QUEUE_WAIT=30
    """
    from . import replay as rp

    rebuilt, values, variants = _replayed(since, until, sets)
    with progress(rp.runs(variants), "replaying") as step:
        report = _runs(lambda: rp.replay(rebuilt, values, variants, step))
    echo_json(report.to_dict()) if as_json else click.echo(rp.render(report))


def _runs(fn: Callable[[], Any]) -> Any:
    """The replay's runs: a range too short or too long to replay, or a run that does not end, is one line, exit 2."""
    from .replay import ReplayError

    try:
        return fn()
    except ReplayError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None


def _p95(text: str) -> float:
    """--p95 SECONDS: a finite number above 0 (nan and inf are floats, not waits), or one line and exit 2."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise CommandError(f"--p95 {shown!r}: not a finite number of seconds above 0; give the p95 queue wait to meet, e.g. --p95 10", EXIT_CONFIG)
    return value


@main.command()
@click.option("--p95", "p95_text", required=True, metavar="SECONDS", help="The p95 queue wait to meet, in seconds.")
@click.option("--since", help="Start of the range (as for replay).")
@click.option("--until", help="End of the range (default: now).")
@click.option("--json", "as_json", is_flag=True)
def tune(p95_text: str, since: str | None, until: str | None, as_json: bool) -> None:
    """The cheapest settings that would have met a p95 wait on the recorded traffic; changes nothing.

    Example: dramactl tune --p95 10 --since -1h
    """
    from . import tune as tn

    p95 = _p95(p95_text)
    rebuilt, values, _ = _replayed(since, until, ())
    combos = tn.candidates(values)
    with progress(len(combos), "tuning") as step:
        result = _runs(lambda: tn.tune(rebuilt, values, p95, step, combos))
    echo_json(result.to_dict()) if as_json else click.echo(tn.render(result, rebuilt))
    if not result.met:
        sys.exit(EXIT_FAILED)


@main.command()
def metrics() -> None:
    """The Prometheus metrics (text exposition format) of the status now and the last tick.

    What can be read is printed (a source that cannot be read leaves its series out, never 0s); each problem is
    one line on stderr and the exit code is status's: 0 all read, 2 Redis (or a queue) not, 3 only systemd not.

    Example: dramactl metrics | grep dramactl_queue_ready_messages
    """
    from . import metrics as prom
    from .status import collect

    settings = load_settings()
    data = guarded(lambda: collect(settings))
    click.echo(prom.render(prom.from_status(data)), nl=False)
    for line in data["errors"]:
        click.echo(f"dramactl: {settings_mod.redact(line, settings)}", err=True)
    sys.exit(status_exit_code(data["unread"]))


@main.command("scale-to")
@click.argument("count", type=int)
@click.option("--threads", type=int, help="Threads per worker; running instances restart to take it.")
@click.option("--json", "as_json", is_flag=True)
@wait_option
def scale_to(count: int, threads: int | None, as_json: bool, wait: float) -> None:
    """Run exactly COUNT instances and pause autoscaling.

    Example: dramactl scale-to 4 --threads 8   (then `dramactl resume`)
    """
    from .scaler import scale_to as run

    settings = load_settings()
    finish(guarded(lambda: run(settings, count, threads=threads, wait=wait)), as_json)


@main.command("scale-up")
@click.option("-n", "count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@wait_option
def scale_up(count: int, as_json: bool, wait: float) -> None:
    """Add N instances (pauses autoscaling).

    Example: dramactl scale-up -n 2
    """
    from .scaler import scale_by

    settings = load_settings()
    finish(guarded(lambda: scale_by(settings, count, wait=wait)), as_json)


@main.command("scale-down")
@click.option("-n", "count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@wait_option
def scale_down(count: int, as_json: bool, wait: float) -> None:
    """Stop the N highest-numbered instances, draining them (pauses autoscaling).

    Example: dramactl scale-down -n 1
    """
    from .scaler import scale_by

    settings = load_settings()
    finish(guarded(lambda: scale_by(settings, -count, wait=wait)), as_json)


@main.command()
@click.option("--batch", default="1", show_default=True, metavar="K", help="Instances replaced at a time (1 to MAX_PROCESSES).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (progress still goes to stderr).")
@click.option(
    "--wait", default=str(LOCK_WAIT), show_default=True, metavar="SECONDS", help="How long to wait for a running tick or manual change; then exit 4."
)
def restart(batch: str, as_json: bool, wait: str) -> None:
    """Rolling restart: every instance replaced by one running the code and settings on disk now.

    Each replacement starts first (when MAX_PROCESSES leaves room) and consumes
    (READY=1) before the old instance drains; autoscaling is held meanwhile. A
    replacement that does not start stops the roll: the instances not yet replaced
    keep serving; at MAX_PROCESSES the instance drained first to make room for it is
    not running until a tick starts it again (the line says which).

    Example: dramactl restart --batch 2
    """
    from .rollout import restart as run

    # Each bad value is one line and exit 2, as for --batch above MAX_PROCESSES (not click's usage block).
    seconds = _restart_wait(wait)
    settings = load_settings()
    count = _restart_batch(batch, settings.max_processes)
    outcome = guarded(lambda: run(settings, batch=count, wait=seconds, progress=lambda line: click.echo(line, err=True)))
    if outcome.failure:
        click.echo(f"dramactl: rolling restart stopped: {outcome.failure}", err=True)
    finish(outcome, as_json)


def _restart_batch(text: str, max_processes: int) -> int:
    """--batch K as a whole number; rollout.restart refuses one outside 1 to MAX_PROCESSES, in the same form."""
    try:
        return int(text.strip())
    except ValueError:
        raise CommandError(f"--batch: {settings_mod.cut(repr(text))} is not a whole number; use 1 to MAX_PROCESSES={max_processes}", EXIT_CONFIG) from None


def _restart_wait(text: str) -> float:
    """--wait SECONDS: a number of seconds, 0 or more (inf: as long as it takes)."""
    try:
        seconds = float(text.strip())
    except ValueError:
        raise CommandError(f"--wait: {settings_mod.cut(repr(text))} is not a number of seconds; use 0 or more", EXIT_CONFIG) from None
    if seconds != seconds or seconds < 0:  # NaN compares false with everything: it would wait for ever
        raise CommandError(f"--wait: {settings_mod.cut(text.strip())} is out of range; use 0 seconds or more", EXIT_CONFIG)
    return seconds


def _set_paused(paused: bool, message: str, wait: float) -> None:
    from .scaler import set_paused

    settings = load_settings()
    guarded(lambda: set_paused(settings, paused, wait=wait))
    if settings.fleet_name:
        from .share import scope

        message += f" ({scope(settings)})"
    click.echo(message)


@main.command()
@wait_option
def pause(wait: float) -> None:
    """Stop the timer's ticks from changing the fleet.

    Example: dramactl pause
    """
    _set_paused(True, "autoscaling paused: ticks report but do not change the fleet; `dramactl resume` undoes it", wait)


@main.command()
@wait_option
def resume(wait: float) -> None:
    """Hand the fleet size back to the timer.

    Example: dramactl resume
    """
    _set_paused(False, "autoscaling resumed: the next tick sizes the fleet", wait)


@main.command()
def check() -> None:
    """Validate the settings, reach Redis, resolve the worker command.

    Example: dramactl check && systemctl start dramactl.timer
    """
    from . import queue
    from .install import check_reach
    from .worker import worker_argv

    settings = load_settings()
    stats = guarded(lambda: queue.read(settings))
    argv = guarded(lambda: worker_argv(settings, settings.worker_threads))
    guarded(lambda: check_reach(settings, only_existing_users=True))
    click.echo(f"settings ok (from {', '.join(settings.sources) or 'environment only'})")
    for note in settings_mod.unread_settings():
        click.echo(f"note: {note}")
    exposed = settings_mod.exposed_password()
    if exposed:
        click.echo(f"dramactl: warning: {exposed}", err=True)
    click.echo(f"redis ok at {settings.redis_location}: " + ", ".join(f"{q.name}={q.backlog}" for q in stats))
    click.echo("worker command: " + " ".join(argv))
    if settings.fleet_name:
        from .fleetplan import short_ttl

        click.echo(guarded(lambda: _fleet_check(settings)))
        warning = short_ttl(settings)
        if warning:
            click.echo(f"dramactl: warning: {warning}", err=True)


def _fleet_check(settings: Settings) -> str:
    """`check`'s line for a host of a fleet: its identity, and its settings against the fleet's record."""
    from . import queue, share

    with queue.redis_errors(settings):
        snap = share.snapshot(queue.connect(settings), settings)
    who = f"fleet {settings.fleet_name}: this host is {share.host_name()} (id {share.host_id()}), {len(snap.live())} live host(s)"
    if snap.record is None:
        return f"{who}; no settings record yet: this host's settings become the fleet's at its first tick"
    differ = share.differences(settings, snap.record)
    if not differ:
        return f"{who}; settings agree with the fleet's record"
    return (
        f"{who}; this host's settings differ from the fleet's record ({'; '.join(differ)}): it follows the fleet's;"
        " set the same values on every host (the record follows once every live host agrees)"
    )


@main.command()
@click.option("--root", default="/", show_default=True, help="Install below this directory (packaging, tests; skips the check that the service users can reach the code).")
@click.option("--no-users", is_flag=True, help="Do not create the dramactl and dramatiq users.")
@click.option("--no-reload", is_flag=True, help="Do not ask systemd to reload.")
def install(root: str, no_users: bool, no_reload: bool) -> None:
    """Install units, polkit rule, users and env file for a pip install (as root).

    Example: sudo dramactl install && sudo systemctl enable --now dramactl.timer
    """
    from .install import install as run

    settings = load_settings()
    report = guarded(lambda: run(settings, root=root, users=not no_users, reload=not no_reload))
    for line in report.actions or ["already installed, nothing changed"]:
        click.echo(line)


@main.command()
@click.option("--root", default="/", show_default=True, help="Write below this directory.")
@click.option("--no-reload", is_flag=True, help="Do not ask systemd to reload.")
def configure(root: str, no_reload: bool) -> None:
    """Apply CHECK_INTERVAL, GRACEFUL_SHUTDOWN_TIMEOUT, WATCHDOG_SEC and WORKER_MEMORY_HIGH/MAX to the units (drop-ins, as root).

    Example: sudo dramactl configure   (after editing /etc/dramactl/dramactl.env)
    """
    from .install import configure as run

    settings = load_settings()
    report = guarded(lambda: run(settings, root=root, reload=not no_reload))
    for line in report.actions or ["units already match the settings"]:
        click.echo(line)


@main.command()
@click.argument("count", type=click.IntRange(min=1))
@click.option("--rate", type=float, help="Messages per second (default: as fast as possible).")
@click.option("--kind", type=click.Choice(["email", "ocr", "high", "low", "mixed"]), default="email", show_default=True)
@click.option("--seconds", type=float, help="How long each example task works.")
@click.option("--fail-times", type=click.IntRange(min=0), default=0, help="Attempts each message fails before it succeeds (shows retries).")
def load(count: int, rate: float | None, kind: str, seconds: float | None, fail_times: int) -> None:
    """Enqueue COUNT example messages, to watch the fleet scale.

    Example: dramactl load 200 --rate 50 --seconds 0.5
    """
    from .load import send_load

    settings = load_settings()
    started = time.monotonic()

    def progress(sent: int, total: int) -> None:
        if sent == total or sent % max(1, total // 10) == 0:
            click.echo(f"sent {sent}/{total}", err=True)

    try:
        ids = guarded(lambda: send_load(settings, count, rate=rate, kind=kind, seconds=seconds, fail_times=fail_times, progress=progress))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except ImportError as exc:
        raise CommandError(f"load sends the example app's messages and needs Dramatiq beside dramactl ({exc}); pip install 'dramatiq[redis]'", EXIT_CONFIG) from None
    click.echo(f"enqueued {len(ids)} {kind} messages in {time.monotonic() - started:.1f}s")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="DASHBOARD_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="DASHBOARD_PORT")
def dashboard(host: str, port: int) -> None:
    """Serve a web view of the queues and instances.

    Example: dramactl dashboard --port 8080   (then open http://127.0.0.1:8080)
    """
    from .dashboard import BadHost, serve

    if not 0 <= port <= 65535:
        raise CommandError(f"--port/DASHBOARD_PORT: {port} is not a port; use one from 1 to 65535 (0: any free one)", EXIT_CONFIG)
    settings = load_settings()
    try:
        serve(settings, host=host, port=port, on_ready=lambda url: click.echo(f"dashboard on {url} (Ctrl-C stops it)", err=True))
    except BadHost as exc:
        raise CommandError(f"--host/DASHBOARD_HOST: {exc}; use an address such as 127.0.0.1 or 0.0.0.0, or a host name", EXIT_CONFIG) from None
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); choose another --port or DASHBOARD_PORT", EXIT_CONFIG) from None


@main.command()
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads (default WORKER_THREADS).")
def dev(threads: int | None) -> None:
    """Run one worker in the foreground, reloading on code change (no systemd).

    Example: dramactl dev --threads 2
    """
    import os

    from .worker import exec_worker

    values, sources = settings_mod.read_sources()
    settings = guarded(lambda: settings_mod.parse(values, sources))
    watch = settings.worker_directory or os.getcwd()
    click.echo(f"dramactl dev: {settings.dramatiq_command} (reloading on changes under {watch})", err=True)
    guarded(lambda: exec_worker(settings, threads or settings.worker_threads, 0, values, watch=watch))


@main.command("worker-exec", hidden=True)
@click.argument("instance", type=int)
def worker_exec(instance: int) -> None:
    """What dramatiq-worker@N.service runs: exec Dramatiq with the fleet's settings."""
    from .state import StateStore
    from .worker import exec_worker

    values, sources = settings_mod.read_sources()
    settings = guarded(lambda: settings_mod.parse(values, sources))
    threads = guarded(lambda: StateStore(settings.state_dir).load()).threads or settings.worker_threads
    guarded(lambda: exec_worker(settings, threads, instance, values))


if __name__ == "__main__":
    main()
