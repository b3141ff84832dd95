"""QAT and int8 modules -> QDQ ONNX: every converter against MegEngine's QAT eval forward and its
`quantize`d int8 model, within one quantization step of the output, on onnxruntime with graph
optimizations off and on (int8 kernels); plus the structure (int8 weights, Q/DQ) and refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest

from tests.helpers import ops, optimized_ops

ONE_STEP = 1  # tolerance: one quantization step of the output (its scale)


def _stubbed(make_inner: Callable[[], Any], inputs: int = 1, concat: bool = False) -> Any:
    """QuantStub on every input -> the module under test -> DequantStub."""
    import megengine.module as M

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.quants = [M.QuantStub() for _ in range(inputs)]
            self.inner = make_inner()
            self.dequant = M.DequantStub()

        def forward(self, *xs):
            quantized = [quant(x) for quant, x in zip(self.quants, xs)]
            out = self.inner(quantized, 1) if concat else self.inner(*quantized)
            return self.dequant(out)

    return Net()


def traced_qat(make_inner: Callable[[], Any], shapes: list[tuple[int, ...]], *,
               concat: bool = False, **options: Any) -> Any:
    import megengine as mge
    import megengine.traced_module as tm

    from models.quant import calibrated_qat

    net = calibrated_qat(_stubbed(make_inner, len(shapes), concat), *shapes, **options)
    traced = tm.trace_module(net, *[mge.Tensor(np.zeros(s, np.float32)) for s in shapes])
    traced.eval()
    return traced


def inputs_for(shapes: list[tuple[int, ...]], seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 1.0, shape).astype(np.float32) for shape in shapes]


def check_steps(traced: Any, arrays: list[np.ndarray], *, steps: float = ONE_STEP,
                levels: tuple[str, ...] = ("disable", "all"), reference: Any = None,
                **export_options: Any) -> onnx.ModelProto:
    """Export, run onnxruntime unoptimized (the ONNX semantics) and fully optimized (its int8
    kernels), and require every output element within `steps` quantization steps of
    MegEngine (`traced` itself, or the `reference` module); returns the model."""
    import megengine as mge

    import tm2onnx
    from models.quant import output_scale, steps_apart
    from tm2onnx.runtime import run_model

    model = tm2onnx.export(traced, **export_options)
    reference = (traced if reference is None else reference)(
        *[mge.Tensor(a) for a in arrays]).numpy()
    feeds = {value.name: array for value, array in zip(model.graph.input, arrays)}
    name = model.graph.output[0].name
    scale = output_scale(model, name)
    for level in levels:
        got = run_model(model, feeds, opt_level=level)[name]
        apart = steps_apart(reference, got, scale)
        assert apart.max_steps <= steps, f"onnxruntime ({level}) vs MegEngine: {apart}"
    return model


def _case(factory: Callable[[], Any], shapes: list[tuple[int, ...]], op: str, **kw: Any):
    return factory, shapes, op, kw


def _module(name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import megengine.module as M

        return getattr(M, name)(*args, **kwargs)
    return make


CASES = [
    pytest.param(*_case(_module("Conv2d", 3, 8, 3, padding=1), [(2, 3, 8, 8)], "Conv"), id="conv"),
    pytest.param(*_case(_module("Conv2d", 4, 8, 3, stride=2, bias=False), [(2, 4, 9, 9)],
                        "Conv"), id="conv-nobias-stride2"),
    pytest.param(*_case(_module("ConvRelu2d", 3, 8, 3, padding=1), [(2, 3, 8, 8)], "Conv"),
                 id="conv-relu"),
    pytest.param(*_case(_module("ConvBn2d", 3, 8, 3, padding=1), [(2, 3, 8, 8)], "Conv"),
                 id="conv-bn"),
    pytest.param(*_case(_module("ConvBnRelu2d", 8, 8, 3, padding=1, groups=8, bias=False),
                        [(2, 8, 8, 8)], "Conv"), id="conv-bn-relu-depthwise"),
    pytest.param(*_case(_module("ConvBnRelu2d", 8, 6, 1, groups=2, dilation=1),
                        [(2, 8, 6, 6)], "Conv"), id="conv-bn-relu-g2"),
    pytest.param(*_case(_module("Linear", 12, 5), [(4, 12)], "Gemm"), id="linear"),
    pytest.param(*_case(_module("LinearRelu", 12, 5), [(4, 12)], "Gemm"), id="linear-relu"),
    pytest.param(*_case(_module("Linear", 12, 5, bias=False), [(2, 3, 12)], "MatMul"),
                 id="linear-3d-nobias"),
    pytest.param(*_case(_module("Elemwise", "ADD"), [(2, 4, 5), (2, 4, 5)], "Add"), id="add"),
    pytest.param(*_case(_module("Elemwise", "FUSE_ADD_RELU"), [(2, 4, 5), (2, 4, 5)], "Add"),
                 id="add-relu"),
    pytest.param(*_case(_module("Elemwise", "MUL"), [(2, 4, 5), (2, 4, 5)], "Mul"), id="mul"),
    pytest.param(*_case(_module("Concat"), [(2, 3, 4), (2, 5, 4)], "Concat", concat=True),
                 id="concat"),
]


@pytest.mark.parametrize("factory, shapes, op, kw", CASES)
def test_qat_and_int8_modules(megengine, factory, shapes, op, kw):
    """Both activation types within one step of the QAT forward and of the int8 model as ONNX
    defines them (onnxruntime unoptimized; its fused int8 kernels are checked below and in
    test_quant_models.py), every weight an int8 initializer behind a DequantizeLinear."""
    from models.quant import int8_version

    traced = traced_qat(factory, shapes, **kw)
    arrays = inputs_for(shapes)
    for model in (traced, int8_version(traced)):
        for kind in ("uint8", "int8"):
            exported = check_steps(model, arrays, levels=("disable",), qdq_activations=kind)
            assert_qdq_structure(exported, op)


def assert_qdq_structure(model: onnx.ModelProto, op: str) -> None:
    present = ops(model)
    assert op in present and "QuantizeLinear" in present and "DequantizeLinear" in present
    inits = model.graph.initializer
    weights = [i for i in inits if i.name.endswith("_quantized") and "bias" not in i.name]
    assert all(w.data_type == onnx.TensorProto.INT8 for w in weights)
    assert not [i for i in inits if i.data_type == onnx.TensorProto.FLOAT and i.dims
                and "scale" not in i.name]  # no float weights or biases
    if op in ("Conv", "Gemm", "MatMul"):
        assert len(weights) == 1


def _after_relu(make_inner: Callable[[], Any], flatten: bool = False) -> Callable[[], Any]:
    """ConvBnRelu2d(3, 8) -> the module: its input is a ReLU output (uint8 zero point 0)."""
    def make() -> Any:
        import megengine.functional as F
        import megengine.module as M

        class Chain(M.Module):
            def __init__(self):
                super().__init__()
                self.first, self.second = M.ConvBnRelu2d(3, 8, 3, padding=1), make_inner()

            def forward(self, x):
                y = self.first(x)
                return self.second(F.flatten(y, 1) if flatten else y)
        return Chain()
    return make


KERNEL_CASES = [
    pytest.param(_after_relu(_module("ConvBn2d", 8, 8, 3, padding=1)), "QLinearConv", id="conv"),
    pytest.param(_after_relu(_module("ConvBnRelu2d", 8, 8, 3, padding=1, groups=2)),
                 "QLinearConv", id="conv-g2"),
    pytest.param(_after_relu(_module("Linear", 8 * 6 * 6, 10), flatten=True), "QGemm",
                 id="linear"),
]


@pytest.mark.parametrize("factory, kernel", KERNEL_CASES)
def test_int8_kernels_within_one_step(megengine, factory, kernel, tmp_path):
    """uint8 (default) on onnxruntime's optimized session: int8 kernels, one step at most
    (--target onnxruntime: the integer ReLU Clip those fusions need)."""
    from models.quant import int8_version

    shapes = [(2, 3, 6, 6)]
    traced = traced_qat(factory, shapes)
    for model in (traced, int8_version(traced)):
        exported = check_steps(model, inputs_for(shapes), levels=("all",),
                               target="onnxruntime")
        assert kernel in optimized_ops(exported, tmp_path)


def test_activation_types_are_equivalent(megengine):
    """uint8 = int8 shifted by 128 (ReLU outputs: zero point 0): identical outputs, and the
    activation zero points have the asked type."""
    import tm2onnx
    from tm2onnx.runtime import run_model

    shapes = [(2, 3, 8, 8)]
    traced = traced_qat(_module("ConvBn2d", 3, 8, 3, padding=1), shapes)
    x = inputs_for(shapes)[0]
    outputs = {}
    for kind, elem in (("uint8", onnx.TensorProto.UINT8), ("int8", onnx.TensorProto.INT8)):
        model = tm2onnx.export(traced, qdq_activations=kind)
        zeros = [i for i in model.graph.initializer if i.name.endswith("act_zero_point")]
        assert zeros and all(z.data_type == elem for z in zeros)
        outputs[kind] = run_model(model, {model.graph.input[0].name: x}, opt_level="disable")
    np.testing.assert_array_equal(*[next(iter(o.values())) for o in outputs.values()])


def test_uint8_runs_int8_kernels(megengine, tmp_path):
    """onnxruntime's optimized session turns the QDQ conv/linear into int8 kernels."""
    import tm2onnx

    shapes = [(2, 3, 8, 8)]
    traced = traced_qat(_module("ConvBnRelu2d", 3, 8, 3, padding=1), shapes)
    optimized = optimized_ops(tm2onnx.export(traced, target="onnxruntime"), tmp_path)
    assert "QLinearConv" in optimized and "Conv" not in optimized


