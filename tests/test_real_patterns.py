"""Real-model patterns of issue 6 (models/real_patterns.py): each exports, matches MegEngine in
onnxruntime, and every value has the shape of *its* call, with and without a dynamic batch."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest

from tests.helpers import ops, run_ort

PATTERNS = ["shared_upsample", "shared_head_fpn", "pafpn", "box_rescale", "named_imports"]
BATCHED = ["shared_upsample", "shared_head_fpn", "pafpn", "named_imports"]


def _reference(traced, arrays):
    import megengine as mge

    outputs = traced(*[mge.Tensor(a) for a in arrays])
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [np.asarray(t.numpy()) for t in outputs]


def _assert_close(reference, got):
    """rtol 1e-4 and atol 1e-4 of each output's scale: deep conv stacks round differently."""
    for ref, out in zip(reference, got):
        assert ref.shape == out.shape
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def _declared(model: onnx.ModelProto) -> list[list]:
    return [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output]


def _run(model, arrays):
    feeds = {value.name: a for value, a in zip(model.graph.input, arrays)}
    return [run_ort(model, feeds)[o.name] for o in model.graph.output]


@pytest.mark.parametrize("name", PATTERNS)
def test_pattern_matches_megengine(megengine, name):
    import tm2onnx
    from models.real_patterns import build

    traced, arrays = build(name)
    reference = _reference(traced, arrays)
    model = tm2onnx.export(traced)
    _assert_close(reference, _run(model, arrays))
    assert _declared(model) == [list(r.shape) for r in reference]


@pytest.mark.parametrize("name", BATCHED)
def test_pattern_with_dynamic_batch(megengine, name):
    """Exported with a dynamic batch, run at batch 3 against MegEngine at batch 3."""
    import tm2onnx
    from models.real_patterns import build

    traced, arrays = build(name)
    model = tm2onnx.export(traced, dynamic_batch=True)
    batch3 = [np.concatenate([a] * 3)[:3] if a.shape[0] == 1 else
              np.concatenate([a, a])[:3] for a in arrays]
    _assert_close(_reference(traced, batch3), _run(model, batch3))


def test_shared_upsample_resizes_each_call_to_its_own_size(megengine):
    """Issue 6.1: the second call was exported (exit 0) as 8x8 instead of 16x16."""
    import tm2onnx
    from models.real_patterns import build

    traced, _ = build("shared_upsample")
    model = tm2onnx.export(traced)
    sizes = {init.name: onnx.numpy_helper.to_array(init).tolist()
             for init in model.graph.initializer}
    resized = sorted(sizes[node.input[3]] for node in model.graph.node if node.op_type == "Resize")
    assert resized == [[1, 2, 8, 8], [1, 2, 16, 16]]
    assert _declared(model) == [[1, 2, 8, 8], [1, 2, 16, 16]]


def test_shared_head_shapes_per_level(megengine):
    """3 anchors x 4 classes at 32, 16, 8, 4 and 2 pixels square, batch 2."""
    import tm2onnx
    from models.real_patterns import build

    model = tm2onnx.export(build("shared_head_fpn")[0])
    anchors = 3 * sum(side * side for side in (32, 16, 8, 4, 2))
    assert _declared(model) == [[2, anchors, 4], [2, anchors, 4]]
    assert ops(model).count("Conv") == 5 + 5 * 6  # stem + 4 downs, 6 head convs per level


def test_traced_graph_is_left_as_it_was(megengine):
    """Re-shaping a shared submodule for one call must not leave the user's graph changed."""
    import tm2onnx
    from models.real_patterns import build

    traced, _ = build("shared_head_fpn")
    graph = traced.head.argdef_graph_map[next(iter(traced.head.argdef_graph_map))]
    before = [node.shape for expr in graph.exprs() for node in expr.outputs
              if hasattr(node, "shape")]
    tm2onnx.export(traced)
    after = [node.shape for expr in graph.exprs() for node in expr.outputs
             if hasattr(node, "shape")]
    assert before == after


def test_guard_names_the_expr_when_a_call_gets_another_calls_shape(megengine, monkeypatch):
    """Without per-call shapes (today's main), the post-export guard stops the silent export."""
    import tm2onnx
    from models.real_patterns import build
    from tm2onnx.callshapes import CallShapes
    from tm2onnx.errors import ConversionError

    monkeypatch.setattr(CallShapes, "call", lambda self, call, graph: contextlib.nullcontext())
    with pytest.raises(ConversionError, match=r"interpolate.*up_1_out: ONNX infers shape "
                                              r"\[1, 2, 8, 8\], MegEngine traced \[1, 2, 16, 16\]"):
        tm2onnx.export(build("shared_upsample")[0])


