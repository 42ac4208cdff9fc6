"""The pool-size policy: a pure function from one tier's signals and history to the size it wants, and why.

Rules, first match wins (docs/autotuner.md has the full table):

1. signal   a missing or nonsensical signal: hold (never grow), naming it; only a size above max shrinks.
2. bounds   a size outside min..max goes back inside.
3. cpu / latency   congestion: CPU at or past `cpu_high` (and from then on until it falls below `cpu_low`), or server time per transaction at `latency_tolerance` x
            its no-queue baseline while throughput did not rise (Vegas' and Gradient2's queue detection, with
            the pool's own `xact_per_s` as the throughput check). The first tick holds, as CPU from Prometheus is
            seconds late and one spike proves nothing; from the second it shrinks by `shrink_factor`, until a
            shrink costs throughput (a CPU-bound load keeps the CPU full at any size past the core count).
4. grow     clients wait (a pooler queues a client only when its pool has no free server, so waiting means
            saturated) and CPU is below `cpu_low`: straight to the size the waiting clients need (with no CPU
            signal, at most x`max_step_factor` a tick), never up to a size where congestion was seen recently.

The CPU is the server's, shared by every tier; it is this tier's to give back only when its own backends use
it. A tier whose running backends mostly wait on something else (pg_stat_activity shows a wait event: a lock,
I/O, a sleep; see `waits_off_cpu`) is exempt from the CPU rules (3's cpu, 4's `cpu_low`): shrinking it would
not unload the CPU, and it may grow into the connections the CPU-bound tiers give back. Its latency rule
still holds it back if more servers only queue.
5. idle / contended   no client waited for `idle_shrink_ticks` ticks and the pool's peak sv_active, plus
            `idle_margin`, fits a smaller size: shrink slowly (by `shrink_factor`); when other tiers of the
            server are budget-limited, after one tick and by up to half, to give back what is not used.
6. steady   otherwise hold.

A latency jump at an unchanged size is a workload change, not congestion: the history is forgotten (see
`workload_changed`). A change never reverses within `cooldown_ticks`. The band between `cpu_low` and `cpu_high`, the idle margin and
the congestion ceiling are the hysteresis: on a steady load the size settles and stays.
"""
from __future__ import annotations

import math
from typing import Callable

from .model import Decision, History, PolicyParams, TierSignals

HISTORY_TICKS = 30   # ticks remembered: the baseline's window
RULES = ("signal", "bounds", "cpu", "latency", "knee", "cpu-band", "grow", "max", "ceiling", "cooldown",
         "idle", "contended", "steady")
CONGESTION = ("cpu", "latency", "knee")   # knee: congested, but the last shrink cost throughput, so it holds
CPU_SLACK = 1.05     # Prometheus rates may overshoot 1 a little; past this a CPU share is nonsense
OFF_CPU_SHARE = 0.5  # below this share of its running backends on the CPU, a tier is not what loads the CPU
COUNTS = ("processes", "reachable", "pool_size", "pools", "cl_waiting", "cl_active", "sv_active", "sv_idle")
RATES = ("maxwait_s", "xact_per_s", "avg_xact_time_ms", "avg_wait_time_ms")


def decide(signals: TierSignals, history: History, params: PolicyParams) -> Decision:
    """The pool size this tier wants next (within the spec's bounds), before the budget has its say."""
    size = signals.pool_size
    lo, hi = params.min_pool_size, params.max_pool_size
    problems = signal_problems(signals)
    if problems:
        if size > hi:
            return Decision(hi, f"shrink: back to max_pool_size {hi} ({'; '.join(problems)})", "shrink", "signal")
        return Decision(size, f"hold: {'; '.join(problems)}", "hold", "signal")
    if size > hi:
        return Decision(hi, f"shrink: back to max_pool_size {hi}", "shrink", "bounds")
    if size < lo:
        return Decision(lo, f"grow: back to min_pool_size {lo}", "grow", "bounds")

    if workload_changed(history, signals, params):     # what the history learnt was about another load
        history = History()
    congestion = _cpu_congestion(signals, history, params) or _latency_congestion(signals, history, params)
    if congestion is not None:
        return _congested(signals, history, params, *congestion)
    if signals.cl_waiting > 0:
        return _waiting(signals, history, params)
    return _idle(signals, history, params)


