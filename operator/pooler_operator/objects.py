"""Manifest builders: a PostgresPooler plus the Secrets it references in, every owned object out.

Pure: no API calls. The operator and `maitred render` call the same `render`, so what the review shows is
what the cluster gets. The pooler config is a plain structure (`PoolerConfig`) first and text second: the
structure decides which changes need a restart (settings the pooler cannot reload), the jinja2 templates only
lay it out.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from pooler.settings import MAITRED_SETTINGS, SETTINGS

from . import API_VERSION, KIND
from .api import POOL_SETTINGS, PostgresPooler

DEFAULT_IMAGE_REPOSITORY = "ghcr.io/maitred/maitred"
IMAGE_ENV = "MAITRED_POOLER_IMAGE"
CONFIG_DIR = "/etc/maitred"
CONFIG_FILE = "pooler.ini"
USERLIST_FILE = "userlist.txt"
LISTEN_PORT = 5432
HTTP_PORT = int(MAITRED_SETTINGS["http_port"].default)
RESTART_HASH_ANNOTATION = "maitred.dev/restart-hash"
POOLER_LABEL = "maitred.dev/pooler"
# The injected sidecar's port names: prefixed, so that the app's own ports keep theirs (at most 15 characters).
SIDECAR_PORT_NAMES = {"postgres": "maitred-pg", "http": "maitred-http"}
MANAGED_BY = "maitred-operator"
CONSOLE_USER = "maitred_autotune"
"""The admin user the operator's autotuner logs into the pooler consoles as (SET needs admin_users)."""
CONSOLE_ADDRESS_ANNOTATION = "maitred.dev/console-address"
"""On a pooler pod whose port is mapped elsewhere (host:port): where the autotuner reaches its console instead
of the pod IP and container port."""
GRACE_MARGIN_SECONDS = 5


def default_image() -> str:
    """The pooler image when the spec names none: the operator's env var, else the operator's own version."""
    from maitred import __version__
    return os.environ.get(IMAGE_ENV) or f"{DEFAULT_IMAGE_REPOSITORY}:{__version__}"


@dataclass(frozen=True)
class Names:
    """Names of the owned objects."""

    pooler: str

    @property
    def deployment(self) -> str:
        return self.pooler

    service = service_account = pdb = monitor = deployment

    @property
    def config(self) -> str:
        return f"{self.pooler}-config"

    @property
    def auth(self) -> str:
        return f"{self.pooler}-auth"

    @property
    def console(self) -> str:
        return f"{self.pooler}-autotune"


def common_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "maitred", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "pooler", "app.kubernetes.io/managed-by": MANAGED_BY,
            POOLER_LABEL: name}


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "maitred", POOLER_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


# -- the pooler config --------------------------------------------------------------------------------------


class MissingSecret(LookupError):
    """A referenced Secret, or a key in it, is not there."""

    def __init__(self, missing: list[str]):
        super().__init__("; ".join(missing))
        self.missing = missing


@dataclass
class PoolerConfig:
    """The three sections of the pooler's ini file, values already as text."""

    databases: dict[str, str] = field(default_factory=dict)
    pgbouncer: dict[str, str] = field(default_factory=dict)
    maitred: dict[str, str] = field(default_factory=dict)

    def restart_settings(self) -> dict[str, str]:
        """The settings the pooler reads only at startup: a change to any of them needs new pods."""
        out = {name: value for name, value in self.pgbouncer.items()
               if name in SETTINGS and not SETTINGS[name].reloadable}
        out.update({f"maitred.{name}": value for name, value in self.maitred.items()
                    if not MAITRED_SETTINGS[name].reloadable})
        return out

    def flat(self) -> dict[str, str]:
        return {**{f"databases.{k}": v for k, v in self.databases.items()}, **self.pgbouncer,
                **{f"maitred.{k}": v for k, v in self.maitred.items()}}


