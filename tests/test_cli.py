"""The `tm2onnx` CLI end to end on real traced models in tmp_path: exit codes, reports,
one-line errors, and no output file left behind on failure."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.helpers import ops
from tm2onnx.cli import main


def _trace_to(path, net, *shapes):
    import megengine as mge
    import megengine.traced_module as tm

    net.eval()
    inputs = [mge.Tensor(np.random.default_rng(0).random(s).astype("float32")) for s in shapes]
    with open(path, "wb") as handle:
        pickle.dump(tm.trace_module(net, *inputs), handle)
    return path


@pytest.fixture
def scale_tm(megengine, tmp_path):
    """The guide's absorb-constants net: Conv2d(3,16,1) then *8 then /128."""
    from models.nets import ConstScaleNet

    return _trace_to(tmp_path / "scale.tm", ConstScaleNet(), (1, 3, 16, 16))


@pytest.fixture
def unsupported_tm(megengine, tmp_path):
    import megengine.functional as F
    import megengine.module as M

    class Net(M.Module):
        def forward(self, x):
            matrix = F.eye(3)[:2].reshape(1, 2, 3)
            return F.vision.warp_affine(x, matrix, (4, 4), format="NCHW") + 1

    return _trace_to(tmp_path / "warp.tm", Net(), (1, 1, 8, 8))


def test_export_validate_writes_model_and_report(scale_tm, tmp_path, capsys):
    out = tmp_path / "scale.onnx"
    assert main(["export", str(scale_tm), "-o", str(out), "--validate"]) == 0
    report = capsys.readouterr().out
    assert "PASS: 1/1 outputs within tolerance" in report
    assert "seed 0" in report
    assert ops(onnx.load(out)) == ["Conv", "Mul", "Div"]


