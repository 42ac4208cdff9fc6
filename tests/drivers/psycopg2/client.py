"""psycopg2 behind SQLAlchemy's QueuePool with pre-ping, as an application sets it up (see ../README.md)."""
import json
import os
import sys
import threading

import sqlalchemy
from sqlalchemy import text

CLIENTS, ROUNDS, POOL_SIZE = (int(os.environ[name]) for name in ("CLIENTS", "ROUNDS", "POOL_SIZE"))
TABLE = os.environ["TABLE"]


def report(step: str, **values) -> None:
    print(json.dumps({"step": step, **values}), flush=True)


def concurrent(engine) -> dict:
    results, pids, errors = [], set(), []

    def worker(w: int) -> None:
        try:
            for r in range(ROUNDS):
                with engine.connect() as conn:
                    product, pid = conn.execute(text("SELECT :a * :b, pg_backend_pid()"), {"a": w, "b": r}).one()
                results.append(product)
                pids.add(pid)
        except Exception as exc:  # reported, so that the test shows it
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors)
    return {"sum": sum(results), "pids": sorted(pids)}


def table_ids(conn) -> list:
    return list(conn.execute(text(f"SELECT id FROM {TABLE} ORDER BY id")).scalars())


def main() -> None:
    # psycopg2 reads PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE through libpq.
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", pool_size=POOL_SIZE, max_overflow=0,
                                      pool_pre_ping=True)
    report("concurrent", **concurrent(engine))

    with engine.connect() as conn:
        values = [conn.execute(text("SELECT :i * 2"), {"i": i}).scalar() for i in range(8)]
        conn.commit()
    report("prepared", values=values, server_prepared=False)   # psycopg2 has no server-side statements

    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {TABLE} VALUES (:id, :note)"), {"id": 1, "note": "kept"})
    with engine.connect() as conn:
        with conn.begin() as tx:
            conn.execute(text(f"INSERT INTO {TABLE} VALUES (:id, :note)"), {"id": 2, "note": "dropped"})
            tx.rollback()
        report("rollback", ids=table_ids(conn))
        conn.commit()

    sqlstates = []
    with engine.connect() as conn:
        tx = conn.begin()
        conn.execute(text(f"INSERT INTO {TABLE} VALUES (:id, :note)"), {"id": 3, "note": "lost"})
        for statement in ("SELECT 1 / 0", "SELECT 1"):
            try:
                conn.execute(text(statement))
            except sqlalchemy.exc.DBAPIError as exc:
                sqlstates.append(exc.orig.pgcode)
        tx.rollback()
        after = conn.execute(text("SELECT 1")).scalar()
        report("error", sqlstates=sqlstates, after=after, ids=table_ids(conn))
        conn.commit()

    report("awaiting-reconnect")
    sys.stdin.readline()
    report("reconnected", **concurrent(engine))
    engine.dispose()


if __name__ == "__main__":
    main()
