"""The config loader reads pgbouncer.ini as PgBouncer 1.25 does: names, defaults, value syntax, sections."""

import re
from pathlib import Path

import pytest

from pooler.config import ConfigError, load_config, parse_value
from pooler.settings import DATABASE_KEYS, MAITRED_SETTINGS, NO_EFFECT, PEER_KEYS, SETTINGS, USER_KEYS, inert
from tests.support import require_binary


def write(tmp_path: Path, text: str, name: str = "pooler.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str):
    return load_config(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


# -- the catalogue -----------------------------------------------------------------------------------------

PGBOUNCER_1_25_DEFAULTS = {
    "listen_addr": "", "listen_port": 6432, "unix_socket_dir": "/tmp", "unix_socket_mode": 0o777,
    "pool_mode": "session", "max_client_conn": 100, "default_pool_size": 20, "min_pool_size": 0,
    "reserve_pool_size": 0, "reserve_pool_timeout": 5.0, "max_db_connections": 0, "max_user_connections": 0,
    "max_db_client_connections": 0, "max_user_client_connections": 0, "server_round_robin": False,
    "server_lifetime": 3600.0, "server_idle_timeout": 600.0, "server_connect_timeout": 15.0,
    "server_login_retry": 15.0, "client_login_timeout": 60.0, "query_timeout": 0.0, "query_wait_timeout": 120.0,
    "cancel_wait_timeout": 10.0, "client_idle_timeout": 0.0, "idle_transaction_timeout": 0.0,
    "transaction_timeout": 0.0, "suspend_timeout": 10.0, "autodb_idle_timeout": 3600.0, "dns_max_ttl": 15.0,
    "dns_nxdomain_ttl": 15.0, "server_reset_query": "DISCARD ALL", "server_reset_query_always": False,
    "server_check_delay": 30.0, "server_check_query": "<empty>", "max_prepared_statements": 200,
    "auth_type": "md5", "auth_file": "", "auth_user": "",
    "auth_query": "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
                  "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
    "admin_users": (), "stats_users": (), "ignore_startup_parameters": (),
    "track_extra_parameters": ("IntervalStyle",),
    "scram_iterations": 4096, "so_reuseport": False, "tcp_keepalive": True, "tcp_user_timeout": 0,
    "client_tls_sslmode": "disable", "server_tls_sslmode": "prefer", "client_tls_protocols": "secure",
    "server_tls_ciphers": "default", "pkt_buf": 4096, "sbuf_loopcnt": 5, "max_packet_size": 2147483647,
    "listen_backlog": 128, "stats_period": 60, "log_connections": True, "log_disconnections": True,
    "log_pooler_errors": True, "log_stats": True, "verbose": 0, "application_name_add_host": False,
    "query_wait_notify": 5, "peer_id": 0, "logfile": "", "pidfile": "",
}

# The [pgbouncer] settings of PgBouncer's doc/config.md: a real pgbouncer.ini may use any of them.
PGBOUNCER_CONFIG_MD_SETTINGS = """
    logfile pidfile listen_addr listen_port unix_socket_dir unix_socket_mode unix_socket_group user pool_mode
    max_client_conn default_pool_size min_pool_size reserve_pool_size reserve_pool_timeout max_db_connections
    max_db_client_connections max_user_connections max_user_client_connections server_round_robin
    track_extra_parameters ignore_startup_parameters peer_id disable_pqexec application_name_add_host conffile
    service_name job_name stats_period max_prepared_statements scram_iterations auth_type auth_hba_file
    auth_ident_file auth_file auth_user auth_query auth_dbname auth_ldap_options syslog syslog_ident
    syslog_facility log_connections log_disconnections log_pooler_errors log_stats verbose admin_users
    stats_users server_reset_query server_reset_query_always server_check_delay server_check_query
    server_fast_close server_lifetime server_idle_timeout server_connect_timeout server_login_retry
    client_login_timeout autodb_idle_timeout pool_idle_timeout dns_max_ttl dns_nxdomain_ttl
    dns_zone_check_period resolv_conf query_wait_notify login_notify_message client_tls_sslmode
    client_tls_key_file client_tls_cert_file client_tls_ca_file client_tls_protocols client_tls_ciphers
    client_tls13_ciphers client_tls_ecdhcurve client_tls_dheparams server_tls_sslmode server_tls_ca_file
    server_tls_key_file server_tls_cert_file server_tls_protocols server_tls_ciphers server_tls13_ciphers
    query_timeout query_wait_timeout cancel_wait_timeout client_idle_timeout idle_transaction_timeout
    transaction_timeout suspend_timeout pkt_buf max_packet_size listen_backlog sbuf_loopcnt so_reuseport
    tcp_defer_accept tcp_socket_buffer tcp_keepalive tcp_keepcnt tcp_keepidle tcp_keepintvl tcp_user_timeout
""".split()

# CF_NO_RELOAD in PgBouncer's src/main.c: a RELOAD keeps the running value.
PGBOUNCER_NOT_RELOADABLE = {
    "disable_pqexec", "job_name", "listen_addr", "listen_backlog", "listen_port", "pidfile", "pkt_buf",
    "resolv_conf", "service_name", "so_reuseport", "track_extra_parameters", "unix_socket_dir",
    "unix_socket_group", "unix_socket_mode", "user",
}

KIND_TYPES = {"int": int, "float_seconds": float, "bool": bool, "str": str, "path": str, "enum": str,
              "list": tuple}


def test_an_empty_file_gives_pgbouncer_1_25_defaults(tmp_path):
    config = load(tmp_path, "")
    assert {name: config.get(name) for name in PGBOUNCER_1_25_DEFAULTS} == PGBOUNCER_1_25_DEFAULTS
    assert config.databases == {} and config.users == {} and config.warnings == []


def test_every_pgbouncer_setting_is_known():
    assert set(PGBOUNCER_CONFIG_MD_SETTINGS) <= set(SETTINGS)


def test_every_setting_is_read_by_the_code_unless_its_doc_says_it_has_no_effect_or_it_is_refused():
    """A setting that does nothing is a defect: each is read outside the catalogue, by its name in quotes as
    Config.get and the console take it, or says in its own doc that it has no effect, or is refused."""
    root = Path(__file__).resolve().parent.parent
    code = "".join(path.read_text() for folder in ("pooler", "maitred", "operator")
                   for path in sorted((root / folder).rglob("*.py")) if path.name != "settings.py")
    idle = [name for name, setting in {**SETTINGS, **MAITRED_SETTINGS}.items()
            if not setting.doc.startswith(NO_EFFECT) and not setting.refused
            and not re.search(rf"[\"']{name}[\"']", code)]
    assert idle == []

def test_settings_pgbouncer_does_not_reload_are_not_reloadable():
    assert {s.name for s in SETTINGS.values() if not s.reloadable} == PGBOUNCER_NOT_RELOADABLE


@pytest.mark.parametrize("catalogue", [SETTINGS, MAITRED_SETTINGS, DATABASE_KEYS, USER_KEYS, PEER_KEYS])
def test_every_setting_has_a_kind_a_typed_default_and_one_line_of_doc(catalogue):
    for name, setting in catalogue.items():
        assert setting.name == name
        assert setting.kind in KIND_TYPES
        assert setting.default is None or isinstance(setting.default, KIND_TYPES[setting.kind]), name
        assert bool(setting.choices) == (setting.kind == "enum"), name
        assert setting.default is None or setting.kind != "enum" or setting.default in setting.choices
        assert setting.doc and "\n" not in setting.doc, name


def test_maitred_section_defaults(tmp_path):
    config = load(tmp_path, "")
    assert config.maitred == {"http_addr": "127.0.0.1", "http_port": 9127, "shutdown_timeout": 30.0,
                              "workers": 1, "config_watch": False, "remote_access": "all"}


def test_maitred_section_is_parsed_and_reachable_through_get(tmp_path):
    config = load(tmp_path, "[maitred]\nhttp_addr = 0.0.0.0\nhttp_port = 0\nworkers = 4\nconfig_watch = on\n")
    assert (config.get("http_addr"), config.get("http_port"), config.get("workers")) == ("0.0.0.0", 0, 4)
    assert config.get("config_watch") is True


def test_get_of_an_unknown_name_raises_key_error(tmp_path):
    with pytest.raises(KeyError):
        load(tmp_path, "").get("no_such_setting")


def test_conffile_defaults_to_the_loaded_file(tmp_path):
    path = write(tmp_path, "")
    assert load_config(path).get("conffile") == str(path)


# -- value syntax ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, raw, expected", [
    ("default_pool_size", "25", 25),
    ("default_pool_size", "+25", 25),
    ("default_pool_size", "0x19", 25),          # strtol base 0, as PgBouncer
    ("unix_socket_mode", "0777", 0o777),        # a leading 0 is octal
    ("unix_socket_mode", "0", 0),
    ("max_packet_size", "4294967295", 4294967295),
    ("server_lifetime", "90", 90.0),
    ("server_lifetime", "1.5", 1.5),
    ("server_lifetime", ".5", 0.5),
    ("server_lifetime", "1e3", 1000.0),
    ("log_connections", "0", False),
    ("log_connections", "1", True),
    ("log_connections", "2", True),             # PgBouncer's booleans are integers
    ("log_connections", "yes", True),
    ("log_connections", "On", True),
    ("log_connections", "false", False),
    ("pool_mode", "Transaction", "transaction"),
    ("auth_type", "SCRAM-SHA-256", "scram-sha-256"),
    ("server_tls_sslmode", "verify-full", "verify-full"),
    ("admin_users", "alice, bob ,, carol", ("alice", "bob", "carol")),
    ("admin_users", "", ()),
    ("server_reset_query", "DEALLOCATE ALL; ", "DEALLOCATE ALL;"),
    ("auth_file", "users.txt", "users.txt"),    # relative paths stay relative to the working directory
])
def test_parse_value_accepts_what_pgbouncer_accepts(name, raw, expected):
    value = parse_value(SETTINGS[name], raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name, raw, reason", [
    ("default_pool_size", "abc", "'abc' is not an integer"),
    ("default_pool_size", "1.5", "is not an integer"),
    ("default_pool_size", "", "is not an integer"),
    ("default_pool_size", "08", "is not an integer"),
    ("default_pool_size", "-5", "'-5' is negative"),
    ("server_lifetime", "10s", "unit suffixes are not accepted"),
    ("server_lifetime", "10min", "unit suffixes are not accepted"),
    ("server_lifetime", "", "is not a number of seconds"),
    ("server_lifetime", "inf", "is not a number of seconds"),
    ("server_lifetime", "nan", "is not a number of seconds"),
    ("server_lifetime", "1_000", "is not a number of seconds"),
    ("server_lifetime", "-1", "'-1' is negative"),
    ("log_connections", "maybe", "'maybe' is not a boolean"),
    ("pool_mode", "sessions", "'sessions' is not one of session, transaction, statement"),
    ("auth_type", "bogus", "is not one of trust, plain, md5, scram-sha-256"),
])
def test_parse_value_rejects_bad_input_with_a_reason(name, raw, reason):
    with pytest.raises(ValueError, match=reason):
        parse_value(SETTINGS[name], raw)


