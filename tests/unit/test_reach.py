"""reach: can the service users get to what their units run? Real files and modes in a temp dir, any uid."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from dramactl import reach
from dramactl.reach import READ, SEARCH, User
from dramactl.settings import SettingsError, parse
from tests.conftest import need

DRAMATIQ = User("dramatiq", 4242, frozenset({4242}))
NOT_YET = User("dramatiq")  # install is about to create it: owns nothing, in no group


@pytest.fixture
def tree() -> Iterator[Path]:
    """base/locked (0700, root) holding bin/python3.11; base/open/venv/bin/python3 -> it; every other dir 0755.

    Under /var/tmp (1777) rather than pytest's tmp_path, whose parents are 0700.
    """
    need(os.geteuid() == 0, "chown to other users needs root")
    tmp_path = Path(tempfile.mkdtemp(prefix="dramactl-reach.", dir="/var/tmp"))
    os.chmod(tmp_path, 0o755)
    python = tmp_path / "locked/bin/python3.11"
    python.parent.mkdir(parents=True)
    python.write_text("")
    python.chmod(0o755)
    (tmp_path / "locked/bin").chmod(0o755)
    (tmp_path / "locked").chmod(0o700)
    venv_bin = tmp_path / "open/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python3").symlink_to(python)
    yield tmp_path
    shutil.rmtree(tmp_path)


def test_a_0700_parent_blocks_a_user_and_names_its_mode(tree: Path) -> None:
    python = str(tree / "locked/bin/python3.11")
    assert reach.blocker(python, DRAMATIQ, SEARCH) == (python, f"{tree}/locked is mode 0700")
    assert reach.blocker(python, NOT_YET, SEARCH) == (python, f"{tree}/locked is mode 0700")
    assert reach.blocker(python, User("root", 0), SEARCH) is None


def test_owner_and_group_bits_count_for_their_user(tree: Path) -> None:
    locked, python = tree / "locked", str(tree / "locked/bin/python3.11")
    os.chown(locked, 4242, 0)
    assert reach.blocker(python, DRAMATIQ, SEARCH) is None  # its owner: 0700 is enough
    os.chown(locked, 0, 4343)
    locked.chmod(0o710)
    assert reach.blocker(python, User("dramatiq", 4242, frozenset({4242, 4343})), SEARCH) is None
    assert reach.blocker(python, DRAMATIQ, SEARCH) == (python, f"{locked} is mode 0710")
    assert reach.blocker(python, NOT_YET, SEARCH) == (python, f"{locked} is mode 0710")


def test_a_file_needs_its_own_bits_too(tree: Path) -> None:
    app = tree / "open/app"
    app.mkdir(mode=0o700)
    app.chmod(0o700)
    os.chown(app, 65534, 65534)  # nobody's: dramatiq may not list it
    assert reach.blocker(str(app), DRAMATIQ, READ | SEARCH) == (str(app), f"{app} is mode 0700")
    app.chmod(0o711)
    assert reach.blocker(str(app), DRAMATIQ, READ | SEARCH) == (str(app), f"{app} is mode 0711")
    app.chmod(0o755)
    assert reach.blocker(str(app), DRAMATIQ, READ | SEARCH) is None


def test_a_venv_symlinked_into_a_0700_dir_fails_where_it_really_is(tree: Path) -> None:
    venv_python = str(tree / "open/venv/bin/python3")
    real = str(tree / "locked/bin/python3.11")
    targets = reach.targets(parse({"DRAMATIQ_COMMAND": "dramatiq app"}), venv_python, interpreter=venv_python)
    with pytest.raises(SettingsError) as err:
        reach.check(targets, [DRAMATIQ, User("dramactl", 4343, frozenset({4343}))])
    assert str(err.value) == f"interpreter: {real} is not reachable by user dramatiq ({tree}/locked is mode 0700); make the venv with /usr/bin/python3"


def test_a_venv_inside_a_0700_dir_names_the_venv_and_where_to_make_it(tree: Path) -> None:
    inside = tree / "locked/venv/bin/python3"
    inside.parent.mkdir(parents=True)
    inside.symlink_to(sys.executable)
    with pytest.raises(SettingsError, match=rf"^interpreter: {inside} is not reachable by user dramatiq \({tree}/locked is mode 0700\); make the venv under /opt"):
        reach.check(reach.targets(parse({}), str(inside), interpreter=str(inside)), [DRAMATIQ])


def test_the_apps_dramatiq_script_and_its_shebang_interpreter(tree: Path) -> None:
    script = tree / "open/app-venv/bin/dramatiq"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{tree}/open/venv/bin/python3\nimport dramatiq\n")  # pip writes the venv's python
    script.chmod(0o755)
    assert reach.shebang_interpreter(str(script)) == f"{tree}/open/venv/bin/python3"
    settings = parse({"DRAMATIQ_COMMAND": f"{script} app"})
    found = reach.targets(settings, str(script), interpreter=sys.executable)
    assert [(t.setting, t.path, t.users) for t in found[2:]] == [
        ("DRAMATIQ_COMMAND", str(script), ("dramatiq",)),
        ("DRAMATIQ_COMMAND", f"{tree}/open/venv/bin/python3", ("dramatiq",)),
    ]
    with pytest.raises(SettingsError) as err:
        reach.check(found[2:], [DRAMATIQ])
    assert str(err.value) == (
        f"DRAMATIQ_COMMAND: {tree}/locked/bin/python3.11 is not reachable by user dramatiq ({tree}/locked is mode 0700); "
        "make the app's venv with /usr/bin/python3"
    )
    reach.check(found[2:], [User("dramactl", 4343)])  # only the workers run the app


def test_shebang_through_env_and_binaries(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/usr/bin/env python3\n")
    assert reach.shebang_interpreter(str(script)) == shutil.which("python3")
    script.write_bytes(b"\x7fELF\x02\x01")
    assert reach.shebang_interpreter(str(script)) is None


def test_worker_directory_is_for_the_dramatiq_user(tree: Path) -> None:
    app = tree / "locked/app"
    app.mkdir()
    found = [t for t in reach.targets(parse({"WORKER_DIRECTORY": str(app)}), sys.executable) if t.setting == "WORKER_DIRECTORY"]
    with pytest.raises(SettingsError, match=rf"^WORKER_DIRECTORY: {app} is not reachable by user dramatiq \({tree}/locked is mode 0700\); put the app"):
        reach.check(found, [DRAMATIQ])


def test_root_is_hidden_by_the_sandbox_even_to_whom_its_mode_allows() -> None:
    assert reach.blocker("/root", User("root", 0), SEARCH) == ("/root", "/root is hidden from the units by ProtectHome=")


def test_bind_candidates_are_real_places_under_hidden_prefixes(tree: Path) -> None:
    assert str(tree).startswith(("/tmp/", "/var/tmp/")), tree  # pytest's tmp_path: a place the sandbox hides
    found = reach.targets(parse({"WORKER_DIRECTORY": str(tree / "open")}), str(tree / "open/venv/bin/python3"), interpreter=str(tree / "open/venv/bin/python3"))
    binds = reach.bind_candidates(found)
    assert str(tree / "locked") in binds and str(tree / "open") in binds  # the interpreter's prefix, the app dir
    assert reach.bind_candidates([reach.Target("x", "/usr/bin/python3", ("dramatiq",), SEARCH, "")]) == []
