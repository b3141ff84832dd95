"""Trace a real MegEngine module, export it, run onnxruntime (optimizations off) and compare
every output with MegEngine at a named tolerance; return the ONNX model for structural checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from tests.helpers import FP32, assert_matches, ops, run_ort
from tests.reload import reload_both_ways


def make_inputs(shapes: Sequence[Any], seed: int = 0) -> list[np.ndarray]:
    """Float32 arrays for shape tuples; arrays given as-is (for int/bool inputs)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(s) if isinstance(s, np.ndarray) else
            rng.uniform(-2.0, 2.0, size=s).astype(np.float32) for s in shapes]


def export_and_compare(module_factory: Callable[[], Any], shapes: Sequence[Any], *,
                       expect_ops: Sequence[str] = (), tolerance: dict | None = None,
                       seed: int = 0, pickled: bool = True,
                       **export_options: Any) -> onnx.ModelProto:
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx

    module = _wrapped(module_factory())
    module.eval()
    arrays = make_inputs(shapes, seed)
    tensors = [mge.Tensor(a) for a in arrays]
    traced = tm.trace_module(module, *tensors)
    if pickled:  # every case also goes through pickle and the safe loader, as users' files do
        traced = reload_both_ways(traced, arrays)
    expected = traced(*tensors)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    model = tm2onnx.export(traced, **export_options)
    feeds = {value.name: array for value, array in zip(model.graph.input, arrays)}
    got = run_ort(model, feeds)
    reference = {out.name: np.asarray(t.numpy()) for out, t in zip(model.graph.output, expected)}
    assert_matches(reference, got, **(tolerance or FP32))
    present = set(ops(model))
    missing = [op for op in expect_ops if op not in present]
    assert not missing, f"expected ONNX ops {missing} not in {sorted(present)}"
    return model


def _wrapped(inner: Any) -> Any:
    """trace_module cannot trace a builtin module (Conv2d, ...) directly: give it a parent."""
    import megengine.module as M

    class Wrapper(M.Module):
        def __init__(self):
            super().__init__()
            self.net = inner

        def forward(self, *inputs):
            return self.net(*inputs)

    return Wrapper()


def function_net(fn: Callable[..., Any]) -> Any:
    """A module whose forward is `fn(F, *inputs)`: how functions and operators are traced."""
    import megengine.functional as F

    return functional_net(lambda self, *inputs: fn(F, *inputs))()


def lambda_net(fn: Callable[..., Any]) -> Any:
    """A module whose forward is `fn(*inputs)`."""
    return functional_net(lambda self, *inputs: fn(*inputs))()


def functional_net(fn: Callable[..., Any], **tensors: np.ndarray) -> Callable[[], Any]:
    """A factory of modules whose forward is `fn(self, *inputs)`; `tensors` become attributes
    (constants at export time). MegEngine is imported only when the factory runs."""

    def factory() -> Any:
        import megengine as mge
        import megengine.module as M

        class Net(M.Module):
            def __init__(self):
                super().__init__()
                for name, value in tensors.items():
                    setattr(self, name, mge.Tensor(value))

            def forward(self, *inputs):
                return fn(self, *inputs)

        return Net()

    return factory


def randomized(module: Any, seed: int = 0) -> Any:
    """Random weight/bias/running stats on a norm module (variance kept positive), so folding
    or eps mistakes show in the numbers."""
    import megengine as mge

    rng = np.random.default_rng(seed)
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(module, name, None)
        if value is not None:
            low, high = (0.5, 2.0) if name == "running_var" else (-1.5, 1.5)
            value[...] = mge.Tensor(rng.uniform(low, high, value.shape).astype("float32"))
    return module


def export_traced_and_compare(traced: Any, *input_sets: Sequence[np.ndarray],
                              tolerance: dict | None = None, **export_options: Any
                              ) -> onnx.ModelProto:
    """Export an already traced module once; onnxruntime matches it on every input set."""
    import megengine as mge

    import tm2onnx

    mge.config.async_level = 0  # MegEngine's async CPU dispatch was seen computing wrong values
    traced = reload_both_ways(traced, input_sets[0]) if input_sets else traced
    model = tm2onnx.export(traced, **export_options)
    for arrays in input_sets:
        expected = traced(*[mge.Tensor(a) for a in arrays])
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        feeds = {value.name: a for value, a in zip(model.graph.input, arrays)}
        reference = {out.name: t.numpy() for out, t in zip(model.graph.output, expected)}
        assert_matches(reference, run_ort(model, feeds), **(tolerance or FP32))
    return model