@pytest.mark.parametrize("method", ["any", "ldap", "pam"])
def test_pgbouncer_auth_types_maitred_lacks_are_named_unsupported(method):
    with pytest.raises(ValueError, match=f"'{method}' is not supported by maitred"):
        parse_value(SETTINGS["auth_type"], method)


@pytest.mark.parametrize("key, raw", [
    ("default_pool_size", "abc"), ("server_idle_timeout", "5m"), ("so_reuseport", "sure"),
    ("pool_mode", "batch"), ("auth_type", "ldap"),
])
def test_an_invalid_value_names_file_line_and_key(tmp_path, key, raw):
    path = write(tmp_path, f"[databases]\n\n[pgbouncer]\n{key} = {raw}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 4, key)
    assert str(err).startswith(f"{path}:4: invalid value for {key}: '{raw}'")


def test_the_error_message_reads_like_the_compiler_style_example(tmp_path):
    err = error_of(tmp_path, "[pgbouncer]\ndefault_pool_size = abc\n")
    assert str(err) == f"{tmp_path / 'pooler.ini'}:2: invalid value for default_pool_size: 'abc' is not an integer"


def test_a_later_value_overrides_an_earlier_one(tmp_path):
    assert load(tmp_path, "[pgbouncer]\nlisten_port = 1\nlisten_port = 2\n").get("listen_port") == 2


def test_an_empty_value_sets_a_string_to_empty(tmp_path):
    assert load(tmp_path, "[pgbouncer]\nunix_socket_dir =\n").get("unix_socket_dir") == ""


# -- file syntax -------------------------------------------------------------------------------------------

def test_comments_start_only_at_the_start_of_a_line(tmp_path):
    config = load(tmp_path, "; one\n# two\n   ;indented\n[pgbouncer]\nserver_reset_query = DISCARD ALL ; no\n")
    assert config.get("server_reset_query") == "DISCARD ALL ; no"
    assert error_of(tmp_path, "[pgbouncer]\nlisten_port = 6432 ; comment\n").line == 2


def test_a_comment_may_follow_a_section_header(tmp_path):
    assert load(tmp_path, "[pgbouncer] ; main\nlisten_port = 7000\n").get("listen_port") == 7000


def test_crlf_line_endings_are_accepted(tmp_path):
    config = load(tmp_path, "[pgbouncer]\r\nlisten_port = 7000\r\nlisten_addr = *\r\n")
    assert (config.get("listen_port"), config.get("listen_addr")) == (7000, "*")


def test_keys_are_case_sensitive_so_a_wrong_case_key_is_unknown(tmp_path):
    config = load(tmp_path, "[pgbouncer]\nDefault_Pool_Size = 5\n")
    assert config.get("default_pool_size") == 20
    assert config.warnings == [
        f"{tmp_path / 'pooler.ini'}:2: unknown setting 'Default_Pool_Size' in [pgbouncer], ignored"]


def test_an_unknown_setting_is_a_warning_naming_file_line_and_key(tmp_path):
    config = load(tmp_path, "[pgbouncer]\nlisten_port = 7000\nno_such_thing = 1\n[maitred]\nnope = 2\n")
    assert config.get("listen_port") == 7000
    assert config.warnings == [
        f"{tmp_path / 'pooler.ini'}:3: unknown setting 'no_such_thing' in [pgbouncer], ignored",
        f"{tmp_path / 'pooler.ini'}:5: unknown setting 'nope' in [maitred], ignored",
    ]


def test_a_setting_with_no_effect_in_maitred_is_a_warning_unless_left_at_its_default(tmp_path):
    config = load(tmp_path, "[pgbouncer]\nresolv_conf = /etc/other.conf\ndns_zone_check_period = 0\npkt_buf = 8192\n")
    assert config.get("resolv_conf") == "/etc/other.conf"
    assert config.warnings == [
        f"{tmp_path / 'pooler.ini'}:2: resolv_conf has no effect in maitred (A resolv.conf of its own: maitred "
        "looks host names up through the system's resolver, which reads /etc/resolv.conf)",
        f"{tmp_path / 'pooler.ini'}:4: pkt_buf has no effect in maitred (maitred forwards what each read brings, "
        "of any size)"]


def test_an_unknown_section_is_one_warning_and_its_keys_are_ignored(tmp_path):
    config = load(tmp_path, "[fleet]\n1 = host=/tmp/a\n2 = host=/tmp/b\n[pgbouncer]\nlisten_port = 7000\n")
    assert config.get("listen_port") == 7000
    assert config.warnings == [
        f"{tmp_path / 'pooler.ini'}:1: section [fleet] is not supported, its keys are ignored"]


def test_section_names_are_case_sensitive(tmp_path):
    config = load(tmp_path, "[PgBouncer]\nlisten_port = 7000\n")
    assert config.get("listen_port") == 6432 and "section [PgBouncer]" in config.warnings[0]


@pytest.mark.parametrize("text, line", [
    ("listen_port = 1\n", 1),                       # outside any section
    ("[pgbouncer]\nlisten_port\n", 2),              # no '='
    ("[pgbouncer\n", 1),
    ("[pgbouncer] listen_port = 1\n", 1),
    ("[databases]\nmy$db = host=x\n", 2),           # unquoted names are [A-Za-z0-9_.*-]
    ("[pgbouncer]\n%define x\n", 2),
])
def test_syntax_errors_name_the_line(tmp_path, text, line):
    err = error_of(tmp_path, text)
    assert (err.file, err.line) == (str(tmp_path / "pooler.ini"), line)


def test_a_missing_config_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.ini")
    assert info.value.file == str(tmp_path / "absent.ini") and "No such file" in str(info.value)


# -- %include ----------------------------------------------------------------------------------------------

def test_include_is_relative_to_the_working_directory_and_continues_the_section(tmp_path, monkeypatch):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path, "extra = host=db2\n", "conf.d/dbs.ini")
    main = write(tmp_path, "[databases]\n%include conf.d/dbs.ini\nmain = host=db1\n")
    monkeypatch.chdir(tmp_path)
    assert list(load_config(main).databases) == ["extra", "main"]


