"""State database fixtures (the shared backend fixtures live in tests/conftest.py)."""

from __future__ import annotations

import pytest
from optimove_netmera.store import get_engine, migrate
from sqlalchemy.engine import Engine


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """URL of a state database migrated to head."""
    migrate(db_url)
    return db_url


@pytest.fixture
def engine(migrated_url: str) -> Engine:
    """The cached engine of a migrated state database."""
    return get_engine(migrated_url)
