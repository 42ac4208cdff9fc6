"""The typed API of `PostgresPooler` (maitred.dev/v1alpha1): the single source of the CRD and of validation.

Every rule lives here once. Bounds, enums and defaults become the OpenAPI schema (`crd.py`); cross-field
rules are `Rule`s, which become CEL `x-kubernetes-validations` for the API server and are checked again by
pydantic, so `maitred render` and the operator refuse what the API server would; what no schema can say
(the value of an extra pooler parameter, as the pooler parses it) is checked by pydantic only, and the
operator reports it in a Degraded condition.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema,
                      field_validator, model_validator)
from pydantic.alias_generators import to_camel

from pooler.config import parse_value
from pooler.settings import MAITRED_SETTINGS, PASSWORD_AUTH_TYPES, POOL_MODES, SETTINGS, SSLMODES

from . import API_VERSION, KIND

# -- building blocks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: `cel` for the API server, `check` (the same rule in Python) for everyone else."""

    cel: str
    message: str
    check: Callable[[Any], bool]


def _rules_to_schema(schema: dict[str, Any], cls: type) -> None:
    rules = getattr(cls, "__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]


class Model(BaseModel):
    """Fields are snake_case in Python and camelCase in the resource, as Kubernetes spells them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              json_schema_extra=_rules_to_schema)
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        broken = [r.message for r in self.__rules__ if not r.check(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self


QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+"
                    r"(\.[0-9]*)?)|(\.[0-9]+))))?$")
INT_OR_PERCENT_PATTERN = r"^[0-9]+%?$"
SINGLE_LINE_PATTERN = r"^[^\r\n]*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$"
DBNAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_$.-]*$"
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h)$"


def _int_or_string(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"x-kubernetes-int-or-string": True,
                           "anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": pattern})


def _matches(pattern: str, what: str) -> Callable[[int | str], int | str]:
    compiled = re.compile(pattern)

    def check(value: int | str) -> int | str:
        if isinstance(value, str) and not compiled.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value
    return check


Quantity = Annotated[int | str, _int_or_string(QUANTITY_PATTERN),
                     AfterValidator(_matches(QUANTITY_PATTERN, "a Kubernetes quantity (e.g. 500m, 128Mi)"))]
IntOrPercent = Annotated[int | str, _int_or_string(INT_OR_PERCENT_PATTERN),
                         AfterValidator(_matches(INT_OR_PERCENT_PATTERN, "an integer or a percentage"))]
ParameterValue = Annotated[int | str, _int_or_string(SINGLE_LINE_PATTERN),
                           AfterValidator(_matches(SINGLE_LINE_PATTERN, "a single line"))]
KubeObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object",
                                                       "x-kubernetes-preserve-unknown-fields": True})]
StringMap = dict[str, str]


def _nested_default(default_factory: Callable[[], Model], description: str) -> Any:
    """A sub-object that is always there: `default: {}` lets the API server fill in its own defaults."""
    return Field(default_factory=default_factory, description=description, json_schema_extra={"default": {}})


# -- spec ---------------------------------------------------------------------------------------------------


class SecretRef(Model):
    """A Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")


class SecretKeyRef(Model):
    """One key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")
    key: str = Field("password", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="Key in the Secret.")


class DatabaseSpec(Model):
    """The PostgreSQL server the pooler forwards to."""

    host: str = Field(min_length=1, max_length=253, pattern=HOST_PATTERN,
                      description="Host name or address of PostgreSQL (a Service name works).")
    port: int = Field(5432, ge=1, le=65535, description="Port of PostgreSQL.")
    dbname: str | None = Field(None, min_length=1, max_length=63, pattern=DBNAME_PATTERN,
                               description="The one database clients may use. Omit it to serve every database "
                                           "of the server (a `*` entry in [databases]).")


class AuthQuerySpec(Model):
    """auth_user + auth_query: users missing from the auth file are looked up in PostgreSQL."""

    user: str = Field(min_length=1, max_length=63, pattern=r'^[^"\s]+$',
                      description="The auth_user that runs auth_query; its password comes from passwordSecret.")
    query: str = Field(SETTINGS["auth_query"].default, min_length=1, pattern=SINGLE_LINE_PATTERN,
                       description="The auth_query: returns (user name, password or SCRAM secret) for $1.")
    password_secret: SecretKeyRef = Field(description="The auth_user's password (or SCRAM verifier).")


class AuthSpec(Model):
    """How clients authenticate to the pooler; the operator renders the auth_file into its own Secret."""

    __rules__ = (Rule("has(self.usersSecret) || has(self.authQuery)",
                      "set auth.usersSecret, auth.authQuery or both",
                      lambda m: m.users_secret is not None or m.auth_query is not None),)

    # hba and cert need files the operator does not render (auth_hba_file, client certificates).
    type: Literal[PASSWORD_AUTH_TYPES] = Field(  # type: ignore[valid-type]
        "scram-sha-256", description="Client authentication method (auth_type).")
    users_secret: SecretRef | None = Field(
        None, description="A Secret whose keys are user names and whose values are passwords, SCRAM-SHA-256 "
                          "verifiers or md5 hashes; or one key `userlist.txt` in PgBouncer's auth_file format.")
    auth_query: AuthQuerySpec | None = Field(None, description="Look users up in PostgreSQL (auth_query).")


_SECONDS = {"ge": 0, "le": 31_536_000}


class PoolSpec(Model):
    """Pool sizes and timeouts; each maps to the PgBouncer setting of the same name. Omitted timeouts keep the
    pooler's defaults."""

    __rules__ = (Rule("!has(self.minPoolSize) || !has(self.defaultPoolSize) "
                      "|| self.minPoolSize <= self.defaultPoolSize",
                      "pool.minPoolSize must not exceed pool.defaultPoolSize",
                      lambda m: m.min_pool_size is None or m.min_pool_size <= m.default_pool_size),)

    default_pool_size: int = Field(SETTINGS["default_pool_size"].default, ge=1, le=10_000,
                                   description="Server connections per (database, user) pool and pooler "
                                               "process (default_pool_size).")
    min_pool_size: int | None = Field(None, ge=0, le=10_000, description="min_pool_size.")
    reserve_pool_size: int | None = Field(None, ge=0, le=10_000, description="reserve_pool_size.")
    reserve_pool_timeout: float | None = Field(None, **_SECONDS, description="reserve_pool_timeout, seconds.")
    max_client_conn: int = Field(1000, ge=1, le=1_000_000, description="Client connections per pooler process "
                                                                        "(max_client_conn).")
    max_db_connections: int | None = Field(None, ge=0, le=100_000,
                                           description="Server connections per database and pooler process, "
                                                       "0 = unlimited (max_db_connections).")
    max_user_connections: int | None = Field(None, ge=0, le=100_000, description="max_user_connections.")
    server_idle_timeout: float | None = Field(None, **_SECONDS, description="server_idle_timeout, seconds.")
    server_lifetime: float | None = Field(None, **_SECONDS, description="server_lifetime, seconds.")
    server_connect_timeout: float | None = Field(None, **_SECONDS, description="server_connect_timeout, "
                                                                                "seconds.")
    server_login_retry: float | None = Field(None, **_SECONDS, description="server_login_retry, seconds.")
    query_timeout: float | None = Field(None, **_SECONDS, description="query_timeout, seconds.")
    query_wait_timeout: float | None = Field(None, **_SECONDS, description="query_wait_timeout, seconds.")
    client_idle_timeout: float | None = Field(None, **_SECONDS, description="client_idle_timeout, seconds.")
    client_login_timeout: float | None = Field(None, **_SECONDS, description="client_login_timeout, seconds.")
    idle_transaction_timeout: float | None = Field(None, **_SECONDS,
                                                   description="idle_transaction_timeout, seconds.")


POOL_SETTINGS: dict[str, str] = {to_camel(name): name for name in PoolSpec.model_fields}
"""spec.pool field (camelCase) → the PgBouncer setting it renders."""

TLS_SETTINGS = ("client_tls_sslmode", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
                "server_tls_sslmode", "server_tls_ca_file", "server_tls_key_file", "server_tls_cert_file")

OWNED_PARAMETERS: dict[str, str] = {
    **{name: "set by the operator" for name in ("listen_addr", "listen_port", "unix_socket_dir", "user",
                                                 "pidfile", "logfile", "conffile")},
    **{name: "set from spec.auth" for name in ("auth_type", "auth_file", "auth_user", "auth_query")},
    "pool_mode": "set from spec.poolMode",
    **{setting: f"set from spec.pool.{field}" for field, setting in POOL_SETTINGS.items()},
    **{name: "set from spec.tls" for name in TLS_SETTINGS},
}
"""Pooler settings the operator renders itself, and where the resource sets them instead."""

PARAMETERS_MAX = 64


def _owned_rules() -> tuple[Rule, ...]:
    def absent(name: str) -> Callable[[Any], bool]:
        return lambda params: name not in params
    return tuple(Rule(f"!('{name}' in self)", f"{name} is {where}", absent(name))
                 for name, where in OWNED_PARAMETERS.items())


def _cel_list(names) -> str:
    return "[" + ", ".join(f"'{n}'" for n in sorted(names)) + "]"


UNKNOWN_PARAMETERS_RULE = Rule(f"self.all(k, k in {_cel_list(SETTINGS)})",
                               "unknown pooler setting; parameters takes [pgbouncer] settings of PgBouncer 1.25",
                               lambda params: all(k in SETTINGS for k in params))


def parameter_problems(parameters: dict[str, int | str]) -> list[str]:
    """What is wrong with spec.pooler.parameters, one message per parameter, as the pooler would judge it."""
    problems = []
    for name, value in parameters.items():
        if name in OWNED_PARAMETERS:
            problems.append(f"{name} is {OWNED_PARAMETERS[name]}")
        elif name not in SETTINGS:
            problems.append(f"{name} is not a pooler setting")
        else:
            try:
                parse_value(SETTINGS[name], str(value))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    return problems


class PoolerSpec(Model):
    """The pooler container and its settings beyond the typed ones."""

    image: str | None = Field(None, min_length=1, description="The maitred image; defaults to the operator's "
                                                               "MAITRED_POOLER_IMAGE or ghcr.io/maitred/maitred:"
                                                               "<operator version>.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent",
                                                                          description="Image pull policy.")
    workers: int = Field(MAITRED_SETTINGS["workers"].default, ge=1, le=64,
                         description="Pooler processes per pod, sharing the port (SO_REUSEPORT). Each has its "
                                     "own pools; changing it restarts the pods.")
    shutdown_timeout_seconds: int = Field(int(MAITRED_SETTINGS["shutdown_timeout"].default), ge=0, le=3600,
                                          description="On SIGTERM, how long clients may finish their "
                                                      "transactions; the pod's grace period follows it, so "
                                                      "changing it rolls the pods.")
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict, max_length=PARAMETERS_MAX,
        description="Extra [pgbouncer] settings, by PgBouncer name (e.g. max_prepared_statements: 100). "
                    "Settings the operator renders from typed fields are refused. Changes to settings the "
                    "pooler reloads apply live; others restart the pods.",
        json_schema_extra={"maxProperties": PARAMETERS_MAX,
                           "x-kubernetes-validations": [
                               {"rule": r.cel, "message": r.message}
                               for r in (*_owned_rules(), UNKNOWN_PARAMETERS_RULE)]})

    @field_validator("parameters")
    @classmethod
    def _known_and_valid(cls, parameters: dict[str, int | str]) -> dict[str, int | str]:
        problems = parameter_problems(parameters)
        if problems:
            raise ValueError("; ".join(problems))
        return parameters


