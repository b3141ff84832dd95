"""Portable export patterns (issue 15): what every ONNX toolchain runs — no float64 MegEngine
did not compute, no rank-5 tensor where a 4-D form keeping the batch exists, no ScatterND for
slice writes known at export time — each checked against MegEngine and on the graph itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.converters.harness import export_and_compare, functional_net
from tests.helpers import ops

EXACT = {"rtol": 0.0, "atol": 0.0}


def all_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every tensor's element type: declared and as ONNX shape inference gives it."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    return {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}


def assert_no_double(model: onnx.ModelProto) -> None:
    double = onnx.TensorProto.DOUBLE
    tensors = [n for n, t in all_types(model).items() if t.tensor_type.elem_type == double]
    inits = [i.name for i in model.graph.initializer if i.data_type == double]
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"
             and any(a.name == "to" and a.i == double for a in n.attribute)]
    assert not (tensors or inits or casts), f"float64 in the graph: {tensors} {inits} {casts}"


def max_rank(model: onnx.ModelProto) -> int:
    return max(len(t.tensor_type.shape.dim) for t in all_types(model).values()
               if t.HasField("tensor_type"))


GRIDS = np.stack(np.meshgrid(np.arange(4), np.arange(5)), -1).reshape(1, -1, 2).astype(np.int32)
STRIDES = np.full((1, 20, 1), 8, dtype=np.int32)


def _decode(self, out, grids, strides):
    """YOLOX's decode: float32 outputs with int32 grids and strides (MegEngine: float32)."""
    import megengine.functional as F

    xy = (out[..., :2] + grids) * strides
    wh = F.exp(out[..., 2:4]) * strides
    return F.concat([xy, wh, out[..., 4:]], axis=-1), (out[..., :1] < grids[..., :1])


@pytest.mark.parametrize("shapes", [
    pytest.param([(1, 20, 6), GRIDS, STRIDES], id="int-inputs"),
    pytest.param([(1, 20, 6)], id="int-constants"),
])
def test_int_float_promotion_stays_float32(shapes):
    if len(shapes) == 1:
        factory = functional_net(lambda self, out: _decode(self, out, self.grids, self.strides),
                                 grids=GRIDS, strides=STRIDES)
    else:
        factory = functional_net(_decode)
    model = export_and_compare(factory, shapes, expect_ops=["Mul", "Add", "Less"])
    assert_no_double(model)


