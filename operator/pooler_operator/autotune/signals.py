"""The autotuner's readers for Prometheus and PostgreSQL, and the one tier's TierSignals made of raw samples.

A signal that cannot be read, or reads as nonsense, is never guessed: it comes back missing, with a reason
a person can act on, and the policy holds.
"""
from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import time
from dataclasses import dataclass

import asyncpg
import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from .model import DatabaseSample, ProcessSample, TierSignals


# rate() over a short window of a saturated host's counters reads a little past 1 (scrape jitter): up to this
# far out of 0..1 it is the bound itself, further it is a query that does not return a share.
RATE_SLACK = 0.1

@dataclass(frozen=True)
class CpuReading:
    """The database host's CPU use, 0..1, or why there is none."""

    value: float | None
    missing: str | None = None


# -- Prometheus ------------------------------------------------------------------------------------------

def _query_cpu(url: str, query: str, headers: dict[str, str], timeout: float, max_age: float,
               now: float) -> CpuReading:
    client = PrometheusConnect(url=url, headers=dict(headers) or None, retry=Retry(total=0), timeout=timeout)
    try:
        result = client.custom_query(query)
    except PrometheusApiClientException as exc:
        return CpuReading(None, f"cpu: Prometheus at {url} refused the query: {_prometheus_error(exc)}")
    except requests.RequestException as exc:
        return CpuReading(None, f"cpu: Prometheus at {url} unreachable ({exc.__class__.__name__})")
    if not result:
        return CpuReading(None, "cpu: the query returned no series")
    values = []
    for series in result:
        stamp, raw = series.get("value", (0, "NaN"))
        value = float(raw)
        if math.isnan(value) or math.isinf(value):
            return CpuReading(None, f"cpu: the query returned {raw}")
        if not -RATE_SLACK <= value <= 1 + RATE_SLACK:
            return CpuReading(None, f"cpu: {value:.3g} is outside 0..1 (the query must return a share)")
        if now - float(stamp) > max_age:
            return CpuReading(None, f"cpu: the newest sample is {now - float(stamp):.0f}s old")
        values.append(min(1.0, max(0.0, value)))
    return CpuReading(max(values))     # several series: the busiest host decides


def _prometheus_error(exc: PrometheusApiClientException) -> str:
    """The `error` of Prometheus's JSON answer, which the client embeds as a bytes repr in its message."""
    found = re.search(r"\((b'.*'|b\".*\")\)\s*$", str(exc), re.S)
    try:
        return json.loads(ast.literal_eval(found.group(1)))["error"]
    except (AttributeError, ValueError, SyntaxError, KeyError, TypeError):
        return _short(exc)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


async def read_cpu(url: str, query: str, headers: dict[str, str] | None = None, *, timeout: float = 5.0,
                   max_age: float = 60.0, clock=time.time) -> CpuReading:
    """One instant query; NaN, no series, a value outside 0..1, a stale sample or an error -> missing."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_query_cpu, url, query, headers or {}, timeout, max_age, clock()), timeout + 1)
    except asyncio.TimeoutError:
        return CpuReading(None, f"cpu: Prometheus at {url} did not answer within {timeout:g}s")


# -- PostgreSQL ------------------------------------------------------------------------------------------

_SETTINGS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT system_identifier::text FROM pg_control_system())
"""
_BACKENDS = """
SELECT pid, coalesce(state, 'unknown') AS state, coalesce(usename, '') AS usename,
       coalesce(datname, '') AS datname, wait_event_type IS NULL AS no_wait
FROM pg_stat_activity WHERE backend_type = 'client backend'
"""


