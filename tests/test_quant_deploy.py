"""`deploy` on QAT and int8 exports: every quantization point and int8 weight kept, onnxruntime
still fuses as many int8 kernels (QLinearConv, QGemm), every transform's QDQ check and the final
check against MegEngine pass; a saved int8 ResNet-18 whose DequantStub follows the average pool
(a float head) validates: that float tensor is judged in its quantized input's steps."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import onnx
import pytest

from tests.conftest import _megengine_or_fail
from tests.helpers import optimized_ops
from tm2onnx.cli import main

SHAPE = (1, 3, 32, 32)
NETS = ("resnet18", "mobilenet_v2")
INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd")


def _traced(net, shape: tuple[int, ...], int8: bool = False):
    import megengine as mge
    import megengine.traced_module as tm

    from models.quant import calibrated_qat, int8_version

    traced = tm.trace_module(calibrated_qat(net, (4, *shape[1:])),
                             mge.Tensor(np.zeros(shape, np.float32)))
    traced.eval()
    return int8_version(traced) if int8 else traced


@pytest.fixture(scope="module")
def qat_files(tmp_path_factory) -> dict[str, str]:
    _megengine_or_fail()
    from models import quant

    nets = {"resnet18": lambda: quant.QuantResNet18(num_classes=10, width=16),
            "mobilenet_v2": lambda: quant.QuantMobileNetV2(num_classes=10)}
    folder = tmp_path_factory.mktemp("quant_deploy")
    files = {}
    for name, build in nets.items():
        files[name] = str(folder / f"{name}.tm")
        with open(files[name], "wb") as handle:
            pickle.dump(_traced(build(), SHAPE), handle)
    return files


def _quantization_points(model: onnx.ModelProto) -> tuple[set, int]:
    """The distinct activation quantizations (input past Identity nodes, scale, zero point) and
    the int8 weights behind a DequantizeLinear: what deploy may not drop (cse may merge twins)."""
    from tm2onnx.localize_quant_onnx import quantized_tensors

    inits = {i.name for i in model.graph.initializer}
    return ({q.key() for q in quantized_tensors(model).values()},
            sum(n.op_type == "DequantizeLinear" and n.input[0] in inits
                for n in model.graph.node))


@pytest.mark.parametrize("name", NETS)
def test_deploy_validates_and_keeps_int8_kernels(megengine, qat_files, name, tmp_path, capsys):
    # The fusion counts are onnxruntime's: export for it (integer Clip after Q for ReLU/ReLU6).
    raw, lean = tmp_path / "raw.onnx", tmp_path / "lean.onnx"
    target = ["--target", "onnxruntime"]
    assert main(["export", qat_files[name], "-o", str(raw), "-q", *target]) == 0
    code = main(["export", qat_files[name], "-o", str(lean), "--passes", "deploy",
                 "--validate", *target])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "PASS: every layer within 1 step of MegEngine" in captured.out
    before, after = onnx.load(raw), onnx.load(lean)
    assert _quantization_points(after) == _quantization_points(before)
    kernels = {op: count for op, count in Counter(optimized_ops(before, tmp_path)).items()
               if op in INT8_KERNELS}
    fused = Counter(optimized_ops(after, tmp_path))
    assert kernels.get("QLinearConv", 0) >= 10
    assert all(fused[op] >= count for op, count in kernels.items()), (kernels, fused)


def test_against_reports_end_to_end_steps_and_top1(megengine, qat_files, tmp_path, capsys):
    raw, lean = str(tmp_path / "raw.onnx"), str(tmp_path / "lean.onnx")
    assert main(["export", qat_files["resnet18"], "-o", raw, "-q"]) == 0
    assert main(["optimize", raw, "-o", lean, "--passes", "deploy", "-q"]) == 0
    capsys.readouterr()
    assert main(["validate", lean, "--against", raw, "--runs", "3", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["verdict"] == "teacher-forced"
    (logits,) = report["end_to_end_steps"]
    assert logits["elements"] == 3 * 10 and logits["top1"]["rows"] == 3
    assert sum(logits[f"{kind}_fraction"] for kind in ("exact", "one_step", "beyond")) == \
        pytest.approx(1.0)
    forced = report["teacher_forced"]["tensors"]
    assert len(forced) >= 21 and all(t["passed"] for t in forced)


def test_int8_float_head_validates_in_steps_of_the_pool(megengine, tmp_path, capsys):
    """int8 average pool over 2x2 (qint8 in MegEngine, unrounded in onnxruntime), then a
    DequantStub and a float fc: the DequantStub output was judged at the float tolerance."""
    import tm2onnx
    from models.quant import QuantResNet18
    from tm2onnx.validate import against_megengine

    shape = (1, 3, 64, 64)
    traced = _traced(QuantResNet18(num_classes=10, width=16, float_head=True), shape,
                     int8=True)
    path = tmp_path / "int8.tm"
    path.write_bytes(pickle.dumps(traced))
    assert main(["export", str(path), "-o", str(tmp_path / "int8.onnx"), "--validate"]) == 0
    # deploy drops the DequantStub's Identity: MegEngine's float copy of its qint8 pool still
    # takes onnxruntime's unrounded value, so the float fc after it is judged on its own
    assert main(["export", str(path), "-o", str(tmp_path / "lean.onnx"), "--passes", "deploy",
                 "--validate"]) == 0, capsys.readouterr().out
    report = against_megengine(tm2onnx.export(traced), traced, runs=2)
    by_name = {t.name: t for t in report.forced.tensors}
    dequant = by_name["dequant_out"]
    assert report and not dequant.gridded and dequant.passed, str(report)
    assert 0 < dequant.steps.max_steps <= 1  # really apart: half a step rounded
    assert by_name["fc_out"].diff is not None and by_name["fc_out"].diff.passed


def test_int8_calibrated_shufflenet_validates(megengine, tmp_path, capsys):
    import megengine as mge
    import megengine.traced_module as tm
    from megengine.quantization import calibration_qconfig

    from models.quant import QuantShuffleNetV1Tiny, calibrated_qat, int8_version

    qat = calibrated_qat(QuantShuffleNetV1Tiny(), (4, *SHAPE[1:]), qconfig=calibration_qconfig)
    traced = tm.trace_module(qat, mge.Tensor(np.zeros(SHAPE, np.float32)))
    traced.eval()
    path = tmp_path / "int8.tm"
    path.write_bytes(pickle.dumps(int8_version(traced)))
    assert main(["export", str(path), "-o", str(tmp_path / "int8.onnx"), "--passes", "deploy",
                 "--validate"]) == 0
    assert "PASS: every layer within 1 step of MegEngine" in capsys.readouterr().out


def test_calibrated_qat_shufflenet_exports_what_quantize_deploys(megengine, tmp_path, capsys):
    """calibration_qconfig: the QAT forward is float and `quantize()` deploys int8 kernels that
    round their inputs onto the grid (also after the shortcut's average pool). The export is that
    int8 model, to the step at the logits (it was 5 steps off), and `export --passes deploy
    --validate` passes against it (it failed at 4 steps on dequant_out)."""
    import megengine as mge
    import megengine.traced_module as tm
    from megengine.quantization import calibration_qconfig

    import tm2onnx
    from models.quant import (
        QuantShuffleNetV1Tiny,
        calibrated_qat,
        int8_version,
        output_scale,
        steps_apart,
    )
    from tm2onnx.runtime import run_model

    qat = calibrated_qat(QuantShuffleNetV1Tiny(), (4, *SHAPE[1:]), qconfig=calibration_qconfig)
    traced = tm.trace_module(qat, mge.Tensor(np.zeros(SHAPE, np.float32)))
    traced.eval()
    model = tm2onnx.export(traced)
    x = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    name = model.graph.output[0].name
    got = run_model(model, {model.graph.input[0].name: x}, opt_level="disable")[name]
    deployed = int8_version(traced)(mge.Tensor(x)).numpy()
    assert steps_apart(deployed, got, output_scale(model, name)).max_steps == 0
    assert np.abs(traced(mge.Tensor(x)).numpy() - got).max() > 0.05  # not the float forward

    path = tmp_path / "calibrated.tm"
    path.write_bytes(pickle.dumps(traced))
    assert main(["export", str(path), "-o", str(tmp_path / "calibrated.onnx"), "--passes",
                 "deploy", "--validate"]) == 0
    out = capsys.readouterr().out
    assert "its quantize() (calibration only" in out and "verdict:  PASS" in out
