"""Quantized ResNet-18, MobileNetV2 and ShuffleNetV1 (MegEngine/Models' recipe, small inputs):
QDQ export on onnxruntime's optimized session (int8 kernels) against MegEngine's int8 model
(within one step) and its QAT forward (steps reported; top-1 over 64 seeded inputs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import assert_same_function, ops

SIZE = 32
BATCH = 16
ROUNDS = 4  # 64 seeded inputs for top-1 agreement

# Most steps (of the logits' scale) the optimized onnxruntime session may be from MegEngine,
# measured here with headroom of one. Against the QAT forward: both run float convolutions,
# summed in different orders, so an element at a rounding boundary lands one step apart
# (~0.05% per layer) and the step travels on. Against the int8 model: onnxruntime's int8
# kernels requantize in float (ties to even) and, on x86 without VNNI, saturate some int16
# pair sums of layers reading signed activations. "int8 as ONNX" is the unoptimized session
# against the int8 model: exact per layer but for QuantizeLinear's ties to even (MegEngine
# rounds them away from zero), which a deep net can carry to two steps.
KERNEL_STEPS = {"resnet18": {"qat": 4, "int8": 3, "int8 as ONNX": 2},
                "mobilenet_v2": {"qat": 4, "int8": 5, "int8 as ONNX": 1},
                "shufflenet_v1": {"qat": 3, "int8": 2, "int8 as ONNX": 1}}


def _net(name: str):
    from models import quant

    return {"resnet18": lambda: quant.QuantResNet18(num_classes=10, width=16),
            "mobilenet_v2": lambda: quant.QuantMobileNetV2(num_classes=10),
            "shufflenet_v1": quant.QuantShuffleNetV1Tiny}[name]()


def optimized_session(model: onnx.ModelProto, path) -> tuple:
    """onnxruntime's fully optimized CPU session and the op types of its optimized graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session, [n.op_type for n in onnx.load(path).graph.node]


@pytest.mark.parametrize("name", sorted(KERNEL_STEPS))
def test_quantized_classifier(megengine, name, tmp_path):
    """The QAT export follows the QAT forward (float AvgPool stays float), the int8 export the
    int8 model (AvgPool rounds to int8): each is compared with its own MegEngine model."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from models.quant import calibrated_qat, int8_version, output_scale, steps_apart
    from tm2onnx.runtime import run_model

    shape = (BATCH, 3, SIZE, SIZE)
    qat = tm.trace_module(calibrated_qat(_net(name), (4, 3, SIZE, SIZE)),
                          mge.Tensor(np.zeros(shape, np.float32)))
    qat.eval()
    pairs = {"qat": qat, "int8": int8_version(qat)}
    sessions, scales, plain = {}, {}, None
    for kind, traced in pairs.items():
        model = tm2onnx.export(traced, target="onnxruntime")  # its int8 fusions
        sessions[kind], kernels = optimized_session(model, tmp_path / f"{kind}.onnx")
        assert "QLinearConv" in kernels and "Conv" not in kernels, sorted(set(kernels))
        scales[kind] = output_scale(model, model.graph.output[0].name)
        plain = model if kind == "int8" else plain
    rng = np.random.default_rng(2024)
    agree = {"qat": 0, "int8": 0}
    worst = {"qat": 0.0, "int8": 0.0, "int8 as ONNX": 0.0}
    for _ in range(ROUNDS):
        x = rng.normal(0.0, 1.0, shape).astype(np.float32)
        for kind, traced in pairs.items():
            reference = traced(mge.Tensor(x)).numpy()
            got = sessions[kind].run(None, {"x": x})[0]
            worst[kind] = max(worst[kind], steps_apart(reference, got, scales[kind]).max_steps)
            # quantized logits tie often: agree when MegEngine's logit at our top-1 is its max
            chosen = np.take_along_axis(reference, got.argmax(1)[:, None], axis=1)[:, 0]
            agree[kind] += int(np.sum(chosen == reference.max(1)))
        exact = run_model(plain, {"x": x}, opt_level="disable")[plain.graph.output[0].name]
        worst["int8 as ONNX"] = max(worst["int8 as ONNX"],
                                    steps_apart(reference, exact, scales["int8"]).max_steps)
    assert all(worst[kind] <= KERNEL_STEPS[name][kind] for kind in worst), worst
    assert all(count / (ROUNDS * BATCH) >= 0.99 for count in agree.values()), agree


# Most steps (of the score scale) from the QAT forward over 4 seeded batches: measured 1 on
# both sessions (100% pixel agreement); one more for onnxruntime's int8 kernels, as above.
SEG_STEPS = {"disable": 1, "all": 2}


def test_segmentation_decoder(megengine, tmp_path):
    """A ConvTransposeBnRelu2d upsampling decoder with a skip concat (models.quant
    QuantSegNetTiny): the QAT and int8 exports against MegEngine's QAT forward (its int8
    ConvTranspose with bias / ReLU does not run in MegEngine 1.13), in steps of the score
    scale, and per-pixel class agreement; `deploy` keeps every Q/DQ and computes the same."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from models.quant import (
        QuantSegNetTiny,
        calibrated_qat,
        int8_version,
        output_scale,
        steps_apart,
    )
    from tm2onnx.runtime import run_model
    from tm2onnx.transforms import run_pipeline

    shape = (4, 3, SIZE, SIZE)
    qat = tm.trace_module(calibrated_qat(QuantSegNetTiny(), shape),
                          mge.Tensor(np.zeros(shape, np.float32)))
    qat.eval()
    models = {kind: tm2onnx.export(traced, target="onnxruntime") for kind, traced in
              (("qat", qat), ("int8", int8_version(qat)))}
    for model in models.values():
        assert [op for op in ops(model) if op in ("Conv", "ConvTranspose")] == \
            ["Conv", "Conv", "ConvTranspose", "ConvTranspose", "Conv"]
        _, kernels = optimized_session(model, tmp_path / "optimized.onnx")
        assert kernels.count("QLinearConv") == 3 and kernels.count("ConvTranspose") == 2
        lean, _ = run_pipeline(model, ["deploy"])  # folds nothing across a Q/DQ pair
        assert sorted(ops(lean)) == sorted(op for op in ops(model) if op != "Identity")
        assert_same_function(model, lean, rtol=0, atol=0)
    rng = np.random.default_rng(2024)
    worst, agree, pixels = dict.fromkeys(SEG_STEPS, 0.0), 0, 0
    for _ in range(ROUNDS):
        x = rng.normal(0.0, 1.0, shape).astype(np.float32)
        reference = qat(mge.Tensor(x)).numpy()
        for model in models.values():
            name = model.graph.output[0].name
            for level in SEG_STEPS:
                got = run_model(model, {"x": x}, opt_level=level)[name]
                apart = steps_apart(reference, got, output_scale(model, name))
                worst[level] = max(worst[level], apart.max_steps)
            chosen = np.take_along_axis(reference, got.argmax(1)[:, None], axis=1)[:, 0]
            agree += int(np.sum(chosen == reference.max(1)))
            pixels += chosen.size
    assert all(worst[level] <= SEG_STEPS[level] for level in SEG_STEPS), worst
    assert agree / pixels >= 0.99, agree / pixels