def remember(history: History, signals: TierSignals, decision: Decision, params: PolicyParams) -> History:
    """History after this tick: the last HISTORY_TICKS signals and decisions; the no-queue baseline, the lowest
    sane server time per transaction among them (so a stale one leaves with its window), kept while a congestion
    ceiling holds; and the ceiling, set by a congestion shrink and cleared once no client waits. A workload
    change (see `workload_changed`) forgets all of it but this tick: what was learnt belongs to another load."""
    if decision.rule != "signal" and workload_changed(history, signals, params):
        history = History()
    kept = (history.signals + (signals,))[-HISTORY_TICKS:]
    decisions = (history.decisions + (decision,))[-HISTORY_TICKS:]
    ceiling, age = history.ceiling, history.ceiling_age + 1
    if decision.rule in CONGESTION and decision.direction == "shrink":
        ceiling, age = signals.pool_size, 0
    elif decision.rule in ("steady", "idle", "contended"):   # no client waits: the load that hit it is gone
        ceiling, age = None, 0
    baseline = history.baseline_xact_ms
    leaving = history.signals[0].avg_xact_time_ms if len(history.signals) == HISTORY_TICKS else None
    held = ceiling is not None          # held down by congestion, the pool never sees the no-queue latency again
    if baseline is None or (not held and (history.ceiling is not None or leaving == baseline)):
        latencies = [s.avg_xact_time_ms for s, d in zip(kept, decisions) if _measured(s, d)]
        baseline = min(latencies) if latencies else None    # the window's lowest, looked for again
    elif _measured(signals, decision):
        baseline = min(baseline, signals.avg_xact_time_ms)
    return History(signals=kept, decisions=decisions, baseline_xact_ms=baseline, ceiling=ceiling, ceiling_age=age)


def workload_changed(h: History, s: TierSignals, p: PolicyParams) -> bool:
    """Server time per transaction jumped by `latency_tolerance` or more since the last measured tick, at the
    same pool size: this pool did not add the queueing, so the transactions themselves changed (or another
    load took the database). Latency and throughput per size learnt before then say nothing about them."""
    last = _latest_measured(h, lambda b: True)
    return last is not None and _timed(s) and last.pool_size == s.pool_size and \
        s.avg_xact_time_ms >= p.latency_tolerance * last.avg_xact_time_ms


def signal_problems(s: TierSignals) -> list[str]:
    """Every signal that is missing or makes no sense, one short phrase each; empty when all are usable."""
    problems = [f"{name} missing" for name in s.missing]
    if s.cpu is not None and not (math.isfinite(s.cpu) and 0.0 <= s.cpu <= CPU_SLACK):
        problems.append(f"cpu {s.cpu} nonsensical")
    problems += [f"{name} {getattr(s, name)} nonsensical" for name in COUNTS if getattr(s, name) < 0]
    problems += [f"{name} {value} nonsensical" for name in RATES
                 if (value := getattr(s, name)) is not None and not (math.isfinite(value) and value >= 0)]
    if s.reachable < s.processes:
        problems.append(f"console of {s.processes - s.reachable} of {s.processes} processes missing")
    elif s.reachable == 0:
        problems.append("consoles missing (no process)")
    return problems


def _units(s: TierSignals) -> int:
    """Pools the reporting processes run: sv_active counts servers over all of them."""
    return max(1, s.reachable) * max(1, s.pools)


def _measured(s: TierSignals, d: Decision) -> bool:
    """A tick whose latency and throughput count: both known and its signals sane (else the rule was "signal")."""
    return d.rule != "signal" and _timed(s)


def _latest_measured(h: History, where: Callable[[TierSignals], bool]) -> TierSignals | None:
    """The newest measured tick of the history that `where` accepts."""
    return next((b for b, d in zip(reversed(h.signals), reversed(h.decisions)) if _measured(b, d) and where(b)),
                None)


def _timed(s: TierSignals) -> bool:
    return s.avg_xact_time_ms is not None and s.xact_per_s is not None and s.avg_xact_time_ms > 0


