"""Shared fixtures: where the real data lives.

Tests read real data from ``ASTROCLF_SHARED_DATA`` (default ``../shared/data`` relative to
the project root). Outside CI a test that needs it is skipped with the reason when it is
absent; in CI (``CI=true``) its absence is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _shared_data_dir() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skip (or fail in CI) when it is absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        message = (
            f"real data folder {path} not found; set ASTROCLF_SHARED_DATA to the folder "
            "holding alerts/ and lightcurves/"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


pytest_plugins = ["tests.kafka_broker"]
