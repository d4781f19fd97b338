"""The tick history: one structured journal entry per tick or manual change, and reading them back.

Every tick and manual command (``scale-to``, ``scale-up``, ``scale-down``) writes one
journal entry with python-systemd's ``journal.send``: ``MESSAGE`` is the one-line
summary (``scaler.Outcome.summary``) and the ``DRAMACTL_*`` fields below carry the
same facts as values, so ``journalctl -u dramactl.service -o json`` users get them too.
``dramactl history`` reads them back with ``systemd.journal.Reader``.

This is the only writer of the tick line. The line also goes to stdout unless stdout
*is* the journal (``$JOURNAL_STREAM`` names stdout's device and inode, as systemd sets
it for a unit's stdout), so a tick under systemd is logged once, with its fields, and a
command typed in a terminal still prints its line.

``systemd.journal`` is imported only when writing or reading: the rest of the tick
does not pay for it.

Any local user can send a journal entry with ``DRAMACTL_KIND=tick`` (``systemd-cat``,
python-systemd), a worker's app included, so the readers take only the entries whose
trusted fields (set by journald from the sender's credentials, never by the sender)
show dramactl wrote them: see :func:`from_dramactl`.
"""

from __future__ import annotations

import glob
import grp
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator

KINDS = ("tick", "manual")
#: Who writes the history (see :func:`from_dramactl`): the timer's unit, its user, and root.
TICK_UNIT = "dramactl.service"
SCALER_USER = "dramactl"
REASON_CLASSES = ("up", "down", "steady", "held", "paused", "manual")
JOURNAL_GROUPS = ("systemd-journal", "adm", "wheel")

#: Field name -> meaning; README's table is generated from the same words.
FIELDS = {
    "DRAMACTL_KIND": "`tick` (the timer, or `dramactl tick` by hand) or `manual` (scale-to, scale-up, scale-down, restart)",
    "DRAMACTL_COMMAND": "the dramactl command that wrote it: `tick`, `scale-to`, `scale-up`, `scale-down`, `restart`",
    "DRAMACTL_CURRENT": "instances up before the step",
    "DRAMACTL_TARGET": "instances decided",
    "DRAMACTL_WANTED": "the policy's raw recommendation before limits, stabilization and holds",
    "DRAMACTL_REASON": "the decision's reason, as in the message",
    "DRAMACTL_REASON_CLASS": "`up`, `down`, `steady`, `held` (failing instances block growth), `paused` or `manual`",
    "DRAMACTL_BACKLOG": "ready + due + in flight + orphaned, over all queues",
    "DRAMACTL_READY": "ready messages, all queues",
    "DRAMACTL_DELAYED": "delayed messages, all queues",
    "DRAMACTL_DUE": "delayed messages whose eta passed",
    "DRAMACTL_IN_FLIGHT": "fetched by a live worker, not yet acked",
    "DRAMACTL_ORPHANED": "fetched by a worker whose heartbeat expired",
    "DRAMACTL_DEAD": "dead-lettered messages",
    "DRAMACTL_OLDEST_AGE": "seconds the oldest ready message waited (empty: nothing ready)",
    "DRAMACTL_NEWEST_AGE": "seconds since the newest ready message was sent, the smallest over the queues: the ready messages came between it and DRAMACTL_OLDEST_AGE before the read (about: a retry or a pipeline's step carries the time it was built) (empty: nothing ready, or a queue's newest unknown)",
    "DRAMACTL_QUEUES": "JSON list: each queue's figures (name, ready, delayed, due, in_flight, orphaned, dead, oldest_age, newest_age (seconds since the newest ready message, the list's tail, was sent; null when unknown), backlog, and the worker hook's cumulative done_total, busy_seconds_total and busy_sq_total (the sum of squared busy seconds), from which `dramactl replay` rebuilds the traffic)",
    "DRAMACTL_INSTANCES": "JSON object: instances by systemd active state before the step, e.g. {\"active\": 2}",
    "DRAMACTL_ACTIONS": "JSON list of the jobs and their results: [{\"verb\": \"start\", \"unit\": \"dramatiq-worker@3.service\", \"result\": \"done\"}]",
    "DRAMACTL_STARTED": "instances started (count)",
    "DRAMACTL_STOPPED": "instances stopped (count)",
    "DRAMACTL_OK": "1 when every job ended done (or still draining), else 0",
    "DRAMACTL_PAUSED": "1 when autoscaling is paused",
    "DRAMACTL_VICTIMS": "JSON list: each instance stopped and why it was chosen, e.g. [{\"instance\": 3, \"why\": \"idle\", \"chosen\": \"idle\"}] (chosen: idle, busy or unreported; [] when none)",
    "DRAMACTL_WAITING": "JSON list: instances a scale-down waits for, with the long task each runs ([] when none)",
    "DRAMACTL_RECYCLE": "the instance a tick replaced for its memory, e.g. `@3 612 MiB > 512 MiB` (WORKER_RECYCLE_MEMORY); absent otherwise",
    "DRAMACTL_DURATION": "seconds the tick took from taking the lock to saving its state (reading, deciding, acting; not the process start), ticks only",
}

