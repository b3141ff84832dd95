"""Localization on real networks: a weight corrupted in the middle of ResNet-18 / MobileNetV2 is
found at its node, against MegEngine and against the intact ONNX; a deliberately wrong
transform is found at the first node it rewrote."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import _megengine_or_fail
from tm2onnx.cli import main

SMALL = [(1, 3, 64, 64)]

pytestmark = pytest.mark.megengine  # its module-scoped fixture builds MegEngine nets


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def network(request):
    _megengine_or_fail()
    import tm2onnx
    from models.make_models import build

    traced, _ = build(request.param, shapes=SMALL)
    return traced, tm2onnx.export(traced)


def _corrupt_middle_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    target = convs[len(convs) // 2]
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    weight = next(i for i in broken.graph.initializer if i.name == target.input[1])
    scaled = onnx.numpy_helper.to_array(weight) * 1.1  # one output-scale bug, e.g. a lost BN
    weight.CopyFrom(onnx.numpy_helper.from_array(scaled, weight.name))
    return broken, target


def test_corrupted_middle_conv_is_found_against_megengine_and_onnx(network):
    from tm2onnx.runtime import localize

    traced, model = network
    broken, target = _corrupt_middle_conv(model)
    results = [localize(broken, reference) for reference in (traced, model)]
    for found in results:
        assert not found and not found.accumulated
        assert found.first.node == target.name and found.first.op == "Conv"
        assert found.first.input_error < 1e-4 < found.first.diff.rel_error
        assert len(found.tensors) > 0.8 * found.total  # names matched, not guessed
    assert results[0].first.origin["module"] == target.name  # MegEngine's own module path
    text = str(results[0])
    assert f"ONNX node:  {target.name} (Conv)" in text and f"module={target.name}" in text


def test_intact_network_localizes_nothing(network):
    from tm2onnx.validate import against_megengine

    traced, model = network
    report = against_megengine(model, traced, localize=True)
    assert report and report.localization is not None and report.localization
    assert "every matched tensor within tolerance" in str(report)


def test_validate_localizes_automatically_on_fail(network, tmp_path, capsys):
    import pickle

    traced, model = network
    broken, target = _corrupt_middle_conv(model)
    onnx.save(broken, tmp_path / "broken.onnx")
    with open(tmp_path / "net.tm", "wb") as handle:
        pickle.dump(traced, handle)
    assert main(["validate", str(tmp_path / "broken.onnx"), "--tm", str(tmp_path / "net.tm"),
                 "-q"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"ONNX node:  {target.name} (Conv)" in out
    assert main(["validate", str(tmp_path / "broken.onnx"), "--tm", str(tmp_path / "net.tm"),
                 "--no-localize", "-q"]) == 1
    assert "first divergence" not in capsys.readouterr().out


def test_wrong_transform_is_found_at_the_first_node_it_rewrote(network, tmp_path, capsys,
                                                               monkeypatch):
    import onnx_graphsurgeon as gs

    from tm2onnx.transforms import TRANSFORMS, TransformReport

    rewritten: list[str] = []

    def leaky_second_half(graph: gs.Graph) -> TransformReport:
        """Deliberately wrong: every activation in the second half of the graph leaks."""
        report = TransformReport("leaky-second-half")
        activations = [n for n in graph.nodes if n.op in ("Relu", "Clip")]
        for node in activations[len(activations) // 2:]:
            node.op, node.inputs, node.attrs = "LeakyRelu", node.inputs[:1], {"alpha": 0.5}
            report.rewrote(node.name)
            rewritten.append(node.name)
        return report

    monkeypatch.setitem(TRANSFORMS, "leaky-second-half", leaky_second_half)
    _, model = network
    onnx.save(model, tmp_path / "raw.onnx")
    assert main(["optimize", str(tmp_path / "raw.onnx"), "-o", str(tmp_path / "out.onnx"),
                 "--passes", "leaky-second-half", "--validate", "-q"]) == 1
    out = capsys.readouterr().out
    assert f"ONNX node:  {rewritten[0]} (LeakyRelu)" in out, out
