"""One pooler's answer from several workers' answers: SHOW rows and Prometheus samples, added up.

Pure functions over what each worker said, so that `workers = N` looks like one pooler to a person and to
Prometheus. Counts of things (clients, servers, transactions, bytes, times) are summed; per-process settings
(pool_size, max_connections, paused, …) and the longest wait are the largest any worker reports; averages are
the mean of the workers' averages. SHOW CLIENTS, SERVERS and the like list every worker's rows.
"""
from __future__ import annotations

from statistics import fmean

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

# SHOWs whose rows are one per object: every worker's rows, one after the other.
LISTED = {"clients", "servers", "sockets", "active_sockets", "fds", "peer_pools", "prepared_statements"}
# SHOWs with one row per name: how many leading columns name the row, the rest are added up.
KEYED = {"pools": 2, "stats": 1, "stats_totals": 1, "stats_averages": 1, "totals": 1, "lists": 1,
         "databases": 1, "users": 1, "mem": 1}
_NUMERIC = (20, 21, 23, 700, 701, 1700)     # type oids of the numbers the console sends
_SAME_IN_EVERY_WORKER = {"databases", "users", "peers", "pools"}     # SHOW LISTS rows counting shared config

Row = tuple[str | None, ...]
Columns = list[tuple[str, int]]


def merged(show: str, columns: Columns, answers: list[list[Row]]) -> list[Row]:
    """The rows of SHOW `show` for the whole pooler, from each worker's rows (as text, as the wire has them)."""
    if show in LISTED:
        return [row for rows in answers for row in rows]
    width = KEYED.get(show)
    if width is None:                  # the same everywhere (CONFIG, VERSION, …): the first worker's
        return answers[0] if answers else []
    groups: dict[Row, list[Row]] = {}
    for rows in answers:
        for row in rows:
            groups.setdefault(row[:width], []).append(row)
    out = []
    for key, rows in groups.items():
        cells = list(key)
        for i in range(width, len(columns)):
            name, oid = columns[i]
            values = [row[i] for row in rows]
            if oid not in _NUMERIC or any(v is None for v in values):
                cells.append(values[0])
            else:
                cells.append(_text(_combine(show, name, key, [_number(v) for v in values])))
        out.append(tuple(cells))
    return out


def _combine(show: str, column: str, key: Row, values: list[float]) -> float:
    if show in ("databases", "users"):
        return sum(values) if column.startswith("current_") else max(values)
    if show == "stats_averages" or column.startswith("avg_") or (show == "totals" and str(key[0]).startswith("avg_")):
        return fmean(values)
    if column.startswith("maxwait") or (show == "lists" and key[0] in _SAME_IN_EVERY_WORKER):
        return max(values)
    return sum(values)


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# Gauges that say how one process is set up or how it is doing, rather than how many of something it has.
_LARGEST = {"maitred_up", "maitred_ready", "maitred_pool_maxwait_seconds", "maitred_pool_size",
            "maitred_pool_reserve_size", "maitred_pool_paused"}


def merged_metrics(texts: list[str]) -> list[Metric]:
    """The metric families of the whole pooler from each worker's /metrics text."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            pick = max if family.name in _LARGEST else (lambda a, b: a + b)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = pick(samples[key], sample.value) if key in samples else sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())
