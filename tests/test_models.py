"""Golden models end to end: export each with tm2onnx, run onnxruntime, compare every output with
MegEngine on the same seeded inputs, and check the model's structure. Committed `.tm` fixtures
are also exported from their path (the pickle round trip a user does)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_matches, ops, run_ort

MODELS = Path(__file__).resolve().parent.parent / "models"
ORT_MAX_IR_VERSION = 11  # onnxruntime 1.23 refuses newer IR versions

# Deep nets: MegEngine and onnxruntime (MLAS) sum convolutions and matmuls in different orders
# (im2col/Winograd vs. direct, different blockings); the fp32 rounding differences compound over
# 20-50 layers, and an output element near zero carries the absolute error of its layer's
# typical magnitude (~1-10 here), which rtol alone cannot cover. 1e-4 still catches any real
# converter mistake (a wrong eps, pad, or transposed weight moves outputs by >1e-2).
DEEP_FP32 = {"rtol": 1e-4, "atol": 1e-4}
SMALL = [(1, 3, 64, 64)]  # ImageNet nets at 64x64 (after /32: 2x2) keep the suite fast

CASES = [
    pytest.param("main", None, FP32, set(), id="main"),
    pytest.param("pre_post", None, FP32, {"Mul", "Div"}, id="pre_post"),
    pytest.param("const_scale", None, FP32, {"Conv"}, id="const_scale"),
    pytest.param("big_linear", None, FP32, set(), id="big_linear"),
    pytest.param("conv_bn_concat", None, FP32, {"Conv", "Concat"}, id="conv_bn_concat"),
    pytest.param("conv_bn_relu", None, FP32, {"Conv", "Relu"}, id="conv_bn_relu"),
    pytest.param("transformer_block", None, DEEP_FP32, {"MatMul", "Softmax"},
                 id="transformer_block"),
    pytest.param("resnet18", SMALL, DEEP_FP32, {"Conv", "MaxPool"}, id="resnet18-64px"),
    pytest.param("resnet50", SMALL, DEEP_FP32, {"Conv", "MaxPool"}, id="resnet50-64px"),
    pytest.param("mobilenet_v2", SMALL, DEEP_FP32, {"Conv"}, id="mobilenet_v2-64px"),
    pytest.param("shufflenet_v2", SMALL, DEEP_FP32, {"Conv", "Transpose", "Concat"},
                 id="shufflenet_v2-64px"),
]


def _manifest() -> list[dict[str, Any]]:
    return json.loads((MODELS / "manifest.json").read_text())["models"]


COMMITTED = [entry["name"] for entry in _manifest()]


def _tolerance(name: str) -> dict[str, float]:
    return DEEP_FP32 if name == "transformer_block" else FP32


def _export_and_compare(source: Any, traced: Any, inputs: Sequence[np.ndarray], *,
                        tolerance: dict[str, float]) -> onnx.ModelProto:
    """Export `source` (TracedModule or .tm path); compare onnxruntime with `traced` in MegEngine."""
    import tm2onnx
    from models.make_models import forward

    model = tm2onnx.export(source)
    initializers = {init.name for init in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in initializers]
    assert len(real_inputs) == len(inputs)
    got = run_ort(model, {value.name: x for value, x in zip(real_inputs, inputs)})
    expected = forward(traced, inputs)
    assert len(model.graph.output) == len(expected)
    reference = {value.name: array for value, array in zip(model.graph.output, expected)}
    assert_matches(reference, got, **tolerance)
    return model


def _assert_structure(model: onnx.ModelProto) -> None:
    initializers = {init.name for init in model.graph.initializer}
    as_inputs = [value.name for value in model.graph.input if value.name in initializers]
    assert not as_inputs, f"initializers listed as graph inputs: {as_inputs}"
    assert model.ir_version <= ORT_MAX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    # Every node made from an expr says where it came from; exporter-added output Identities
    # have no expr behind them.
    from_exprs = [node for node in model.graph.node if not node.name.endswith("/Identity")]
    bare = [node.name for node in from_exprs
            if not {prop.key for prop in node.metadata_props} & {"qualname", "expr"}]
    assert not bare, f"nodes without provenance metadata_props: {bare}"


@pytest.mark.parametrize("name, shapes, tolerance, expect_ops", CASES)
def test_model_matches_megengine(megengine, name, shapes, tolerance, expect_ops):
    from models.make_models import build

    traced, inputs = build(name, shapes=shapes)
    model = _export_and_compare(traced, traced, inputs, tolerance=tolerance)
    _assert_structure(model)
    missing = expect_ops - set(ops(model))
    assert not missing, f"expected ONNX ops {sorted(missing)} not in {sorted(set(ops(model)))}"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_exports_from_path(megengine, name, tmp_path):
    """The user's path: a pickled .tm, loaded in tm2onnx without the defining classes."""
    import tm2onnx
    from models.make_models import SPECS, example_inputs
    from tm2onnx.exporter import save_model

    path = MODELS / f"{name}.tm"
    traced = tm2onnx.load_traced(path)
    model = _export_and_compare(path, traced, example_inputs(SPECS[name]),
                                tolerance=_tolerance(name))
    _assert_structure(model)
    save_model(model, tmp_path / f"{name}.onnx")
    assert onnx.load(tmp_path / f"{name}.onnx") == model


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_is_current(megengine, name):
    """A fixture that no longer matches models/nets.py fails here: run `make models`."""
    import tm2onnx
    from models.make_models import build, forward

    traced, inputs = build(name)
    committed = tm2onnx.load_traced(MODELS / f"{name}.tm")
    entry = next(e for e in _manifest() if e["name"] == name)
    assert [tuple(i["shape"]) for i in entry["inputs"]] == [x.shape for x in inputs]
    assert [tuple(n.shape) for n in committed.graph.inputs[1:]] == [x.shape for x in inputs]
    for fresh, stored in zip(forward(traced, inputs), forward(committed, inputs)):
        np.testing.assert_array_equal(stored, fresh, err_msg=f"{name}.tm is stale")


def test_manifest_lists_committed_specs_and_demo_model(megengine):
    from models.make_models import SPECS

    assert sorted(COMMITTED) == sorted(name for name, spec in SPECS.items() if not spec.large)
    assert "conv_bn_concat" in COMMITTED  # `make demo` exports models/conv_bn_concat.tm
    total = sum((MODELS / e["file"]).stat().st_size for e in _manifest())
    assert total < 2_000_000, f"committed .tm fixtures total {total} bytes; keep them small"
