"""``dramactl install --root DIR`` on the real filesystem, with the real systemd-sysusers."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import stat
import sys
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


def test_install_copies_a_dotenv_but_never_through_a_link(tmp_path: Path, as_root, monkeypatch) -> None:
    """The first install copies ./.env into the env file the dramactl group reads; a ./.env that is
    a link (to /etc/shadow, say) had root copy its target there."""
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$secret-hash:19000:0:99999:7:::\n")
    (tmp_path / ".env").symlink_to(secret)
    root = tmp_path / "root"
    install_mod.install(settings_mod.parse({}), root=str(root), users=True, reload=False)
    env_file = root / "etc/dramactl/dramactl.env"
    assert env_file.read_text() == install_mod.data_path("env", "dramactl.env").read_text()

    (tmp_path / ".env").unlink()
    (tmp_path / ".env").write_text("MAX_PROCESSES=3\n")
    env_file.unlink()
    install_mod.install(settings_mod.parse({}), root=str(root), users=True, reload=False)
    assert env_file.read_text() == "MAX_PROCESSES=3\n"


def complete(script: Path, *words: str) -> list[str]:
    """What real bash offers after sourcing ``script``, for the command line ``words`` (the last one being typed)."""
    bin_dir = Path(sys.executable).parent  # the dramactl the completion calls back
    line = " ".join(shlex.quote(w) for w in words)
    code = f'source {shlex.quote(str(script))}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _dramactl_completion dramactl; printf "%s\\n" "${{COMPREPLY[@]}}"'
    run = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_install_puts_clicks_shell_completion_where_the_shells_look(tmp_path: Path, as_root, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    report = install_mod.install(settings_mod.parse({}), root=str(root), users=True, reload=False)
    share = root / "usr/local/share"
    bash, zsh, fish = share / "bash-completion/completions/dramactl", share / "zsh/vendor-completions/_dramactl", share / "fish/vendor_completions.d/dramactl.fish"
    for path in (bash, zsh, fish):
        assert f"installed {path} (shell completion)" in report.actions
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert zsh.read_text().startswith("#compdef dramactl\n") and "_DRAMACTL_COMPLETE=zsh_complete" in zsh.read_text()
    assert "_DRAMACTL_COMPLETE=fish_complete" in fish.read_text()
    # Real bash, the installed script, the real dramactl answering: commands and each command's own options.
    assert complete(bash, "dramactl", "sta") == ["status"]
    assert sorted(complete(bash, "dramactl", "scale-")) == ["scale-down", "scale-to", "scale-up"]
    assert set(complete(bash, "dramactl", "scale-to", "--")) >= {"--threads", "--wait"}
    assert complete(bash, "dramactl", "history", "--s") == ["--since"]
    # Unchanged on a second install.
    again = install_mod.install(settings_mod.parse({}), root=str(root), users=True, reload=False)
    assert not [a for a in again.actions if "completion" in a]
