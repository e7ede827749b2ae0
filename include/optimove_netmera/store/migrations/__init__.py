"""Alembic migrations of the state database (run them with ``optimove_netmera.store.migrate``)."""