def test_fake_quant_flavours(megengine):
    """TQT (scale = 2**log2 parameter) and min-max observers export their own scales."""
    from megengine.quantization import min_max_fakequant_qconfig, tqt_qconfig

    shapes = [(2, 3, 8, 8)]
    for qconfig in (min_max_fakequant_qconfig, tqt_qconfig):
        traced = traced_qat(_module("ConvBnRelu2d", 3, 8, 3, padding=1), shapes,
                            qconfig=qconfig)
        if qconfig is tqt_qconfig:  # TQT's scale starts at 2**0; give it a realistic one
            for module in traced.modules():
                for fq, log2 in ((getattr(module, "act_fake_quant", None), -5.0),
                                 (getattr(module, "weight_fake_quant", None), -7.0)):
                    if fq is not None:
                        fq.scale[...] = log2
        check_steps(traced, inputs_for(shapes))


def test_calibration_only_matches_int8(megengine):
    """calibration_qconfig has no fake-quant: the QAT forward is float, so the QDQ export is
    compared with what MegEngine deploys, the `quantize`d int8 model."""
    from megengine.quantization import calibration_qconfig

    from models.quant import int8_version

    shapes = [(2, 3, 8, 8)]
    traced = traced_qat(_module("ConvBn2d", 3, 8, 3, padding=1), shapes,
                        qconfig=calibration_qconfig)
    check_steps(int8_version(traced), inputs_for(shapes))