class PrometheusSpec(Model):
    """Where the autotuner reads the database host's CPU."""

    url: str = Field(min_length=1, pattern=r"^https?://", description="Prometheus base URL.")
    query: str = Field('1 - avg(rate(node_cpu_seconds_total{mode="idle"}[1m]))', min_length=1,
                       description="PromQL returning the database host's CPU use as a 0..1 fraction.")
    credentials_secret: SecretRef | None = Field(None, description="A Secret with `username` and `password`, "
                                                                   "or `token`, for Prometheus.")


class AutotuneSpec(Model):
    """Closed-loop pool sizing: the operator's autotuner moves default_pool_size (and the per-process cap)
    within one connection budget per PostgreSQL server."""

    __rules__ = (Rule("!has(self.minPoolSize) || !has(self.maxPoolSize) || self.minPoolSize <= self.maxPoolSize",
                      "autotune.minPoolSize must not exceed autotune.maxPoolSize",
                      lambda m: m.min_pool_size <= m.max_pool_size),)

    enabled: bool = Field(False, description="Let the autotuner move default_pool_size.")
    min_pool_size: int = Field(5, ge=1, le=10_000, description="Smallest pool size the autotuner sets.")
    max_pool_size: int = Field(100, ge=1, le=10_000, description="Largest pool size the autotuner sets.")
    interval_seconds: int = Field(30, ge=5, le=3600, description="Seconds between two decisions for this resource (between them it holds its size, still counted in the budget of every tick of its server).")
    budget_headroom: int = Field(5, ge=0, le=10_000, description="Connections of max_connections kept free "
                                                                  "for everyone else.")
    prometheus: PrometheusSpec | None = Field(None, description="The CPU signal; without it the autotuner "
                                                                "sizes from pool waits and idle servers only.")
    postgres_secret: SecretRef | None = Field(
        None, description="A Secret with `username` and `password` (and optionally `dbname`, default postgres) "
                          "of a role that reads pg_settings and pg_stat_activity (pg_monitor) on "
                          "spec.database: the budget's source. Required when enabled.")
    dry_run: bool = Field(False, description="Decide and report (status, Events) without changing any pool.")


