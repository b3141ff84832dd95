"""QDQ building blocks shared by the QAT and int8 converters: quantization parameters read from
MegEngine (observers, fake-quant modules, quantized dtypes), numpy quantization with MegEngine's
rounding (half away from zero), and emitting QuantizeLinear/DequantizeLinear pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from ...errors import ConversionError
from ...runtime.steps import KEEP_GRID
from ..context import QDQ_ACTIVATIONS, ExportContext

DEFAULT_QDQ_ACTIVATIONS = "uint8"  # onnxruntime CPU's int8 kernels are fastest as U8S8
MIN_QDQ_OPSET = 13  # per-channel (axis) DequantizeLinear
INT32 = (-(2 ** 31), 2 ** 31 - 1)
DTYPE_RANGES = {"QuantizedS8": (-128, 127), "Quantized8Asymm": (0, 255), "QuantizedS32": INT32}
# Ops that keep every value of a quantized tensor on its grid (same scale and zero point):
# re-quantizing their output with the input's parameters is exact (not Clip: a float
# Clip(0, 6) bound may be off-grid). The validator walks the same set (runtime/steps).
ON_GRID = KEEP_GRID
# Ops MegEngine's int8 kernels run on quantized input, rounding the result back to its scale.
ROUNDED = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean"})
# An average of n integers is a multiple of 1/n: above float error (~1e-5 for |y| <= 128) and
# below 1/(2n) for windows of fewer than 5000 elements, so it only turns near-ties into ties.
TIE_SLACK = 1e-4


@dataclass(frozen=True)
class QParams:
    """Scale (scalar, or one per output channel), integer zero point, and the integer range."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def quantize(self, values: np.ndarray, axis: int = 0) -> np.ndarray:
        """Integers as MegEngine rounds them (half away from zero), saturated to the range."""
        shape = [1] * values.ndim
        if self.per_channel:
            shape[axis] = -1
        scale = self.scale.reshape(shape) if values.ndim else self.scale
        zero = self.zero_point.reshape(shape) if values.ndim else self.zero_point
        scaled = values.astype(np.float32) / scale
        return np.clip(round_half_away(scaled) + zero, self.qmin, self.qmax)


def round_half_away(values: np.ndarray) -> np.ndarray:
    """MegEngine's rounding (C++ std::round); exact where floor(|x| + 0.5) is not (0.49999997)."""
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    return np.sign(values) * (whole + (magnitude - whole >= 0.5))


def storage_dtype(qmin: int, qmax: int) -> np.dtype:
    for dtype in (np.int8, np.uint8, np.int32):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"no integer type holds [{qmin}, {qmax}]")


def from_megengine(ctx: ExportContext, qparams: Any, what: str) -> QParams:
    """QParams from MegEngine's `QParams` (what get_qparams of an observer/fake-quant gives)."""
    if qparams is None or qparams.scale is None:
        raise ConversionError(f"{ctx.module_path}: the {what} has no quantization scale (no "
                              "observer or fake-quant, or never calibrated)", where=ctx.source,
                              hint="run calibration forward passes before tracing, or set a "
                                   "qconfig with an observer")
    scale = np.asarray(_numpy(qparams.scale), dtype=np.float32).reshape(-1)
    symmetric = getattr(qparams.mode, "name", "SYMMERTIC") == "SYMMERTIC"
    zero = (np.zeros_like(scale) if symmetric or qparams.zero_point is None
            else np.asarray(_numpy(qparams.zero_point), dtype=np.float32).reshape(-1))
    meta = qparams.dtype_meta
    return _checked(ctx, QParams(scale, np.round(zero).astype(np.int64), int(meta.qmin),
                                 int(meta.qmax)), what)


