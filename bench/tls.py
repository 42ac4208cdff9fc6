"""The certificate of the TLS scenario (S6): one for 127.0.0.1, which PostgreSQL presents to the poolers and the
poolers present to pgbench, so that every byte is encrypted twice, as behind a pooler that terminates TLS and
speaks TLS to a remote database. Nothing verifies it (sslmode=require): the cost measured is the encryption."""
from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from maitred.local.controlplane import issue, make_ca


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str


@contextmanager
def certificate(owner: str | None) -> Iterator[TlsFiles]:
    """A key pair in a folder of its own, the key readable by `owner` (PostgreSQL's and PgBouncer's account)."""
    folder = tempfile.mkdtemp(prefix="maitred-bench-tls-")
    try:
        os.chmod(folder, 0o755)
        pair = issue(make_ca("maitred bench CA"), "localhost", hosts=("localhost", "127.0.0.1"), server=True)
        files = TlsFiles(os.path.join(folder, "server.pem"), os.path.join(folder, "server.key"))
        for path, data, mode in ((files.cert, pair.cert, 0o644), (files.key, pair.key, 0o600)):
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, mode)
            if owner:
                account = pwd.getpwnam(owner)
                os.chown(path, account.pw_uid, account.pw_gid)
        yield files
    finally:
        shutil.rmtree(folder, ignore_errors=True)