class ClientTLSSpec(Model):
    """TLS between clients and the pooler."""

    __rules__ = (Rule("(has(self.sslmode) && self.sslmode == 'disable') || has(self.secretName)",
                      "tls.client.secretName is needed unless tls.client.sslmode is disable",
                      lambda m: m.sslmode == "disable" or m.secret_name is not None),)

    sslmode: Literal[SSLMODES] = Field("prefer", description="client_tls_sslmode.")  # type: ignore[valid-type]
    secret_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253,
                                    description="A kubernetes.io/tls Secret (tls.crt, tls.key) the pooler "
                                                "presents to clients.")
    ca_secret_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253,
                                       description="A Secret with ca.crt that validates client certificates.")


class ServerTLSSpec(Model):
    """TLS between the pooler and PostgreSQL."""

    sslmode: Literal[SSLMODES] = Field("prefer", description="server_tls_sslmode.")  # type: ignore[valid-type]
    ca_secret_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253,
                                       description="A Secret with ca.crt that validates PostgreSQL's certificate.")
    secret_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253,
                                    description="A kubernetes.io/tls Secret the pooler presents to PostgreSQL.")


class TLSSpec(Model):
    """TLS on both legs; certificates are mounted and reloaded with the config."""

    client: ClientTLSSpec | None = Field(None, description="Clients to the pooler.")
    server: ServerTLSSpec | None = Field(None, description="The pooler to PostgreSQL.")