def from_dtype(ctx: ExportContext, dtype: Any, what: str) -> QParams:
    """QParams of a MegEngine quantized dtype (qint8(scale), quint8(scale, zp), ...)."""
    from megengine.core.tensor import dtype as mge_dtype

    if dtype is None or not mge_dtype.is_quantize(dtype):
        raise ConversionError(f"{ctx.module_path}: the {what} has dtype {dtype}, not a "
                              "quantized one", where=ctx.source,
                              hint="build the model with megengine.quantization.quantize")
    name = dtype.metadata["mgb_dtype"]["name"]
    if name not in DTYPE_RANGES:
        raise ConversionError(f"{ctx.module_path}: the {what} is {name}; QDQ export handles "
                              f"{', '.join(DTYPE_RANGES)}", where=ctx.source,
                              hint="quantize to qint8/quint8 (low-bit types have no ONNX form)")
    scale = np.asarray([mge_dtype.get_scale(dtype)], dtype=np.float32)
    zero = np.asarray([mge_dtype.get_zero_point(dtype) if "Asymm" in name else 0], np.int64)
    return _checked(ctx, QParams(scale, zero, *DTYPE_RANGES[name]), what)


def _checked(ctx: ExportContext, qp: QParams, what: str) -> QParams:
    if not np.all(np.isfinite(qp.scale)) or np.any(qp.scale <= 0):
        raise ConversionError(f"{ctx.module_path}: the {what} scale {qp.scale} is not a positive "
                              "number", where=ctx.source, hint="calibrate the model first")
    return qp


def check_opset(ctx: ExportContext) -> None:
    if ctx.opset < MIN_QDQ_OPSET:
        raise ConversionError(f"{ctx.module_path}: quantized modules need opset >= "
                              f"{MIN_QDQ_OPSET} (per-channel DequantizeLinear)",
                              where=ctx.source, hint=f"export with --opset {MIN_QDQ_OPSET} or newer")


# ---- activations -----------------------------------------------------------------------------
def activation_encoding(ctx: ExportContext, qp: QParams, *, relu: bool = False
                        ) -> tuple[np.dtype, int]:
    """ONNX storage type and zero-point shift for an 8-bit activation, the same real values:
    uint8 = int8 + 128 (zero point 128), as `--qdq-activations` asks. A ReLU output in uint8
    gets zero point 0 instead (values 0..127): onnxruntime's x86 kernels without VNNI add
    pairs of u8*s8 products in int16, which saturates for inputs near 255 and large weights
    (its S8S8 path shifts int8 to uint8 first); 0..127 cannot (docs/quantization.md)."""
    if qp.qmax - qp.qmin != 255 or qp.per_channel:
        raise ConversionError(f"{ctx.module_path}: activation range [{qp.qmin}, {qp.qmax}] "
                              f"with {qp.scale.size} scales is not a per-tensor 8-bit "
                              "quantization", where=ctx.source,
                              hint="quantize activations to qint8 or quint8, one scale each")
    wanted = getattr(ctx, "qdq_activations", DEFAULT_QDQ_ACTIVATIONS)
    if wanted not in QDQ_ACTIVATIONS:
        raise ConversionError(f"qdq_activations={wanted!r} is not one of {QDQ_ACTIVATIONS}",
                              where=ctx.source, hint=f"use one of {', '.join(QDQ_ACTIVATIONS)}")
    if relu and wanted == "uint8":
        return np.dtype(np.uint8), -int(qp.zero_point.reshape(-1)[0])
    shift = {("uint8", -128): 128, ("int8", 0): -128}.get((wanted, qp.qmin), 0)
    return np.dtype(wanted), shift