def test_export_with_deploy_passes_absorbs_constants(scale_tm, tmp_path, capsys):
    out = tmp_path / "scale.onnx"
    assert main(["export", str(scale_tm), "-o", str(out), "--passes", "deploy",
                 "--validate"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert ops(onnx.load(out)) == ["Conv"]


def test_export_missing_file_is_one_line_error(megengine, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", str(tmp_path / "nope.tm"), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "nope.tm: no such file" in err
    assert not out.exists()


def test_export_not_a_pickle(megengine, tmp_path, capsys):
    bad = tmp_path / "bad.tm"
    bad.write_text("not a pickle")
    assert main(["export", str(bad), "-o", str(tmp_path / "x.onnx"), "-q"]) == 2
    assert "bad.tm: cannot unpickle" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [bad]


def test_export_unsupported_lists_expr_and_writes_nothing(unsupported_tm, tmp_path, capsys):
    out = tmp_path / "warp.onnx"
    assert main(["export", str(unsupported_tm), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no ONNX converter" in err and "warp_affine" in err
    assert "@function_converter" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["warp.tm"]


def test_optimize_and_validate_against(scale_tm, tmp_path, capsys):
    raw, lean = tmp_path / "raw.onnx", tmp_path / "lean.onnx"
    assert main(["export", str(scale_tm), "-o", str(raw), "-q"]) == 0
    assert main(["optimize", str(raw), "-o", str(lean), "--passes", "absorb-const",
                 "--validate", "-q"]) == 0
    assert main(["validate", str(lean), "--against", str(raw), "-q"]) == 0
    assert main(["validate", str(lean), "--tm", str(scale_tm), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3


def test_validate_fails_on_a_wrong_model(scale_tm, tmp_path, capsys):
    raw = tmp_path / "raw.onnx"
    assert main(["export", str(scale_tm), "-o", str(raw), "-q"]) == 0
    model = onnx.load(raw)
    weight = next(i for i in model.graph.initializer if i.name.endswith("weight"))
    array = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, tmp_path / "broken.onnx")
    assert main(["validate", str(tmp_path / "broken.onnx"), "--tm", str(scale_tm), "-q"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_rename_output_from_cli(scale_tm, tmp_path):
    out = tmp_path / "renamed.onnx"
    assert main(["export", str(scale_tm), "-o", str(out), "--passes", "rename", "--rename",
                 "truediv_out=I_am_output", "-q"]) == 0
    assert [o.name for o in onnx.load(out).graph.output] == ["I_am_output"]


def test_bad_rename_spec_is_an_error(scale_tm, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", str(scale_tm), "-o", str(out), "--passes", "rename", "--rename",
                 "no-equals-sign", "-q"]) == 2
    assert "OLD=NEW" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_pass_names_known_ones(scale_tm, tmp_path, capsys):
    assert main(["export", str(scale_tm), "-o", str(tmp_path / "x.onnx"), "--passes",
                 "fuse-everything", "-q"]) == 2
    err = capsys.readouterr().err
    assert "fuse-everything" in err and "fuse-conv-bn" in err


def test_transforms_lists_registry(capsys):
    assert main(["transforms"]) == 0
    listing = capsys.readouterr().out
    for name in ("rename", "fuse-conv-bn", "absorb-const", "cleanup", "deploy"):
        assert name in listing


def test_console_entry_help():
    result = subprocess.run([sys.executable, "-m", "tm2onnx", "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    for command in ("export", "optimize", "validate", "where", "transforms"):
        assert command in result.stdout


@pytest.fixture
def big_linear_tm(megengine, tmp_path):
    """The guide's fp16 net, narrowed: Linear(3,64) -> Linear(64,2048); only the second has
    in*out >= 100*1024."""
    from models.nets import BigLinearNet

    return _trace_to(tmp_path / "linear.tm", BigLinearNet(hidden=64, out=2048), (1, 3))


def test_export_fp16_linear_validates_at_fp16_tolerance(big_linear_tm, tmp_path, capsys):
    out = tmp_path / "half.onnx"
    assert main(["export", str(big_linear_tm), "-o", str(out), "--passes", "fp16-linear",
                 "--validate", "-q"]) == 0
    report = capsys.readouterr().out
    assert "atol=0.05" in report and "PASS" in report
    model = onnx.load(out)
    halves = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert halves == {"linear_1.weight", "linear_1.bias"}
    assert ops(model).count("Cast") == 2


def test_fp16_min_params_option_reaches_the_transform(big_linear_tm, tmp_path):
    out = tmp_path / "half.onnx"
    assert main(["export", str(big_linear_tm), "-o", str(out), "--passes", "fp16-linear",
                 "--fp16-min-params", "100", "-q"]) == 0
    model = onnx.load(out)
    halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) == 4


def test_optimize_wrap_steps(scale_tm, tmp_path):
    raw, wrapped = tmp_path / "raw.onnx", tmp_path / "wrapped.onnx"
    assert main(["export", str(scale_tm), "-o", str(raw), "-q"]) == 0
    assert main(["optimize", str(raw), "-o", str(wrapped), "--passes", "wrap",
                 "--wrap-steps", "uint8 nhwc scale:1/255", "--validate", "-q"]) == 0
    model = onnx.load(wrapped)
    graph_input = model.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 16, 16, 3]


def test_where_names_megengine_modules(megengine, tmp_path, capsys):
    from models.nets import ConvBnConcatNet

    path = _trace_to(tmp_path / "cat.tm", ConvBnConcatNet(), (1, 3, 16, 16))
    out = tmp_path / "cat.onnx"
    assert main(["export", str(path), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["where", str(out), "--op", "Concat"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "module=bn," in lines[0] and "module=conv_bn.1," in lines[1]


def test_validate_names_the_transform_that_drifts(scale_tm, tmp_path, capsys, monkeypatch):
    import onnx_graphsurgeon as gs

    from tm2onnx.transforms import TRANSFORMS, TransformReport

    def scale_weights(graph: gs.Graph) -> TransformReport:
        """Deliberately wrong: multiplies every constant by 1.01."""
        report = TransformReport("scale-weights")
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant):
                tensor.values = (tensor.values * 1.01).astype(tensor.values.dtype)
                report.rewrote(tensor.name)
        return report

    monkeypatch.setitem(TRANSFORMS, "scale-weights", scale_weights)
    raw, out = tmp_path / "raw.onnx", tmp_path / "out.onnx"
    assert main(["export", str(scale_tm), "-o", str(raw), "-q"]) == 0
    assert main(["optimize", str(raw), "-o", str(out), "--passes", "cleanup,scale-weights",
                 "--validate", "-q"]) == 1  # compared and differ
    captured = capsys.readouterr()
    assert "transform 'scale-weights' changed the outputs beyond tolerance" in captured.err
    assert "FAIL" in captured.out
    assert not out.exists()


def test_validate_names_the_transform_that_breaks_the_model(scale_tm, tmp_path, capsys,
                                                             monkeypatch):
    import onnx_graphsurgeon as gs

    from tm2onnx.transforms import TRANSFORMS, TransformReport

    def upcast(graph: gs.Graph) -> TransformReport:
        """Deliberately wrong: float64 constants beside float32 tensors."""
        report = TransformReport("upcast")
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant):
                tensor.values = tensor.values.astype(np.float64)
                report.rewrote(tensor.name)
        return report

    monkeypatch.setitem(TRANSFORMS, "upcast", upcast)
    raw, out = tmp_path / "raw.onnx", tmp_path / "out.onnx"
    assert main(["export", str(scale_tm), "-o", str(raw), "-q"]) == 0
    assert main(["optimize", str(raw), "-o", str(out), "--passes", "upcast", "--validate",
                 "-q"]) == 2
    assert "after transform 'upcast': onnxruntime cannot load" in capsys.readouterr().err
    assert not out.exists()