def test_refusals(megengine):
    from megengine.quantization import QConfig, ema_lowbit_fakequant_qconfig

    import tm2onnx
    from tm2onnx.errors import ConversionError, Tm2OnnxError

    shapes = [(2, 3, 8, 8)]
    traced = traced_qat(_module("ConvBn2d", 3, 8, 3, padding=1), shapes)
    with pytest.raises(Tm2OnnxError, match="qdq_activations='fp8'"):
        tm2onnx.export(traced, qdq_activations="fp8")
    lowbit = traced_qat(_module("ConvBn2d", 3, 8, 3, padding=1), shapes,
                        qconfig=ema_lowbit_fakequant_qconfig)
    with pytest.raises(ConversionError, match=r"quants.0: activation range \[-8, 7\]"):
        tm2onnx.export(lowbit)
    unobserved = QConfig(weight_observer=None, act_observer=None, weight_fake_quant=None,
                         act_fake_quant=None)
    with pytest.raises(ConversionError, match="has no quantization scale"):
        tm2onnx.export(traced_qat(_module("ConvBn2d", 3, 8, 3, padding=1), shapes,
                                  qconfig=unobserved))


def test_exact_classes_win_over_float_converters(megengine):
    """qat.ConvRelu2d subclasses qat.Conv2d and M.Conv2d; each resolves to the QDQ converter."""
    import megengine.module.qat as QAT
    import megengine.module.quantized as Q

    from tm2onnx.converters import MODULE_CONVERTERS, load_all

    load_all()
    from tm2onnx.converters import quant

    for cls in (QAT.Conv2d, QAT.ConvRelu2d, QAT.ConvBn2d, QAT.Linear, QAT.LinearRelu,
                QAT.Elemwise, QAT.Concat, Q.Conv2d, Q.Linear, Q.Elemwise, Q.QuantStub):
        assert MODULE_CONVERTERS[cls].__module__ == quant.__name__, cls