def _cpu_text(s: TierSignals) -> str:
    return "" if s.cpu is None else f", cpu {s.cpu:.2f}"


def waits_off_cpu(s: TierSignals) -> bool:
    """Most of this tier's running backends wait on something other than the CPU (pg_stat_activity shows a
    wait event), so the server's CPU load is not this tier's doing. False when PostgreSQL was not read or
    none of its backends ran a query: then the CPU rules apply as to any tier."""
    return bool(s.backends_active) and s.backends_on_cpu is not None and \
        s.backends_on_cpu < OFF_CPU_SHARE * s.backends_active


def _off_cpu_text(s: TierSignals) -> str:
    return f" (only {s.backends_on_cpu} of its {s.backends_active} running backends on the CPU)"


def _cpu_congestion(s: TierSignals, h: History, p: PolicyParams) -> tuple[str, str] | None:
    """CPU at or past `cpu_high`; and, once there, until it falls below `cpu_low` (the band is hysteresis: a
    CPU that hovers about the high-water mark must not reset the episode every other tick)."""
    if s.cpu is None or waits_off_cpu(s):
        return None
    if s.cpu >= p.cpu_high:
        return "cpu", f"cpu {s.cpu:.2f} >= {p.cpu_high:.2f}"
    if s.cpu >= p.cpu_low and h.decisions and h.decisions[-1].rule in ("cpu", "knee"):
        return "cpu", f"cpu {s.cpu:.2f} >= {p.cpu_low:.2f} since it reached {p.cpu_high:.2f}"
    return None


def _latency_congestion(s: TierSignals, h: History, p: PolicyParams) -> tuple[str, str] | None:
    """Queueing in the database: latency well above the no-queue baseline, and the last growth of this pool
    (the latest tick at a smaller size) brought no more throughput."""
    if h.baseline_xact_ms is None or s.avg_xact_time_ms is None or s.xact_per_s is None:
        return None
    if s.avg_xact_time_ms < p.latency_tolerance * h.baseline_xact_ms:
        return None
    smaller = _latest_measured(h, lambda b: b.pool_size < s.pool_size)
    if smaller is None or s.xact_per_s > smaller.xact_per_s * (1 + p.throughput_gain):
        return None
    return "latency", (f"latency {s.avg_xact_time_ms:.1f} ms = {s.avg_xact_time_ms / h.baseline_xact_ms:.1f}x "
                       f"baseline {h.baseline_xact_ms:.1f} ms, throughput {s.xact_per_s:.0f}/s "
                       f"not above {smaller.xact_per_s:.0f}/s at size {smaller.pool_size}")


def _congested(s: TierSignals, h: History, p: PolicyParams, rule: str, why: str) -> Decision:
    size, lo = s.pool_size, p.min_pool_size
    if size <= lo:
        return Decision(size, f"hold: {why}, at min_pool_size {lo}", "hold", rule)
    if not (h.decisions and h.decisions[-1].rule in CONGESTION):
        return Decision(size, f"hold: {why}, shrink if it stays", "hold", rule)
    if _in_cooldown(h, p, "grow"):
        return Decision(size, f"hold: {why}, cool-down after grow", "hold", rule)
    last = h.decisions[-1]
    if last.rule == "knee" and last.size == size:      # found while this congestion lasts: stay there
        return Decision(size, f"hold: {why}, at the knee: fewer servers cost throughput", "hold", "knee")
    larger = _latest_measured(h, lambda b: b.pool_size > size)
    if larger is not None and s.xact_per_s is not None and \
            s.xact_per_s < larger.xact_per_s * (1 - p.throughput_gain):     # past the knee's other side
        lost = f"throughput {s.xact_per_s:.0f}/s below {larger.xact_per_s:.0f}/s at size {larger.pool_size}"
        before = h.signals[-1]
        if before.pool_size == size and before.xact_per_s is not None and \
                before.xact_per_s < larger.xact_per_s * (1 - p.throughput_gain):   # two ticks: not one noisy one
            return Decision(size, f"hold: {why}, {lost}: fewer servers only cost throughput", "hold", "knee")
        return Decision(size, f"hold: {why}, {lost}, measuring again", "hold", rule)
    new = max(lo, min(size - 1, math.floor(size * p.shrink_factor)))
    return Decision(new, f"shrink: {why} for 2 ticks or more", "shrink", rule)