def setting_text(value: Any) -> str:
    """A value as the pooler reads it: booleans as 1/0, whole seconds without a fraction."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@dataclass(frozen=True)
class TLSFiles:
    """Where each TLS file lands in the config volume, and which Secret key it comes from."""

    setting: str
    secret: str
    key: str
    path: str


def tls_files(pooler: PostgresPooler) -> list[TLSFiles]:
    tls = pooler.spec.tls
    files: list[TLSFiles] = []
    if tls and tls.client and tls.client.sslmode != "disable":
        if tls.client.secret_name:
            files += [TLSFiles("client_tls_cert_file", tls.client.secret_name, "tls.crt", "tls/client/tls.crt"),
                      TLSFiles("client_tls_key_file", tls.client.secret_name, "tls.key", "tls/client/tls.key")]
        if tls.client.ca_secret_name:
            files.append(TLSFiles("client_tls_ca_file", tls.client.ca_secret_name, "ca.crt", "tls/client/ca.crt"))
    if tls and tls.server and tls.server.sslmode != "disable":
        if tls.server.ca_secret_name:
            files.append(TLSFiles("server_tls_ca_file", tls.server.ca_secret_name, "ca.crt", "tls/server/ca.crt"))
        if tls.server.secret_name:
            files += [TLSFiles("server_tls_cert_file", tls.server.secret_name, "tls.crt", "tls/server/tls.crt"),
                      TLSFiles("server_tls_key_file", tls.server.secret_name, "tls.key", "tls/server/tls.key")]
    return files


@dataclass(frozen=True)
class TunedSize:
    """The autotuner's last allocation. The config carries it instead of the spec's sizes, so a new pod starts
    at it and a reconcile never reverts the loop."""

    pool_size: int
    per_process_cap: int | None = None


def tuned_size(pooler: PostgresPooler) -> TunedSize | None:
    """The allocation in status.autotune, when the autotuner owns the pool size (enabled, not a dry run)."""
    autotune, seen = pooler.spec.autotune, pooler.status.autotune
    if not autotune.enabled or autotune.dry_run or seen is None or seen.pool_size is None:
        return None
    size, cap = seen.pool_size, seen.per_process_cap
    processes = pooler.spec.replicas * pooler.spec.pooler.workers
    if seen.share and cap and cap * processes > seen.share:
        # More replicas than the share was made for: each process gets less, so the new pods do not push the
        # tier past its share before the next tick reallocates (the ConfigMap is applied before the
        # Deployment grows).
        cap = max(1, seen.share // processes)
        size = min(size, cap)
    return TunedSize(size, cap)


def pooler_config(pooler: PostgresPooler, tuned: TunedSize | None = None) -> PoolerConfig:
    """The settings the pooler runs with, in the order the ini file lists them."""
    spec = pooler.spec
    db = spec.database
    conninfo = f"host={db.host} port={db.port}" + (f" dbname={db.dbname}" if db.dbname else "")
    pgbouncer: dict[str, Any] = {
        "listen_addr": "*",
        "listen_port": LISTEN_PORT,
        "unix_socket_dir": "/tmp",
        "auth_type": spec.auth.type,
        "auth_file": f"{CONFIG_DIR}/{USERLIST_FILE}",
    }
    if spec.auth.auth_query:
        pgbouncer["auth_user"] = spec.auth.auth_query.user
        pgbouncer["auth_query"] = spec.auth.auth_query.query
    pgbouncer["pool_mode"] = spec.pool_mode
    pool = spec.pool.model_dump(by_alias=True)
    for field_name, setting in POOL_SETTINGS.items():
        if pool[field_name] is not None:
            pgbouncer[setting] = pool[field_name]
    if spec.tls and spec.tls.client:
        pgbouncer["client_tls_sslmode"] = spec.tls.client.sslmode
    if spec.tls and spec.tls.server:
        pgbouncer["server_tls_sslmode"] = spec.tls.server.sslmode
    for f in tls_files(pooler):
        pgbouncer[f.setting] = f"{CONFIG_DIR}/{f.path}"
    if tuned:
        pgbouncer["default_pool_size"] = tuned.pool_size
        if tuned.per_process_cap:  # with one database it bounds all a process opens; with `*`, each database
            pgbouncer["max_db_connections"] = tuned.per_process_cap
    pgbouncer.update(spec.pooler.parameters)
    if spec.autotune.enabled:
        admins = [u.strip() for u in str(pgbouncer.get("admin_users", "")).split(",") if u.strip()]
        pgbouncer["admin_users"] = ",".join(dict.fromkeys([*admins, CONSOLE_USER]))
    maitred = {
        "http_addr": "0.0.0.0",
        "http_port": HTTP_PORT,
        "workers": spec.pooler.workers,
        "shutdown_timeout": spec.pooler.shutdown_timeout_seconds,
        "config_watch": True,
    }
    if spec.mode == "sidecar":
        # A sidecar serves its own pod's application over loopback; from the pod IP only the admin console
        # answers, for the operator's autotuner.
        maitred["remote_access"] = "console"
    return PoolerConfig(databases={db.dbname or "*": conninfo},
                        pgbouncer={k: setting_text(v) for k, v in pgbouncer.items()},
                        maitred={k: setting_text(v) for k, v in maitred.items()})


# -- the auth_file ------------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def userlist(pooler: PostgresPooler, secrets: dict[str, dict[str, str]],
             console_password: str | None = None) -> tuple[str, list[str]]:
    """The auth_file: the users Secret (one key per user, or a ready userlist.txt), the auth_user and the
    autotuner's console user.

    `secrets` maps Secret name to its decoded data. Returns the text and what is missing; a missing part is
    left out of the text.
    """
    auth = pooler.spec.auth
    missing, lines = [], []
    if auth.users_secret:
        data = secrets.get(auth.users_secret.name)
        if data is None:
            missing.append(f"Secret {auth.users_secret.name} (spec.auth.usersSecret) not found")
        elif USERLIST_FILE in data:
            lines.append(data[USERLIST_FILE].rstrip("\n"))
        else:
            for user, password in sorted(data.items()):
                if "\n" in password or "\r" in password:
                    missing.append(f"Secret {auth.users_secret.name}: the password of {user} spans lines")
                    continue
                lines.append(f"{_quote(user)} {_quote(password)}")
    if auth.auth_query:
        ref = auth.auth_query.password_secret
        data = secrets.get(ref.name)
        if data is None:
            missing.append(f"Secret {ref.name} (spec.auth.authQuery.passwordSecret) not found")
        elif ref.key not in data:
            missing.append(f"Secret {ref.name} has no key {ref.key} (spec.auth.authQuery.passwordSecret)")
        else:
            lines.append(f"{_quote(auth.auth_query.user)} {_quote(data[ref.key].strip())}")
    if console_password and pooler.spec.autotune.enabled:
        lines.append(f"{_quote(CONSOLE_USER)} {_quote(console_password)}")
    return ("\n".join(lines) + "\n" if lines else ""), missing


def referenced_secrets(pooler: PostgresPooler) -> list[str]:
    """Every Secret the resource names, in a stable order (the operator reads and watches these)."""
    names = file_secrets(pooler)
    prometheus = pooler.spec.autotune.prometheus
    if prometheus and prometheus.credentials_secret:
        names.append(prometheus.credentials_secret.name)
    if pooler.spec.autotune.postgres_secret:
        names.append(pooler.spec.autotune.postgres_secret.name)
    return list(dict.fromkeys(names))


def file_secrets(pooler: PostgresPooler) -> list[str]:
    """The referenced Secrets whose contents end up in the pooler's files (auth_file, certificates)."""
    spec = pooler.spec
    names = [spec.auth.users_secret.name] if spec.auth.users_secret else []
    if spec.auth.auth_query:
        names.append(spec.auth.auth_query.password_secret.name)
    return list(dict.fromkeys(names + [f.secret for f in tls_files(pooler)]))