_INT_FIELDS = ("current", "target", "wanted", "backlog", "ready", "delayed", "due", "in_flight", "orphaned", "dead", "started", "stopped")
#: The integer fields that count instances (the rest count messages, ``wanted`` instances the policy asked for).
_INSTANCE_FIELDS = ("current", "target", "started", "stopped")
#: The largest count of instances an entry can hold: a thousand times MAX_PROCESSES' limit (1000); the simulator
#: numbers instances below a million.
MAX_INSTANCES = 1_000_000
#: The largest count of messages (or ``wanted``) an entry can hold: the largest integer a float holds exactly
#: (2**53), so every figure computed from it (a replay's sums and rates) is finite and exact. Redis' list
#: lengths fit far below it in any memory.
MAX_COUNT = 2**53


log = logging.getLogger("dramactl.history")


class DamagedEntry(ValueError):
    """A journal entry one of whose fields cannot be read: the readers skip it, naming its time and the field."""

    def __init__(self, at: float, name: str, problem: str) -> None:
        self.at, self.field = at, name
        super().__init__(f"{name}: {problem}")


class JournalUnreadable(PermissionError):
    """This user cannot read the system journal; the message says how to fix it."""


def reason_class(outcome: Any, kind: str) -> str:
    """One word for why the size is what it is (pure)."""
    d = outcome.decision
    if kind == "manual":
        return "manual"
    if outcome.paused:
        return "paused"
    if d.held:
        return "held"
    return "up" if d.delta > 0 else "down" if d.delta < 0 else "steady"


