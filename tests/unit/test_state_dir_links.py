"""The state directory belongs to the scaler's user; root's manual commands (pause, resume,
scale-*, restart, tick) write in it too. Nothing root does there may follow a link that user
planted or change a file by a path that user can swap: that was a way from the scaler's user
to root (a link at tick.lock to /etc/passwd, and `dramactl pause` gave /etc/passwd to it).
A worker's user must not be able to open the tick lock either (holding it stops every tick).

Run as root, like CI: the directory is given to another uid, as StateDirectory= gives it to
the scaler's user."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from dramactl import rollout
from dramactl.state import ScalerState, StateDirError, StateStore
from tests.conftest import need

SCALER_UID = 65534  # nobody: stands in for the scaler's user


@pytest.fixture
def scaler_dir() -> Iterator[Path]:
    """A 0755 directory the scaler's user owns, on a path other users can traverse (pytest's
    tmp_path is under a 0700 directory: no other user could reach a file there anyway)."""
    need(os.geteuid() == 0, "root's commands in a directory another user owns need root")
    top = Path(tempfile.mkdtemp(prefix="dramactl-state-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    d = top / "state"
    d.mkdir(mode=0o755)
    os.chown(d, SCALER_UID, SCALER_UID)
    yield d
    shutil.rmtree(top)


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A root-owned file the scaler's user must not get: stands in for /etc/passwd."""
    p = tmp_path / "passwd"
    p.write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(p, 0o600)
    return p


def untouched(p: Path) -> None:
    st = p.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), f"{p} was changed: uid {st.st_uid} mode {st.st_mode:o}"
    assert p.read_text() == "root:x:0:0::/root:/bin/sh\n"


def test_a_link_at_the_tick_lock_is_refused_and_its_target_left_alone(scaler_dir: Path, precious: Path) -> None:
    (scaler_dir / "tick.lock").symlink_to(precious)
    with pytest.raises(StateDirError) as err:
        with StateStore(scaler_dir).lock():
            pass
    assert str(err.value) == f"{scaler_dir / 'tick.lock'} is a symbolic link or not a regular file; remove it (the next tick creates it again)"
    untouched(precious)


def test_the_tick_lock_is_the_scaler_users_and_no_one_elses(scaler_dir: Path) -> None:
    store = StateStore(scaler_dir)
    with store.lock():
        st = store.lock_path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (SCALER_UID, 0o600)

    # An earlier release made it 0644: any user could open it and hold the lock. Narrowed.
    os.chmod(store.lock_path, 0o644)
    with store.lock():
        pass
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600


def test_another_user_cannot_take_the_tick_lock(scaler_dir: Path) -> None:
    """What a worker's user did to stop every tick: open tick.lock read-only and flock it."""
    store = StateStore(scaler_dir)
    with store.lock():
        pass
    worker_uid = 65533
    pid = os.fork()
    if pid == 0:  # the child drops to another user and tries
        try:
            os.setgid(worker_uid)
            os.setuid(worker_uid)
            os.open(store.lock_path, os.O_RDONLY)
            os._exit(1)
        except PermissionError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "another user opened the tick lock"


def test_saving_over_a_link_replaces_the_link_and_leaves_its_target_alone(scaler_dir: Path, precious: Path) -> None:
    store = StateStore(scaler_dir)
    store.path.symlink_to(precious)
    store.save(ScalerState(paused=True))
    untouched(precious)
    st = os.lstat(store.path)
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (SCALER_UID, 0o644)
    assert store.load().paused


def test_the_rollout_marker_is_never_written_through_a_planted_link(scaler_dir: Path, precious: Path) -> None:
    """The marker's temporary name was `.rollout.json.<pid>`: a link planted there for root's pid
    (3000 of them in the review's demo) had root write the marker into the target and chown it."""
    (scaler_dir / f".{rollout.MARKER}.{os.getpid()}").symlink_to(precious)
    rollout.mark(str(scaler_dir), [1, 2])
    untouched(precious)
    marker = scaler_dir / rollout.MARKER
    st = os.lstat(marker)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == SCALER_UID
    assert rollout.in_progress(str(scaler_dir)) is not None


def test_a_link_or_fifo_in_place_of_the_state_file_is_one_line_and_never_blocks(scaler_dir: Path, precious: Path) -> None:
    store = StateStore(scaler_dir)
    store.path.symlink_to(precious)
    with pytest.raises(StateDirError) as err:
        store.load()
    assert str(err.value) == f"state file {store.path} is a symbolic link or not a regular file; remove it (the next change writes a fresh state file)"
    untouched(precious)

    store.path.unlink()
    os.mkfifo(store.path)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            store.load()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO in place of the state file blocked"
    assert isinstance(outcome[0], StateDirError) and "not a regular file" in str(outcome[0])

    # and a marker that is a FIFO is no roll in progress, at once
    (scaler_dir / rollout.MARKER).unlink(missing_ok=True)
    os.mkfifo(scaler_dir / rollout.MARKER)
    assert rollout.in_progress(str(scaler_dir)) is None


def test_a_tick_lock_another_user_owns_is_named_not_the_directory(scaler_dir: Path) -> None:
    """A command run as root before the directory was the scaler's (or a partial chown) left
    tick.lock root's, 0600, in a directory the scaler's user may write: every tick failed
    saying the directory is not writable. The line names the lock, its owner and the fix."""
    lock = scaler_dir / "tick.lock"
    os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o600))  # root's, as root's scale-to left it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the scaler's user ticks
        try:
            os.close(read)
            os.setgid(SCALER_UID)
            os.setuid(SCALER_UID)
            StateStore(scaler_dir).check_writable()  # the directory itself is writable
            try:
                with StateStore(scaler_dir).lock():
                    os.write(write, b"locked")
            except StateDirError as exc:
                os.write(write, str(exc).encode())
            os._exit(0)
        except BaseException as exc:
            os.write(write, repr(exc).encode())
            os._exit(2)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    assert message == (
        f"tick lock {lock} cannot be opened by uid {SCALER_UID} (Permission denied; owner root, mode 0600); "
        "give it the directory's owner (nobody) or remove it (the next tick creates it again)"
    )
    # Given to the directory's owner, as the line says: the tick takes it.
    os.chown(lock, SCALER_UID, SCALER_UID)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(SCALER_UID)
            os.setuid(SCALER_UID)
            with StateStore(scaler_dir).lock():
                os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_tick_lock_in_an_unwritable_directory_names_the_directory(scaler_dir: Path) -> None:
    """Both root's (a fresh host where root's command made the directory): the directory is
    what to fix first, and the line says so, as before."""
    os.chown(scaler_dir, 0, 0)
    os.close(os.open(scaler_dir / "tick.lock", os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o600))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgid(SCALER_UID)
            os.setuid(SCALER_UID)
            try:
                with StateStore(scaler_dir).lock():
                    os.write(write, b"locked")
            except StateDirError as exc:
                os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert message == (
        f"state directory {scaler_dir} is not writable by uid {SCALER_UID} (Permission denied; owner root, mode 0755); "
        "fix its owner/mode (StateDirectory= in dramactl.service)"
    )
