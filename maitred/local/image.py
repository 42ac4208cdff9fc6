"""The maitred image, the real node's sandbox (pause) image and their base, built here without Docker.

No registry can be reached from the node, so its images are made on this machine: a stand-in for the
Dockerfile's base image (`debootstrap` of Debian bookworm with python3 and a virtual environment first on
PATH, so that `pip` behaves as in the official python image), the project's own Dockerfile built on it with
buildah, unchanged, and a pause image on the same base. Each is cached by the hash of what goes into it, as a
docker-archive that `ctr images import` takes, under ~/.cache/maitred/images; buildah's storage lives next to it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from maitred.local.controlplane import CHECKOUT

CACHE = Path(os.environ.get("MAITRED_CACHE") or Path.home() / ".cache" / "maitred")
IMAGES = CACHE / "images"
BUILDAH = CACHE / "buildah"
MIRROR = os.environ.get("MAITRED_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# The base: what the official python image gives the Dockerfile (python3, pip first on PATH, useradd).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
VENV = "/opt/venv"
BASE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# pip trusts the system's certificates rather than its own copy, and the build sees this machine's: whatever
# this machine trusts on its way to PyPI (a proxy's CA, say) the build trusts too.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_ENV = (f"PATH={BASE_PATH}", "LANG=C.UTF-8", f"PIP_CERT={CA_BUNDLE}")
# What the Dockerfile copies, besides itself.
IMAGE_INPUTS = ("pyproject.toml", "setup.py", "README.md", "maitred", "pooler",
                "operator/pooler_operator")
# The sandbox's only process: sleeps until told to stop. PID 1 ignores SIGTERM unless it handles it.
PAUSE = ("import signal, sys; [signal.signal(s, lambda *_: sys.exit(0)) for s in (signal.SIGTERM, signal.SIGINT)];"
         " signal.pause() or sys.exit(0)")


class ImageBuildFailed(RuntimeError):
    """debootstrap or buildah failed; the message carries the end of its output."""


@dataclass(frozen=True)
class Image:
    """A built image: its reference and the docker-archive that `ctr -n k8s.io images import` loads."""

    ref: str
    archive: Path


def digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def tree_digest(root: Path, paths: tuple[str, ...]) -> str:
    """The hash of every file under `paths` (names and contents), byte-compiled files and the checkout's compiled
    hot path (.c, .so: the image builds its own) left out."""
    h = hashlib.sha256()
    for top in paths:
        files = [root / top] if (root / top).is_file() else sorted(p for p in (root / top).rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".c", ".so"):
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _run(argv: list[str], what: str, timeout: float = 1800, **kwargs) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if out.returncode != 0:
        raise ImageBuildFailed(f"{what} failed ({' '.join(argv[:3])} ...):\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout


def buildah(*args: str, what: str = "buildah", timeout: float = 1800) -> str:
    return _run(["buildah", "--root", str(BUILDAH / "root"), "--runroot", str(BUILDAH / "run"),
                 "--storage-driver", "overlay", *args], what, timeout)


def _has_image(ref: str) -> bool:
    try:
        buildah("inspect", "--type", "image", ref, what="inspect")
        return True
    except ImageBuildFailed:
        return False


def _cached(ref: str, archive: Path) -> Image | None:
    return Image(ref, archive) if archive.exists() and _has_image(ref) else None


def _export(ref: str, archive: Path) -> Image:
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    buildah("push", ref, f"docker-archive:{tmp}:{ref}", what=f"exporting {ref}")
    tmp.rename(archive)
    stem = archive.name.rsplit("-", 1)[0]
    for older in archive.parent.glob(f"{stem}-*.tar"):  # the cache keeps the newest of each image
        if older != archive:
            older.unlink()
    return Image(ref, archive)


def base_image() -> Image:
    """Debian bookworm from debootstrap, python3 and a virtual environment at /opt/venv first on PATH."""
    key = digest(MIRROR.encode(), " ".join(BASE_PACKAGES).encode(), " ".join(BASE_ENV).encode())
    ref, archive = f"localhost/maitred-python:bookworm-{key}", IMAGES / f"python-bookworm-{key}.tar"
    if found := _cached(ref, archive):
        return found
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMAGES, prefix=".base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(rootfs),
              MIRROR], "debootstrap")
        _run(["chroot", str(rootfs), "python3", "-m", "venv", VENV], "the base's virtual environment")
        for cache in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], "packing the base")
        container = buildah("from", "scratch").strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah("config", *(a for env in BASE_ENV for a in ("--env", env)), "--cmd", "python3", container)
            buildah("commit", "--rm", container, ref, what="committing the base")
        except BaseException:
            buildah("rm", container)
            raise
    return _export(ref, archive)


def maitred_image(base: Image | None = None) -> Image:
    """The project's Dockerfile, built by buildah on the local base, cached by the hash of its inputs."""
    base = base or base_image()
    key = digest(base.ref.encode(), tree_digest(CHECKOUT, ("Dockerfile", *IMAGE_INPUTS)).encode())
    ref, archive = f"localhost/maitred:{key}", IMAGES / f"maitred-{key}.tar"
    if found := _cached(ref, archive):
        return found
    trust = ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if Path(CA_BUNDLE).exists() else []
    buildah("build", "--network", "host", "--layers=false", *trust, "--build-arg", f"PYTHON_IMAGE={base.ref}", "-t", ref,
            "-f", str(CHECKOUT / "Dockerfile"), str(CHECKOUT), what="buildah build of the Dockerfile", timeout=3600)
    return _export(ref, archive)


def pause_image(base: Image | None = None) -> Image:
    """The sandbox image of every pod: the base, holding the pod's namespaces with one sleeping process."""
    base = base or base_image()
    key = digest(base.ref.encode(), PAUSE.encode())
    ref, archive = f"localhost/maitred-pause:{key}", IMAGES / f"pause-{key}.tar"
    if found := _cached(ref, archive):
        return found
    container = buildah("from", "--pull-never", base.ref).strip()
    try:
        buildah("config", "--entrypoint", json.dumps(["python3", "-c", PAUSE]), "--cmd", "",
                "--user", "65535:65535", container)
        buildah("commit", "--rm", container, ref, what="committing the pause image")
    except BaseException:
        buildah("rm", container)
        raise
    return _export(ref, archive)