class ResourceRequirements(Model):
    """Compute resources of the pooler container."""

    limits: dict[str, Quantity] | None = Field(None, description="Limits, e.g. cpu: 1, memory: 256Mi.")
    requests: dict[str, Quantity] | None = Field(None, description="Requests, e.g. cpu: 250m, memory: 64Mi.")


class PodMetadata(Model):
    """Extra labels and annotations for the pods."""

    labels: StringMap = Field(default_factory=dict, description="Extra pod labels.")
    annotations: StringMap = Field(default_factory=dict, description="Extra pod annotations.")


class PodTemplateSpec(Model):
    """Overrides of the pooler pods' scheduling."""

    metadata: PodMetadata | None = Field(None, description="Extra pod labels and annotations.")
    affinity: KubeObject | None = Field(None, description="A core/v1 Affinity.")
    tolerations: list[KubeObject] | None = Field(None, description="core/v1 Tolerations.")
    topology_spread_constraints: list[KubeObject] | None = Field(
        None, description="core/v1 TopologySpreadConstraints. Omitted: the pods spread over nodes when they can.")
    priority_class_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253,
                                            description="PriorityClass of the pods.")
    node_selector: StringMap | None = Field(None, description="Node labels the pods must run on.")


class ServiceSpec(Model):
    """The Service clients connect to."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")
    port: int = Field(5432, ge=1, le=65535, description="Port clients connect to.")
    annotations: StringMap = Field(default_factory=dict, description="Annotations, e.g. for a load balancer.")
    labels: StringMap = Field(default_factory=dict, description="Extra labels.")


class PodDisruptionBudgetSpec(Model):
    """The PodDisruptionBudget, made only when replicas > 1."""

    __rules__ = (Rule("!(has(self.maxUnavailable) && has(self.minAvailable))",
                      "set podDisruptionBudget.maxUnavailable or minAvailable, not both",
                      lambda m: m.max_unavailable is None or m.min_available is None),)

    enabled: bool = Field(True, description="Make a PodDisruptionBudget when replicas > 1.")
    max_unavailable: IntOrPercent | None = Field(None, description="maxUnavailable; 1 when neither is set.")
    min_available: IntOrPercent | None = Field(None, description="minAvailable.")


class MonitoringSpec(Model):
    """Prometheus Operator scraping of the pooler's /metrics, when its CRDs are installed."""

    enabled: bool = Field(False, description="Make a PodMonitor or ServiceMonitor (a sidecar tier: a PodMonitor "
                                             "of the injected pods).")
    kind: Literal["PodMonitor", "ServiceMonitor"] = Field("PodMonitor", description="Which monitor to make; "
                                                          "ServiceMonitor also adds the metrics port to the "
                                                          "Service.")
    interval: str = Field("30s", pattern=DURATION_PATTERN, description="Scrape interval.")
    labels: StringMap = Field(default_factory=dict, description="Labels the Prometheus selects monitors by.")


