"""shuffle-4d: ShuffleNetV2's folded-batch 5-D channel shuffle becomes the rank-4 form that
keeps the batch (Reshape/Transpose/Reshape + Split), on any ONNX file; look-alikes whose
elements differ are left as they are."""

from __future__ import annotations

import onnx

from tests.helpers import assert_same_function, ops, parse_model
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
EXACT = {"rtol": 0.0, "atol": 0.0}


def shuffle_text(shape: str, first: str, perm: str, second: str, squeeze: bool = True) -> str:
    """x -> Reshape(first) -> Transpose(perm) -> Reshape(second) -> y[0], y[1]."""
    dims = shape.split(",")
    part = ",".join([dims[0], str(int(dims[1]) // 2), *dims[2:]])
    take = ("i0 = Constant<value = int64[1] {0}>()\n i1 = Constant<value = int64[1] {1}>()\n"
            " ax = Constant<value = int64[1] {0}>()\n g0 = Gather<axis = 0>(y, i0)\n"
            " g1 = Gather<axis = 0>(y, i1)\n a = Squeeze(g0, ax)\n b = Squeeze(g1, ax)"
            if squeeze else
            "i0 = Constant<value = int64 {0}>()\n i1 = Constant<value = int64 {1}>()\n"
            " a = Gather<axis = 0>(y, i0)\n b = Gather<axis = 0>(y, i1)")
    return f"""{HEADER}
    g (float[{shape}] x) => (float[{part}] a, float[{part}] b) {{
        s1 = Constant<value = int64[3] {{{first}}}>()
        s2 = Constant<value = int64[5] {{{second}}}>()
        f = Reshape(x, s1)
        t = Transpose<perm = [{perm}]>(f)
        y = Reshape(t, s2)
        {take}
    }}"""


def _rank5(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    return [v.name for v in (*inferred.value_info, *inferred.output)
            if len(v.type.tensor_type.shape.dim) > 4]


def test_shufflenet_shuffle_becomes_rank_4():
    for squeeze in (True, False):
        model = parse_model(shuffle_text("2,8,3,5", "8, 2, 15", "1, 0, 2", "2, -1, 4, 3, 5",
                                         squeeze), ir_version=8)
        assert _rank5(model)
        out, [report] = run_pipeline(model, ["shuffle-4d"])
        assert len(report.rewritten) == 1 and not _rank5(out), report
        assert sorted(ops(out)) == ["Reshape", "Reshape", "Split", "Transpose"]
        assert [o.name for o in out.graph.output] == ["a", "b"]
        assert_same_function(model, out, **EXACT)


def test_look_alike_that_selects_other_elements_is_kept():
    """Same ops and shapes, but perm [0, 1, 2] (no shuffle): the index proof fails, the model
    comes back byte for byte with the reason."""
    model = parse_model(shuffle_text("2,8,3,5", "8, 2, 15", "0, 1, 2", "2, -1, 4, 3, 5"),
                        ir_version=8)
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["shuffle-4d"])
    assert not report.rewritten and "index proof failed" in report.skipped[0][1]
    assert out.SerializeToString() == before


def test_symbolic_batch_is_kept():
    model = parse_model(shuffle_text("N,8,3,5", "-1, 2, 15", "1, 0, 2", "2, -1, 4, 3, 5"),
                        ir_version=8)
    out, [report] = run_pipeline(model, ["shuffle-4d"])
    assert not report.rewritten and "static shapes" in report.skipped[0][1]
    assert out.SerializeToString() == model.SerializeToString()
