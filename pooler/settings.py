"""The catalogue of settings: PgBouncer's names, kinds and defaults (PgBouncer 1.25), plus maitred's own.

Pure data, so the loader, the admin console (SHOW CONFIG, SET), the operator's validation and the README
all read one source. Kinds: 'int' (C strtol syntax, so 0777 is octal and 0x1f hex, as PgBouncer),
'float_seconds' (seconds, fractions allowed, no unit suffixes, stored as float seconds), 'bool' (stored as
bool), 'str', 'enum' (case-insensitive, stored lower-case), 'list' (comma-separated, stored as a tuple),
'path' (a str; a relative path is taken from the working directory, as PgBouncer does).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """How a setting's text parses (kind, choices), its value when not set, and whether RELOAD applies it."""

    name: str
    kind: str
    default: object
    doc: str
    choices: tuple[str, ...] = ()
    reloadable: bool = True
    refused: str = ""       # why maitred refuses any value but the default: at load, on RELOAD and on SET
    bounds: tuple[int, int] = ()    # the lowest and highest value maitred can use, refused outside them alike


def _catalogue(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


_S = Setting
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
POOL_MODES = ("session", "transaction", "statement")
NO_EFFECT = "Accepted for PgBouncer compatibility, no effect in maitred."
TLS13_REFUSED = "Python's ssl module cannot restrict TLS 1.3 cipher suites; OpenSSL's defaults are used"

# auth_type values PgBouncer knows that maitred refuses, so the error can say "unsupported", not "invalid".
UNSUPPORTED_CHOICES: dict[str, tuple[str, ...]] = {"auth_type": ("any", "ldap", "pam")}
PASSWORD_AUTH_TYPES = ("trust", "plain", "md5", "scram-sha-256")     # the ones that need no file but auth_file

SETTINGS: dict[str, Setting] = _catalogue(
    # Generic
    _S("logfile", "path", "", "Log file, written besides stderr; not set means stderr only. RELOAD and SIGHUP "
       "reopen it, for log rotation."),
    _S("pidfile", "path", "", "PID file written at startup and removed at exit; not set means none.",
       reloadable=False),
    _S("listen_addr", "str", "",
       "Comma-separated TCP addresses to listen on, * for all; not set means Unix socket only (as PgBouncer).",
       reloadable=False),
    _S("listen_port", "int", 6432, "Port for TCP and the Unix socket name (.s.PGSQL.<port>).", reloadable=False),
    _S("unix_socket_dir", "path", "/tmp", "Directory of the Unix socket; empty disables Unix sockets.",
       reloadable=False),
    _S("unix_socket_mode", "int", 0o777, "File mode of the Unix socket (write it in octal with a leading 0).",
       reloadable=False),
    _S("unix_socket_group", "str", "", "Group owning the Unix socket; not set means unchanged.", reloadable=False),
    _S("user", "str", "", "Unix user to switch to once the sockets are bound (as -u); only root may switch.",
       reloadable=False),
    _S("pool_mode", "enum", "session", "When a server goes back to the pool: session, transaction or statement.",
       choices=POOL_MODES),
    _S("max_client_conn", "int", 100, "Maximum number of client connections."),
    _S("default_pool_size", "int", 20, "Server connections per (database, user) pool; 0 means unlimited."),
    _S("min_pool_size", "int", 0, "Keep at least this many server connections per pool; 0 disables."),
    _S("reserve_pool_size", "int", 0, "Extra server connections a pool may open for waiting clients; 0 disables."),
    _S("reserve_pool_timeout", "float_seconds", 5.0, "A client waiting this long may use the reserve pool."),
    _S("max_db_connections", "int", 0, "Server connections per database over all its pools; 0 is unlimited."),
    _S("max_db_client_connections", "int", 0, "Client connections per database; 0 is unlimited."),
    _S("max_user_connections", "int", 0, "Server connections per user over all its pools; 0 is unlimited."),
    _S("max_user_client_connections", "int", 0, "Client connections per user; 0 is unlimited."),
    _S("server_round_robin", "bool", False,
       "Reuse the server idle longest (round-robin) instead of the one released last (LIFO), to spread the load "
       "over a round-robin address behind a database."),
    _S("track_extra_parameters", "list", ("IntervalStyle",),
       "Parameters PostgreSQL reports, besides client_encoding, DateStyle, TimeZone, standard_conforming_strings "
       "and application_name, kept per client (from its startup packet, its options and its SETs) and set on "
       "each server it gets; names in any case.", reloadable=False),
    _S("ignore_startup_parameters", "list", (), "Startup parameters to ignore instead of refusing the client."),
    _S("peer_id", "int", 0,
       "This process's id among peered poolers (1-16383), carried in every cancel key so that a cancel "
       "arriving at another peer is forwarded here; 0 disables peering. With workers, the first worker's id "
       "(0 counts as 1): worker k has peer_id + k - 1."),
    _S("disable_pqexec", "bool", False,
       "Refuse the simple query protocol: a client's Query closes it (08P01 PQexec disallowed), so only extended "
       "protocol clients work. Not on the admin console, whose only protocol is the simple one.", reloadable=False),
    _S("application_name_add_host", "bool", False,
       "At login, append ' - ' and the client's address and port to its application_name ('app' when it gave "
       "none), as PgBouncer does; a later SET is left as it is."),
    _S("conffile", "path", "", "Config file to read on RELOAD; defaults to the file given on the command line."),
    _S("service_name", "str", "pgbouncer", NO_EFFECT + " (A Windows service name: maitred runs no Windows service.)",
       reloadable=False),
    _S("job_name", "str", "pgbouncer", NO_EFFECT + " (An alias of service_name: maitred runs no Windows service.)",
       reloadable=False),
    _S("stats_period", "int", 60, "Seconds between updates of the averages in SHOW STATS and the stats log line."),
    _S("max_prepared_statements", "int", 200,
       "Protocol-level prepared statements tracked per server in transaction/statement mode; 0 disables."),
    _S("scram_iterations", "int", 4096,
       "SCRAM-SHA-256 iterations used when hashing a plain-text password of the auth_file for a SCRAM login "
       "(and shown to unknown users alike). 4096 to 10000000: scramp refuses counts outside them.",
       bounds=(4096, 10_000_000)),
    # Authentication
    _S("auth_type", "enum", "md5",
       "Client authentication: trust, plain, md5 or scram-sha-256 (md5 uses SCRAM when the secret is SCRAM); "
       "cert (a client certificate whose CommonName is the user); hba (per line of auth_hba_file).",
       choices=PASSWORD_AUTH_TYPES + ("cert", "hba")),
    _S("auth_hba_file", "path", "",
       "pg_hba.conf-style rules for auth_type hba: local/host/hostssl/hostnossl, trust, reject, md5, password, "
       "scram-sha-256, cert, peer."),
    _S("auth_ident_file", "path", "", "Ident maps (map-name system-user database-user) for map= on hba lines."),
    _S("auth_file", "path", "", "File of user names and passwords or secrets (PgBouncer's userlist.txt format)."),
    _S("auth_user", "str", "", "User that runs auth_query for users missing from auth_file; not set disables."),
    _S("auth_query", "str",
       "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
       "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
       "Query returning (user name, password or secret) for the user name given as $1."),
    _S("auth_dbname", "str", "",
       "Database, of [databases], in which auth_query runs; not set means the target. pgbouncer is refused."),
    _S("auth_ldap_options", "str", "", NO_EFFECT + " (auth_type ldap is not supported.)"),
    # Logging
    _S("syslog", "bool", False, "Also log to the local syslog (/dev/log), INFO and above; RELOAD applies it."),
    _S("syslog_ident", "str", "pgbouncer", "Program name of the syslog lines: ident[pid]: message."),
    _S("syslog_facility", "str", "daemon",
       "Syslog facility: auth, authpriv, daemon, user or local0-7; another name is daemon, with a warning."),
    _S("log_connections", "bool", True, "Log successful logins."),
    _S("log_disconnections", "bool", True, "Log disconnections with their reasons."),
    _S("log_pooler_errors", "bool", True, "Log the error messages the pooler sends to clients."),
    _S("log_stats", "bool", True, "Log aggregated statistics every stats_period."),
    _S("verbose", "int", 0, "Log verbosity, as repeated -v; 3 is the highest."),
    # Console access
    _S("admin_users", "list", (), "Users allowed to run every command on the admin console."),
    _S("stats_users", "list", (), "Users allowed to run read-only SHOW commands on the admin console."),
    # Connection sanity checks and timeouts
    _S("server_reset_query", "str", "DISCARD ALL", "Query run when a server is released in session mode."),
    _S("server_reset_query_always", "bool", False, "Run server_reset_query in every pool mode, not only session."),
    _S("server_check_delay", "float_seconds", 30.0,
       "A server idle longer than this is checked with server_check_query before reuse; 0 always checks."),
    _S("server_check_query", "str", "<empty>",
       "Query checking an idle server; <empty> sends an empty query (PgBouncer 1.25), empty disables checks."),
    _S("server_fast_close", "bool", False, "In session mode, close servers marked for reconnect at once."),
    _S("server_lifetime", "float_seconds", 3600.0, "Close an unused server connected longer than this."),
    _S("server_idle_timeout", "float_seconds", 600.0, "Close a server idle longer than this; 0 disables."),
    _S("server_connect_timeout", "float_seconds", 15.0, "Give up a server connection and login after this."),
    _S("server_login_retry", "float_seconds", 15.0, "After a failed server login, wait this long to retry."),
    _S("client_login_timeout", "float_seconds", 60.0, "Disconnect a client that has not logged in after this."),
    _S("autodb_idle_timeout", "float_seconds", 3600.0,
       "Free a database made from the * entry when none of its pools has had a client or a server this long "
       "(its SHOW STATS counters go with it); 0 never."),
    _S("pool_idle_timeout", "float_seconds", 0.0, "Free a pool empty of clients and servers this long; 0 off."),
    _S("dns_max_ttl", "float_seconds", 15.0,
       "How long a server host name's addresses are kept before new server connections look it up again (the "
       "DNS TTL is ignored); 0 looks up for each. The addresses are taken in turn; servers at one a new answer "
       "lacks reconnect as they are released."),
    _S("dns_nxdomain_ttl", "float_seconds", 15.0,
       "How long a failed lookup of a server host name is kept: new server connections fail at once meanwhile."),
    _S("dns_zone_check_period", "float_seconds", 0.0,
       NO_EFFECT + " (DNS zone serial polling: maitred looks host names up through the system's resolver, again "
       "once dns_max_ttl has passed.)"),
    _S("resolv_conf", "path", "",
       NO_EFFECT + " (A resolv.conf of its own: maitred looks host names up through the system's resolver, which "
       "reads /etc/resolv.conf.)", reloadable=False),
    _S("query_wait_notify", "int", 5, "Seconds a client waits in the queue before it is notified; 0 disables."),
    _S("login_notify_message", "str", "", "Notice sent to a client after login; empty sends none."),
    # TLS
    _S("client_tls_sslmode", "enum", "disable", "TLS for client connections.", choices=SSLMODES),
    _S("client_tls_key_file", "path", "", "Private key presented to clients."),
    _S("client_tls_cert_file", "path", "", "Certificate presented to clients."),
    _S("client_tls_ca_file", "path", "", "CA bundle that validates client certificates."),
    _S("client_tls_protocols", "str", "secure", "TLS versions for clients: tlsv1.0-tlsv1.3, all or secure."),
    _S("client_tls_ciphers", "str", "default", "TLS 1.2 and lower ciphers for clients, OpenSSL syntax."),
    _S("client_tls13_ciphers", "str", "", "Refused unless empty: TLS 1.3 suites are always OpenSSL's defaults.",
       refused=TLS13_REFUSED),
    _S("client_tls_ecdhcurve", "str", "auto", "ECDH curve for clients: none, auto or a curve name."),
    _S("client_tls_dheparams", "str", "auto", NO_EFFECT + " (DHE parameters: OpenSSL's defaults are used.)"),
    _S("server_tls_sslmode", "enum", "prefer", "TLS for server connections.", choices=SSLMODES),
    _S("server_tls_ca_file", "path", "", "CA bundle that validates server certificates."),
    _S("server_tls_key_file", "path", "", "Private key presented to servers."),
    _S("server_tls_cert_file", "path", "", "Certificate presented to servers."),
    _S("server_tls_protocols", "str", "secure", "TLS versions for servers: tlsv1.0-tlsv1.3, all or secure."),
    _S("server_tls_ciphers", "str", "default", "TLS 1.2 and lower ciphers for servers, OpenSSL syntax."),
    _S("server_tls13_ciphers", "str", "", "Refused unless empty: TLS 1.3 suites are always OpenSSL's defaults.",
       refused=TLS13_REFUSED),
    # Dangerous timeouts
    _S("query_timeout", "float_seconds", 0.0, "Cancel queries running longer than this; 0 disables."),
    _S("query_wait_timeout", "float_seconds", 120.0, "Disconnect a client queued longer than this; 0 disables."),
    _S("cancel_wait_timeout", "float_seconds", 10.0, "Drop a cancel request queued longer than this; 0 disables."),
    _S("client_idle_timeout", "float_seconds", 0.0, "Close a client idle longer than this; 0 disables."),
    _S("idle_transaction_timeout", "float_seconds", 0.0, "Close a client idle in transaction this long; 0 off."),
    _S("transaction_timeout", "float_seconds", 0.0, "Close a client in a transaction this long; 0 off."),
    _S("suspend_timeout", "float_seconds", 10.0, "How long SUSPEND waits for buffers to flush."),
    # Low-level network
    _S("pkt_buf", "int", 4096, NO_EFFECT + " (maitred forwards what each read brings, of any size.)",
       reloadable=False),
    _S("max_packet_size", "int", 2147483647, "Largest protocol message accepted, in bytes."),
    _S("listen_backlog", "int", 128, "Backlog of listen(2).", reloadable=False),
    _S("sbuf_loopcnt", "int", 5,
       NO_EFFECT + " (A libevent fairness knob: maitred's event loop has no per-socket read budget.)"),
    _S("so_reuseport", "bool", False, "Set SO_REUSEPORT so several processes share the port.", reloadable=False),
    # The tcp_* settings hold for client and server TCP connections (pooler/sockopts.py); RELOAD and SET apply
    # them to the connections made next.
    _S("tcp_defer_accept", "bool", True,
       "TCP_DEFER_ACCEPT on the listening sockets: a client is accepted once it has sent something (or after "
       "a second, as PgBouncer sets it)."),
    _S("tcp_socket_buffer", "int", 0,
       "Socket send and receive buffer size in bytes; 0 keeps the OS default (buffers that grow as needed)."),
    _S("tcp_keepalive", "bool", True, "TCP keepalive, with the timers below."),
    _S("tcp_keepcnt", "int", 0, "TCP_KEEPCNT: unanswered probes before a connection is dropped; 0: OS default."),
    _S("tcp_keepidle", "int", 0, "TCP_KEEPIDLE: seconds idle before the first probe; 0 keeps the OS default."),
    _S("tcp_keepintvl", "int", 0, "TCP_KEEPINTVL: seconds between probes; 0 keeps the OS default."),
    _S("tcp_user_timeout", "int", 0, "TCP_USER_TIMEOUT: milliseconds sent data may stay unacknowledged before "
       "the connection is dropped; 0 keeps the OS default."),
)

MAITRED_SETTINGS: dict[str, Setting] = _catalogue(
    _S("http_addr", "str", "127.0.0.1",
       "Address of the /metrics, /healthz and /readyz endpoint; the operator sets 0.0.0.0 in pods.",
       reloadable=False),
    _S("http_port", "int", 9127,
       "Port of the HTTP endpoint; 0 disables it. When it is in use, a free port is taken and logged.",
       reloadable=False),
    _S("shutdown_timeout", "float_seconds", 30.0, "On shutdown, how long clients may finish before being closed."),
    _S("workers", "int", 1,
       "Pooler processes sharing the port (SO_REUSEPORT for TCP, one inherited Unix socket), supervised by one "
       "process that restarts a worker that dies. The console, SIGTERM and /metrics speak for all of them; "
       "pool sizes are per worker.", reloadable=False),
    _S("config_watch", "bool", False,
       "Reload when the config file changes, as on SIGHUP. Off by default, as PgBouncer, where an edit waits for "
       "RELOAD; the operator turns it on, for ConfigMap updates."),
    _S("remote_access", "enum", "all",
       "Who may log in from an address other than loopback or the Unix socket: all, or console (only "
       "admin_users and stats_users, only to the admin console; the operator sets it in sidecars).",
       choices=("all", "console")),
)

# [databases] connection-string keys. A None default means "inherit"; so does -1 for such a number, as in
# PgBouncer.
DATABASE_KEYS: dict[str, Setting] = _catalogue(
    _S("host", "str", None,
       "Server host or a Unix socket directory; not set: unix_socket_dir. A host list is refused."),
    _S("port", "int", 5432, "Server port."),
    _S("dbname", "str", None, "Server database name; defaults to the client-side name."),
    _S("user", "str", None, "Log in to the server as this user for every client: one pool per database."),
    _S("password", "str", None, "Password for user; not set means the one from auth_file."),
    _S("auth_user", "str", None, "Overrides the global auth_user."),
    _S("auth_query", "str", None, "Overrides the global auth_query."),
    _S("auth_dbname", "str", None, "Overrides the global auth_dbname."),
    _S("pool_size", "int", None, "Overrides default_pool_size."),
    _S("min_pool_size", "int", None, "Overrides min_pool_size."),
    _S("reserve_pool_size", "int", None, "Overrides reserve_pool_size (reserve_pool is an alias)."),
    _S("max_db_connections", "int", None, "Overrides max_db_connections."),
    _S("max_db_client_connections", "int", None, "Overrides max_db_client_connections."),
    _S("pool_mode", "enum", None, "Overrides pool_mode.", choices=POOL_MODES),
    _S("connect_query", "str", None, "Query run on each new server connection before use; errors are logged."),
    _S("server_lifetime", "float_seconds", None, "Overrides server_lifetime."),
    _S("query_wait_timeout", "float_seconds", None, "Overrides query_wait_timeout."),
    _S("load_balance_hosts", "enum", None, "Which host of a host= list a new server connection goes to.",
       choices=("round-robin", "disable")),
    _S("target_session_attrs", "enum", None, "Which servers are accepted (default any).",
       choices=("any", "read-write", "read-only", "primary", "standby")),
    _S("client_encoding", "str", None, "client_encoding asked from the server."),
    _S("datestyle", "str", None, "DateStyle asked from the server."),
    _S("timezone", "str", None, "TimeZone asked from the server."),
    _S("application_name", "str", None, "application_name asked from the server."),
)

DATABASE_KEY_ALIASES = {"reserve_pool": "reserve_pool_size"}

MAX_PEER_ID = 16383      # the peer id is 14 bits of the cancel key, as PgBouncer's

# [peers] keys: `peer_id = host=... port=...`, where to forward a cancel whose key carries that peer id.
PEER_KEYS: dict[str, Setting] = _catalogue(
    _S("host", "str", None, "The peer's host, or the directory of its Unix socket (a path starting with /)."),
    _S("port", "int", 6432, "The peer's port."),
    _S("pool_size", "int", None, "Cancels forwarded to this peer at once; not set: default_pool_size."),
)

# [users] keys, with the same None and -1 meaning "inherit".
USER_KEYS: dict[str, Setting] = _catalogue(
    _S("pool_mode", "enum", None, "Overrides the database's or the global pool_mode.", choices=POOL_MODES),
    _S("pool_size", "int", None, "Overrides the database's pool_size or default_pool_size."),
    _S("reserve_pool_size", "int", None, "Overrides the database's or the global reserve_pool_size."),
    _S("max_user_connections", "int", None, "Overrides max_user_connections."),
    _S("max_user_client_connections", "int", None, "Overrides max_user_client_connections."),
    _S("query_timeout", "float_seconds", None, "Overrides query_timeout."),
    _S("query_wait_timeout", "float_seconds", None, "Overrides query_wait_timeout."),
    _S("idle_transaction_timeout", "float_seconds", None, "Overrides idle_transaction_timeout."),
    _S("transaction_timeout", "float_seconds", None, "Overrides transaction_timeout."),
    _S("client_idle_timeout", "float_seconds", None, "Overrides client_idle_timeout."),
)


def inert(setting: Setting) -> str:
    """A setting accepted for PgBouncer's config files that does nothing in maitred: `NAME has no effect in
    maitred (why)`, "" for any other. Set to other than its default, it is a warning at load and RELOAD, and a
    notice on SET."""
    if not setting.doc.startswith(NO_EFFECT):
        return ""
    why = setting.doc[len(NO_EFFECT):].strip().removeprefix("(").removesuffix(")").rstrip(".")
    return f"{setting.name} has no effect in maitred ({why})"
