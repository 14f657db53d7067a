"""Alembic environment: one migration history for SQLite and Postgres."""

from alembic import context
from sqlalchemy import create_engine, text

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
engine = create_engine(url)
with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Many processes may start at once: only one migrates, the others wait for it. The
        # lock is held until the migration's transaction commits (a session lock released
        # before the commit let a waiter in to find no tables yet, and create them again).
        connection.execute(text("SELECT pg_advisory_xact_lock(72410531)"))
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()  # Postgres: the lock's transaction; SQLite: nothing left to commit
engine.dispose()
