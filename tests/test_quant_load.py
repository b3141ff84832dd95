"""A saved int8 (`quantize`d) TracedModule loads and exports from its file: MegEngine 1.13's
own loader fails on it (it migrates `ConvBn2d.bn`, which the int8 module has not)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import _megengine_or_fail
from tm2onnx.cli import main

pytestmark = pytest.mark.megengine
SHAPE = (2, 3, 16, 16)


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    mge = _megengine_or_fail()

    from models.quant import int8_version, traced_qat

    int8 = int8_version(traced_qat("conv_bn_concat", SHAPE))
    path = tmp_path_factory.mktemp("int8") / "int8.tm"
    mge.save(int8, str(path))
    return int8, path


def test_megengine_alone_cannot_load_a_saved_int8_conv_bn(int8_file: tuple) -> None:
    # The reason for tm2onnx.loading's compat shim: if this starts passing, drop the shim.
    import megengine as mge

    with pytest.raises(AttributeError, match="bn"):
        mge.load(str(int8_file[1]))


@pytest.mark.parametrize("unsafe", [False, True])
def test_saved_int8_model_loads_and_computes_the_same(int8_file: tuple, unsafe: bool) -> None:
    import megengine as mge

    from tm2onnx.loading import load_traced

    int8, path = int8_file
    loaded = load_traced(path, unsafe=unsafe)
    x = mge.Tensor(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    assert type(loaded.conv_bn).__module__ == "megengine.module.quantized.conv_bn"
    np.testing.assert_array_equal(loaded(x).numpy(), int8(x).numpy())


def test_saved_int8_model_exports_and_validates_from_the_cli(int8_file: tuple, tmp_path) -> None:
    out = tmp_path / "int8.onnx"
    assert main(["export", str(int8_file[1]), "-o", str(out), "--validate"]) == 0
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
