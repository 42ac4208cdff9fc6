"""The quick start: a local PostgreSQL in .maitred/quickstart and a maitred pooler in front of it.

Runs in the foreground until Ctrl-C, then stops both. The PostgreSQL cluster is kept between runs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from maitred.local_postgres import LocalPostgres
from pooler.config import load_config
from pooler.userlist import load_userlist

EXAMPLE = "examples/pooler.ini"
STATE_DIR = ".maitred/quickstart"


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    config = load_config(EXAMPLE)
    entry = config.databases["app"]
    users = load_userlist(config.get("auth_file"))
    print(f"==> PostgreSQL in {STATE_DIR}/pg on 127.0.0.1:{entry.port}", flush=True)
    pg = LocalPostgres(base_dir=os.path.join(STATE_DIR, "pg"), port=entry.port, keep=True)
    fresh = not os.path.exists(os.path.join(pg.datadir, "PG_VERSION"))
    pg.start()
    try:
        if fresh:
            pg.create_role("app", users["app"])
            pg.create_database("app", owner="app")
        port = config.get("listen_port")
        print(f"==> maitred pooler with {EXAMPLE} on 127.0.0.1:{port}", flush=True)
        pooler = subprocess.Popen([sys.executable, "-m", "maitred.cli", "pooler", EXAMPLE])
        time.sleep(1.0)
        if pooler.poll() is not None:
            return pooler.returncode or 1
        print(f"""
Connect through the pooler:
    PGPASSWORD={users['app']} psql -h 127.0.0.1 -p {port} -U app app
Admin console:
    PGPASSWORD={users['admin']} psql -h 127.0.0.1 -p {port} -U admin pgbouncer -c 'SHOW POOLS'
Metrics:
    curl -s http://127.0.0.1:{config.get('http_port')}/metrics
Press Ctrl-C to stop.
""", flush=True)
        try:
            pooler.wait()
        except KeyboardInterrupt:
            pooler.send_signal(signal.SIGINT)
            pooler.wait(30)
        return 0
    finally:
        pg.stop()
        print("==> stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
