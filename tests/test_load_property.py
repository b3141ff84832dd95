"""The default (safe) loader accepts what MegEngine's own pickling writes: every model the
project ships or builds, and the pickle patterns of ordinary code, load as the very object
graph plain pickle gives (re-pickled bytes equal) and compute the same outputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.reload import assert_loads_alike, reload_both_ways
from tm2onnx.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(ROOT.joinpath("models").glob("*.tm"))
PATTERNS = ["decode_astype", "numpy_scalars", "dtype_attribute", "pad_mask", "subscripts"]


def _traced(module, inputs):
    import megengine as mge
    import megengine.traced_module as tm

    return tm.trace_module(module, *[mge.Tensor(a) for a in inputs])


def _pattern(name: str):
    from models import pickle_patterns

    module, inputs = pickle_patterns.build(name)
    return _traced(module, inputs), inputs


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_models_load_alike(megengine, path):
    from models.make_models import SPECS, build

    _, inputs = build(path.stem) if path.stem in SPECS else (None, [])
    assert_loads_alike(path, inputs)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_patterns_load_alike_under_every_protocol(megengine, name, protocol):
    traced, inputs = _pattern(name)
    reload_both_ways(traced, inputs, protocol=protocol)


@pytest.mark.parametrize("name", PATTERNS)
def test_pickle_patterns_export_and_validate_with_default_loader(megengine, name, tmp_path,
                                                                 capsys):
    traced, inputs = _pattern(name)
    source = tmp_path / f"{name}.tm"
    megengine.save(traced, str(source))
    assert_loads_alike(source, inputs)
    assert main(["export", str(source), "-o", str(tmp_path / "m.onnx"), "--validate"]) == 0, \
        capsys.readouterr().err
    assert "PASS" in capsys.readouterr().out


def _real_patterns():
    from models import real_patterns

    return [(name, lambda name=name: real_patterns.build(name))
            for name in real_patterns.PATTERNS]


def _detectors():
    from models import detectors

    def make(name):
        import megengine as mge

        mge.config.async_level = 0  # as tests/test_detectors.py: async dispatch was seen wrong
        module, shape = detectors.build(name)
        module.eval()
        inputs = [np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)]
        return _traced(module, inputs), inputs

    return [(name, lambda name=name: make(name)) for name in detectors.BUILDERS]


def _zoo():
    from models.make_models import SPECS, build

    return [(name, lambda name=name: build(name)) for name, spec in SPECS.items()
            if not spec.large]


def _quantized():
    from models import quant

    def make(name, int8):
        shape = (4, 3, 32, 32)  # BN statistics of one image are degenerate (NaN scales)
        traced = quant.traced_qat(name, shape)
        traced = quant.int8_version(traced) if int8 else traced
        return traced, [np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)]

    # MegEngine 1.13's own quantize() refuses the decoder's ConvTransposeRelu (QAT only).
    cases = [("resnet18", False), ("resnet18", True),
             ("seg_decoder", False)]
    return [(f"{name}-{'int8' if int8 else 'qat'}", lambda name=name, int8=int8: make(name, int8))
            for name, int8 in cases]


FAMILIES = {"real_patterns": _real_patterns, "detectors": _detectors, "zoo": _zoo,
            "quantized": _quantized}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_fixture_family_loads_alike(megengine, family):
    """Each fixture the suite traces round-trips through pickle.dump and mge.save."""
    failures = []
    for name, make in FAMILIES[family]():
        traced, inputs = make()  # outside the try: building a fixture must not fail
        try:
            reload_both_ways(traced, inputs)
        except Exception as err:  # noqa: BLE001 - collect all: one run names every failure
            failures.append(f"{name}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_the_real_builtins_type_comes_back(megengine):
    """A dtype class argument is recorded as `type(np.float32)`, i.e. `builtins.type`: the
    loader hands back `type` itself (a look-alike broke isinstance checks inside MegEngine)."""
    from megengine.traced_module.pytree import LeafDef

    traced, inputs = _pattern("dtype_attribute")
    safe = reload_both_ways(traced, inputs)
    leaf_types = {t for expr in safe.graph._exprs for t in _leaf_types(expr, LeafDef)}
    assert type in leaf_types and np.float32 in {v for v in _const_values(safe)}


def _leaf_types(expr, leaf_def):
    todo = [getattr(expr, "arg_def", None)]
    while todo:
        node = todo.pop()
        if node is None:
            continue
        if isinstance(node, leaf_def):
            yield from node.type
        todo.extend(getattr(node, "children_defs", ()))


def _const_values(traced):
    for expr in traced.graph._exprs:
        todo = [getattr(expr, "arg_def", None)]
        while todo:
            node = todo.pop()
            if node is not None:
                if getattr(node, "const_val", None) is not None:
                    yield node.const_val
                todo.extend(getattr(node, "children_defs", ()))


def test_protocol_two_builtins_are_judged_by_their_python3_names(megengine, tmp_path):
    """`__builtin__.eval` in a protocol-2 pickle is builtins.eval: refused like it."""
    from tm2onnx.loading import UnsafeLoadError, load_traced

    path = tmp_path / "old.tm"
    path.write_bytes(b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R.")
    assert pickle.loads(path.read_bytes()) == 2  # the payload is live under plain pickle
    with pytest.raises(UnsafeLoadError, match="builtins.eval"):
        load_traced(path)


def test_policy_names_resolve_to_the_objects_they_name(megengine):
    import builtins

    from tm2onnx.loadpolicy import resolve_name, safe_globals

    allowed = safe_globals()
    assert all(resolve_name(*name) is obj for name, obj in allowed.items())
    for needed in [("numpy.dtypes", "Float32DType"), ("numpy", "float32"), ("numpy", "int32"),
                   ("abc", "ABCMeta"), ("builtins", "type"), ("numpy", "bool_")]:
        assert needed in allowed, needed
    assert allowed[("builtins", "type")] is type
    for refused in ("eval", "exec", "getattr", "__import__", "open", "compile", "input"):
        assert ("builtins", refused) not in allowed and hasattr(builtins, refused)
    assert not [name for name in allowed if name[0].split(".")[0] in ("os", "subprocess",
                                                                       "importlib", "sys")]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_leaf_value_pickles_to_globals_the_policy_resolves(megengine, protocol):
    """Sample values of MegEngine's pytree leaf types (and the LeafDef `type(value)` tuples
    it stores beside them) write only globals the default loader resolves."""
    import megengine.functional as F
    from megengine.traced_module.pytree import ArgsIndex

    from tm2onnx.loadpolicy import Policy

    values = [np.float32(1.5), np.int64(3), np.bool_(True), np.dtype("float16"),
              np.ones((2, 2), np.int32), None, Ellipsis, slice(1, None, 2), 1, 2.0, True,
              "s", b"b", bytearray(b"x"), np.float32, megengine.Tensor, ArgsIndex(0, "x"),
              F.zeros((1,)), megengine.Parameter(np.ones(1, np.float32))]
    samples = values + [(type(v), ArgsIndex) for v in values]

    class Audit(pickle.Unpickler):
        def find_class(self, module, name):
            return Policy().resolve_class(module, name)

    import io

    for sample in samples:
        Audit(io.BytesIO(pickle.dumps(sample, protocol=protocol))).load()
