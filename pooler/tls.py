"""TLS on both sides: the SSL contexts that the client_tls_* and server_tls_* settings describe.

The contexts are built when the pooler starts and again on every reload (so replaced certificate files take
effect for new connections, as in PgBouncer), never per connection. The modes are PgBouncer's:

- client_tls_sslmode: `disable` answers SSLRequest with N; `allow` and `prefer` accept TLS when a client
  asks; `require` also refuses a plain-text login over TCP; `verify-ca` and `verify-full` also require a
  client certificate signed by client_tls_ca_file. Unix-socket clients always stay in plain text.
- server_tls_sslmode: `disable` never asks; `allow` and `prefer` ask and go on in plain text when refused;
  `require` insists but checks no certificate; `verify-ca` checks the certificate against
  server_tls_ca_file; `verify-full` also checks its name against the [databases] host. Unix sockets are
  never asked.
"""
from __future__ import annotations

import re
import ssl
import struct
import warnings
from dataclasses import dataclass

from .config import Config, ConfigError

SSL_REQUEST = struct.pack("!II", 8, 80877103)

REQUIRED = ("require", "verify-ca", "verify-full")      # plain text is refused
VERIFIED = ("verify-ca", "verify-full")                 # the peer's certificate is checked

_V = ssl.TLSVersion
VERSIONS = (_V.TLSv1, _V.TLSv1_1, _V.TLSv1_2, _V.TLSv1_3)
_SECURE = frozenset((_V.TLSv1_2, _V.TLSv1_3))
# libtls's words (tls_config_parse_protocols), which PgBouncer's *_tls_protocols settings are.
PROTOCOL_WORDS = {
    "all": frozenset(VERSIONS), "legacy": frozenset(VERSIONS), "tlsv1": frozenset(VERSIONS),
    "secure": _SECURE, "default": _SECURE,
    "tlsv1.0": frozenset((_V.TLSv1,)), "tlsv1.1": frozenset((_V.TLSv1_1,)),
    "tlsv1.2": frozenset((_V.TLSv1_2,)), "tlsv1.3": frozenset((_V.TLSv1_3,)),
}
_NO_VERSION = {_V.TLSv1: ssl.OP_NO_TLSv1, _V.TLSv1_1: ssl.OP_NO_TLSv1_1, _V.TLSv1_2: ssl.OP_NO_TLSv1_2,
               _V.TLSv1_3: ssl.OP_NO_TLSv1_3}
DEFAULT_CIPHERS = ("", "default", "secure", "fast", "normal")    # all mean OpenSSL's own defaults
ALL_CIPHERS = "ALL:!aNULL:!eNULL"

CLIENT_SETTINGS = ("client_tls_sslmode", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
                   "client_tls_protocols", "client_tls_ciphers", "client_tls_ecdhcurve")
SERVER_SETTINGS = ("server_tls_sslmode", "server_tls_ca_file", "server_tls_key_file", "server_tls_cert_file",
                   "server_tls_protocols", "server_tls_ciphers")


class TLSConfigError(ConfigError, ValueError):
    """A TLS setting that cannot be used: a ConfigError to the loader and RELOAD, a ValueError to SET."""


@dataclass(frozen=True)
class Contexts:
    """What the client and server connections of one pooler use until the next reload."""

    client_mode: str = "disable"
    server_mode: str = "disable"
    client: ssl.SSLContext | None = None     # accepts TLS from clients; None when client TLS is off
    server: ssl.SSLContext | None = None     # speaks TLS to PostgreSQL; None when server TLS is off

    @property
    def client_required(self) -> bool:
        return self.client_mode in REQUIRED

    @property
    def server_required(self) -> bool:
        return self.server_mode in REQUIRED


def parse_protocols(text: str) -> frozenset[ssl.TLSVersion]:
    """TLS versions from libtls's syntax: words separated by commas or colons; `!word` takes versions away."""
    chosen: set[ssl.TLSVersion] = set()
    for word in re.split(r"[,:]", text.strip() or "secure"):
        word = word.strip().lower()
        negate = word.startswith("!")
        word = word.lstrip("!").strip()
        if word not in PROTOCOL_WORDS:
            raise ValueError(f"unknown TLS protocol {word!r} (tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3, all, secure)")
        if negate:
            chosen = (chosen or set(VERSIONS)) - PROTOCOL_WORDS[word]
        else:
            chosen |= PROTOCOL_WORDS[word]
    if not chosen:
        raise ValueError(f"no TLS version left in {text!r}")
    return frozenset(chosen)


