"""From runs to the comparison: medians over rounds per configuration, the best static size by total
transactions, the autotuned run's ratio to it, the verdict against the issue's target, the Markdown table and
the JSON file (every run's record, series included)."""
from __future__ import annotations

import statistics
from datetime import datetime

from ..report import fmt, write_pair
from .workload import Plan

AUTOTUNED = "autotuned"


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def row(label: str, runs: list[dict], phases: list[str]) -> dict:
    """One configuration's numbers over its rounds; failed when any round failed."""
    failed = [r for r in runs if r["status"] != "ok"]
    out = {
        "label": label, "size": runs[0]["size"], "rounds": len(runs),
        "status": "failed" if failed else "ok", "reason": failed[0]["reason"] if failed else None,
        "total_xacts": None if failed else _median([r["total_xacts"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "violations": sum(r["violations"] or 0 for r in runs) if all(r.get("violations") is not None
                                                                   for r in runs) else None,
        "samples": sum(len(r.get("samples", [])) for r in runs),
        "max_client_backends": max((r["max_client_backends"] for r in runs
                                    if r.get("max_client_backends") is not None), default=None),
        "limit": runs[0].get("limit"),
        "phases": {},
    }
    for name in phases:
        recs = [p for r in runs for p in r["phases"] if p["name"] == name]
        out["phases"][name] = {"tps": _median([p["tps"] for p in recs]),
                               "p99_ms": _median([p["p99_ms"] for p in recs])}
    return out


def summarize(runs: list[dict], *, plan: Plan, versions: dict[str, str], cores: int | None,
              started: datetime) -> dict:
    loaded = [p.name for p in plan.phases if p.sql is not None]
    labels = [f"static {s}" for s in plan.sizes] + [AUTOTUNED]
    rows = [row(label, [r for r in runs if r["label"] == label], loaded) for label in labels
            if any(r["label"] == label for r in runs)]
    statics = [r for r in rows if r["label"] != AUTOTUNED and r["total_xacts"] is not None]
    best = max(statics, key=lambda r: r["total_xacts"], default=None)
    for r in rows:
        r["vs_best"] = (r["total_xacts"] / best["total_xacts"]
                        if best and best["total_xacts"] and r["total_xacts"] is not None else None)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cores": cores},
        "versions": versions,
        "plan": {"phases": [{"name": p.name, "sql": p.sql, "clients": p.clients, "seconds": p.seconds}
                            for p in plan.phases],
                 "sizes": list(plan.sizes), "rounds": plan.rounds, "max_connections": plan.max_connections,
                 "headroom": plan.headroom, "min_pool_size": plan.min_pool_size,
                 "max_pool_size": plan.max_pool_size, "interval_s": plan.interval, "cpu_signal": plan.cpu_signal},
        "best_static": best["label"] if best else None,
        "rows": rows,
        "verdict": verdict(next((r for r in rows if r["label"] == AUTOTUNED), None), best),
        "runs": runs,
    }


def verdict(tuned: dict | None, best: dict | None) -> dict:
    """The issue's target, checked: total >= 1.0x the best static, p99 no worse than its, no violation."""
    if tuned is None or best is None or tuned["total_xacts"] is None:
        return {"met": False, "why": "no autotuned or no static result to compare"}
    checks = {
        "throughput": tuned["vs_best"] >= 1.0,
        "p99": tuned["p99_ms"] is not None and best["p99_ms"] is not None and tuned["p99_ms"] <= best["p99_ms"],
        "violations": tuned["violations"] == 0,
    }
    return {"met": all(checks.values()), "checks": checks}


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else fmt(value)


def markdown(summary: dict) -> str:
    plan = summary["plan"]
    loaded = [p["name"] for p in plan["phases"] if p["sql"]]
    lines = [
        f"# Autotuner benchmark, {summary['date']}",
        "",
        f"{summary['machine']['cores']} cores · " + " · ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
        "Phases: " + ", ".join(f"{p['name']} {p['seconds']} s" + (f" ({p['clients']} clients: `{p['sql']}`)"
                                                                 if p["sql"] else "")
                              for p in plan["phases"]) + ".",
        f"PostgreSQL max_connections {plan['max_connections']}, headroom {plan['headroom']}; autotuned from "
        f"{plan['min_pool_size']} (bounds {plan['min_pool_size']}..{plan['max_pool_size']}), a tick every "
        f"{plan['interval_s']:g} s, CPU signal: {plan['cpu_signal']}. Medians over {plan['rounds']} round(s); "
        "violations: sampler readings with more client backends than the budget allows, summed over rounds.",
        "",
        "| pool | total xacts ↑ | vs best static | p99 ms ↓ | violations | max backends / limit | "
        + " | ".join(f"{n} tps | {n} p99 ms" for n in loaded) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(loaded),
    ]
    notes = []
    for r in summary["rows"]:
        name = r["label"] + (" (best static)" if r["label"] == summary["best_static"] else "")
        if r["status"] != "ok":
            notes.append(f"{r['label']}: failed: {(r['reason'] or '').splitlines()[0][:300]}")
        cells = [name, _cell(r["total_xacts"]) if r["status"] == "ok" else "failed",
                 "–" if r["vs_best"] is None else f"{r['vs_best']:.2f}×", _cell(r["p99_ms"]),
                 _cell(r["violations"]), f"{_cell(r['max_client_backends'])} / {_cell(r['limit'])}"]
        for n in loaded:
            cells += [_cell(r["phases"][n]["tps"]), _cell(r["phases"][n]["p99_ms"])]
        lines.append("| " + " | ".join(cells) + " |")
    v = summary["verdict"]
    lines += ["", "Target (autotuned total ≥ 1.0× best static, p99 no worse, 0 violations): "
              + ("met" if v["met"] else "not met")
              + (" (" + ", ".join(f"{k} {'ok' if ok else 'missed'}" for k, ok in v["checks"].items()) + ")"
                 if "checks" in v else f" ({v['why']})") + "."]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(summary: dict, out_dir: str, started: datetime) -> str:
    """DIR/autotune-<date>.md and .json; returns the common stem (the plot is written beside them)."""
    return write_pair(out_dir, "autotune", started, markdown(summary), summary)