def test_a_section_opened_in_an_included_file_stays_open_after_it(tmp_path):
    inc = write(tmp_path, "[pgbouncer]\nlisten_port = 7000\n", "inc.ini")
    config = load(tmp_path, f"[databases]\n%include {inc}\npool_mode = transaction\n")
    assert (config.get("listen_port"), config.get("pool_mode"), config.databases) == (7000, "transaction", {})


def test_include_nests_ten_deep_but_not_eleven(tmp_path):
    for n in range(1, 12):
        write(tmp_path, f"%include {tmp_path}/f{n + 1}.ini\n", f"f{n}.ini")
    write(tmp_path, "[pgbouncer]\nlisten_port = 7000\n", "f12.ini")
    assert load_config(tmp_path / "f2.ini").get("listen_port") == 7000
    with pytest.raises(ConfigError, match="nested deeper than 10") as info:
        load_config(tmp_path / "f1.ini")
    assert (info.value.file, info.value.line) == (f"{tmp_path}/f11.ini", 1)


def test_a_missing_include_names_the_including_line(tmp_path):
    err = error_of(tmp_path, f"[pgbouncer]\n%include {tmp_path}/nope.ini\n")
    assert (err.file, err.line) == (str(tmp_path / "pooler.ini"), 2) and "nope.ini" in str(err)