def changed(old: Config, new: Config, names: tuple[str, ...]) -> bool:
    return any(old.get(name) != new.get(name) for name in names)


def build(config: Config) -> Contexts:
    """The contexts the settings describe; TLSConfigError says which setting is wrong and why."""
    client_mode, server_mode = config.get("client_tls_sslmode"), config.get("server_tls_sslmode")
    return Contexts(client_mode, server_mode,
                    None if client_mode == "disable" else _context(config, "client_tls", client_mode),
                    None if server_mode == "disable" else _context(config, "server_tls", server_mode))


def _context(config: Config, prefix: str, mode: str) -> ssl.SSLContext:
    def get(name: str) -> str:
        return str(config.get(f"{prefix}_{name}") or "").strip()

    accepting = prefix == "client_tls"
    cert_file, key_file, ca_file = get("cert_file"), get("key_file"), get("ca_file")
    if accepting and not (cert_file and key_file):
        raise TLSConfigError(f"client_tls_sslmode = {mode} needs client_tls_key_file and client_tls_cert_file")
    if accepting and mode in VERIFIED and not ca_file:
        raise TLSConfigError(f"client_tls_sslmode = {mode} needs client_tls_ca_file to check client certificates")
    if bool(cert_file) != bool(key_file):
        raise TLSConfigError(f"{prefix}_cert_file and {prefix}_key_file go together: set both or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if accepting else ssl.PROTOCOL_TLS_CLIENT)
    try:
        _set_versions(context, parse_protocols(get("protocols")))
    except ValueError as exc:
        raise TLSConfigError(f"invalid {prefix}_protocols: {exc}") from None
    ciphers = get("ciphers")
    if ciphers.lower() not in DEFAULT_CIPHERS:
        try:
            context.set_ciphers(ALL_CIPHERS if ciphers.lower() == "all" else ciphers)
        except ssl.SSLError:
            raise TLSConfigError(f"invalid {prefix}_ciphers: no cipher matches {ciphers!r}") from None
    curve = get("ecdhcurve") if accepting else ""
    if curve.lower() not in ("", "auto", "none"):
        try:
            context.set_ecdh_curve(curve)
        except ValueError:
            raise TLSConfigError(f"invalid client_tls_ecdhcurve: unknown curve {curve!r}") from None
    if cert_file:
        _load(f"{prefix}_cert_file = {cert_file}, {prefix}_key_file = {key_file}",
              lambda: context.load_cert_chain(cert_file, key_file))
    if accepting:
        # PgBouncer's allow/prefer/require do not validate client certificates, so none is asked for.
        context.verify_mode = ssl.CERT_REQUIRED if mode in VERIFIED else ssl.CERT_NONE
        if mode in VERIFIED:
            _load(f"client_tls_ca_file = {ca_file}", lambda: context.load_verify_locations(ca_file))
    else:
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED if mode in VERIFIED else ssl.CERT_NONE
        if mode in VERIFIED and ca_file:
            _load(f"server_tls_ca_file = {ca_file}", lambda: context.load_verify_locations(ca_file))
        elif mode in VERIFIED:
            context.load_default_certs()
    return context


def _set_versions(context: ssl.SSLContext, versions: frozenset[ssl.TLSVersion]) -> None:
    ordered = [v for v in VERSIONS if v in versions]
    with warnings.catch_warnings():     # TLS 1.0/1.1 and the OP_NO_* flags are deprecated, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = ordered[0], ordered[-1]
        for version in VERSIONS:        # a hole in the range, as in "tlsv1.1,tlsv1.3"
            if ordered[0] < version < ordered[-1] and version not in versions:
                context.options |= _NO_VERSION[version]


def _load(what: str, load) -> None:
    try:
        load()
    except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TLSConfigError(f"cannot use {what}: {reason}") from None

