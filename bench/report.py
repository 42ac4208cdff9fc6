"""From per-round outcomes to medians and ratios, written as one Markdown table and one JSON file."""
from __future__ import annotations

import json
import os
import statistics
from datetime import datetime

from .scenarios import SCENARIOS, Scale

LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "maitred": "maitred", "maitred-w2": "maitred workers=2",
          "maitred-py": "maitred pure Python", "floor": "uvloop floor", "relay-floor": "uvloop relay floor",
          "relay-floor-c": "uvloop relay floor, compiled"}
RATIOS = (("maitred", "pgbouncer"), ("maitred", "direct"), ("maitred-w2", "maitred"), ("maitred-w2", "pgbouncer"),
          ("maitred", "maitred-py"), ("maitred-py", "pgbouncer"), ("floor", "pgbouncer"), ("maitred", "floor"),
          ("relay-floor", "pgbouncer"), ("maitred", "relay-floor"), ("relay-floor-c", "pgbouncer"),
          ("maitred", "relay-floor-c"))


def cell(outcomes: list[dict], key: str) -> dict:
    """One target's numbers for one metric: every round's value and their median, or why there are none."""
    for status in ("failed", "n/a"):
        bad = [o for o in outcomes if o["status"] == status]
        if bad:
            values = [o["values"][key] for o in outcomes if o["status"] == "ok"]
            return {"status": status, "reason": bad[0]["reason"], "values": values, "median": None}
    values = [o["values"][key] for o in outcomes]
    return {"status": "ok", "values": values, "median": statistics.median(values) if values else None}


def ratio(num: dict | None, den: dict | None) -> float | None:
    if not num or not den or num["median"] is None or not den["median"]:
        return None
    return num["median"] / den["median"]


def summarize(results: dict[str, dict[str, list[dict]]], *, scale: Scale, auth_type: str,
              versions: dict[str, str], cores: int | None, started: datetime) -> dict:
    scenarios = {}
    for sid, by_target in results.items():
        metrics = {}
        for metric in SCENARIOS[sid].metrics:
            cells = {name: cell(outcomes, metric.key) for name, outcomes in by_target.items()}
            metrics[metric.key] = {
                "unit": metric.unit, "better": metric.better, "targets": cells,
                "ratios": {f"{a}/{b}": ratio(cells.get(a), cells.get(b))
                           for a, b in RATIOS if a in cells and b in cells},
            }
        scenarios[sid] = {"name": SCENARIOS[sid].name, "title": SCENARIOS[sid].title(scale), "metrics": metrics}
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cores": cores},
        "versions": versions,
        "settings": {"rounds": scale.rounds, "duration_s": scale.duration, "pool_mode": "transaction",
                     "pool_size": scale.pool_size, "auth_type": auth_type, "threads": scale.threads,
                     "steady_clients": scale.steady_clients, "churn_clients": scale.churn_clients,
                     "prepared_clients": scale.prepared_clients, "idle_clients": scale.idle_clients},
        "targets": list(next(iter(results.values()), {}).keys()),
        "scenarios": scenarios,
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(summary: dict) -> str:
    targets = summary["targets"]
    ratio_keys = [f"{a}/{b}" for a, b in RATIOS if a in targets and b in targets]
    v, s = summary["versions"], summary["settings"]
    lines = [
        f"# Pooler benchmark, {summary['date']}",
        "",
        f"{summary['machine']['cores']} cores · " + " · ".join(f"{k} {val}" for k, val in v.items()),
        "",
        f"Medians over {s['rounds']} round(s) of {s['duration_s']} s per pgbench run; targets run in turn "
        f"within each round. Transaction pooling, pool of {s['pool_size']}, auth {s['auth_type']} where the "
        "scenario names none, each pooler's default logging. ↑ higher is better, ↓ lower is better.",
        "",
        "| scenario | metric | " + " | ".join(LABELS[t] for t in targets)
        + "".join(f" | {k.replace('pgbouncer', 'PgBouncer')}" for k in ratio_keys) + " |",
        "|---|---|" + "---:|" * (len(targets) + len(ratio_keys)),
    ]
    notes = []
    for sid, scen in summary["scenarios"].items():
        for key, m in scen["metrics"].items():
            row = [f"{sid} {scen['name']}", f"{key} [{m['unit']}] {'↑' if m['better'] == 'higher' else '↓'}"]
            for t in targets:
                c = m["targets"][t]
                row.append(fmt(c["median"]) if c["status"] == "ok" else c["status"])
                if c["status"] != "ok":
                    note = f"{sid} {LABELS[t]}: {c['status']}: {(c['reason'].splitlines() or [''])[0]}"
                    if note not in notes:
                        notes.append(note)
            row += [_fmt_ratio(m["ratios"].get(k)) for k in ratio_keys]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Scenarios:", ""] + [f"- {sid} {scen['name']}: {scen['title']}"
                                       for sid, scen in summary["scenarios"].items()]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_pair(out_dir: str, name: str, started: datetime, text: str, data: dict) -> str:
    """DIR/NAME-<date>.md holding `text` and DIR/NAME-<date>.json holding `data`; returns DIR/NAME-<date>."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{name}-" + started.strftime("%Y%m%d-%H%M%S"))
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return stem


def write(summary: dict, out_dir: str, started: datetime) -> tuple[str, str]:
    """DIR/bench-<date>.md and DIR/bench-<date>.json; returns both paths."""
    stem = write_pair(out_dir, "bench", started, markdown(summary), summary)
    return stem + ".md", stem + ".json"