def _waiting(s: TierSignals, h: History, p: PolicyParams) -> Decision:
    size, hi = s.pool_size, p.max_pool_size
    waiting = f"{s.cl_waiting} clients waiting (maxwait {s.maxwait_s:.1f} s)"
    off_cpu = waits_off_cpu(s)
    if s.cpu is not None and s.cpu >= p.cpu_low and not off_cpu:
        return Decision(size, f"hold: {waiting}, cpu {s.cpu:.2f} >= {p.cpu_low:.2f}", "hold", "cpu-band")
    if size >= hi:
        return Decision(size, f"hold: {waiting}, at max_pool_size {hi}", "hold", "max")
    ceiling = congestion_ceiling(h, p)
    if ceiling is not None and size >= ceiling - 1:
        return Decision(size, f"hold: {waiting}, congestion seen at size {ceiling}{_cpu_text(s)}", "hold",
                        "ceiling")
    if _in_cooldown(h, p, "shrink"):
        return Decision(size, f"hold: {waiting}, cool-down after shrink", "hold", "cooldown")
    need = max(size + 1, size + -(-s.cl_waiting // max(1, s.reachable)))   # every waiting client of a process
    if s.cpu is None:                   # headroom unknown: multiplicative steps towards the need
        need = min(need, max(size + 1, math.ceil(size * p.max_step_factor)))
    new = min(hi, need)
    if ceiling is not None:
        new = min(new, ceiling - 1)
    busy_cpu = _off_cpu_text(s) if off_cpu and s.cpu is not None and s.cpu >= p.cpu_low else ""
    return Decision(new, f"grow: {waiting}{_cpu_text(s)}{busy_cpu}", "grow", "grow")


def _idle(s: TierSignals, h: History, p: PolicyParams) -> Decision:
    size, units = s.pool_size, _units(s)
    capacity = size * units
    steady = Decision(size, f"hold: steady, {s.sv_active} of {capacity} servers active, no client waiting"
                            f"{_cpu_text(s)}", "hold", "steady")
    ticks = 1 if s.contended else max(1, p.idle_shrink_ticks)
    window = (h.signals + (s,))[-ticks:]
    if len(window) < ticks or any(w.cl_waiting > 0 for w in window) or \
            any(d.rule == "signal" for d in h.decisions[len(h.decisions) - ticks + 1:]):
        return steady
    peak = max(w.sv_active for w in window)
    target = max(p.min_pool_size, math.ceil(peak * (1 + p.idle_margin) / units))
    if target >= size:
        return steady
    unused = f"{capacity - peak} of {capacity} servers unused for {ticks} tick{'s' if ticks > 1 else ''}"
    if _in_cooldown(h, p, "grow"):
        return Decision(size, f"hold: {unused}, cool-down after grow", "hold", "cooldown")
    if s.contended:
        new = max(target, size - size // 2)
        return Decision(new, f"shrink: {unused}, other tiers need them", "shrink", "contended")
    new = max(target, min(size - 1, math.floor(size * p.shrink_factor)))
    return Decision(new, f"shrink: {unused}, no client waiting", "shrink", "idle")


def congestion_ceiling(h: History, p: PolicyParams) -> int | None:
    """The size congestion last shrank from, while clients kept waiting and for at most `ceiling_ticks`: growth
    stays below it. When it expires, growth probes past it once, as Envoy re-measures its minimum latency."""
    return h.ceiling if h.ceiling is not None and h.ceiling_age < p.ceiling_ticks else None


def _in_cooldown(h: History, p: PolicyParams, direction: str) -> bool:
    """True when the last change, within `cooldown_ticks`, went in `direction` (the one a new change reverses)."""
    recent = h.decisions[-p.cooldown_ticks:] if p.cooldown_ticks > 0 else ()
    last = next((d for d in reversed(recent) if d.direction != "hold"), None)
    return last is not None and last.direction == direction
