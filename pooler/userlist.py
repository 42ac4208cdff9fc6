"""PgBouncer's auth_file: one `"user" "secret"` per line, so an existing userlist.txt works unchanged.

As in PgBouncer: `""` inside a field is a literal quote, anything after the second field is ignored, only
lines starting with `;` are comments, and a later line for the same user wins.
"""

import base64
import binascii
import re
from pathlib import Path

from pooler.config import ConfigError

_LINE = re.compile(r'"((?:[^"]|"")*+)"\s*"((?:[^"]|"")*+)"')
_MD5 = re.compile(r"md5[0-9a-f]{32}")
_SCRAM = re.compile(r"SCRAM-SHA-256\$([1-9][0-9]*):([^$]+)\$([^:]+):(.+)")


def load_userlist(path: str | Path) -> dict[str, str]:
    """User name → plain password, md5 hash or SCRAM secret; ConfigError names the first malformed line."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"could not read auth_file: {getattr(exc, 'strerror', None) or exc}", path) from None
    users = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError('malformed line, expected "user" "password"', path, number)
        users[m[1].replace('""', '"')] = m[2].replace('""', '"')
    return users


def _is_base64(text: str, length: int | None = None) -> bool:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return False
    return length is None or len(raw) == length


def secret_kind(secret: str) -> str:
    """'md5', 'scram' or 'plain', judged as PostgreSQL does: a malformed hash is taken as a plain password."""
    if _MD5.fullmatch(secret):
        return "md5"
    m = _SCRAM.fullmatch(secret)
    if m and _is_base64(m[2]) and _is_base64(m[3], 32) and _is_base64(m[4], 32):
        return "scram"
    return "plain"
