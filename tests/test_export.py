"""The exporter's contract beyond single ops: names and provenance, errors listed at once,
options (names, opset, dynamic batch), inputs it accepts, and atomic writes."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest

from tests.converters.harness import export_and_compare
from tests.helpers import FP32, assert_matches, run_ort


def _guide_concat_net():
    import megengine.functional as F
    import megengine.module as M

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 16, 1, bias=False)
            self.bn = M.BatchNorm2d(16, eps=0.1)
            self.conv_bn = M.Sequential(M.Conv2d(16, 16, 1, bias=False), M.BatchNorm2d(16))

        def forward(self, x):
            x0 = self.bn(self.conv(x))
            return F.concat((x0, self.conv_bn(x0)), 1)

    return Net()


def _traced(net, *shapes):
    import megengine as mge
    import megengine.traced_module as tm

    net.eval()
    rng = np.random.default_rng(0)
    return tm.trace_module(net, *[mge.Tensor(rng.random(s).astype("float32")) for s in shapes])


def test_names_and_provenance_follow_megengine(megengine):
    import tm2onnx

    model = tm2onnx.export(_traced(_guide_concat_net(), (1, 3, 8, 8)))
    initializers = {i.name for i in model.graph.initializer}
    assert {"conv.weight", "conv_bn.0.weight", "bn.running_mean"} <= initializers
    assert not initializers & {i.name for i in model.graph.input}
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    producers = {o: n for n in model.graph.node for o in n.output}
    orig = [{p.key: p.value for p in producers[i].metadata_props}["orig_name"]
            for i in concat.input]
    assert orig == ["bn_out", "conv_bn.1_out"]  # the guide's answer
    bn = producers[concat.input[0]]
    assert {a.name: a.f for a in bn.attribute}["epsilon"] == pytest.approx(0.1)
    assert model.ir_version <= 11
    onnx.checker.check_model(model, full_check=True)


def test_all_unsupported_exprs_listed_in_one_error(megengine):
    import megengine.functional as F
    import megengine.module as M

    import tm2onnx
    from tm2onnx.errors import UnsupportedOpError

    class Net(M.Module):
        def forward(self, x):
            y = F.vision.warp_affine(x, F.eye(3)[:2].reshape(1, 2, 3), (4, 4), format="NCHW")
            return F.vision.cvt_color(y.transpose(0, 2, 3, 1), "RGB2GRAY") + x.mean()

    with pytest.raises(UnsupportedOpError) as info:
        tm2onnx.export(_traced(Net(), (1, 3, 8, 8)))
    message = str(info.value)
    assert "2 exprs have no ONNX converter" in message
    assert "warp_affine" in message and "cvt_color" in message
    assert "\n" not in message


def test_input_output_names_and_opset(megengine):
    model = export_and_compare(_guide_concat_net, [(1, 3, 8, 8)], opset=13,
                               input_names=["image"], output_names=["features"])
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["features"]
    assert model.opset_import[0].version == 13


@pytest.mark.parametrize("opset", [12, 99])
def test_unsupported_opset_is_a_clear_error(megengine, opset):
    import tm2onnx
    from tm2onnx.errors import Tm2OnnxError

    with pytest.raises(Tm2OnnxError, match=f"opset {opset} is not supported .* choose 13"):
        tm2onnx.export(_traced(_guide_concat_net(), (1, 3, 8, 8)), opset=opset)


def test_dynamic_batch_runs_at_other_batch_sizes(megengine):
    import tm2onnx

    traced = _traced(_guide_concat_net(), (2, 3, 8, 8))
    model = tm2onnx.export(traced, dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 3, 8, 8)).astype("float32")
        expected = traced(megengine.Tensor(x)).numpy()
        got = run_ort(model, {"x": x})
        assert_matches({"concat_out": expected}, got, **FP32)


def test_dynamic_batch_traced_at_one_warns(megengine):
    import tm2onnx

    with pytest.warns(UserWarning, match="traced at batch size 1"):
        tm2onnx.export(_traced(_guide_concat_net(), (1, 3, 8, 8)), dynamic_batch=True)


def test_plain_module_and_path_inputs(megengine, tmp_path):
    import tm2onnx

    net = _guide_concat_net()
    x = np.random.default_rng(0).random((1, 3, 8, 8)).astype("float32")
    from_module = tm2onnx.export(net, x)
    path = tmp_path / "net.tm"
    path.write_bytes(pickle.dumps(_traced(net, (1, 3, 8, 8))))
    from_path = tm2onnx.export(str(path))
    assert run_ort(from_module, {"x": x})["concat_out"] == pytest.approx(
        run_ort(from_path, {"x": x})["concat_out"], abs=1e-6)


def test_load_traced_refuses_other_pickles(megengine, tmp_path):
    import tm2onnx
    from tm2onnx.errors import LoadError

    path = tmp_path / "dict.tm"
    path.write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(LoadError, match="dict.tm: holds a dict, not a TracedModule"):
        tm2onnx.load_traced(path)


def test_save_model_is_atomic(megengine, tmp_path, monkeypatch):
    import tm2onnx
    from tm2onnx.exporter import save_model

    model = tm2onnx.export(_traced(_guide_concat_net(), (1, 3, 8, 8)))
    target = tmp_path / "out.onnx"

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, target)
    assert list(tmp_path.iterdir()) == []
