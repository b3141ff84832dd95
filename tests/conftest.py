"""Shared fixtures: a seeded rng, and a `megengine` fixture that fails (not skips) under CI."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests: reproducible draws under CI (a failure there must replay locally), and no
# per-example deadline on a shared 2-core machine.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


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


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs onnxruntime's CUDAExecutionProvider "
                            "(skips cleanly without it: the one allowed skip)")


def pytest_collection_modifyitems(config, items):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return
    skip = pytest.mark.skip(reason="no CUDAExecutionProvider (install tm2onnx[gpu] on a CUDA "
                                   "machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
