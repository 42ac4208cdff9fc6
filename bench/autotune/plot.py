"""The PNG beside the table: the autotuned run against the best static size, second by second, with the
phase boundaries: pool size (and the budget), clients waiting, host CPU, throughput."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

TUNED, STATIC, BUDGET = "tab:blue", "tab:orange", "tab:red"


def _series(run: dict, key: str) -> tuple[list[float], list[float]]:
    pts = [(s["t"] - run["t0"], s[key]) for s in run["samples"] if s[key] is not None]
    return [t for t, _ in pts], [v for _, v in pts]


def _first(runs: list[dict], label: str | None) -> dict | None:
    return next((r for r in runs if r["label"] == label and r["status"] == "ok" and r.get("samples")), None)


def draw(summary: dict, path: str) -> bool:
    """Write the plot to `path`; False (and no file) when there is no successful autotuned run to show."""
    tuned = _first(summary["runs"], "autotuned")
    if tuned is None:
        return False
    best = _first(summary["runs"], summary["best_static"])
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(13, 10), constrained_layout=True)
    pool, waiting, cpu, tps = axes

    pool.step(*_series(tuned, "pool_size"), where="post", color=TUNED, lw=2, label="autotuned pool size")
    pool.plot(*_series(tuned, "pooler_backends"), color=TUNED, lw=1, ls=":", label="autotuned: server connections")
    if best:
        pool.step(*_series(best, "pool_size"), where="post", color=STATIC, lw=2, ls="--",
                  label=f"{best['label']} (best static)")
    if tuned.get("limit") is not None:
        pool.axhline(tuned["limit"], color=BUDGET, lw=1, ls="-.", label="budget: client backends allowed")
        pool.plot(*_series(tuned, "client_backends"), color=BUDGET, lw=0.8, alpha=0.6,
                  label="autotuned: all client backends")
    pool.set_ylabel("connections")

    for run, color, name in ((tuned, TUNED, "autotuned"), (best, STATIC, best and best["label"])):
        if run is None:
            continue
        waiting.plot(*_series(run, "cl_waiting"), color=color, label=name)
        t, v = _series(run, "pg_cpu")
        cpu.plot(t, [x * 100 for x in v], color=color, label=f"{name}: PostgreSQL")
        t, v = _series(run, "cpu")
        cpu.plot(t, [x * 100 for x in v], color=color, lw=0.8, ls=":", label=f"{name}: whole host")
        tps.plot([i + 0.5 for i in range(len(run["per_second"]))], run["per_second"], color=color, label=name)
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
    fig.suptitle(f"\nmaitred autotune vs {summary['best_static'] or 'no static run'}"
                 + (f": {ratio:.2f}× the best static total" if ratio is not None else ""))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