def test_an_error_inside_an_included_file_names_that_file_and_line(tmp_path):
    inc = write(tmp_path, "\nmax_client_conn = lots\n", "inc.ini")
    err = error_of(tmp_path, f"[pgbouncer]\n%include {inc}\n")
    assert (err.file, err.line, err.key) == (str(inc), 2, "max_client_conn")


# -- [databases] -------------------------------------------------------------------------------------------

def test_a_database_connection_string_with_libpq_style_quoting(tmp_path):
    config = load(tmp_path, "[databases]\n"
                            "forcedb = host=localhost port=300 user=baz password='it''s a secret' "
                            "client_encoding=UNICODE datestyle=ISO timezone=UTC application_name=app "
                            "connect_query='SELECT 1' pool_size=50 reserve_pool=10 pool_mode=Transaction "
                            "server_lifetime=30 query_wait_timeout=2.5 dbname = real\n")
    db = config.databases["forcedb"]
    assert (db.host, db.port, db.user, db.dbname) == ("localhost", 300, "baz", "real")
    assert db.password == "it's a secret"
    assert (db.pool_size, db.reserve_pool_size, db.pool_mode) == (50, 10, "transaction")
    assert (db.connect_query, db.server_lifetime, db.query_wait_timeout) == ("SELECT 1", 30.0, 2.5)
    assert db.startup_params == {"client_encoding": "UNICODE", "DateStyle": "ISO", "TimeZone": "UTC",
                                 "application_name": "app"}
    assert config.warnings == []