class PostgresPoolerSpec(Model):
    """A PostgreSQL pooler tier."""

    mode: Literal["deployment", "sidecar"] = Field(
        "deployment", description="deployment: a Deployment and a Service. sidecar: only the config is rendered, "
                                  "for pods that opt in with the annotation maitred.dev/inject.")
    replicas: int = Field(1, ge=0, le=1000, description="Pooler pods (mode deployment); the scale subresource "
                                                         "sets it, so an HPA, VPA or KEDA can drive it.")
    pool_mode: Literal[POOL_MODES] = Field(  # type: ignore[valid-type]
        "transaction", description="When a server connection returns to the pool (pool_mode).")
    database: DatabaseSpec = Field(description="The PostgreSQL server.")
    auth: AuthSpec = Field(description="Client authentication.")
    pool: PoolSpec = _nested_default(PoolSpec, "Pool sizes and timeouts.")
    pooler: PoolerSpec = _nested_default(PoolerSpec, "The pooler container and extra settings.")
    autotune: AutotuneSpec = _nested_default(AutotuneSpec, "Closed-loop pool sizing.")
    tls: TLSSpec | None = Field(None, description="TLS.")
    resources: ResourceRequirements | None = Field(None, description="Resources of the pooler container.")
    template: PodTemplateSpec | None = Field(None, description="Pod scheduling overrides.")
    service: ServiceSpec = _nested_default(ServiceSpec, "The Service.")
    pod_disruption_budget: PodDisruptionBudgetSpec = _nested_default(PodDisruptionBudgetSpec,
                                                                     "The PodDisruptionBudget.")
    monitoring: MonitoringSpec = _nested_default(MonitoringSpec, "Prometheus Operator monitors.")
    paused: bool = Field(False, description="Stop reconciling: owned objects stay as they are until unpaused.")


# -- status -------------------------------------------------------------------------------------------------