def emit_qdq(ctx: ExportContext, value: Any, qp: QParams, outputs: list | None = None,
             *, relu: bool = False) -> Any:
    """QuantizeLinear -> DequantizeLinear of a float tensor (fake quantization). `relu` is a
    float Clip(x, 0, (qmax - zero point) * scale) before Q (portable and exact, see
    _float_relu_clip); for a target with `integer_relu_clip` (onnxruntime) it is put after
    quantization as Clip(q, zero point, qmax): exact (Q is monotone and Q(0) is the zero
    point; qmax keeps MegEngine's saturation when uint8 zero point 0 holds an int8 ReLU
    output), and it leaves Conv/Gemm -> QuantizeLinear adjacent for onnxruntime to fuse into
    int8 kernels (its CPU Clip runs on int8/uint8; Max does not)."""
    dtype, shift = activation_encoding(ctx, qp, relu=relu)
    scale = ctx.const(qp.scale.reshape(()), name=f"{ctx.base_name}.act_scale")
    zero_point = int(qp.zero_point.reshape(-1)[0]) + shift
    zero = ctx.const(np.asarray(zero_point, dtype=dtype), name=f"{ctx.base_name}.act_zero_point")
    integer_clip = relu and getattr(getattr(ctx, "target", None), "integer_relu_clip", False)
    if relu and not integer_clip:
        value = _float_relu_clip(ctx, value, qp, zero_point, qp.qmax + shift)
    quantized = ctx.op("QuantizeLinear", [value, scale, zero])
    if integer_clip:
        top = ctx.const(np.asarray(qp.qmax + shift, dtype=dtype), name=f"{ctx.base_name}.qmax")
        quantized = ctx.op("Clip", [quantized, zero, top])
    if outputs is None:
        return ctx.op("DequantizeLinear", [quantized, scale, zero])
    return ctx.emit("DequantizeLinear", [quantized, scale, zero], outputs)[0]


def _float_relu_clip(ctx: ExportContext, value: Any, qp: QParams, zero: int, top: int) -> Any:
    """The same ReLU in float before QuantizeLinear (the portable form: onnx2tf lowers an
    integer Clip wrongly): Q is monotone, Q(0) is the zero point and Q((top - zero) * scale)
    rounds to top, so Q(Clip(x, 0, (top - zero) * scale)) == Clip(Q(x), zero, top)."""
    scale = float(qp.scale.reshape(-1)[0])
    low = ctx.const(np.asarray(0.0, dtype=np.float32), name=f"{ctx.base_name}.relu_low")
    high = ctx.const(np.asarray((top - zero) * scale, dtype=np.float32),
                     name=f"{ctx.base_name}.relu_high")
    return ctx.op("Clip", [value, low, high])


def grid_of(tensor: Any, *, rounded: bool, depth: int = 32) -> tuple[Any, Any, bool] | None:
    """(scale, zero point, whether a rounding op was passed) of the DequantizeLinear whose grid
    `tensor` lies on, looking back through ops that keep values on it (and, with `rounded`, ops
    MegEngine's int8 kernels round back to it); None when the tensor is plain float."""
    allowed = ON_GRID | ROUNDED if rounded else ON_GRID
    passed_rounding = False
    for _ in range(depth):
        if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if node.op == "DequantizeLinear" and len(node.inputs) == 3:
            return node.inputs[1], node.inputs[2], passed_rounding
        if node.op not in allowed or not node.inputs:
            return None
        passed_rounding = passed_rounding or node.op in ROUNDED
        tensor = node.inputs[0]
    return None


def quantized_input(ctx: ExportContext, node: Any, *, rounded: bool) -> tuple[Any, Any]:
    """The input of a quantized op as a DequantizeLinear output, and its scale constant (None
    when the input is not quantized, e.g. after a float AvgPool in a QAT net). After an
    averaging op, values are rounded half away from zero first, as MegEngine's int8 pooling
    does (QuantizeLinear alone rounds ties to even, and 2x2 means end in .5 often)."""
    value = ctx.value_of(node)
    grid = grid_of(value, rounded=rounded)
    if grid is None:
        return value, None
    scale, zero, passed_rounding = grid
    if value.inputs[0].op != "DequantizeLinear":
        if passed_rounding:
            value = _round_to_grid(ctx, value, scale)
        quantized = ctx.op("QuantizeLinear", [value, scale, zero])
        value = ctx.op("DequantizeLinear", [quantized, scale, zero])
    return value, scale


def _round_to_grid(ctx: ExportContext, value: Any, scale: Any) -> Any:
    """sign(y) * floor(|y| + 0.5 + TIE_SLACK) * scale for y = value / scale: MegEngine averages
    the integers exactly, so its ties are exact .5; here y carries float error (4.4999998)."""
    scaled = ctx.op("Div", [value, scale])
    half = ctx.const(np.asarray(0.5 + TIE_SLACK, np.float32))
    whole = ctx.op("Floor", [ctx.op("Add", [ctx.op("Abs", [scaled]), half])])
    return ctx.op("Mul", [ctx.op("Mul", [ctx.op("Sign", [scaled]), whole]), scale])