async def read_database(dsn: str, *, timeout: float = 5.0) -> DatabaseSample:
    """max_connections, the reserved slots, the server's identity and its client backends (ours included:
    the monitoring connection holds a slot while it reads)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except asyncio.TimeoutError:
        return DatabaseSample(error=f"postgres: no connection within {timeout:g}s")
    except Exception as exc:   # refused, auth failed, no such database: all say why in str()
        return DatabaseSample(error=f"postgres: {_short(exc)}")
    try:
        settings = await conn.fetchrow(_SETTINGS, timeout=timeout)
        backends = await conn.fetch(_BACKENDS, timeout=timeout)
    except Exception as exc:
        return DatabaseSample(error=f"postgres: {_short(exc)}")
    finally:
        await conn.close(timeout=timeout)
    return DatabaseSample(
        system_identifier=settings[3], max_connections=settings[0], superuser_reserved_connections=settings[1],
        reserved_connections=settings[2], backend_pids=frozenset(r["pid"] for r in backends),
        by_state=_count(r["state"] for r in backends), by_user=_count(r["usename"] for r in backends),
        by_database=_count(r["datname"] for r in backends),
        active_pids=frozenset(r["pid"] for r in backends if r["state"] == "active"),
        on_cpu_pids=frozenset(r["pid"] for r in backends if r["state"] == "active" and r["no_wait"]))


async def backends_left(dsn: str, pids: frozenset[int], *, timeout: float = 5.0) -> frozenset[int] | None:
    """Which of `pids` PostgreSQL still runs (a pooler's closed socket frees its slot only once the backend
    has exited); None when PostgreSQL cannot tell."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except Exception:      # unreachable: the caller waits or gives up, as for any unknown
        return None
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids),
                                timeout=timeout)
        return frozenset(r["pid"] for r in rows)
    except Exception:
        return None
    finally:
        await conn.close(timeout=timeout)


def _count(keys) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


# -- one tier's signals ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Totals:
    """One process's SHOW STATS totals at one time, kept to difference against the next tick's."""

    at: float
    xact_count: int
    xact_time_us: int
    wait_time_us: int

    @classmethod
    def of(cls, sample: ProcessSample, at: float) -> "Totals":
        return cls(at, sample.xact_count, sample.xact_time_us, sample.wait_time_us)


def tier_signals(samples: list[ProcessSample], previous: dict[str, Totals], at: float, expected: int,
                 cpu: CpuReading | None, database: DatabaseSample | None = None) -> TierSignals | None:
    """Sum the reachable processes' pools; rates from this tick's totals minus `previous` (by endpoint).

    None when no process answered. Rates are None on the first tick, when a process restarted (a counter went
    backwards) or when no transaction ran. A silent console, CPU or database is named in `missing` (the
    readers' reasons are the caller's to report); processes not found show as `reachable` < `processes`.
    """
    reachable = [s for s in samples if s.reachable]
    if not reachable:
        return None
    missing = [f"console {s.endpoint}" for s in samples if not s.reachable]
    if cpu is not None and cpu.missing:
        missing.append("cpu")
    if database is not None and database.error:
        missing.append("postgres")
    pools = [p for s in reachable for p in s.pools]
    xacts = xact_us = wait_us = 0
    seconds = 0.0
    known = True
    for s in reachable:
        before = previous.get(s.endpoint)
        now = Totals.of(s, at)
        if before is None or now.xact_count < before.xact_count or now.xact_time_us < before.xact_time_us \
                or now.wait_time_us < before.wait_time_us or now.at <= before.at:
            known = False
            continue
        xacts += now.xact_count - before.xact_count
        xact_us += now.xact_time_us - before.xact_time_us
        wait_us += now.wait_time_us - before.wait_time_us
        seconds = max(seconds, now.at - before.at)
    rates = known and seconds > 0
    read = database is not None and database.error is None
    servers = frozenset().union(*(s.server_pids for s in reachable))
    return TierSignals(
        processes=max(expected, sum(s.processes for s in samples)), reachable=sum(s.processes for s in reachable),
        pool_size=max(s.default_pool_size or 0 for s in reachable),
        pools=max(1, max(len(s.pools) for s in reachable)),
        cl_waiting=sum(p.cl_waiting for p in pools), cl_active=sum(p.cl_active for p in pools),
        sv_active=sum(p.sv_active for p in pools), sv_idle=sum(p.sv_idle for p in pools),
        maxwait_s=max((p.maxwait_s for p in pools), default=0.0),
        xact_per_s=xacts / seconds if rates else None,
        avg_xact_time_ms=xact_us / xacts / 1000 if rates and xacts else None,
        avg_wait_time_ms=wait_us / xacts / 1000 if rates and xacts else None,
        cpu=cpu.value if cpu is not None else None, missing=tuple(missing),
        backends_active=len(servers & database.active_pids) if read else None,
        backends_on_cpu=len(servers & database.on_cpu_pids) if read else None)
