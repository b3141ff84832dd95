"""`export --validate` / `validate --tm` on QAT and int8 ResNet-18 and MobileNetV2: the verdict is
the teacher-forced per-layer check (every layer within one quantization step of MegEngine),
end-to-end steps reported; a corrupted scale or weight fails (exit 1) naming its layer."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from tests.conftest import _megengine_or_fail
from tm2onnx.cli import main

SHAPE = (1, 3, 32, 32)
NETS = ("resnet18", "mobilenet_v2")


def _net(name: str):
    from models import quant

    return {"resnet18": lambda: quant.QuantResNet18(num_classes=10, width=16),
            "mobilenet_v2": lambda: quant.QuantMobileNetV2(num_classes=10)}[name]()


@pytest.fixture(scope="module")
def traced_qat() -> dict[str, object]:
    """net -> its QAT TracedModule, calibrated on seeded data."""
    _megengine_or_fail()
    import megengine as mge
    import megengine.traced_module as tm

    from models.quant import calibrated_qat

    traced = {}
    for name in NETS:
        qat = calibrated_qat(_net(name), (4, *SHAPE[1:]))
        traced[name] = tm.trace_module(qat, mge.Tensor(np.zeros(SHAPE, np.float32)))
        traced[name].eval()
    return traced


@pytest.fixture(scope="module")
def qat_files(traced_qat, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("quant_validate")
    files = {}
    for name, traced in traced_qat.items():
        files[name] = str(folder / f"{name}_qat.tm")
        with open(files[name], "wb") as handle:
            pickle.dump(traced, handle)
    return files


@pytest.fixture(scope="module")
def int8_traced(traced_qat) -> dict[str, object]:
    """net -> MegEngine's int8 model of the traced QAT net (models.quant.int8_version)."""
    from models.quant import int8_version

    return {name: int8_version(traced) for name, traced in traced_qat.items()}


def _per_layer_max(out: str) -> float:
    found = re.search(r"per layer \(teacher-forced.*?max ([0-9.]+) step", out)
    assert found, out
    return float(found.group(1))