def test_symbolic_dim_set_by_a_converter_is_declared(megengine, monkeypatch):
    """A data-dependent count (NMS-style) is declared symbolic, also on what is computed from
    it, and the guard skips it."""
    import megengine.functional as F
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from tm2onnx.converters import FUNCTION_CONVERTERS, load_all

    load_all()

    def relu_with_count(ctx, expr):
        """Relu, then Compress keeping every row: ONNX cannot infer the row count."""
        keep = ctx.const(np.ones(5, bool))
        [out] = ctx.emit("Compress", [ctx.op("Relu", [ctx.value_of(expr.args[0])]), keep],
                         expr.outputs, axis=0)
        out.shape = ["count", 4]

    monkeypatch.setitem(FUNCTION_CONVERTERS, F.relu, relu_with_count)

    class Net(M.Module):
        def forward(self, x):
            y = F.relu(x)
            return y, y * 2

    x = megengine.Tensor(np.ones((5, 4), "float32"))
    model = tm2onnx.export(tm.trace_module(Net(), x))
    assert _declared(model) == [["count", 4], ["count", 4]]
    got = _run(model, [np.full((5, 4), -1.0, np.float32)])
    np.testing.assert_array_equal(got[1], np.zeros((5, 4), np.float32))


def test_box_rescale_concat_of_0d(megengine):
    import tm2onnx
    from models.real_patterns import build

    model = tm2onnx.export(build("box_rescale")[0])
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert [producers[i] for i in concat.input] == ["Reshape"] * 4


def _traced(module_factory, shape=(1, 2, 4, 4)):
    import megengine as mge
    import megengine.module as M
    import megengine.traced_module as tm

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.inner = module_factory()

        def forward(self, x):
            return self.inner(x)

    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    net = Net()
    net.eval()
    return tm.trace_module(net, mge.Tensor(x)), x


def _int8():
    """quantized.ConvBn2d between int8 stubs, made the way users make it."""
    import megengine.module as M
    from megengine.quantization import quantize, quantize_qat

    net = M.Sequential(M.QuantStub(), M.ConvBn2d(2, 2, 1), M.DequantStub())
    net.eval()
    return quantize(quantize_qat(net))


def _conv_subclass_overriding_forward(builtin: bool = True):
    """A user subclass doing more than its base; trace_module traces through its forward
    unless it is registered as a builtin (a leaf module the exporter must convert)."""
    import megengine.module as M
    import megengine.traced_module as tm

    class ScaledConv(M.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    if builtin:
        tm.register_as_builtin(ScaledConv)
    return ScaledConv(2, 2, 1)


def _conv_subclass_keeping_forward():
    import megengine.module as M

    class NamedConv(M.Conv2d):
        def __init__(self):
            super().__init__(2, 2, 1, bias=True)

    return NamedConv()


@pytest.mark.parametrize("factory, name", [
    (_conv_subclass_overriding_forward, r"ScaledConv"),
], ids=["user-builtin-subclass"])
def test_subclass_overriding_forward_is_refused_by_name(megengine, factory, name):
    """Issue 6.2: qat.Conv2d exported as a float Conv (fake quantization dropped), exit 0."""
    import tm2onnx
    from tm2onnx.errors import UnsupportedOpError

    traced, _ = _traced(factory)
    with pytest.raises(UnsupportedOpError, match=name + r"\.__call__ \(overrides forward of M\."):
        tm2onnx.export(traced)


@pytest.mark.parametrize("factory", [
    lambda: __import__("megengine.module.qat", fromlist=["Conv2d"]).Conv2d(2, 2, 1),
    lambda: _int8(),
    lambda: __import__("megengine.module.qat", fromlist=["x"]).ConvTranspose2d(2, 2, 1),
], ids=["qat.Conv2d", "quantized.ConvBn2d", "qat.ConvTranspose2d"])
def test_quantized_modules_never_export_as_float(megengine, factory):
    """Issue 6.2: qat.Conv2d was exported as a float Conv (fake quantization dropped), exit 0.
    Now a QAT/int8 module is either QDQ (converters/quant.py) or refused by name."""
    import tm2onnx
    from tm2onnx.errors import Tm2OnnxError

    traced, _ = _traced(factory)
    try:
        model = tm2onnx.export(traced)
    except Tm2OnnxError as err:  # uncalibrated (no scale) or no QDQ converter: named refusal
        assert "inner" in str(err)
    else:
        assert "DequantizeLinear" in ops(model)


def test_traced_user_subclass_keeps_what_its_forward_adds(megengine):
    import tm2onnx

    traced, x = _traced(lambda: _conv_subclass_overriding_forward(builtin=False))
    model = tm2onnx.export(traced)
    assert {"Conv", "Mul"} <= set(ops(model))
    _assert_close(_reference(traced, [x]), _run(model, [x]))


def test_subclass_keeping_forward_uses_the_base_converter(megengine):
    import tm2onnx

    traced, x = _traced(_conv_subclass_keeping_forward)
    model = tm2onnx.export(traced)
    assert "Conv" in ops(model)
    _assert_close(_reference(traced, [x]), _run(model, [x]))


def test_covers_declares_a_forward_overriding_subclass(megengine, monkeypatch):
    """`covers=` is the explicit promise that lets a subclass with its own forward through."""
    import megengine.module as M

    import tm2onnx
    from tm2onnx.converters import MODULE_CONVERTERS, load_all, module_converter

    load_all()

    class PlainConv(M.Conv2d):
        def forward(self, x):  # the same computation, written out again
            return self.calc_conv(x, self.weight, self.bias)

    monkeypatch.setattr("tm2onnx.converters.MODULE_CONVERTERS", dict(MODULE_CONVERTERS))
    import tm2onnx.converters as registry

    module_converter(covers=(PlainConv,))(MODULE_CONVERTERS[M.Conv2d])
    assert PlainConv in registry.MODULE_CONVERTERS
    traced, x = _traced(lambda: PlainConv(2, 2, 1))
    model = tm2onnx.export(traced)
    _assert_close(_reference(traced, [x]), _run(model, [x]))


def test_float_quant_stubs_are_identities(megengine):
    """Issue 6.4: quantization-ready float nets failed on their stubs alone."""
    import megengine.module as M

    import tm2onnx

    class Ready(M.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = M.QuantStub(), M.DequantStub()
            self.conv = M.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)))

    traced, x = _traced(Ready)
    model = tm2onnx.export(traced)
    assert ops(model).count("Identity") == 2
    _assert_close(_reference(traced, [x]), _run(model, [x]))