def tls_problems(pooler: PostgresPooler, secrets: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for f in tls_files(pooler):
        if f.secret not in secrets:
            problems.append(f"Secret {f.secret} (spec.tls) not found")
        elif f.key not in secrets[f.secret]:
            problems.append(f"Secret {f.secret} has no key {f.key} (spec.tls)")
    return list(dict.fromkeys(problems))


def autotune_problems(pooler: PostgresPooler, secrets: dict[str, dict[str, str]]) -> list[str]:
    """What keeps the autotuner from running; reported, but never in the way of the pooler's own config."""
    autotune = pooler.spec.autotune
    if not autotune.enabled:
        return []
    problems = []
    if autotune.postgres_secret is None:
        problems.append("spec.autotune.postgresSecret is needed: the monitoring credentials the budget is read "
                        "with")
    else:
        data = secrets.get(autotune.postgres_secret.name)
        if data is None:
            problems.append(f"Secret {autotune.postgres_secret.name} (spec.autotune.postgresSecret) not found")
        elif not {"username", "password"} <= data.keys():
            problems.append(f"Secret {autotune.postgres_secret.name} (spec.autotune.postgresSecret) needs "
                            "`username` and `password`")
    creds = autotune.prometheus.credentials_secret if autotune.prometheus else None
    if creds is not None:
        data = secrets.get(creds.name)
        if data is None:
            problems.append(f"Secret {creds.name} (spec.autotune.prometheus.credentialsSecret) not found")
        elif "token" not in data and not {"username", "password"} <= data.keys():
            problems.append(f"Secret {creds.name} (spec.autotune.prometheus.credentialsSecret) has neither "
                            "`token` nor `username` and `password`")
    return problems


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- manifests ----------------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("pooler_operator", "templates"),
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=True, autoescape=False)
_ENV.filters["json"] = _json
_ENV.filters["b64"] = _b64