def instance_states(instances: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for u in instances:
        counts[u.active_state] = counts.get(u.active_state, 0) + 1
    return dict(sorted(counts.items()))


def fields(outcome: Any, command: str, duration: float | None = None) -> dict[str, str]:
    """The journal entry of one outcome: MESSAGE plus the DRAMACTL_* fields, all strings (pure)."""
    kind = "tick" if command == "tick" else "manual"
    d = outcome.decision
    b = outcome.backlog
    jobs = outcome.started + outcome.stopped + outcome.restarted
    out = {
        "MESSAGE": outcome.summary(),
        "PRIORITY": "6" if outcome.ok and not d.held else "4",
        "SYSLOG_IDENTIFIER": "dramactl",
        "DRAMACTL_KIND": kind,
        "DRAMACTL_COMMAND": command,
        "DRAMACTL_CURRENT": str(d.current),
        "DRAMACTL_TARGET": str(d.target),
        "DRAMACTL_WANTED": str(d.target if d.wanted is None else d.wanted),
        "DRAMACTL_REASON": d.reason,
        "DRAMACTL_REASON_CLASS": reason_class(outcome, kind),
        "DRAMACTL_INSTANCES": json.dumps(instance_states(getattr(outcome, "instances", ())), sort_keys=True),
        "DRAMACTL_ACTIONS": json.dumps([{"verb": j.verb, "unit": j.unit, "result": j.result} for j in jobs]),
        "DRAMACTL_STARTED": str(len(outcome.started)),
        "DRAMACTL_STOPPED": str(len(outcome.stopped)),
        "DRAMACTL_OK": "1" if outcome.ok else "0",
        "DRAMACTL_PAUSED": "1" if outcome.paused else "0",
    }
    chosen = getattr(outcome, "plan", None)  # why each stopped instance was chosen; the ones waited for
    out["DRAMACTL_VICTIMS"] = json.dumps([{"instance": p.number, "why": p.why, "chosen": p.kind} for p in getattr(chosen, "picks", ())])
    out["DRAMACTL_WAITING"] = json.dumps([{"instance": p.number, "why": p.why} for p in getattr(chosen, "waiting", ())])
    if getattr(outcome, "recycled", None):
        out["DRAMACTL_RECYCLE"] = outcome.recycled.removeprefix("recycle ").replace("(", "").replace(")", "")
    if outcome.queues is not None:  # a manual command that could not reach Redis leaves the figures out
        out.update({
            "DRAMACTL_BACKLOG": str(b.backlog),
            "DRAMACTL_READY": str(b.ready),
            "DRAMACTL_DELAYED": str(b.delayed),
            "DRAMACTL_DUE": str(b.due),
            "DRAMACTL_IN_FLIGHT": str(b.in_flight),
            "DRAMACTL_ORPHANED": str(b.orphaned),
            "DRAMACTL_DEAD": str(b.dead),
            "DRAMACTL_OLDEST_AGE": "" if b.oldest_age is None else f"{b.oldest_age:.3f}",
            "DRAMACTL_NEWEST_AGE": "" if b.newest_age is None else f"{b.newest_age:.3f}",
            "DRAMACTL_QUEUES": json.dumps([q.to_dict() for q in outcome.queues], sort_keys=True),
        })
    fleet = getattr(outcome, "fleet", None)
    if fleet is not None:  # FLEET_NAME: the fleet's decision this host applied
        out.update({
            "DRAMACTL_FLEET_TARGET": str(fleet.fleet.target),
            "DRAMACTL_FLEET_CAP": str(fleet.fleet.cap),
            "DRAMACTL_FLEET_HOSTS": ",".join(h.name for h in fleet.hosts),
            "DRAMACTL_FLEET_SHARE": str(fleet.share),
            "DRAMACTL_FLEET_DECIDED_BY": fleet.fleet.by,
        })
    if duration is not None:
        out["DRAMACTL_DURATION"] = f"{duration:.3f}"
    return out


def stdout_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when stdout is connected to the journal ($JOURNAL_STREAM names its device:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stdout.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def send(entry: dict[str, str]) -> None:
    """Write one entry to the journal (a no-op where no journald listens)."""
    from systemd import journal

    message = entry["MESSAGE"]
    journal.send(message, **{k: v for k, v in entry.items() if k != "MESSAGE"})


# ---- reading ------------------------------------------------------------------------


@dataclass
class Entry:
    """One tick or manual change read back from the journal."""

    at: float
    kind: str
    command: str
    current: int
    target: int
    reason: str
    reason_class: str
    backlog: int = 0
    ready: int = 0
    delayed: int = 0
    due: int = 0
    in_flight: int = 0
    orphaned: int = 0
    dead: int = 0
    wanted: int | None = None
    oldest_age: float | None = None
    queues: list = field(default_factory=list)
    instances: dict = field(default_factory=dict)
    actions: list = field(default_factory=list)
    started: int = 0
    stopped: int = 0
    ok: bool = True
    paused: bool = False
    duration: float | None = None
    message: str = ""
    victims: list = field(default_factory=list)
    waiting: list = field(default_factory=list)
    newest_age: float | None = None  # absent from entries written before it was recorded

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_journal(cls, record: dict) -> "Entry":
        """From a Reader record (str values; the timestamp a datetime) or journalctl -o json (all strings)."""
        def get(name: str, default: str = "") -> str:
            value = record.get(f"DRAMACTL_{name.upper()}", default)
            return value.decode() if isinstance(value, bytes) else str(value)

        at = 0.0

        def read(name: str, convert: Callable[[str], Any], default: str) -> Any:
            raw = get(name, default) or default
            try:
                return convert(raw)
            except (ValueError, OverflowError, RecursionError) as exc:  # int('x'), float('1e999x'), json.loads('['), '[' * 5000
                raise DamagedEntry(at, f"DRAMACTL_{name.upper()}", f"{raw[:40]!r} cannot be read ({exc})") from None

        stamp = record.get("__REALTIME_TIMESTAMP")
        try:
            at = stamp.timestamp() if isinstance(stamp, datetime) else int(stamp) / 1e6 if stamp else 0.0
        except (ValueError, TypeError, OverflowError) as exc:
            raise DamagedEntry(0.0, "__REALTIME_TIMESTAMP", f"{str(stamp)[:40]!r} is not a time ({exc})") from None
        def count(name: str) -> int:
            """An integer field: a count, never negative, never more than MAX_INSTANCES / MAX_COUNT (a damaged
            or forged value such as a 400-digit number: no figure computed from it would fit a float)."""
            value = read(name, int, "0")
            high = MAX_INSTANCES if name in _INSTANCE_FIELDS else MAX_COUNT
            if not 0 <= value <= high:
                raw = get(name)
                shown = raw if len(raw) <= 40 else raw[:37] + "..."
                raise DamagedEntry(at, f"DRAMACTL_{name.upper()}", f"{shown!r} is not a count from 0 to {high:,}")
            return value

        ints = {n: count(n) for n in _INT_FIELDS}
        wanted = ints.pop("wanted")
        optional = lambda v: float(v) if v else None  # noqa: E731 - absent: None
        age, dur = read("oldest_age", optional, ""), read("duration", optional, "")
        newest = read("newest_age", optional, "")
        return cls(
            at=at,
            kind=get("kind"),
            command=get("command"),
            reason=get("reason"),
            reason_class=get("reason_class"),
            wanted=wanted,
            oldest_age=age,
            newest_age=newest,
            queues=read("queues", json.loads, "[]"),
            instances=read("instances", json.loads, "{}"),
            actions=read("actions", json.loads, "[]"),
            ok=get("ok", "1") == "1",
            paused=get("paused", "0") == "1",
            duration=dur,
            victims=read("victims", json.loads, "[]"),
            waiting=read("waiting", json.loads, "[]"),
            message=str(record.get("MESSAGE", "")),
            **ints,
        )


def can_read_system_journal() -> bool:
    """Root, a member of systemd-journal/adm/wheel, or a user the system journal files are readable to."""
    if os.geteuid() == 0:
        return True
    files = glob.glob("/var/log/journal/*/system*.journal") + glob.glob("/run/log/journal/*/system*.journal")
    if files:
        return any(os.access(f, os.R_OK) for f in files)
    names = set()
    for gid in os.getgroups():
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return bool(names & set(JOURNAL_GROUPS))


def read(since: float | None = None, until: float | None = None) -> list[Entry]:
    """Every entry between ``since`` and ``until`` (epoch seconds), oldest first.

    Raises JournalUnreadable when this user cannot read the system journal.
    """
    return list(entries(since, until))


def entries(since: float | None = None, until: float | None = None) -> Iterator[Entry]:
    """:func:`read`, one entry at a time (``dramactl replay`` keeps a few numbers of each, not the entries).

    Raises JournalUnreadable, before the first entry, when this user cannot read the system journal.
    """
    check_readable()
    return _entries(since, until)


def check_readable() -> None:
    """Raises JournalUnreadable, with the fix, when this user cannot read the system journal."""
    if not can_read_system_journal():
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        raise JournalUnreadable(
            f"user {user} cannot read the system journal, where the tick history is; "
            "add it to the systemd-journal or adm group (then log in again), or use sudo"
        )


def writer_uids() -> frozenset[int]:
    """The users whose entries are dramactl's wherever they ran: root (the manual commands, ``dramactl tick`` by
    hand) and the scaler user ``dramactl`` when it exists (the ticks; its manual commands, as polkit lets it)."""
    import pwd

    uids = {0}
    try:
        uids.add(pwd.getpwnam(SCALER_USER).pw_uid)
    except KeyError:  # not installed here (a development checkout): root only
        pass
    return frozenset(uids)


def from_dramactl(record: dict, uids: Iterable[int]) -> bool:
    """True when a journal record was written by dramactl, by its trusted fields alone (pure).

    journald sets the fields that start with ``_`` from the sending process (``_UID`` from the socket's
    credentials, ``_SYSTEMD_UNIT`` from its cgroup) and drops any a sender passes: a worker's app, or any
    local user, can write ``DRAMACTL_KIND=tick`` but not these. Taken: an entry whose ``_UID`` is one of
    ``uids`` (:func:`writer_uids`: root, the scaler user), or whose ``_SYSTEMD_UNIT`` is dramactl.service
    (the timer's tick, whichever user a drop-in runs it as: only root defines system units, and a user's
    own units are under user@UID.service). Anything else, a record without the fields included, is not."""
    uid = record.get("_UID")
    if isinstance(uid, bytes):
        uid = uid.decode("ascii", "replace")
    try:
        if uid is not None and int(uid) in uids:
            return True
    except (ValueError, TypeError):
        pass
    unit = record.get("_SYSTEMD_UNIT")
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    return unit == TICK_UNIT


def _entries(since: float | None, until: float | None) -> Iterator[Entry]:
    from systemd import journal

    # Reader() opens this machine's journals only (LOCAL_ONLY, its default: the system one and users'), not
    # another machine's kept here (a container's linked journal, systemd-journal-remote's), whose root is _UID=0.
    reader = journal.Reader()
    for kind in KINDS:
        reader.add_match(DRAMACTL_KIND=kind)
    if since is not None:
        reader.seek_realtime(datetime.fromtimestamp(since))
    uids = writer_uids()
    yield from readable((record for record in reader if from_dramactl(record, uids)), since, until)


def readable(records: Iterable[dict], since: float | None = None, until: float | None = None) -> Iterator[Entry]:
    """The entries of journal ``records`` in the range; a damaged one is skipped, the first of each damaged field
    named in one line (a replay or the history goes on without it)."""
    named: set[str] = set()
    for record in records:
        try:
            entry = Entry.from_journal(record)
        except DamagedEntry as exc:
            if (since is not None and exc.at < since) or (until is not None and exc.at > until):
                continue
            if exc.field not in named:
                named.add(exc.field)
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exc.at)) if exc.at else "an unknown time"
                log.warning("skipping the damaged journal entry of %s (%s); later entries damaged in %s are skipped too",
                            when, exc, exc.field)
            continue
        if since is not None and entry.at < since:
            continue
        if until is not None and entry.at > until:
            break
        yield entry