def test_an_empty_connection_string_means_the_unix_socket_and_the_same_database_name(tmp_path):
    db = load(tmp_path, "[databases]\nfoodb =\n").databases["foodb"]
    assert (db.host, db.port, db.dbname, db.user, db.pool_size, db.startup_params) == (
        None, 5432, "foodb", None, None, {})


def test_minus_one_leaves_a_database_number_unset(tmp_path):
    db = load(tmp_path, "[databases]\nd = pool_size=-1 query_wait_timeout=-1\n").databases["d"]
    assert (db.pool_size, db.query_wait_timeout) == (None, None)


def test_quoted_database_names_use_sql_identifier_quoting(tmp_path):
    assert list(load(tmp_path, '[databases]\n"my ""odd"" db" = dbname=x\n').databases) == ['my "odd" db']


def test_databases_keep_file_order(tmp_path):
    assert list(load(tmp_path, "[databases]\nb =\na =\n* = host=x\n").databases) == ["b", "a", "*"]


def test_the_star_entry_is_the_fallback_with_the_requested_database_name(tmp_path):
    config = load(tmp_path, "[databases]\nexact = host=one\n* = host=fallback port=5433\n")
    assert config.database_for("exact").host == "one"
    auto = config.database_for("other")
    assert (auto.name, auto.dbname, auto.host, auto.port) == ("other", "other", "fallback", 5433)
    assert config.databases["*"].name == "*"


