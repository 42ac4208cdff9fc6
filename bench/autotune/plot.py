"""The PNG beside the tables: the autotuned run against the best static size, second by second, with the
phase boundaries: pool size per tier (and the budget), clients waiting per tier, CPU, throughput per tier.
A colour per tier; the autotuned run in solid lines, the best static one dashed."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

TIER_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown")
STATIC, BUDGET = "tab:orange", "tab:red"


def _series(run: dict, key: str, tier: str | None = None) -> tuple[list[float], list[float]]:
    """(seconds since t0, value) of a flat sample field, or of one tier's field when `tier` is given."""
    pts = [(s["t"] - run["t0"], (s["tiers"].get(tier, {}) if tier else s).get(key)) for s in run["samples"]]
    pts = [(t, v) for t, v in pts if v is not None]
    return [t for t, _ in pts], [v for _, v in pts]


def _first(runs: list[dict], label: str | None) -> dict | None:
    return next((r for r in runs if r["label"] == label and r["status"] == "ok" and r.get("samples")), None)


def draw(summary: dict, path: str) -> bool:
    """Write the plot to `path`; False (and no file) when there is no successful autotuned run to show."""
    tuned = _first(summary["runs"], "autotuned")
    if tuned is None:
        return False
    best = _first(summary["runs"], summary["best_static"])
    tiers = tuned["tiers"]
    colours = dict(zip(tiers, TIER_COLOURS))
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(13, 11), constrained_layout=True)
    pool, waiting, cpu, tps = axes

    for tier in tiers:
        pool.step(*_series(tuned, "pool_size", tier), where="post", color=colours[tier], lw=2,
                  label=f"autotuned {tier}")
        waiting.plot(*_series(tuned, "cl_waiting", tier), color=colours[tier], lw=1.2, label=f"autotuned {tier}")
        tps.plot([i + 0.5 for i in range(len(tuned["tier_per_second"][tier]))], tuned["tier_per_second"][tier],
                 color=colours[tier], lw=1.2, label=f"autotuned {tier}")
        if best:
            waiting.plot(*_series(best, "cl_waiting", tier), color=colours[tier], lw=1, ls="--",
                         label=f"{best['label']} {tier}")
            tps.plot([i + 0.5 for i in range(len(best["tier_per_second"][tier]))], best["tier_per_second"][tier],
                     color=colours[tier], lw=1, ls="--", label=f"{best['label']} {tier}")
    if best:
        pool.step(*_series(best, "pool_size", tiers[0]), where="post", color=STATIC, lw=2, ls="--",
                  label=f"{best['label']} (best static), every tier")
    pool.plot(*_series(tuned, "pooler_backends"), color="black", lw=0.8, ls=":",
              label="autotuned: server connections, all tiers")
    if tuned.get("limit") is not None:
        pool.axhline(tuned["limit"], color=BUDGET, lw=1, ls="-.", label="budget: client backends allowed")
        pool.plot(*_series(tuned, "client_backends"), color=BUDGET, lw=0.8, alpha=0.6,
                  label="autotuned: all client backends")
    pool.set_ylabel("pool size / connections")

    for run, colour, name in ((tuned, "tab:blue", "autotuned"), (best, STATIC, best and best["label"])):
        if run is None:
            continue
        t, v = _series(run, "pg_cpu")
        cpu.plot(t, [x * 100 for x in v], color=colour, label=f"{name}: PostgreSQL")
        t, v = _series(run, "cpu")
        cpu.plot(t, [x * 100 for x in v], color=colour, lw=0.8, ls=":", label=f"{name}: whole host")
    waiting.set_ylabel("cl_waiting")
    cpu.set_ylabel("CPU % of all cores")
    cpu.set_ylim(0, 105)
    tps.set_ylabel("transactions / s")
    tps.set_xlabel("seconds since the first phase started")

    for phase in tuned["phases"]:
        start = phase["start"] - tuned["t0"]
        for ax in axes:
            ax.axvline(start, color="grey", lw=0.8, ls="--")
        pool.annotate(phase["name"], (start, 1.0), xycoords=("data", "axes fraction"), xytext=(4, 3),
                      textcoords="offset points", color="dimgrey", va="bottom")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the plot, never on a line
    ratio = next((r["vs_best"] for r in summary["rows"] if r["label"] == "autotuned"), None)
    fig.suptitle(f"\nmaitred autotune ({len(tiers)} tier{'s' if len(tiers) > 1 else ''}: {', '.join(tiers)}) vs "
                 f"{summary['best_static'] or 'no static run within the budget'}"
                 + (f": {ratio:.2f}× the best static total" if ratio is not None else ""))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
