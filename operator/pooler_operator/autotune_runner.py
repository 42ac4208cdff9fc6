"""The autotuner inside the operator: one tick loop over every autotuned PostgresPooler this replica leads.

Each autotuned PostgresPooler has a kopf daemon (handlers.py) that keeps it in the runner while it runs. kopf
stops every daemon when peering freezes the operator (and when the resource goes or turns autotune off), so
the loop only ever ticks tiers this replica may act on, and it ends when the last one leaves. There is one
loop, not one per resource, because every tier of one PostgreSQL server shares one budget: whenever a tier
is due, `Autotuner.tick` gets every registered tier together. Nothing is kept that the pods cannot tell again:
after a restart, the first tick starts from the sizes the consoles report.

The mapping from a resource, its pods and its Secrets to a `TierTarget` is pure; so is the status a report
makes (status.tier_status). Reading pods and Secrets and writing status are the edges, through `Kube`.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from urllib.parse import quote

from .api import InvalidSpec, PostgresPooler, parse_pooler
from .autotune.loop import (Autotuner, ConsoleTarget, PostgresTarget, PrometheusTarget, TierReport,
                            TierTarget)
from .autotune.model import PolicyParams
from .inject import PORT_NAMES
from .objects import CONSOLE_ADDRESS_ANNOTATION, CONSOLE_USER, LISTEN_PORT, POOLER_LABEL, selector_string

log = logging.getLogger(__name__)

Pod = dict[str, Any]
Secrets = dict[str, dict[str, str]]
GONE_PHASES = ("Succeeded", "Failed")


# -- pure: from a resource, its pods and its Secrets to what one tick needs ---------------------------------


def tier_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def pod_selector(pooler: PostgresPooler) -> str:
    """The label selector of the tier's pooler pods: the Deployment's, or for a sidecar the label injection
    puts on every pod it gave the pooler to."""
    if pooler.spec.mode == "deployment":
        return selector_string(pooler.name)
    return f"{POOLER_LABEL}={pooler.name}"


def live_pods(pods: list[Pod]) -> list[Pod]:
    """Pods that may hold server connections: every pod not finished, terminating ones included."""
    return [p for p in pods if (p.get("status") or {}).get("phase") not in GONE_PHASES]


def console_address(pod: Pod) -> tuple[str, int] | None:
    """Where the pod's console answers: its pod IP and the port of the injected sidecar (`maitred-pg`), else
    the container port named `postgres`, else the operator's default, unless the pod's console-address
    annotation says otherwise; None without an IP."""
    override = ((pod.get("metadata") or {}).get("annotations") or {}).get(CONSOLE_ADDRESS_ANNOTATION)
    if override:
        host, _, port = override.rpartition(":")
        return host, int(port)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    spec = pod.get("spec") or {}
    sidecar, own = (spec.get("initContainers"), PORT_NAMES["postgres"]), (spec.get("containers"), "postgres")
    for containers, name in (sidecar, own):
        for container in containers or []:
            for port in container.get("ports") or []:
                if port.get("name") == name:
                    return ip, int(port["containerPort"])
    return ip, LISTEN_PORT


def pod_consoles(pods: list[Pod], password: str) -> tuple[ConsoleTarget, ...]:
    """One console per running pod with an IP, reached on the pod IP (not the Service: every pod is SET)."""
    out = []
    for pod in live_pods(pods):
        meta = pod.get("metadata") or {}
        address = console_address(pod)
        if address is None or (pod.get("status") or {}).get("phase") != "Running":
            continue
        ip, port = address
        label = f"{meta.get('namespace')}/{meta.get('name')}/{ip}:{port}"
        out.append(ConsoleTarget(host=ip, port=port, user=CONSOLE_USER, password=password, label=label))
    return tuple(out)


def expected_processes(pooler: PostgresPooler, pods: list[Pod]) -> int:
    """Processes counted in the budget: pods not found, not started or not answering count at their cap. A
    sidecar tier has as many as there are injected pods (spec.replicas is the Deployment's)."""
    replicas = pooler.spec.replicas if pooler.spec.mode == "deployment" else 0
    return max(replicas, len(live_pods(pods))) * pooler.spec.pooler.workers


def postgres_dsn(pooler: PostgresPooler, credentials: dict[str, str]) -> str:
    """The monitoring connection to spec.database, with the postgresSecret's role."""
    db = pooler.spec.database
    user, password = quote(credentials["username"], safe=""), quote(credentials["password"], safe="")
    dbname = quote(credentials.get("dbname") or "postgres", safe="")
    return f"postgresql://{user}:{password}@{db.host}:{db.port}/{dbname}"


def prometheus_headers(credentials: dict[str, str] | None) -> dict[str, str]:
    """A bearer token, else basic auth, as HTTP headers; none without credentials."""
    if not credentials:
        return {}
    if credentials.get("token"):
        return {"Authorization": f"Bearer {credentials['token'].strip()}"}
    pair = f"{credentials['username']}:{credentials['password']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def tier_target(pooler: PostgresPooler, pods: list[Pod], secrets: Secrets, console_password: str) -> TierTarget:
    """What one tick needs about this tier. KeyError when a Secret it needs is missing (the reconcile reports
    that as Misconfigured; the tier is left out of the tick)."""
    autotune = pooler.spec.autotune
    if autotune.postgres_secret is None:
        raise KeyError("spec.autotune.postgresSecret")
    prometheus = None
    if autotune.prometheus:
        creds = autotune.prometheus.credentials_secret
        prometheus = PrometheusTarget(url=autotune.prometheus.url, query=autotune.prometheus.query,
                                      headers=prometheus_headers(secrets[creds.name] if creds else None))
    consoles = pod_consoles(pods, console_password)
    return TierTarget(
        tier=tier_name(pooler.namespace, pooler.name),
        consoles=consoles,
        expected_processes=max(expected_processes(pooler, pods), len(consoles)),
        postgres=PostgresTarget(dsn=postgres_dsn(pooler, secrets[autotune.postgres_secret.name])),
        prometheus=prometheus,
        params=PolicyParams(min_pool_size=autotune.min_pool_size, max_pool_size=autotune.max_pool_size),
        headroom=autotune.budget_headroom,
        dry_run=autotune.dry_run,
    )


def due_tiers(next_due: dict[str, float], now: float) -> list[str]:
    return sorted(tier for tier, due in next_due.items() if due <= now)


# -- the loop -----------------------------------------------------------------------------------------------


@dataclass
class Registered:
    body: dict[str, Any]
    next_due: float


@dataclass
class AutotuneRunner:
    """The operator's one tick loop. `read` gathers a tier's pods and Secrets (blocking I/O, run in a thread),
    `publish` writes a report into the resource's status and Events."""

    read: Callable[[PostgresPooler], tuple[list[Pod], Secrets, str | None]]
    publish: Callable[[PostgresPooler, TierReport], Any]
    autotuner: Autotuner = field(default_factory=Autotuner)
    clock: Callable[[], float] = time.monotonic
    tiers: dict[str, Registered] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    _ticking: asyncio.Lock = field(default_factory=asyncio.Lock)

    def register(self, body: dict[str, Any]) -> str:
        """A daemon started (or resumed after a freeze): tick it at once, and start the loop if it is not on."""
        meta = body["metadata"]
        tier = tier_name(meta.get("namespace", "default"), meta["name"])
        self.tiers[tier] = Registered(body, self.clock())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="maitred autotune loop")
        return tier

    def update(self, tier: str, body: dict[str, Any]) -> None:
        """The daemon saw a newer body (spec changed): the next tick uses it."""
        if tier in self.tiers:
            self.tiers[tier].body = body

    async def unregister(self, tier: str) -> None:
        """The daemon is stopping (freeze, deletion, autotune off): no further tick touches the tier, and the
        tick in flight, if any, has finished when this returns (so a standby never acts alongside it)."""
        self.tiers.pop(tier, None)
        async with self._ticking:
            pass

    async def _run(self) -> None:
        while self.tiers:
            now = self.clock()
            if due_tiers({t: r.next_due for t, r in self.tiers.items()}, now):
                try:
                    await self.tick_once()
                except Exception:  # a tick never ends the loop; the next one tries again
                    log.exception("autotune tick failed")
            wait = min((r.next_due for r in self.tiers.values()), default=now + 1) - self.clock()
            await asyncio.sleep(min(1.0, max(0.05, wait)))

    async def tick_once(self) -> list[TierReport]:
        """One tick over every registered tier: the budget is per server, so no tier is left out of it, but only
        the tiers whose own interval has passed decide (the others hold at their size, and are not reported)."""
        async with self._ticking:
            poolers, targets = {}, []
            now = self.clock()
            for tier, registered in list(self.tiers.items()):
                try:
                    pooler = parse_pooler(registered.body)
                except InvalidSpec:
                    continue  # the reconcile says what to fix
                due = registered.next_due <= now
                if due:
                    registered.next_due = now + pooler.spec.autotune.interval_seconds
                pods, secrets, password = await asyncio.to_thread(self.read, pooler)
                try:
                    targets.append(replace(tier_target(pooler, pods, secrets, password or ""), due=due))
                except KeyError as exc:
                    log.info(f"{tier}: not tuned this tick, {exc} is missing")
                    continue
                poolers[tier] = pooler
            if not any(t.due for t in targets):
                return []
            reports = await self.autotuner.tick(targets)
            due = {t.tier for t in targets if t.due}
            reports = [r for r in reports if r.tier in due or r.changed]
            for report in reports:
                if report.tier in self.tiers and report.tier in poolers:
                    try:
                        await asyncio.to_thread(self.publish, poolers[report.tier], report)
                    except Exception as exc:  # the tick has acted; the next one reports again
                        log.warning(f"{report.tier}: the report was not published: {exc}")
            return reports