class StatusModel(BaseModel):
    """Status is written by the operator only; unknown fields from older versions are ignored, not refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Ready, ConfigApplied, Degraded or Autotuned.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field("", description="What happened and, when something is wrong, what to fix.")
    last_transition_time: str = Field(description="When status last changed.",
                                      json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, description="The generation the condition is about.")


class AutotuneDecision(StatusModel):
    """One decision of the autotuner."""

    time: str = Field(description="When it was taken.", json_schema_extra={"format": "date-time"})
    from_: int | None = Field(None, alias="from", description="Pool size before.")
    to: int | None = Field(None, description="Pool size after (the budget's say included).")
    reason: str = Field("", description="Why, in one line.")
    signals: KubeObject = Field(default_factory=dict, description="The signals it saw (clWaiting, svIdle, cpu, "
                                                                  "...).")


class AutotuneStatus(StatusModel):
    """What the autotuner does with this tier."""

    enabled: bool = Field(False, description="spec.autotune.enabled as last reconciled.")
    state: str = Field("Disabled", description="Disabled, Misconfigured, Waiting (enabled, no tick yet), "
                                               "Tuning or Holding (a signal is missing).")
    pool_size: int | None = Field(None, description="default_pool_size the autotuner set on every process.")
    per_process_cap: int | None = Field(None, description="Server connections one process may open "
                                                          "(max_db_connections), set with poolSize.")
    budget: int | None = Field(None, description="The server's budget: max_connections - reserved - "
                                                 "connections not the poolers' - headroom.")
    share: int | None = Field(None, description="Server connections this tier may open: per-process cap x "
                                                "processes.")
    server: str | None = Field(None, description="system_identifier of the PostgreSQL server; tiers with the "
                                                 "same one share its budget.")
    last_decision: AutotuneDecision | None = Field(None, description="The last decision that changed or held "
                                                                     "the size.")
    missing_signals: list[str] | None = Field(None, description="While Holding: the signals (and consoles) "
                                                                "the last tick could not read.")
    message: str = Field("", description="The last decision or why there is none.")


class PostgresPoolerStatus(StatusModel):
    """Observed state, written by the operator."""

    observed_generation: int | None = Field(None, description="The generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, ConfigApplied, Degraded.",
                                        json_schema_extra={"x-kubernetes-list-type": "map",
                                                           "x-kubernetes-list-map-keys": ["type"]})
    replicas: int | None = Field(None, description="Pooler pods, from the Deployment.")
    ready_replicas: int | None = Field(None, description="Ready pooler pods, from the Deployment.")
    replicas_ready: str | None = Field(None, description="ready/desired pods, e.g. 2/3.")
    selector: str | None = Field(None, description="Label selector of the pods (for the scale subresource).")
    pool_size: int | None = Field(None, description="default_pool_size in force.")
    pool_size_source: str | None = Field(None, description="Where poolSize comes from: spec or autotune.")
    budget: int | None = Field(None, description="Most server connections the tier may open per database: pool "
                                                 "size (or maxDbConnections) x workers x replicas.")
    config_hash: str | None = Field(None, description="Hash of the rendered config in force.")
    restart_hash: str | None = Field(None, description="Hash of the settings that need a restart.")
    autotune: AutotuneStatus | None = Field(None, description="The autotuner's view.")


class PostgresPooler(BaseModel):
    """A whole resource, as the operator reads it: metadata stays a plain dict."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal[API_VERSION] = Field(API_VERSION, alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal[KIND] = KIND  # type: ignore[valid-type]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PostgresPoolerSpec
    status: PostgresPoolerStatus = Field(default_factory=PostgresPoolerStatus)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace") or "default"


def spec_problems(spec: dict[str, Any]) -> list[str]:
    """Every problem pydantic finds in a raw spec, as `spec.path: message` lines a person can act on."""
    try:
        PostgresPoolerSpec.model_validate(spec)
    except ValidationError as exc:
        return [format_error(err) for err in exc.errors()]
    return []


def format_error(err: dict[str, Any]) -> str:
    where = ".".join(["spec", *(str(part) for part in err["loc"])])
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


class InvalidSpec(ValueError):
    """A spec the operator will not apply; the message lists what to fix."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_pooler(body: dict[str, Any]) -> PostgresPooler:
    """A PostgresPooler from a raw resource body; InvalidSpec lists every problem."""
    problems = spec_problems(body.get("spec") or {})
    if problems:
        raise InvalidSpec(problems)
    return PostgresPooler.model_validate({**body, "spec": body.get("spec") or {},
                                          "status": _status_or_empty(body.get("status"))})


def _status_or_empty(status: Any) -> dict[str, Any]:
    try:
        PostgresPoolerStatus.model_validate(status or {})
        return status or {}
    except ValidationError:
        return {}
