"""`python3 -m bench autotune`: the autotuner against every fixed pool size, over one workload whose best fixed
size changes from phase to phase.

- `workload`: the phases (what the clients run, how many, how long) and the sizes of the sweep.
- `sampler`: the time series of a run: the pooler's console, pg_stat_activity against the budget, host CPU.
- `runs`: one measured run: a fresh pooler, the sampler, pgbench phase after phase, `maitred autotune` or not.
- `summary`: medians over rounds, the Markdown table, the verdict against the issue's target, the JSON file.
- `plot`: the PNG of pool size, cl_waiting, CPU and throughput over time, phase by phase.
- `pgcpu`: PostgreSQL's own CPU, exported through node-exporter for the autotuner; `background`: their threads.
"""