def test_a_star_entry_with_dbname_sends_every_database_there(tmp_path):
    config = load(tmp_path, "[databases]\n* = host=x dbname=shared\n")
    assert config.database_for("anything").dbname == "shared"


def test_without_a_star_entry_an_unknown_database_has_no_entry(tmp_path):
    assert load(tmp_path, "[databases]\nexact =\n").database_for("other") is None


@pytest.mark.parametrize("connstr, reason", [
    ("host=x port=0", "invalid port"),
    ("host=x password=", "empty value for 'password'"),
    ("host=x password='open", "badly quoted value for 'password'"),
    ("host=x password=''", "empty value for 'password'"),
    ("host", "expected key=value"),
    ("pool_size=many", "invalid value for pool_size of database 'd'"),
    ("pool_mode=batch", "invalid value for pool_mode"),
])
def test_a_bad_database_entry_names_file_line_and_database(tmp_path, connstr, reason):
    err = error_of(tmp_path, f"[databases]\nd = {connstr}\n")
    assert (err.line, err.key) == (2, "d") and reason in str(err)


def test_the_admin_console_name_is_reserved(tmp_path):
    assert "reserved" in str(error_of(tmp_path, "[databases]\npgbouncer = host=x\n"))


def test_an_unknown_connection_parameter_is_a_warning(tmp_path):
    config = load(tmp_path, "[databases]\nd = host=x sslmode=require\n")
    assert config.databases["d"].host == "x"
    assert config.warnings == [
        f"{tmp_path / 'pooler.ini'}:2: unknown parameter 'sslmode' for database 'd', ignored"]


