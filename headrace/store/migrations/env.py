"""Alembic environment: one migration history for SQLite and Postgres."""

from alembic import context
from sqlalchemy import create_engine, text

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
engine = create_engine(url)
with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Many processes may start at once: only one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_lock(72410531)"))
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_unlock(72410531)"))
        connection.commit()
engine.dispose()