def test_int_floor_div_without_float64():
    """Integer floor division (negative operands: floor, not truncation) without float64."""
    a = np.array([[-7, 7, -8, 9, 0, -1]], dtype=np.int32)
    b = np.array([[2, -2, 3, 4, -5, 3]], dtype=np.int32)
    model = export_and_compare(functional_net(lambda self, x, y: (x // y, x % y)), [a, b],
                               tolerance=EXACT)
    assert_no_double(model)


def _write(index, value=None):
    """`y = x + 0; y[index] = v` (v the second input when `value` is None)."""
    def forward(self, x, *rest):
        y = x + 0
        y[index] = rest[0] if rest else value
        return y
    return functional_net(forward)


ALL = slice(None)
SLICE_WRITES = [  # (index, value shape or a Python scalar, ops that must appear)
    pytest.param((ALL, slice(1, 3)), (2, 2, 5), ["Concat"], id="a[:, 1:3]=v"),
    pytest.param((Ellipsis, slice(None, 2)), (2, 4, 1), ["Concat"], id="a[..., :2]=v-bcast"),
    pytest.param((Ellipsis, slice(None, 2)), (2,), ["Concat"], id="a[..., :2]=v-row"),
    pytest.param((slice(1, 2), slice(-3, -1), 3), (1, 2), ["Concat"], id="two-axes-and-int"),
    pytest.param((ALL, ALL, slice(2, None)), 0.5, ["Concat"], id="scalar-tail"),
    pytest.param((Ellipsis,), (5,), ["Expand"], id="whole"),
    pytest.param((ALL, slice(None, None, 2)), (2, 2, 5), ["Gather", "Where"], id="step-2"),
    pytest.param((ALL, slice(None, None, -2)), (2, 2, 5), ["Gather", "Where"], id="step-neg"),
    pytest.param((ALL, slice(3, 1)), (2, 0, 5), ["Identity"], id="empty"),
]


@pytest.mark.parametrize("index, value, expect", SLICE_WRITES)
def test_static_slice_write_without_scatter(index, value, expect):
    """YOLOX's `out[..., :2] = v` style writes: Slice + Concat on the written axes (steps as a
    constant Gather + Where), exactly MegEngine's values, no ScatterND."""
    shapes = [(2, 4, 5)] + ([] if isinstance(value, float) else [value])
    factory = _write(index, value if isinstance(value, float) else None)
    model = export_and_compare(factory, shapes, expect_ops=expect, tolerance=EXACT)
    assert "ScatterND" not in ops(model)
    assert all(i.dims == [] or np.prod(i.dims) <= 40 for i in model.graph.initializer)


def test_yolox_decode_write_in_place():
    """The decode written in place on a 1x8400x85-style tensor: no flattened index list."""
    import megengine.functional as F

    grids = np.zeros((1, 300, 2), np.int32) + np.arange(300, dtype=np.int32)[None, :, None]

    def forward(self, out):
        out = out + 0
        out[..., :2] = (out[..., :2] + self.grids) * 8
        out[..., 2:4] = F.exp(out[..., 2:4]) * 8
        return out
    model = export_and_compare(functional_net(forward, grids=grids), [(1, 300, 7)])
    assert "ScatterND" not in ops(model) and ops(model).count("Concat") == 2
    assert max(int(np.prod(i.dims)) for i in model.graph.initializer) <= grids.size
    assert_no_double(model)


def _masked(value):
    def forward(self, x, mask, *rest):
        y = x + 0
        y[mask] = rest[0] if rest else value
        return y
    return functional_net(forward)


def _masked_after_batch(self, x, mask):
    y = x + 0
    y[:, mask] = -1.0
    return y


MASK_WRITES = [  # (factory, x shape, mask shape, value shape)
    pytest.param(_masked(-1e4), (2, 3, 4), (2, 3, 4), None, id="fill-scalar"),
    pytest.param(_masked(0), (2, 3, 4), (2, 3), None, id="mask-2d-int-value"),
    pytest.param(_masked(None), (2, 3, 4), (2, 3), (4,), id="row-value"),
    pytest.param(_masked(None), (2, 3, 4), (2, 3), (1, 4), id="row-value-leading-1"),
    pytest.param(functional_net(_masked_after_batch), (2, 3, 4), (3, 4), None, id="x[:, mask]"),
]


@pytest.mark.parametrize("factory, shape, mask_shape, value_shape", MASK_WRITES)
def test_runtime_mask_write_is_where(factory, shape, mask_shape, value_shape):
    """Masked fill (attention masks, prompt encoders): a Where on the run-time mask, right
    for masks other than the traced one (several seeds, empty and full masks included)."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from tests.converters.harness import _wrapped
    from tests.helpers import run_ort

    mge.config.async_level = 0  # async dispatch replays this trace wrong (zeros) on new masks
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    extra = [rng.normal(size=value_shape).astype(np.float32)] if value_shape else []
    traced_mask = rng.random(mask_shape) > 0.5
    net = _wrapped(factory())
    traced = tm.trace_module(net, *[mge.Tensor(a) for a in (x, traced_mask, *extra)])
    model = tm2onnx.export(traced)
    assert "Where" in ops(model) and "ScatterND" not in ops(model)
    masks = [rng.random(mask_shape) > p for p in (0.2, 0.5, 0.8)]
    for mask in masks + [np.zeros(mask_shape, bool), np.ones(mask_shape, bool)]:
        arrays = (x, mask, *extra)
        want = traced(*[mge.Tensor(a) for a in arrays]).numpy()
        got = run_ort(model, {i.name: a for i, a in zip(model.graph.input, arrays)})
        np.testing.assert_array_equal(next(iter(got.values())), want)


def test_mask_write_refusals():
    """What a Where cannot express is refused by name, not exported wrong."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from tests.converters.harness import _wrapped
    from tm2onnx.errors import ConversionError

    x = np.zeros((2, 3), np.float32)
    mask = np.array([[True, False, True], [False, True, False]])
    per_element = _wrapped(_masked(None)())
    traced = tm.trace_module(per_element, mge.Tensor(x), mge.Tensor(mask),
                             mge.Tensor(np.arange(3, dtype=np.float32)))
    with pytest.raises(ConversionError, match="one value per selected element"):
        tm2onnx.export(traced)


def _rank5_tiles(model: onnx.ModelProto) -> list[str]:
    types = all_types(model)
    return [n.output[0] for n in model.graph.node if n.op_type == "Tile"
            and len(types[n.output[0]].tensor_type.shape.dim) > 4]


REPEATS = [
    pytest.param(lambda F, x: F.repeat(F.repeat(x, 2, 2), 2, 3), (2, 3, 4, 5), id="nearest-2x"),
    pytest.param(lambda F, x: F.repeat(x, 3, 1), (2, 3, 4, 5), id="channels"),
    pytest.param(lambda F, x: F.repeat(x, 2, 0), (2, 3, 4, 5), id="batch"),
    pytest.param(lambda F, x: F.repeat(x, 2, 3), (2, 3, 4, 5), id="last"),
    pytest.param(lambda F, x: F.repeat(x, 2), (2, 3, 4, 5), id="flat"),
    pytest.param(lambda F, x: F.repeat(x, 2, 1), (2, 3), id="2-d"),
]


@pytest.mark.parametrize("fn, shape", REPEATS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
def test_repeat_keeps_rank_4(fn, shape, dynamic):
    """HRNet-style nearest 2x upsampling by repeat: exact, and no rank-5 tensor or Tile
    (the Unsqueeze + Tile form made a 4-D map 5-D)."""
    from tests.converters.harness import function_net

    model = export_and_compare(lambda: function_net(fn), [shape], expect_ops=["Tile"],
                               tolerance=EXACT, dynamic_batch=dynamic)
    assert not _rank5_tiles(model) and max_rank(model) <= 4


def _shuffle(groups):
    """ShuffleNetV2's channel shuffle (MegEngine/Models), for `groups` parts."""
    def forward(self, x):
        b, c, h, w = x.shape
        y = x.reshape(b * c // groups, groups, h * w).transpose(1, 0, 2)
        y = y.reshape(groups, -1, c // groups, h, w)
        return tuple(y[k] for k in range(groups))
    return functional_net(forward)


def _shuffle_one_part(self, x):
    b, c, h, w = x.shape
    y = x.reshape(b * c // 2, 2, h * w).transpose(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return y[1] * 2, y[1] + 1


@pytest.mark.parametrize("factory, shape", [
    pytest.param(_shuffle(2), (2, 8, 3, 5), id="shufflenet-g2"),
    pytest.param(_shuffle(2), (1, 6, 4, 4), id="batch-1"),
    pytest.param(_shuffle(3), (2, 9, 2, 3), id="g3"),
    pytest.param(functional_net(_shuffle_one_part), (2, 8, 3, 3), id="one-part-twice"),
])
def test_channel_shuffle_keeps_batch_at_rank_4(factory, shape):
    """The 5-D folded-batch shuffle is exported as Reshape/Transpose/Reshape + Split at rank 4
    (ncnn: no batch axis, at most 4-D): exact vs MegEngine, no rank-5 tensor anywhere."""
    model = export_and_compare(factory, [shape], expect_ops=["Split"], tolerance=EXACT)
    assert max_rank(model) == 4 and "Gather" not in ops(model)
    tm2onnx_target_check(model, "ncnn")


def tm2onnx_target_check(model: onnx.ModelProto, target: str) -> None:
    from tm2onnx.guards import inferred_types
    from tm2onnx.targets import TARGETS, check_target

    check_target(model, inferred_types(model), TARGETS[target])


def test_ncnn_refuses_real_rank_5():
    """A 5-D tensor with no 4-D form (a 3-D conv input layout) is refused for ncnn by name,
    and exported for the generic target."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from tests.converters.harness import _wrapped
    from tm2onnx.errors import Tm2OnnxError

    net = _wrapped(functional_net(lambda self, x: (x.reshape(2, 2, 2, 3, 3) * 2).sum(1))())
    traced = tm.trace_module(net, mge.Tensor(np.ones((2, 4, 3, 3), np.float32)))
    assert max_rank(tm2onnx.export(traced)) == 5
    with pytest.raises(Tm2OnnxError, match="--target ncnn cannot run this model "
                                           r"\(max-rank-4\): .* has rank 5"):
        tm2onnx.export(traced, target="ncnn")


def test_cli_target_refuses_and_writes_nothing(tmp_path, capsys):
    """`export --target ncnn` on a model with a real 5-D tensor: exit 2, one line naming the
    rule and the tensor, no file; the default target writes it."""
    import pickle

    import megengine as mge
    import megengine.traced_module as tm

    from tests.converters.harness import _wrapped
    from tm2onnx.cli import main

    net = _wrapped(functional_net(lambda self, x: (x.reshape(2, 2, 2, 3, 3) * 2).sum(1))())
    path = tmp_path / "rank5.tm"
    with open(path, "wb") as handle:
        pickle.dump(tm.trace_module(net, mge.Tensor(np.ones((2, 4, 3, 3), np.float32))), handle)
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "-o", str(out), "--target", "ncnn", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max-rank-4" in err and "rank 5" in err, err
    assert not out.exists()
    assert main(["export", str(path), "-o", str(out), "-q"]) == 0 and out.exists()
    assert main(["export", str(path), "-o", str(out), "--target", "openvino", "-q"]) == 0


def test_ncnn_refuses_scatter():
    """F.scatter has no Slice/Concat form (the index is data): refused for ncnn, kept for
    generic, where it still matches MegEngine."""
    import megengine.functional as F

    from tm2onnx.errors import Tm2OnnxError

    index = np.array([[4, 0], [1, 2], [3, 1]], np.int32)
    factory = functional_net(lambda self, x, i, s: F.scatter(x, 1, i, s))
    export_and_compare(factory, [(3, 5), index, (3, 2)], expect_ops=["ScatterElements"])
    with pytest.raises(Tm2OnnxError, match=r"\(no-scatter\): ScatterElements"):
        export_and_compare(factory, [(3, 5), index, (3, 2)], target="ncnn")


def test_float64_guard_names_the_expr(monkeypatch):
    """A converter computing in float64 what MegEngine kept in float32 is refused by name
    (the general guard behind the promotion fix)."""
    import megengine.functional as F

    from tm2onnx.converters import FUNCTION_CONVERTERS, load_all
    from tm2onnx.errors import ConversionError

    load_all()

    def relu_in_double(ctx, expr):
        wide = ctx.op("Cast", [ctx.value_of(expr.args[0])], to=onnx.TensorProto.DOUBLE)
        ctx.emit("Cast", [ctx.op("Relu", [wide])], expr.outputs, to=onnx.TensorProto.FLOAT)

    monkeypatch.setitem(FUNCTION_CONVERTERS, F.relu, relu_in_double)
    with pytest.raises(ConversionError, match="float64 tensor where MegEngine traced no float64"):
        export_and_compare(functional_net(lambda self, x: F.relu(x) * 2), [(2, 3)])


def test_cli_target_checks_the_transformed_model(tmp_path, capsys):
    """The target's rules hold for what is written: a wrap post-step adding a 5-D tensor after
    export is refused for ncnn too."""
    import pickle

    import megengine as mge
    import megengine.traced_module as tm

    from tests.converters.harness import _wrapped
    from tests.helpers import parse_model
    from tm2onnx.cli import main

    net = _wrapped(functional_net(lambda self, x: x * 2)())
    path = tmp_path / "double.tm"
    with open(path, "wb") as handle:
        pickle.dump(tm.trace_module(net, mge.Tensor(np.ones((2, 4, 3, 3), np.float32))), handle)
    post = parse_model('''<ir_version: 8, opset_import: ["" : 17]>
    post (float[2, 4, 3, 3] y) => (float[2, 4, 3, 3] z) {
        s5 = Constant<value = int64[5] {2, 2, 2, 3, 3}>()
        s4 = Constant<value = int64[4] {2, 4, 3, 3}>()
        f = Reshape(y, s5)
        z = Reshape(f, s4)
    }''', ir_version=8)
    onnx.save(post, tmp_path / "post.onnx")
    out = tmp_path / "m.onnx"
    argv = ["export", str(path), "-o", str(out), "--passes", "wrap", "--wrap-post",
            str(tmp_path / "post.onnx"), "-q"]
    assert main(argv + ["--target", "ncnn"]) == 2
    assert "max-rank-4" in capsys.readouterr().err and not out.exists()
    assert main(argv) == 0 and out.exists()


def test_constant_mask_write_is_where():
    """A k-D boolean mask known at export time (a module attribute) takes the same Where."""
    mask = np.array([[True, False, True], [False, False, True]])

    def forward(self, x):
        y = x + 0
        y[self.mask] = 3.0
        return y
    model = export_and_compare(functional_net(forward, mask=mask), [(2, 3, 4)], tolerance=EXACT,
                               expect_ops=["Where"])
    assert "ScatterND" not in ops(model)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
def test_repeat_upsampling_as_one_resize(dynamic):
    """`repeat-as-resize` on the export of HRNet-style 2x nearest upsampling: one Resize,
    exactly MegEngine's values; a channel repeat beside it stays a Tile."""
    import megengine as mge

    from tests.converters.harness import function_net
    from tests.helpers import run_ort
    from tm2onnx.transforms import run_pipeline

    def fn(F, x):
        return F.repeat(F.repeat(x, 2, 2), 2, 3), F.repeat(x, 2, 1)

    model = export_and_compare(lambda: function_net(fn), [(2, 3, 4, 5)], tolerance=EXACT,
                               dynamic_batch=dynamic)
    lean, [report] = run_pipeline(model, ["repeat-as-resize"])
    assert ops(lean).count("Resize") == 1 and ops(lean).count("Tile") == 1, report
    x = np.random.default_rng(3).normal(size=(3 if dynamic else 2, 3, 4, 5)).astype(np.float32)
    net = function_net(fn)
    want = [t.numpy() for t in net(mge.Tensor(x))]
    got = run_ort(lean, {lean.graph.input[0].name: x})
    for name, value in zip([o.name for o in lean.graph.output], want):
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
def test_ncnn_target_writes_repeat_as_resize(dynamic):
    """pnnx lowers no Tile at any rank, so `--target ncnn` writes HRNet's F.repeat upsampling
    as one nearest Resize: exact vs MegEngine, no Tile; the generic target keeps the Tile."""
    from tests.converters.harness import function_net

    def upsample(F, x):
        return F.repeat(F.repeat(x, 2, 2), 2, 3)

    model = export_and_compare(lambda: function_net(upsample), [(2, 3, 4, 5)],
                               expect_ops=["Resize"], tolerance=EXACT, dynamic_batch=dynamic,
                               target="ncnn")
    assert "Tile" not in ops(model) and ops(model).count("Resize") == 1
    tm2onnx_target_check(model, "ncnn")
    generic = export_and_compare(lambda: function_net(upsample), [(2, 3, 4, 5)],
                                 expect_ops=["Tile"], tolerance=EXACT, dynamic_batch=dynamic)
    assert "Resize" not in ops(generic)
