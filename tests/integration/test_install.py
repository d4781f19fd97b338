"""``dramactl install --root DIR`` on the real filesystem, with the real systemd-sysusers."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from dramactl import install as install_mod
from dramactl import settings as settings_mod
from tests.conftest import need


@pytest.fixture
def as_root() -> None:
    need(os.geteuid() == 0, "install writes files owned by root and a group: run as root")
    need(shutil.which("systemd-sysusers") is not None, "systemd-sysusers is missing (apt-get install systemd)")


def test_create_with_mode_has_the_final_mode_and_group_before_a_byte_is_written(tmp_path: Path, as_root) -> None:
    target = tmp_path / "dramactl.env"
    fd, tmp = install_mod.create_with_mode(target, 0o640, 65534)
    try:
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_size) == (0o640, 65534, 0)
        assert Path(tmp).parent == tmp_path and not target.exists()  # renamed into place only when written
    finally:
        os.close(fd)
        os.unlink(tmp)


def test_install_creates_the_env_file_0640_root_dramactl_in_one_step(tmp_path: Path, as_root, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env: the shipped template is the source
    root = tmp_path / "root"
    settings = settings_mod.parse({})
    report = install_mod.install(settings, root=str(root), users=True, reload=False)
    env_file = root / "etc/dramactl/dramactl.env"
    st = env_file.stat()
    dramactl_gid = install_mod.group_id(root, "dramactl")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, dramactl_gid)
    assert env_file.read_text() == install_mod.data_path("env", "dramactl.env").read_text()
    assert os.listdir(env_file.parent) == ["dramactl.env"]  # no temporary file left behind
    assert f"created {env_file} from {install_mod.data_path('env', 'dramactl.env')}" in report.actions
    unit = root / "etc/systemd/system/dramatiq-worker@.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
