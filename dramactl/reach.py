"""Can the service users reach what their units run? Checked with os.stat, before anything changes.

The units run as ``dramactl`` (the tick) and ``dramatiq`` (the workers). Each needs
to search (x) every directory on the way to the interpreter, the dramactl package,
the app's ``dramatiq`` and its interpreter, and WORKER_DIRECTORY, following symlinks
to where they really are (a venv's python3 may point into a pyenv under /root).
The sandbox hides more: ``ProtectHome=`` hides /root (and /home, /run/user) and
``PrivateTmp=`` hides /tmp and /var/tmp. ``install`` binds paths under the latter
back read-only (:data:`BINDABLE`); nothing brings back what is below /root.

Owner, group and mode bits decide, with the user's uid and groups from pwd/grp; a
user that does not exist yet (``install`` is about to create it) owns nothing and
is in no group, so only the "other" bits count for it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .settings import Settings, SettingsError

SERVICE_USERS = ("dramatiq", "dramactl")  # workers, tick
UNBINDABLE = ("/root",)  # ProtectHome= hides it and its 0700 mode keeps service users out of any bind below it
BINDABLE = ("/tmp", "/var/tmp", "/home", "/run/user")  # hidden, but `dramactl install` binds code there back
READ, SEARCH = 4, 1  # permission bits, as in the "other" triplet
PACKAGE_DIR = str(Path(__file__).resolve().parent)


@dataclass(frozen=True)
class User:
    """Who a unit runs as: uid None for a user that does not exist yet."""

    name: str
    uid: int | None = None
    gids: frozenset[int] = frozenset()

    @classmethod
    def lookup(cls, name: str) -> "User":
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return cls(name)
        gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, pw.pw_uid, frozenset(gids))

    @property
    def exists(self) -> bool:
        return self.uid is not None


@dataclass(frozen=True)
class Target:
    """One path a unit needs: the setting it comes from, who needs it, and how to fix it."""

    setting: str
    path: str
    users: tuple[str, ...]
    bits: int  # READ | SEARCH for a directory or script, SEARCH for a binary
    fix: str  # when the path itself (its directories) is out of reach
    fix_resolved: str = ""  # when what it resolves to is (default: fix)


def allows(st: os.stat_result, user: User, bits: int) -> bool:
    """Whether mode bits, owner and group let ``user`` have ``bits`` (READ, SEARCH) on a file."""
    if user.uid == 0:
        return True
    mode = st.st_mode
    if user.uid is not None and st.st_uid == user.uid:
        have = (mode >> 6) & 7
    elif st.st_gid in user.gids:
        have = (mode >> 3) & 7
    else:
        have = mode & 7
    return have & bits == bits


def _under(path: str, prefixes: Sequence[str]) -> str | None:
    return next((p for p in prefixes if path == p or path.startswith(p + "/")), None)


def _walk(path: str, user: User, bits: int) -> str | None:
    """Why ``user`` cannot get to ``path`` as written (every directory on the way, then the file), or None."""
    p = Path(path)
    for d in [*reversed(p.parents), p]:
        try:
            st = os.stat(d)
        except OSError:
            return f"{d} does not exist"
        want = bits if d == p else SEARCH
        if not allows(st, user, want):
            return f"{d} is mode {stat.S_IMODE(st.st_mode):04o}"
    return None


def blocker(path: str, user: User, bits: int) -> tuple[str, str] | None:
    """(the path that fails, why) when ``user`` cannot use ``path`` as a unit would, else None.

    Checks the path as written, then where it really is (symlinks resolved), then
    whether the sandbox hides it for good.
    """
    real = os.path.realpath(path)
    for candidate in dict.fromkeys((os.path.abspath(path), real)):
        why = _walk(candidate, user, bits)
        if why:
            return candidate, why
    hidden = _under(real, UNBINDABLE)
    if hidden:
        return real, f"{hidden} is hidden from the units by ProtectHome="
    return None


def shebang_interpreter(script: str) -> str | None:
    """The interpreter a script's ``#!`` line names (through ``env``), or None for a binary."""
    try:
        with open(script, "rb") as f:
            line = f.readline(512)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0]


def targets(settings: Settings, argv0: str, interpreter: str = sys.executable) -> list[Target]:
    """What the units run: ``argv0`` is the worker command's executable (worker.worker_argv)."""
    venv_fix = "make the venv under /opt with /usr/bin/python3, e.g. /usr/bin/python3 -m venv /opt/dramactl/venv"
    found = [
        Target("interpreter", interpreter, SERVICE_USERS, SEARCH, venv_fix, "make the venv with /usr/bin/python3"),
        Target("dramactl", PACKAGE_DIR, SERVICE_USERS, READ | SEARCH, "install dramactl where its users can read it: " + venv_fix),
    ]
    if os.path.realpath(argv0) != os.path.realpath(interpreter):
        app_fix = "use a dramatiq from a venv the dramatiq user can read, e.g. under /srv or /opt"
        found.append(Target("DRAMATIQ_COMMAND", argv0, ("dramatiq",), READ | SEARCH, app_fix))
        script_python = shebang_interpreter(argv0)
        if script_python:
            found.append(Target("DRAMATIQ_COMMAND", script_python, ("dramatiq",), SEARCH, app_fix, "make the app's venv with /usr/bin/python3"))
    if settings.worker_directory:
        found.append(
            Target("WORKER_DIRECTORY", settings.worker_directory, ("dramatiq",), READ | SEARCH, "put the app where the dramatiq user can read it, e.g. /srv/app")
        )
    return found


def check(found: Iterable[Target], users: Iterable[User]) -> None:
    """SettingsError, as one line naming the path and the fix, for the first target a user cannot reach."""
    by_name = {u.name: u for u in users}
    for target in found:
        for name in target.users:
            user = by_name.get(name)
            if user is None:
                continue
            problem = blocker(target.path, user, target.bits)
            if problem:
                path, why = problem
                resolved = path != os.path.abspath(target.path)
                raise SettingsError(
                    target.setting, f"{path} is not reachable by user {name} ({why})", (target.fix_resolved or target.fix) if resolved else target.fix
                )


def bind_candidates(found: Iterable[Target]) -> list[str]:
    """Directories to bind back into the sandbox: each target's real place (a file's install prefix) under BINDABLE."""
    out = set()
    for target in found:
        real = os.path.realpath(target.path)
        if os.path.isfile(real):
            real = str(Path(real).parents[1])  # .../bin/python3.11 -> the prefix with its lib/
        if _under(real, BINDABLE):
            out.add(real)
    return sorted(out)
