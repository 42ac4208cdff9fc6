"""The autotuner: one loop (signals -> policy -> budget -> actuation), two front ends.

- `model`: the plain values every part passes around.
- `policy`: a pure function from one tier's signals and history to the pool size it wants, and why.
- `budget`: pure arithmetic that shares one PostgreSQL server's connections among every pooler process.
- `signals`: reads the poolers' consoles, Prometheus and pg_stat_activity into `model` values.
- `loop`: one tick, front-end agnostic; `maitred autotune` and the operator both drive it.

No kopf or Kubernetes type appears in a decision.
"""
