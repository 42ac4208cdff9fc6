"""From runs to the comparison: medians over rounds per configuration, the best static size by total
transactions among those within the budget, the autotuned run's ratio to it, the verdict against the issue's
target, the Markdown tables and the JSON file (every run's record, series included)."""
from __future__ import annotations

import statistics
from datetime import datetime

from ..report import fmt, write_pair
from .workload import Plan

AUTOTUNED = "autotuned"


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def loaded(plan: dict) -> list[tuple[str, list[str]]]:
    """The phases with clients, each with the tiers that had clients in it."""
    return [(p["name"], [x["tier"] for x in p["loads"]]) for p in plan["phases"] if p["loads"]]


def row(label: str, runs: list[dict], phases: list[tuple[str, list[str]]]) -> dict:
    """One configuration's numbers over its rounds; failed when any round failed; over budget when any sample
    of a fixed size saw more client backends than the budget allows (not a configuration one may run)."""
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
    out["over_budget"] = label != AUTOTUNED and bool(out["violations"])
    for name, tiers in phases:
        recs = [p for r in runs for p in r["phases"] if p["name"] == name]
        out["phases"][name] = {"tps": _median([p["tps"] for p in recs]),
                               "p99_ms": _median([p["p99_ms"] for p in recs]),
                               "tiers": {t: _median([p["tiers"].get(t, {}).get("tps") for p in recs]) for t in tiers}}
    return out


def summarize(runs: list[dict], *, plan: Plan, versions: dict[str, str], cores: int | None,
              started: datetime, database_cpu: str | None = None) -> dict:
    described = describe(plan)
    labels = [f"static {s}" for s in plan.sizes] + [AUTOTUNED]
    rows = [row(label, [r for r in runs if r["label"] == label], loaded(described)) for label in labels
            if any(r["label"] == label for r in runs)]
    statics = [r for r in rows if r["label"] != AUTOTUNED and r["total_xacts"] is not None and not r["over_budget"]]
    best = max(statics, key=lambda r: r["total_xacts"], default=None)
    for r in rows:
        r["vs_best"] = (r["total_xacts"] / best["total_xacts"]
                        if best and best["total_xacts"] and r["total_xacts"] is not None else None)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cores": cores, "database_cpu": database_cpu},
        "versions": versions,
        "plan": described,
        "best_static": best["label"] if best else None,
        "rows": rows,
        "verdict": verdict(next((r for r in rows if r["label"] == AUTOTUNED), None), best),
        "runs": runs,
    }


def describe(plan: Plan) -> dict:
    """The plan as plain data, for the JSON file and the table's header."""
    return {"tiers": list(plan.tiers),
            "phases": [{"name": p.name, "seconds": p.seconds,
                        "loads": [{"tier": x.tier, "sql": x.sql, "clients": x.clients} for x in p.loads]}
                       for p in plan.phases],
            "sizes": list(plan.sizes), "rounds": plan.rounds, "max_connections": plan.max_connections,
            "headroom": plan.headroom, "min_pool_size": plan.min_pool_size, "max_pool_size": plan.max_pool_size,
            "interval_s": plan.interval, "cpu_signal": plan.cpu_signal}


def verdict(tuned: dict | None, best: dict | None) -> dict:
    """The issue's target, checked: total >= 1.0x the best static, p99 no worse than its, no violation."""
    if tuned is None or best is None or tuned["total_xacts"] is None:
        return {"met": False, "why": "no autotuned result, or no static one within the budget, to compare"}
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


def _phase_text(phase: dict, tiers: list[str]) -> str:
    loads = ", ".join((f"{x['tier']}: " if len(tiers) > 1 else "") + f"{x['clients']} clients `{x['sql']}`"
                      for x in phase["loads"])
    return f"{phase['name']} {phase['seconds']} s" + (f" ({loads})" if loads else "")


def markdown(summary: dict) -> str:
    plan = summary["plan"]
    phases = loaded(plan)
    tiers = plan["tiers"]
    lines = [
        f"# Autotuner benchmark, {summary['date']}",
        "",
        f"{summary['machine']['cores']} cores · " + " · ".join(f"{k} {v}" for k, v in summary["versions"].items())
        + (f" · PostgreSQL's CPU: {summary['machine']['database_cpu']}"
           if summary["machine"].get("database_cpu") else ""),
        "",
        (f"{len(tiers)} tiers ({', '.join(tiers)}): a maitred pooler each, in front of the same PostgreSQL; a "
         "static run gives every tier the same size, the autotuned run tunes them all at once. "
         if len(tiers) > 1 else "")
        + "Phases: " + ", ".join(_phase_text(p, tiers) for p in plan["phases"]) + ".",
        f"PostgreSQL max_connections {plan['max_connections']}, headroom {plan['headroom']}; autotuned from "
        f"{plan['min_pool_size']} (bounds {plan['min_pool_size']}..{plan['max_pool_size']}), a tick every "
        f"{plan['interval_s']:g} s, CPU signal: {plan['cpu_signal']}. Medians over {plan['rounds']} round(s); "
        "violations: sampler readings with more client backends than the budget allows, summed over rounds.",
        "",
        "| pool | total xacts ↑ | vs best static | p99 ms ↓ | violations | max backends / limit | "
        + " | ".join(f"{n} tps | {n} p99 ms" for n, _ in phases) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(phases),
    ]
    notes = []
    for r in summary["rows"]:
        name = r["label"] + (" (best static)" if r["label"] == summary["best_static"] else "") \
            + (" (over budget)" if r["over_budget"] else "")
        if r["status"] != "ok":
            notes.append(f"{r['label']}: failed: {(r['reason'] or '').splitlines()[0][:300]}")
        if r["over_budget"]:
            notes.append(f"{r['label']}: over budget: its tiers together opened up to {r['max_client_backends']} "
                         f"client backends, above the limit of {r['limit']}; not a valid configuration, so not a "
                         "candidate for the best static size.")
        cells = [name, _cell(r["total_xacts"]) if r["status"] == "ok" else "failed",
                 "–" if r["vs_best"] is None else f"{r['vs_best']:.2f}×", _cell(r["p99_ms"]),
                 _cell(r["violations"]), f"{_cell(r['max_client_backends'])} / {_cell(r['limit'])}"]
        for n, _ in phases:
            cells += [_cell(r["phases"][n]["tps"]), _cell(r["phases"][n]["p99_ms"])]
        lines.append("| " + " | ".join(cells) + " |")
    if len(tiers) > 1:
        pairs = [(n, t) for n, ts in phases for t in ts]
        lines += ["", "Throughput per tier (tps):", "",
                  "| pool | " + " | ".join(f"{n}: {t}" for n, t in pairs) + " |",
                  "|---|" + "---:|" * len(pairs)]
        lines += ["| " + " | ".join([r["label"]] + [_cell(r["phases"][n]["tiers"][t]) for n, t in pairs]) + " |"
                  for r in summary["rows"]]
    v = summary["verdict"]
    lines += ["", "Target (autotuned total ≥ 1.0× best static within the budget, p99 no worse, 0 violations): "
              + ("met" if v["met"] else "not met")
              + (" (" + ", ".join(f"{k} {'ok' if ok else 'missed'}" for k, ok in v["checks"].items()) + ")"
                 if "checks" in v else f" ({v['why']})") + "."]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(summary: dict, out_dir: str, started: datetime) -> str:
    """DIR/autotune-<date>.md and .json; returns the common stem (the plot is written beside them)."""
    return write_pair(out_dir, "autotune", started, markdown(summary), summary)
