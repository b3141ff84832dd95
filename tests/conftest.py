"""Shared fixtures: a seeded rng, and a `megengine` fixture that fails (not skips) under CI;
every test is marked `megengine` (needs it) or `onnx_side` (core package only, any Python)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


# Test modules that import MegEngine (or models/, tests/converters/harness.py) when loaded.
# Without MegEngine they are not collected: none of their tests is ONNX-side.
MEGENGINE_MODULES = ("converters/*", "test_export.py", "test_models.py",
                     "test_models_transforms.py", "test_wrap_megengine.py")
_HERE = Path(__file__).parent
_NEEDS_MEGENGINE = tuple(path for pattern in MEGENGINE_MODULES for path in _HERE.glob(pattern))
collect_ignore = ([] if importlib.util.find_spec("megengine")
                  else [str(path) for path in _NEEDS_MEGENGINE])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`megengine` on tests that use the fixture (even through another fixture) or live in a
    MegEngine module, `onnx_side` on all others: `pytest -m onnx_side` selects what must pass
    on every supported Python, and selecting by marker means nothing is skipped to get green.
    `gpu` tests skip without onnxruntime's CUDA provider (the one allowed skip)."""
    import onnxruntime as ort

    no_cuda = "CUDAExecutionProvider" not in ort.get_available_providers()
    skip_gpu = pytest.mark.skip(reason="no CUDAExecutionProvider (install tm2onnx[gpu] on a "
                                       "CUDA machine)")
    for item in items:
        path = Path(str(item.fspath))
        needs = ("megengine" in getattr(item, "fixturenames", ())
                 or item.get_closest_marker("megengine") is not None
                 or any(path == module or module in path.parents
                        for module in _NEEDS_MEGENGINE))
        item.add_marker(pytest.mark.megengine if needs else pytest.mark.onnx_side)
        if no_cuda and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