def test_every_quantized_class_has_a_qdq_converter(megengine):
    """MegEngine 1.13's qat/quantized namespaces are covered: no class falls to the refusal
    that guards classes a newer MegEngine might add."""
    import inspect

    import megengine.module.qat as QAT
    import megengine.module.quantized as Q

    from tm2onnx.converters import MODULE_CONVERTERS, load_all, quant

    load_all()
    classes = [cls for namespace, base in ((QAT, QAT.QATModule), (Q, Q.QuantizedModule))
               for cls in vars(namespace).values()
               if inspect.isclass(cls) and issubclass(cls, base) and cls is not base]
    assert len(classes) == 34
    assert all(MODULE_CONVERTERS[cls] is not quant._refuse for cls in classes)


def test_subclass_overriding_forward_is_refused(megengine):
    """A user subclass of qat.ConvTranspose2d that changes forward is refused by name, not
    exported with the base's QDQ converter (which would drop what its forward adds)."""
    import megengine as mge
    import megengine.module as M
    import megengine.module.qat as QAT
    import megengine.traced_module as tm
    from megengine.quantization import quantize_qat

    import tm2onnx
    from tm2onnx.errors import Tm2OnnxError

    class Doubled(QAT.ConvTranspose2d):
        def forward(self, inp):
            return super().forward(inp) * 2

    tm.register_as_builtin(Doubled)  # traced as one module call, as MegEngine's own are

    class Deconv(M.ConvTranspose2d):  # quantize_qat maps it to Doubled
        pass

    shape = (2, 3, 8, 8)
    qat = quantize_qat(_stubbed(lambda: Deconv(3, 4, 3)), mapping={Deconv: Doubled})
    qat.train()
    qat(mge.Tensor(inputs_for([shape])[0]))
    qat.eval()
    traced = tm.trace_module(qat, mge.Tensor(np.zeros(shape, np.float32)))
    with pytest.raises(Tm2OnnxError, match="Doubled.*overrides forward of M.qat.ConvTranspose2d"):
        tm2onnx.export(traced)


def _integer_clips(model: onnx.ModelProto) -> list[str]:
    """Clip nodes whose input is a QuantizeLinear output (an 8-bit integer Clip)."""
    quantized = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [n.output[0] for n in model.graph.node if n.op_type == "Clip" and n.input[0] in quantized]


def test_relu_clip_per_target(megengine, tmp_path):
    """generic: the ReLU is a float Clip before QuantizeLinear (onnx2tf lowers an integer Clip
    wrongly), within one step of MegEngine; onnxruntime: the integer Clip, which keeps every
    conv a QLinearConv in onnxruntime's optimized graph."""
    from tm2onnx.errors import Tm2OnnxError
    from tm2onnx.guards import inferred_types
    from tm2onnx.targets import TARGETS, check_target

    shapes = [(2, 3, 6, 6)]
    traced = traced_qat(_after_relu(_module("ConvBnRelu2d", 8, 8, 3, padding=1, groups=2)),
                        shapes)
    generic = check_steps(traced, inputs_for(shapes), levels=("disable", "all"))
    assert not _integer_clips(generic) and ops(generic).count("Clip") == 2
    assert check_steps(traced, inputs_for(shapes), target="tflite")
    fused = check_steps(traced, inputs_for(shapes), target="onnxruntime")
    assert len(_integer_clips(fused)) == 2
    kernels = optimized_ops(fused, tmp_path)
    assert kernels.count("QLinearConv") == ops(fused).count("Conv") == 2
    with pytest.raises(Tm2OnnxError, match="no-integer-clip"):
        check_target(fused, inferred_types(fused), TARGETS["tflite"])