_RELATIVE = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)(?:\s+ago)?\s*$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None, option: str = "") -> float:
    """journalctl-like times: `now`, `today`, `yesterday`, `-2h`, `30 min ago`, `2026-11-24 12:00[:00]`, `12:00`, or epoch `@1700000000`.

    ValueError, one line naming ``option`` (e.g. ``--since``) when given, for a time it cannot read or one
    outside what the journal can seek to (before 1970 or after 9999)."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    named = f"cannot read time {shown!r}" + (f" ({option})" if option else "")
    value = _parse_time(text, time.time() if now is None else now)
    if value is None:
        raise ValueError(f"{named}: use e.g. -2h, '30 min ago', today, '2026-11-24 12:00' or 12:00")
    try:
        datetime.fromtimestamp(value)  # what the journal's seek takes
        readable = value >= 0
    except (ValueError, OverflowError, OSError):
        readable = False
    if not readable:
        raise ValueError(f"{named}: it is out of range; use a time from 1970 to 9999, e.g. -2h or '2026-11-24 12:00'")
    return value


def _parse_time(text: str, now: float) -> float | None:
    t = text.strip()
    if t == "now":
        return now
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if t == "today":
        return midnight.timestamp()
    if t == "yesterday":
        return (midnight - timedelta(days=1)).timestamp()
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            return None
    m = _RELATIVE.match(t)
    if m:
        seconds = float(m.group(2)) * _UNITS[m.group(3)]
        return now + seconds if m.group(1) == "+" else now - seconds
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(t, fmt).timestamp()
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.strptime(t, fmt)
            return midnight.replace(hour=clock.hour, minute=clock.minute, second=clock.second).timestamp()
        except ValueError:
            pass
    return None


def render(entries: list[Entry]) -> str:
    """The text of `dramactl history`: one line per entry, oldest first (pure).

    Every string of an entry is shown :func:`dramactl.render.printable`: a reason can quote Redis (a queue's
    name, a host's label), and no control character in it reaches the terminal."""
    from .render import printable, printable_lines

    if not entries:
        return "no ticks or manual changes in this range"
    lines = [f"{'TIME':<19} {'KIND':<10} {'BACKLOG':>7} {'READY':>6} {'FLIGHT':>6} {'OLDEST':>7}  {'WORKERS':<8} {'CLASS':<7} {'SECS':>5}  REASON | ACTIONS"]
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        kind = printable(e.kind if e.kind == "tick" else e.command)
        age = "-" if e.oldest_age is None else f"{e.oldest_age:.0f}s"
        secs = "-" if e.duration is None else f"{e.duration:.2f}"
        acts = " ".join(f"{a['verb']} @{a['unit'].split('@')[1].split('.')[0]}:{a['result']}" for a in e.actions if "@" in a.get("unit", ""))
        reason = printable(e.reason + (f" | {acts}" if acts else ""))
        lines.append(
            f"{when:<19} {kind:<10} {e.backlog:>7} {e.ready:>6} {e.in_flight:>6} {age:>7}  {f'{e.current} -> {e.target}':<8} {printable(e.reason_class):<7} {secs:>5}  {reason}"
        )
    return printable_lines(lines)
