"""Shell completion for ``dramactl``: click's own scripts, written where each shell looks for them.

The scripts are click's (``_DRAMACTL_COMPLETE=bash_source dramactl`` prints the same): they call ``dramactl``
back to complete, so they follow the command tree of whatever version is installed. ``dramactl install`` writes
them under ``/usr/local/share`` (pip installs), the Debian package under ``/usr/share``
(``python3 -m dramactl.completion DIR`` at build time).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROG = "dramactl"
COMPLETE_VAR = "_DRAMACTL_COMPLETE"
# shell -> the file under a share/ directory where that shell's completion loader finds it
FILES = {
    "bash": "bash-completion/completions/dramactl",
    "zsh": "zsh/vendor-completions/_dramactl",
    "fish": "fish/vendor_completions.d/dramactl.fish",
}


def source(shell: str) -> str:
    """click's completion script of ``dramactl`` for ``shell``."""
    from click.shell_completion import get_completion_class

    from .cli import main

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"click has no completion for {shell!r}")
    text = cls(main, {}, PROG, COMPLETE_VAR).source()
    return text if text.endswith("\n") else text + "\n"


def scripts(share: Path) -> dict[Path, str]:
    """Every completion file below ``share`` (e.g. /usr/local/share) with its text."""
    return {share / rel: source(shell) for shell, rel in FILES.items()}


if __name__ == "__main__":  # python3 -m dramactl.completion SHARE_DIR: the Debian build writes them there
    share = Path(sys.argv[1])
    for path, text in scripts(share).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
