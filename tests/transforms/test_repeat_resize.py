"""repeat-as-resize: the Reshape/Tile/Reshape that `export` writes for F.repeat along H or W
becomes a nearest Resize, consecutive ones one Resize; other repeats stay as they are."""

from __future__ import annotations

from tests.helpers import assert_same_function, ops, parse_model
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
EXACT = {"rtol": 0.0, "atol": 0.0}

# x.repeat(2, axis=2).repeat(2, axis=3) on (2, 3, 4, 5), as tm2onnx exports it
UPSAMPLE = HEADER + """
g (float[2, 3, 4, 5] x) => (float[2, 3, 8, 10] y) {
    a1 = Constant<value = int64[4] {0, 12, 1, 5}>()
    t1 = Constant<value = int64[4] {1, 1, 2, 1}>()
    b1 = Constant<value = int64[4] {0, 3, 8, 5}>()
    a2 = Constant<value = int64[4] {0, 120, 1, 1}>()
    t2 = Constant<value = int64[4] {1, 1, 2, 1}>()
    b2 = Constant<value = int64[4] {0, 3, 8, 10}>()
    r1 = Reshape(x, a1)
    p1 = Tile(r1, t1)
    h = Reshape(p1, b1)
    r2 = Reshape(h, a2)
    p2 = Tile(r2, t2)
    y = Reshape(p2, b2)
}"""

# repeat along the channels (axis 1): no Resize form that toolchains read as upsampling
CHANNELS = HEADER + """
g (float[2, 3, 4, 5] x) => (float[2, 6, 4, 5] y) {
    a = Constant<value = int64[4] {0, 3, 1, 20}>()
    t = Constant<value = int64[4] {1, 1, 2, 1}>()
    b = Constant<value = int64[4] {0, 6, 4, 5}>()
    r = Reshape(x, a)
    p = Tile(r, t)
    y = Reshape(p, b)
}"""


def test_h_and_w_repeats_become_one_resize():
    model = parse_model(UPSAMPLE, ir_version=8)
    out, [report] = run_pipeline(model, ["repeat-as-resize"])
    assert len(report.rewritten) == 2 and "merged 1" in str(report.notes), report
    assert ops(out) == ["Resize"]
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **EXACT)


def test_channel_repeat_is_kept():
    model = parse_model(CHANNELS, ir_version=8)
    out, [report] = run_pipeline(model, ["repeat-as-resize"])
    assert not report.rewritten and "not a repeat along H/W" in report.skipped[0][1]
    assert out.SerializeToString() == model.SerializeToString()