@pytest.mark.parametrize("name", NETS)
def test_export_validate_passes_layer_by_layer(megengine, qat_files, name, tmp_path, capsys):
    target = tmp_path / "model.onnx"
    code = main(["export", qat_files[name], "-o", str(target), "--validate"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert target.exists()
    assert "PASS: every layer within 1 step of MegEngine" in out, out
    assert _per_layer_max(out) <= 1
    assert "end to end (no forcing" in out and "dequant_out" in out


@pytest.mark.parametrize("name", NETS)
def test_int8_model_validates_layer_by_layer(megengine, int8_traced, name):
    import tm2onnx
    from tm2onnx.validate import against_megengine

    report = against_megengine(tm2onnx.export(int8_traced[name]), int8_traced[name], runs=2)
    assert report and report.forced is not None, str(report)
    assert max(t.steps.max_steps for t in report.forced.quantized) <= 1
    assert "PASS: every layer within 1 step" in str(report)
    # MegEngine's int8 average pool is qint8; onnxruntime's value is rounded by its consumer:
    # compared after rounding, in steps, on the grid (not at a float tolerance)
    unrounded = [t for t in report.forced.tensors if not t.forced]
    expected = {"resnet18": [],  # its last feature map is 1x1: the mean of one value
                "mobilenet_v2": ["pool_out", "flatten_out"]}[name]
    assert [t.name for t in unrounded] == expected
    assert all(t.steps is not None and t.steps.on_grid for t in unrounded)


def test_int8_file_export_validate(megengine, tmp_path, capsys):
    # An int8 model traced after eager `quantize`: MegEngine's nodes carry qint8 dtypes, which
    # the export must declare as the float32 its DequantizeLinear outputs give.
    import megengine as mge
    import megengine.traced_module as tm
    from megengine.quantization import quantize

    from models.quant import calibrated_qat

    int8 = quantize(calibrated_qat(_net("resnet18"), (4, *SHAPE[1:])), inplace=False)
    int8.eval()
    path = tmp_path / "int8.tm"
    with open(path, "wb") as handle:
        pickle.dump(tm.trace_module(int8, mge.Tensor(np.zeros(SHAPE, np.float32))), handle)
    assert main(["export", str(path), "-o", str(tmp_path / "int8.onnx"), "--validate"]) == 0
    model = onnx.load(tmp_path / "int8.onnx")
    declared = {v.name: v.type.tensor_type.elem_type
                for v in [*model.graph.value_info, *model.graph.output]}
    dequantized = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert {declared.get(name, onnx.TensorProto.FLOAT) for name in dequantized} == {
        onnx.TensorProto.FLOAT}
    assert any(name in declared for name in dequantized)


def _export(qat_files, name: str, tmp_path) -> str:
    target = str(tmp_path / f"{name}_qat.onnx")
    assert main(["export", qat_files[name], "-o", target, "-q"]) == 0
    return target


def _validate_json(onnx_path: str, tm_path: str, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["validate", onnx_path, "--tm", tm_path, "--json", "-q", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_json_reports_one_step_fraction_and_top1(megengine, qat_files, tmp_path, capsys):
    path = _export(qat_files, "resnet18", tmp_path)
    code, report = _validate_json(path, qat_files["resnet18"], capsys, "--runs", "4")
    assert code == 0 and report["passed"] and report["verdict"] == "teacher-forced"
    (output,) = report["end_to_end_steps"]
    fractions = (output["exact_fraction"], output["one_step_fraction"], output["beyond_fraction"])
    assert sum(fractions) == pytest.approx(1.0)
    assert output["elements"] == 4 * 10 and output["top1"]["rows"] == 4
    forced = report["teacher_forced"]
    assert forced["passed"] and forced["samples"] == 4 and forced["first_failure"] is None
    steps = [t["steps"] for t in forced["tensors"] if t["steps"] is not None]
    # every conv/linear output and the QuantStub: the ResNet's 21 quantized modules at least
    assert len(steps) >= 21 and all(s["max_steps"] <= 1 and s["on_grid"] for s in steps)
    assert all("one_step_fraction" in s for s in steps)


def _corrupt(model: onnx.ModelProto, initializer: str, change) -> onnx.ModelProto:
    (init,) = [i for i in model.graph.initializer if i.name == initializer]
    values = onnx.numpy_helper.to_array(init).copy()
    changed = np.asarray(change(values)).astype(values.dtype)
    init.CopyFrom(onnx.numpy_helper.from_array(changed, initializer))
    return model


def test_activation_scale_times_1_5_fails_naming_the_layer(megengine, qat_files, tmp_path,
                                                           capsys):
    bad = str(tmp_path / "corrupted.onnx")
    onnx.save(_corrupt(onnx.load(_export(qat_files, "resnet18", tmp_path)),
                       "layers.2.conv_bn_relu1.act_scale", lambda s: s * 1.5), bad)
    capsys.readouterr()
    assert main(["validate", bad, "--tm", qat_files["resnet18"], "-q"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "module=layers.2.conv_bn_relu1" in out, out
    code, report = _validate_json(bad, qat_files["resnet18"], capsys)
    first = report["teacher_forced"]["first_failure"]
    assert code == 1 and first["megengine"]["module"] == "layers.2.conv_bn_relu1"
    assert not first["steps"]["on_grid"]  # onnxruntime quantizes on another grid


def test_changed_weight_integer_fails_naming_the_layer(megengine, int8_traced):
    import tm2onnx
    from tm2onnx.validate import against_megengine

    def flip(weights: np.ndarray) -> np.ndarray:
        flat = weights.reshape(-1)
        index = int(np.argmax(np.abs(flat)))
        flat[index] = -flat[index]    # the largest weight of the layer, sign flipped
        return weights

    traced = int8_traced["mobilenet_v2"]
    bad = _corrupt(tm2onnx.export(traced), "features.3.body.0.weight_quantized", flip)
    report = against_megengine(bad, traced)
    first = report.forced.first_failure
    assert not report and first.origin["module"] == "features.3.body.0", str(report)
    assert first.steps.max_steps > 1


def test_explicit_atol_compares_end_to_end(megengine, qat_files, tmp_path, capsys):
    path = _export(qat_files, "resnet18", tmp_path)
    code, report = _validate_json(path, qat_files["resnet18"], capsys,
                                  "--atol", "1e-9")
    assert report["verdict"] == "end-to-end" and report["teacher_forced"] is None
    assert code == 1 and not report["comparison"]["passed"]  # quantized logits differ


def test_every_quantized_module_output_is_forced(megengine, traced_qat):
    """Outputs of modules nested two deep take the caller's node name in the ONNX graph
    (`_1_out` for features.1.body.1): matched through the interpreter's aliases, so no layer
    reads MegEngine's own (unforced) value and differences cannot compound between layers."""
    import megengine.module.qat as QAT

    import tm2onnx
    from tm2onnx.localize_quant import shared_names, teacher_forced
    from tm2onnx.runtime.inputs import random_feeds
    from tm2onnx.runtime.megengine_ref import interpret

    traced = traced_qat["mobilenet_v2"]
    model = tm2onnx.export(traced)
    feeds = random_feeds(model, seed=0)
    names = shared_names(model, interpret(traced, list(feeds.values())))
    assert names["features__1_body__1_out"] == "_1_out"
    modules = {path for path, m in traced.named_modules() if isinstance(m, QAT.QATModule)
               and not isinstance(m, QAT.DequantStub)}
    forced = teacher_forced(model, traced, [feeds])
    by_module = {t.origin.get("module") for t in forced.quantized if t.forced}
    assert len(modules) > 30 and modules <= by_module, sorted(modules - by_module)