def test_fresh_names_from_a_counter_skip_reserved_names():
    """Thousands of nodes share base names (a module path, or ""): a counter per base, which
    still never hands out a name reserved by other means."""
    from tm2onnx.context import ExportContext

    ctx = ExportContext(opset=17, dynamic_batch=False, source="test")
    ctx.reserve("conv_2")
    names = [ctx.unique("conv") for _ in range(4)] + [ctx.unique("") for _ in range(3)]
    assert names == ["conv", "conv_1", "conv_3", "conv_4", "", "_1", "_2"]
    assert [ctx.node_name("conv") for _ in range(2)] == ["conv", "conv_1"]  # own namespace


def test_concat_module_of_0d(megengine):
    """M.Concat (the quantization-ready form of F.concat) with 0-d scales."""
    import megengine.module as M

    import tm2onnx

    class Rescale(M.Module):
        def __init__(self):
            super().__init__()
            self.cat = M.Concat()

        def forward(self, boxes):
            scale = boxes[0, 0] + 2
            return boxes / self.cat([scale, boxes[1, 1], scale, 2 * scale])

    traced, x = _traced(Rescale, shape=(5, 4))
    model = tm2onnx.export(traced)
    assert "Concat" in ops(model)
    _assert_close(_reference(traced, [x]), _run(model, [x]))


def test_guard_compares_dims_and_dtypes_and_skips_what_onnx_leaves_open(megengine):
    from types import SimpleNamespace

    from megengine.core.tensor.dtype import qint8

    from tests.helpers import parse_model
    from tm2onnx.errors import ConversionError
    from tm2onnx.guards import check_traced_shapes, inferred_types

    model = parse_model("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }""")
    types = inferred_types(model)
    y = SimpleNamespace(name="y")
    check_traced_shapes(model, types, [(y, (2, 3), np.float32)], "m")  # N is symbolic: skipped
    check_traced_shapes(model, types, [(y, (2, 3), qint8(0.1))], "m")  # quantized: no dtype
    for shape, dtype, message in [((2, 4), np.float32, r"infers shape \['\?', 3\]"),
                                  ((2, 3), np.int32, "infers FLOAT, MegEngine traced int32"),
                                  ((2, 3, 1), np.float32, "infers shape")]:
        with pytest.raises(ConversionError, match=message):
            check_traced_shapes(model, types, [(y, shape, dtype)], "m")
