"""One pooler configuration, written out twice: as PgBouncer reads it and as maitred reads it.

Both files come from the same settings, so the poolers run with equivalent pooling and authentication; each
file only adds what its own pooler alone understands (PgBouncer would warn about a `[maitred]` section).
"""
from __future__ import annotations


def shared_settings(*, pg_port: int, listen_port: int, database: str, auth_type: str, auth_file: str,
                    pool_size: int, max_client_conn: int, tls=None) -> dict[str, dict[str, str]]:
    """The settings both poolers get, section by section. Logging is left at each pooler's defaults (a line per
    login and per logout in both), as a user who sets nothing gets it. With `tls` (a TlsFiles), TLS on both
    sides: offered to clients (`allow`, so the readiness probe may still log in in plain text) and required
    towards PostgreSQL."""
    settings = {
        "databases": {database: f"host=127.0.0.1 port={pg_port} dbname={database}"},
        "pgbouncer": {
            "listen_addr": "127.0.0.1",
            "listen_port": str(listen_port),
            "auth_type": auth_type,
            "auth_file": auth_file,
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_client_conn": str(max_client_conn),
            "server_tls_sslmode": "disable",
        },
    }
    if tls is not None:
        settings["pgbouncer"].update({"client_tls_sslmode": "allow", "client_tls_cert_file": tls.cert,
                                      "client_tls_key_file": tls.key, "server_tls_sslmode": "require"})
    return settings


def for_pgbouncer(settings: dict[str, dict[str, str]], *, logfile: str) -> dict[str, dict[str, str]]:
    """PgBouncer's file: its own log file, and no Unix socket in /tmp."""
    out = {section: dict(values) for section, values in settings.items()}
    out["pgbouncer"].update({"logfile": logfile, "unix_socket_dir": ""})
    return out


def for_maitred(settings: dict[str, dict[str, str]], *, logfile: str, workers: int = 1) -> dict[str, dict[str, str]]:
    """maitred's file: its own log file as PgBouncer's (both run with -q), no HTTP metrics endpoint, as
    PgBouncer has none, and no port for runs to collide on; `workers` processes."""
    out = {section: dict(values) for section, values in settings.items()}
    out["pgbouncer"]["logfile"] = logfile
    out["maitred"] = {"http_port": "0", **({"workers": str(workers)} if workers > 1 else {})}
    return out


def render_ini(config: dict[str, dict[str, str]]) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"
                   for section, values in config.items())


def render_userlist(users: dict[str, str]) -> str:
    """auth_file lines: `"user" "password"`, with `"` doubled as PgBouncer expects."""
    quote = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return "".join(f"{quote(user)} {quote(password)}\n" for user, password in users.items())
