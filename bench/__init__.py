"""Benchmarks of maitred against PgBouncer and direct PostgreSQL connections: `python3 -m bench --help`."""
