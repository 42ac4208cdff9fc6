"""The pool-size policy: a pure function from one tier's signals and history to the size it wants, and why.

First cut: grow x2 while clients wait and CPU has headroom, shrink on CPU saturation, shrink by one when
servers sit idle; hold on any missing signal. Refined in place; the signature is the contract.
"""
from __future__ import annotations

from .model import Decision, History, PolicyParams, TierSignals


def decide(signals: TierSignals, history: History, params: PolicyParams) -> Decision:
    """The pool size this tier wants next (within the spec's bounds), before the budget has its say."""
    size = signals.pool_size
    bounded = max(params.min_pool_size, min(params.max_pool_size, size))
    if bounded != size:
        return Decision(bounded, f"{'grow' if bounded > size else 'shrink'}: back within "
                                 f"{params.min_pool_size}..{params.max_pool_size}",
                        "grow" if bounded > size else "shrink")
    if signals.missing:
        return Decision(size, f"hold: {', '.join(signals.missing)} missing", "hold")
    if signals.cpu is not None and signals.cpu >= params.cpu_high:
        new = max(params.min_pool_size, size - max(1, size // 4))
        return Decision(new, f"shrink: cpu {signals.cpu:.2f} >= {params.cpu_high}", "shrink" if new < size else "hold")
    if signals.cl_waiting > 0 and (signals.cpu is None or signals.cpu < params.cpu_low):
        new = min(params.max_pool_size, max(size + 1, int(size * params.max_step_factor)))
        return Decision(new, f"grow: {signals.cl_waiting} clients waiting", "grow" if new > size else "hold")
    if signals.cl_waiting == 0 and signals.sv_idle > 0 and size > params.min_pool_size:
        return Decision(size - 1, f"shrink: {signals.sv_idle} servers idle, no client waiting", "shrink")
    return Decision(size, "hold: steady", "hold")