@dataclass
class Rendered:
    """Every object the operator applies for one PostgresPooler, and the numbers its status reports."""

    manifests: list[dict[str, Any]]
    config: PoolerConfig
    ini: str
    config_hash: str
    restart_hash: str
    pool_size: int
    budget: int | None
    selector: str
    pool_size_source: str = "spec"
    tuned: TunedSize | None = None
    warnings: list[str] = field(default_factory=list)
    autotune_problems: list[str] = field(default_factory=list)

    def by_kind(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in self.manifests if m["kind"] == kind), None)


def owner_reference(pooler: PostgresPooler) -> dict[str, Any] | None:
    uid = pooler.metadata.get("uid")
    if not uid:
        return None
    return {"apiVersion": API_VERSION, "kind": KIND, "name": pooler.name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _topology_spread(pooler: PostgresPooler) -> list[dict[str, Any]]:
    """The user's constraints verbatim, else a soft spread over nodes (never both: they would fight)."""
    template = pooler.spec.template
    if template and template.topology_spread_constraints is not None:
        return template.topology_spread_constraints
    return [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": selector_labels(pooler.name)}}]


def _projected_sources(pooler: PostgresPooler, names: Names) -> list[dict[str, Any]]:
    sources = [{"configMap": {"name": names.config, "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]}},
               {"secret": {"name": names.auth, "items": [{"key": USERLIST_FILE, "path": USERLIST_FILE}]}}]
    by_secret: dict[str, list[dict[str, str]]] = {}
    for f in tls_files(pooler):
        by_secret.setdefault(f.secret, []).append({"key": f.key, "path": f.path})
    for secret, items in by_secret.items():
        sources.append({"secret": {"name": secret, "items": items}})
    return sources


def pooler_container(pooler: PostgresPooler, image: str, *, name: str = "pooler", sidecar: bool = False,
                     port_names: dict[str, str] | None = None,
                     volume_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The pooler's container, one template for the Deployment's pods and for injected sidecars (which name
    their ports and volumes apart from the application's)."""
    spec = pooler.spec
    text = _ENV.get_template("pooler-container.yaml.j2").render(
        spec=spec, container_name=name, image=image, sidecar=sidecar,
        port_names=port_names or {"postgres": "postgres", "http": "http"},
        volume_names=volume_names or {"config": "config", "tmp": "tmp"},
        config_dir=CONFIG_DIR, config_path=f"{CONFIG_DIR}/{CONFIG_FILE}", listen_port=LISTEN_PORT,
        http_port=HTTP_PORT, resources=spec.resources.model_dump(exclude_none=True) if spec.resources else None)
    return yaml.safe_load(text)


def pooler_image(pooler: PostgresPooler, image: str | None = None) -> str:
    """spec.pooler.image, else the operator's configured image, else the default."""
    return pooler.spec.pooler.image or image or default_image()


def projected_sources(pooler: PostgresPooler) -> list[dict[str, Any]]:
    """The config volume's sources: the ConfigMap, the auth_file Secret and the TLS Secrets."""
    return _projected_sources(pooler, Names(pooler.name))


def budget(pooler: PostgresPooler, tuned: TunedSize | None = None) -> int | None:
    """Most server connections one (database, user) pool may open over the whole tier."""
    if pooler.spec.mode != "deployment":
        return None
    pool = pooler.spec.pool
    per_process = (tuned.pool_size if tuned else pool.default_pool_size) + (pool.reserve_pool_size or 0)
    cap = tuned.per_process_cap if tuned and tuned.per_process_cap else pool.max_db_connections
    if cap:
        per_process = min(per_process, cap)
    return per_process * pooler.spec.pooler.workers * pooler.spec.replicas


def render(pooler: PostgresPooler, secrets: dict[str, dict[str, str]], *, image: str | None = None,
           versions: dict[str, str] | None = None, monitoring_available: bool = True,
           strict: bool = True, console_password: str | None = None) -> Rendered:
    """All owned manifests for `pooler`, in the order they are applied.

    `secrets` holds the decoded data of the referenced Secrets, `versions` their resourceVersions (offline
    there are none). With strict=False (offline rendering), a
    missing Secret leaves its part of the auth_file out and becomes a warning instead of MissingSecret.
    `console_password` is the autotuner's console password (the operator keeps it in its own Secret; offline
    there is none, and neither that Secret nor its auth_file line is rendered).
    """
    spec, names, warnings = pooler.spec, Names(pooler.name), []
    console_password = console_password if spec.autotune.enabled else None
    tuned = tuned_size(pooler)
    users, problems = userlist(pooler, secrets, console_password)
    problems += tls_problems(pooler, secrets)
    if problems:
        if strict:
            raise MissingSecret(problems)
        warnings += problems

    config = pooler_config(pooler, tuned)
    # The config names the versions of the Secrets behind its files, so that a new password or certificate
    # changes the config file and the pooler reloads. Versions, not contents: a ConfigMap is no place for
    # anything derived from a password.
    inputs_digest = digest(sorted((name, (versions or {}).get(name)) for name in file_secrets(pooler)))
    ini = _ENV.get_template("pooler.ini.j2").render(config=config, name=pooler.name,
                                                   namespace=pooler.namespace, inputs_digest=inputs_digest)
    restart_hash = digest(config.restart_settings())
    owner = owner_reference(pooler)
    labels = common_labels(pooler.name)

    def meta(name: str, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "namespace": pooler.namespace,
                               "labels": {**(labels or {}), **common_labels(pooler.name)}}
        if annotations:
            out["annotations"] = annotations
        if owner:
            out["ownerReferences"] = [owner]
        return out

    template = spec.template
    extra_meta = template.metadata if template and template.metadata else None
    context = dict(
        spec=spec, names=names, meta=meta, ini=ini, userlist=users, console_user=CONSOLE_USER,
        console_password=console_password,
        selector=selector_labels(pooler.name),
        pod_labels={**(extra_meta.labels if extra_meta else {}), **labels},
        pod_annotations={**(extra_meta.annotations if extra_meta else {}), RESTART_HASH_ANNOTATION: restart_hash},
        template=template or _NO_TEMPLATE,
        topology_spread=_topology_spread(pooler),
        pooler_container=pooler_container(pooler, pooler_image(pooler, image)),
        grace_period=spec.pooler.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS,
        http_port=HTTP_PORT,
        projected_sources=_projected_sources(pooler, names),
        metrics_on_service=spec.monitoring.enabled and spec.monitoring.kind == "ServiceMonitor",
        # A sidecar tier's pods are the injected ones: the label the webhook gives them, the sidecar's port.
        monitor_selector=selector_labels(pooler.name) if spec.mode == "deployment" else {POOLER_LABEL: pooler.name},
        monitor_port="http" if spec.mode == "deployment" else SIDECAR_PORT_NAMES["http"],
    )

    kinds = ["serviceaccount", "secret", "configmap"] + (["console-secret"] if console_password else [])
    if spec.mode == "deployment":
        kinds += ["service", "deployment"]
        if spec.replicas > 1 and spec.pod_disruption_budget.enabled:
            kinds.append("poddisruptionbudget")
    if spec.mode == "sidecar":
        kinds = ["secret", "configmap"] + (["console-secret"] if console_password else [])
    if spec.monitoring.enabled:
        if spec.mode == "sidecar" and spec.monitoring.kind == "ServiceMonitor":
            warnings.append("spec.monitoring: a sidecar tier has no Service for a ServiceMonitor; kind PodMonitor "
                            "scrapes the injected pods")
        elif monitoring_available:
            kinds.append("monitor")
        else:
            warnings.append(f"spec.monitoring: the {spec.monitoring.kind} CRD (monitoring.coreos.com) is not "
                            "installed; no monitor was made")
    manifests = [yaml.safe_load(_ENV.get_template(f"{kind}.yaml.j2").render(**context)) for kind in kinds]

    return Rendered(manifests=manifests, config=config, ini=ini, config_hash=digest(ini),
                    restart_hash=restart_hash, pool_size=tuned.pool_size if tuned else spec.pool.default_pool_size,
                    budget=budget(pooler, tuned), pool_size_source="autotune" if tuned else "spec", tuned=tuned,
                    selector=selector_string(pooler.name), warnings=warnings,
                    autotune_problems=autotune_problems(pooler, secrets))


class _Dumper(yaml.SafeDumper):
    """Readable YAML: multi-line strings (the pooler config) as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Manifests as one multi-document YAML stream, keys in the order they were built."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)


class _NoTemplate:
    priority_class_name = node_selector = affinity = tolerations = None


_NO_TEMPLATE = _NoTemplate()
