"""Postgres store (cluster mode): asyncpg, a connection pool, one statement per commit.

`commit` is one SQL statement (data-modifying CTEs over JSON-encoded rows), run outside an
explicit transaction, so a batch of transitions costs one round trip whatever its size: the
version checks (UPDATE ... WHERE version, INSERT ... ON CONFLICT DO NOTHING) decide which
runs apply, and every other write joins on the runs that did, so a refused run writes
nothing and never aborts the others.

asyncpg rather than psycopg here: its protocol is compiled, and a commit's client CPU went
from ~260 µs to ~140 µs (W1 on Postgres + Redis 1.0 -> 0.84 ms per node). Migrations still
run through Alembic and SQLAlchemy on psycopg, synchronously.

Every driver error becomes InfraError at this edge: the caller retries (a commit whose
connection broke may or may not have applied; the caller's reload of the run tells). The
pool replaces connections the server closed (restart, failover) when it hands them out;
commits keep one of its connections (`_writer`), replaced the same way.

Durability is the server's `synchronous_commit` (shown by `description`); set it per store
with the URL, e.g. `postgresql://host/db?options=-csynchronous_commit%3Doff` (libpq's form)
or `?synchronous_commit=off`.
"""

from headrace.store.postgres.connect import connect_args
from headrace.store.postgres.store import PostgresStore

__all__ = ["PostgresStore", "connect_args"]
