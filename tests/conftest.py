"""Shared fixtures: a seeded rng, and a `megengine` fixture that fails (not skips) under CI."""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _megengine_or_fail():
    try:
        import megengine
    except ImportError as err:
        if os.environ.get("CI"):
            pytest.fail(f"MegEngine is required under CI=true but missing: {err}")
        pytest.skip(f"MegEngine not installed: {err}")
    return megengine


@pytest.fixture
def megengine():
    """The megengine module; tests that need it fail under CI=true when it is missing."""
    return _megengine_or_fail()
