"""Issue 14: with a dynamic batch the exporter knows where the batch is after transposes and
reshapes (a second MegEngine run at another batch size, tm2onnx/batchprobe.py), not by position:
timm's q/k/v split on axis 0 is static, a split or roll of the moved batch axis is not, and a
fixed ONNX size on a batch-dependent axis is refused by a guard."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest

from tests.helpers import run_ort

BATCHES = (1, 2, 5)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _trace(net, *shapes):
    import megengine as mge
    import megengine.traced_module as tm

    net.eval()
    rng = np.random.default_rng(0)
    return tm.trace_module(net, *[mge.Tensor(rng.uniform(-1, 1, s).astype(np.float32))
                                  for s in shapes])


def _assert_batches_match(traced, model, *tails):
    import megengine as mge

    for batch in BATCHES:
        rng = np.random.default_rng(batch)
        arrays = [rng.uniform(-1, 1, (batch, *tail)).astype(np.float32) for tail in tails]
        reference = traced(*[mge.Tensor(a) for a in arrays])
        reference = reference if isinstance(reference, (tuple, list)) else (reference,)
        got = run_ort(model, {v.name: a for v, a in zip(model.graph.input, arrays)})
        for output, ref in zip(model.graph.output, reference, strict=True):
            np.testing.assert_allclose(got[output.name], ref.numpy(), **TOLERANCE)


def _nodes(model, op):
    return [node for node in model.graph.node if node.op_type == op]


def test_vit_attention_qkv_split_with_dynamic_batch(megengine):
    """On main: `splitting the dynamic batch axis into 3 parts` (axis 0 holds q/k/v)."""
    import tm2onnx
    from models.shape_patterns import build

    traced, _ = build("split_attention")
    model = tm2onnx.export(traced, dynamic_batch=True)
    _assert_batches_match(traced, model, (10, 32))
    [split] = _nodes(model, "Split")
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    assert inits[split.input[1]].tolist() == [1, 1, 1]
    assert onnx.helper.get_attribute_value(split.attribute[0]) == 0
    perms = [list(onnx.helper.get_attribute_value(node.attribute[0]))
             for node in _nodes(model, "Transpose")]
    assert [2, 0, 3, 1, 4] in perms
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_vit_attention_through_the_cli(megengine, tmp_path):
    from models.shape_patterns import build
    from tm2onnx.cli import main

    source = tmp_path / "attention.tm"
    source.write_bytes(pickle.dumps(build("split_attention")[0]))
    target = tmp_path / "attention.onnx"
    assert main(["export", str(source), "-o", str(target), "--dynamic-batch", "--validate"]) == 0
    assert "Split" in {node.op_type for node in onnx.load(target).graph.node}


def _moved_batch_net(kind):
    import megengine.functional as F
    import megengine.module as M

    class Net(M.Module):
        def forward(self, x):  # x [B, 4, 6] -> y [4, B, 6]: the batch on axis 1
            y = x.transpose(1, 0, 2)
            if kind == "split-batch":
                head, tail = F.split(y, [1], axis=1)
                return head * 2, tail + 1
            if kind == "roll-static":
                return F.roll(y, 1, axis=0) * 2
            return F.roll(y, 1, axis=1)

    return Net()


def test_split_of_the_moved_batch_axis_slices_at_run_time(megengine):
    """On main: a static Split [1, 1] on axis 1, which onnxruntime refuses at batch 5."""
    import tm2onnx

    traced = _trace(_moved_batch_net("split-batch"), (2, 4, 6))
    model = tm2onnx.export(traced, dynamic_batch=True)
    _assert_batches_match(traced, model, (4, 6))
    assert not _nodes(model, "Split") and len(_nodes(model, "Slice")) == 2


def test_roll_of_a_static_axis_after_the_batch_moved(megengine):
    """On main: refused (axis 0 was taken for the batch)."""
    import tm2onnx

    traced = _trace(_moved_batch_net("roll-static"), (2, 4, 6))
    model = tm2onnx.export(traced, dynamic_batch=True)
    _assert_batches_match(traced, model, (4, 6))
    assert len(_nodes(model, "Concat")) == 1


def test_roll_of_the_moved_batch_axis_is_refused(megengine):
    """On main: exported with the traced batch's cut, silently wrong at batch 5."""
    import tm2onnx
    from tm2onnx.errors import ConversionError

    traced = _trace(_moved_batch_net("roll-batch"), (2, 4, 6))
    with pytest.raises(ConversionError, match="roll over an axis whose size is known only at "
                                              "run time"):
        tm2onnx.export(traced, dynamic_batch=True)


def test_guard_refuses_a_fixed_size_on_a_batch_axis(megengine, monkeypatch):
    """A converter that writes the traced batch into a Reshape target: ONNX then infers that
    size where MegEngine's changes with the batch. On main this exported (exit 0)."""
    import megengine.module as M

    import tm2onnx
    from tm2onnx.converters import METHOD_CONVERTERS, load_all
    from tm2onnx.errors import ConversionError

    load_all()

    def traced_reshape(ctx, expr):
        out = expr.outputs[0]
        ctx.emit("Reshape", [ctx.value_of(expr.inputs[0]), ctx.shape_const(out.shape)],
                 expr.outputs)

    monkeypatch.setitem(METHOD_CONVERTERS, "reshape", traced_reshape)

    class Net(M.Module):
        def forward(self, x):
            return x.transpose(1, 0, 2).reshape(4, x.shape[0] * 6) * 2

    traced = _trace(Net(), (2, 4, 6))
    with pytest.raises(ConversionError, match=r"ONNX fixes axis 1 at 12, but MegEngine changes "
                                              r"it with the batch"):
        tm2onnx.export(traced, dynamic_batch=True)