# -- [users] -----------------------------------------------------------------------------------------------

def test_user_entries(tmp_path):
    config = load(tmp_path, "[users]\nuser1 = pool_mode=transaction max_user_connections=10 pool_size=5 "
                            "query_timeout=2.5 idle_transaction_timeout=30 max_user_client_connections=100\n")
    user = config.users["user1"]
    assert (user.name, user.pool_mode, user.pool_size) == ("user1", "transaction", 5)
    assert user.max_user_connections == 10
    assert (user.query_timeout, user.idle_transaction_timeout) == (2.5, 30.0)
    assert user.max_user_client_connections == 100
    assert (user.reserve_pool_size, user.transaction_timeout) == (None, None)


def test_a_bad_user_entry_is_an_error_and_an_unknown_key_a_warning(tmp_path):
    err = error_of(tmp_path, "[users]\nbob = pool_size=lots\n")
    assert (err.line, err.key) == (2, "bob")
    config = load(tmp_path, "[users]\nbob = reserve_pool=3\n")
    assert "unknown parameter 'reserve_pool' for user 'bob'" in config.warnings[0]


# -- real files --------------------------------------------------------------------------------------------

@pytest.fixture
def debian_ini():
    """Debian's pgbouncer package ships this file; with CI=true its absence is a failure."""
    require_binary("pgbouncer")
    path = Path("/etc/pgbouncer/pgbouncer.ini")
    if not path.exists():
        pytest.fail(f"{path} is missing: reinstall Debian's pgbouncer package")
    return path


def test_debians_shipped_pgbouncer_ini_loads_without_warnings(debian_ini):
    config = load_config(debian_ini)
    assert config.warnings == []
    assert config.get("auth_file") == "/etc/pgbouncer/userlist.txt"


def test_every_setting_commented_out_in_debians_pgbouncer_ini_loads_warning_only_of_what_does_nothing(tmp_path,
                                                                                               debian_ini):
    """Its example of resolv_conf names a file of its own, which maitred's resolver never reads: said, not refused."""
    text = debian_ini.read_text().split("[pgbouncer]", 1)[1]
    examples = [line[1:] for line in text.splitlines() if re.match(r";[a-z0-9_]+ *=", line)]
    assert len(examples) > 50
    warnings = load(tmp_path, "[pgbouncer]\n" + "\n".join(examples)).warnings
    assert [w.split(": ", 1)[1] for w in warnings] == [inert(SETTINGS["resolv_conf"])]


def test_the_pgbouncer_docs_example_loads(tmp_path):
    config = load(tmp_path, """\
[databases]
template1 = host=localhost dbname=template1 auth_user=someuser

[pgbouncer]
pool_mode = session
listen_port = 6432
listen_addr = localhost
auth_type = md5
auth_file = users.txt
logfile = pgbouncer.log
pidfile = pgbouncer.pid
admin_users = someuser
stats_users = stat_collector
""")
    assert config.warnings == []
    assert config.databases["template1"].auth_user == "someuser"
    assert (config.get("admin_users"), config.get("stats_users")) == (("someuser",), ("stat_collector",))


def test_an_entry_made_from_the_fallback_is_made_once_per_name_while_the_config_stands(tmp_path):
    """A login through `*` finds its entry made by an earlier one, rather than a copy of `*` each time; a
    reloaded config, a new Config, makes its own from its own `*`."""
    config = load(tmp_path, "[databases]\n* = host=10.0.0.1 port=5433\n")
    first = config.database_for("orders")
    assert config.database_for("orders") is first
    assert (first.name, first.dbname, first.port) == ("orders", "orders", 5433)
    assert config.database_for("billing") is not first
    reloaded = load(tmp_path, "[databases]\n* = host=10.0.0.2\n")
    assert reloaded.database_for("orders").host == "10.0.0.2"
