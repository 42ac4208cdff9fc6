"""Numbers the pooler's objects share: PgBouncer's socket ids and the wait-time histogram's buckets.

A module of their own because the compiled client, server and pool modules load each other's types while they
load: what one of them imports by name from another would not be there yet.
"""
from __future__ import annotations

import itertools

# PgBouncer's socket ids: one sequence for clients and servers, taken when the connection is made.
next_socket_id = itertools.count(1).__next__

# Upper bounds, in seconds, of the client wait-time histogram's buckets.
WAIT_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
