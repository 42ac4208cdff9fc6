"""A pooler process in a private mount namespace (`unshare -m`) where some files of the machine are the test's
own: a hosts file for /etc/hosts, a socket for /dev/log. The pooler runs unchanged and nothing else on the
machine sees them. A missing file (no syslog daemon: no /dev/log) is made in an overlay of its folder."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.support import PoolerProcess, missing, require_binary


class MountedPooler(PoolerProcess):
    """`mounts`: the file each path of the machine is, for this pooler."""

    def __init__(self, pg, workdir: Path, mounts: dict[str, Path], **kwargs):
        super().__init__(pg, workdir, **kwargs)
        self.mounts = mounts

    def command(self) -> list[str]:
        lines = []
        for index, (target, source) in enumerate(self.mounts.items()):
            if not Path(target).exists():
                lines.append(_overlay(str(Path(target).parent), self.workdir / f"overlay{index}"))
                lines.append(f"touch {shlex.quote(target)}")
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        script = "\n".join(lines + ['exec "$@"'])
        return [require_binary("unshare"), "-m", "sh", "-ec", script, "sh", *super().command()]


def _overlay(folder: str, scratch: Path) -> str:
    """Shell lines that lay a writable overlay, kept in a tmpfs at `scratch`, over `folder`."""
    upper, work = shlex.quote(str(scratch / "upper")), shlex.quote(str(scratch / "work"))
    return (f"mkdir -p {shlex.quote(str(scratch))}\nmount -t tmpfs tmpfs {shlex.quote(str(scratch))}\n"
            f"mkdir {upper} {work}\n"
            f"mount -t overlay overlay -o lowerdir={shlex.quote(folder)},upperdir={upper},workdir={work} "
            f"{shlex.quote(folder)}")


def require_private_mounts() -> None:
    """unshare -m needs root (or a user namespace): a missing prerequisite without it."""
    if subprocess.run([require_binary("unshare"), "-m", "true"], capture_output=True).returncode != 0:
        missing("unshare -m is not permitted here: the test needs a private mount namespace (root)")