# ---- weights and bias ------------------------------------------------------------------------
def dq_weight(ctx: ExportContext, name: str, integers: np.ndarray, qp: QParams,
              axis: int = 0) -> Any:
    """An integer weight initializer and its DequantizeLinear (per-channel on `axis`)."""
    integers, qp = _stored_weight(ctx, integers, qp)
    dtype = storage_dtype(qp.qmin, qp.qmax)
    weight = ctx.param(f"{name}_quantized", integers.astype(dtype))
    scale = ctx.param(f"{name}_scale", qp.scale if qp.per_channel else qp.scale.reshape(()))
    zero = qp.zero_point if qp.per_channel else qp.zero_point.reshape(())
    zero = ctx.param(f"{name}_zero_point", zero.astype(dtype))
    return ctx.op("DequantizeLinear", [weight, scale, zero],
                  axis=axis if qp.per_channel else None)


def _stored_weight(ctx: ExportContext, integers: np.ndarray, qp: QParams
                   ) -> tuple[np.ndarray, QParams]:
    """With `qdq_weights="uint8"`, 8-bit signed weights as uint8 = int8 + 128 and zero point
    + 128: the same values, and onnxruntime's x86 U8U8 kernels widen to int16 before adding,
    where its U8S8 ones (no VNNI) saturate pair sums (docs/quantization.md)."""
    if getattr(ctx, "qdq_weights", "int8") != "uint8" or qp.qmin < -128 or qp.qmax > 127:
        return integers, qp
    return integers + 128, QParams(qp.scale, qp.zero_point + 128, qp.qmin + 128, qp.qmax + 128)


def dq_bias(ctx: ExportContext, name: str, bias: np.ndarray | None, weight_qp: QParams,
            input_scale: Any, shape: tuple[int, ...] = (-1,)) -> Any:
    """Bias as int32 at scale input_scale * weight_scale (what MegEngine's int8 kernels and QAT's
    fake_quant_bias use); float when the input is not quantized. `shape` reshapes the stored
    initializer (per-channel scales stay on axis 0): a Reshape after the DequantizeLinear would
    make onnxruntime's QDQ propagation insert an int32 QuantizeLinear, invalid at opset 13."""
    if bias is None:
        return None
    if input_scale is None or not isinstance(input_scale, gs.Constant):
        return ctx.param(name, bias.astype(np.float32).reshape(shape))
    scale = (np.float32(input_scale.values.reshape(-1)[0]) * weight_qp.scale).astype(np.float32)
    qp = QParams(scale, np.zeros(scale.shape, np.int64), *INT32)
    return dq_weight(ctx, name, qp.quantize(bias.reshape(-1)).reshape(shape), qp)


def quant_params(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Tensor name -> scale etc. in the layout of mgeconvert's `quantize_file_path` JSON (all
    values strings but is_weight), for pipelines that re-apply scales to a float model. Keys:
    each DequantizeLinear's output for activations (MegEngine node names, `conv_bn_out`), the
    weight/bias name (`conv_bn.weight`) for parameters; values as stored in the ONNX model."""
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    params = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            continue
        scale = inits[node.input[1]].reshape(-1)
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        dtype = np.dtype(zero.dtype) if zero is not None else np.dtype(np.int8)
        is_weight = node.input[0] in inits
        name = node.input[0].removesuffix("_quantized") if is_weight else node.output[0]
        info = np.iinfo(dtype)
        params[name] = {"dtype": str(dtype), "qmin": str(info.min), "qmax": str(info.max),
                        "scale": str(float(scale[0]) if scale.size == 1 else scale.tolist()),
                        "zero_point": "None" if zero is None or not np.any(zero)
                        else str(zero.reshape(-1).tolist()[0] if zero.size == 1
                                 else zero.reshape(-1).tolist()),
                        "is_weight": is_weight}
    return params


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
