"""Fixtures in the style of public MegEngine code (models/public_styles.py): each is traced,
pickled and loaded by the default safe loader as the very graph plain pickle gives (the globals
MegEngine writes for `astype(x.dtype)`, numpy scalars, `mge.Tensor(F.arange(n))` included),
exported from that safe load, run in onnxruntime against MegEngine, and exported by the CLI."""

from __future__ import annotations

import io
import pickle

import numpy as np
import onnx
import pytest

from tests.helpers import assert_matches, ops, run_ort

# Deep random-weight stacks round differently in MegEngine and onnxruntime; relative 1e-4 of
# each value plus 1e-5 of the output's scale (NAFNet's residual output reaches ~1e2).
RTOL, ATOL_SCALE = 1e-4, 1e-5
# name, ONNX op types the export must contain, globals its pickle must name (beyond MegEngine's
# own classes): the patterns the loader once refused, so the safe load is really exercised.
CASES = [
    pytest.param("deeplabv3plus", {"Conv", "Resize", "ReduceMean", "AveragePool", "ArgMax"},
                 set(), id="deeplabv3plus"),
    pytest.param("nafnet", {"DepthToSpace", "GlobalAveragePool", "Split", "Sqrt", "ReduceMean"},
                 set(), id="nafnet"),
    pytest.param("nafnet_padded", {"Pad", "Slice", "DepthToSpace"}, set(), id="nafnet_padded"),
    pytest.param("conformer", {"Where", "Softmax", "GreaterOrEqual", "LayerNormalization",
                               "Split", "Sigmoid"},
                 {"abc.ABCMeta", "numpy.core.multiarray.scalar", "numpy.float32"},
                 id="conformer"),
    pytest.param("raft", {"GridSample", "MatMul", "Resize"}, {"numpy.dtypes.Float32DType"},
                 id="raft"),
    pytest.param("ddpm_unet", {"Cos", "Sin", "Softmax", "MatMul", "Pad", "Resize"},
                 {"builtins.type", "numpy.float32"}, id="ddpm_unet"),
]


def _trace(name: str):
    import megengine as mge
    import megengine.traced_module as tm

    from models.public_styles import build

    mge.config.async_level = 0  # MegEngine's async CPU dispatch was seen computing wrong values
    net, arrays = build(name)
    return tm.trace_module(net, *[mge.Tensor(a) for a in arrays]), arrays


def _reference(traced, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import megengine as mge
    from megengine.traced_module.pytree import tree_flatten

    leaves, _ = tree_flatten(traced(*[mge.Tensor(a) for a in arrays]))
    return [np.asarray(leaf.numpy()) for leaf in leaves]


def _check(traced, model: onnx.ModelProto, arrays: list[np.ndarray]) -> None:
    reference = _reference(traced, arrays)
    assert len(reference) == len(model.graph.output)
    expected = {out.name: ref for out, ref in zip(model.graph.output, reference)}
    got = run_ort(model, {value.name: a for value, a in zip(model.graph.input, arrays)})
    for name, ref in expected.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, name
    atol = ATOL_SCALE * max(float(np.abs(r).max()) for r in reference if r.dtype.kind == "f")
    assert_matches(expected, got, rtol=RTOL, atol=atol)


def pickled_globals(data: bytes) -> set[str]:
    """Every `module.name` the pickle makes the unpickler look up (what a loader must allow)."""
    names: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            names.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return names


@pytest.mark.parametrize("name, expect_ops, expect_globals", CASES)
def test_public_style_exports_from_safe_load(megengine, name, expect_ops, expect_globals):
    import tm2onnx
    from tests.reload import reload_both_ways

    traced, arrays = _trace(name)
    missing_globals = expect_globals - pickled_globals(pickle.dumps(traced))
    assert not missing_globals, f"the fixture no longer pickles {sorted(missing_globals)}"
    safe = reload_both_ways(traced, arrays)
    model = tm2onnx.export(safe)
    _check(traced, model, arrays)
    missing = expect_ops - set(ops(model))
    assert not missing, f"expected ONNX ops {sorted(missing)} not in {sorted(set(ops(model)))}"


@pytest.mark.parametrize("name, expect_ops, expect_globals", CASES)
def test_public_style_cli_export_validate(megengine, tmp_path, name, expect_ops,
                                          expect_globals):
    """The user's path: `tm2onnx export M.tm -o M.onnx --validate`, default (safe) loading."""
    from tm2onnx.cli import main

    traced, arrays = _trace(name)
    path = tmp_path / f"{name}.tm"
    path.write_bytes(pickle.dumps(traced))
    assert main(["export", str(path), "-o", str(tmp_path / f"{name}.onnx"), "--validate"]) == 0
    model = onnx.load(tmp_path / f"{name}.onnx")
    _check(traced, model, arrays)


def test_conformer_masks_padded_frames(megengine):
    """The pad mask follows the run-time lengths (not the traced ones): padded frames are
    zero in the output and the mask output equals `arange(T) >= length`."""
    import tm2onnx

    traced, arrays = _trace("conformer")
    model = tm2onnx.export(traced)
    feats, _ = arrays
    lengths = np.array([3, 12], np.int32)
    outputs = run_ort(model, {model.graph.input[0].name: feats,
                              model.graph.input[1].name: lengths})
    by_kind = {outputs[out.name].dtype.kind: outputs[out.name] for out in model.graph.output}
    encoded, mask = by_kind["f"], by_kind["b"]
    want_mask = np.arange(12)[None, :] >= lengths[:, None]
    np.testing.assert_array_equal(mask, want_mask)
    assert not encoded[0, 3:].any() and encoded[0, :3].all()
    _check(traced, model, [feats, lengths])


def _batch_of(arrays: list[np.ndarray], batch: int, seed: int = 3) -> list[np.ndarray]:
    """Inputs at another batch size: float images/features uniform in [-1, 1), integer
    lengths/timesteps drawn inside the range the traced ones lie in."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, a.max() + 1, (batch,)).astype(a.dtype) if a.dtype.kind == "i"
            else rng.uniform(-1, 1, (batch, *a.shape[1:])).astype(a.dtype) for a in arrays]


@pytest.mark.parametrize("name", ["deeplabv3plus", "nafnet", "conformer", "raft", "ddpm_unet"])
def test_public_style_dynamic_batch(megengine, name):
    """Exported with a dynamic batch: `x.shape` is then not folded, so the pad mask's
    `mge.Tensor(F.arange(T))` and RAFT's meshgrid coordinate grid are computed at run time."""
    import warnings

    import tm2onnx
    from tests.reload import reload_both_ways

    traced, arrays = _trace(name)
    with warnings.catch_warnings():  # traced at batch 1: the size-1 warning is expected
        warnings.simplefilter("ignore")
        model = tm2onnx.export(reload_both_ways(traced, arrays), dynamic_batch=True)
    for batch in (1, 3):
        _check(traced, model, _batch_of(arrays, batch))
