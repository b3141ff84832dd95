"""`validate --tm` and `bench --tm` on real traced models: an embedding fed valid token ids,
runtime failures as errors (exit 2), MegEngine timed beside onnxruntime."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tm2onnx.cli import main


def _trace(path, net, *inputs):
    import megengine as mge
    import megengine.traced_module as tm

    net.eval()
    with open(path, "wb") as handle:
        pickle.dump(tm.trace_module(net, *[mge.Tensor(x) for x in inputs]), handle)
    return str(path)


@pytest.fixture
def token_type_tm(megengine, tmp_path):
    """BERT's token-type embedding: 2 rows, int32 ids; random ids in [0, 10) would index past it."""
    import megengine.module as M

    class TokenTypes(M.Module):
        def __init__(self):
            super().__init__()
            self.embedding = M.Embedding(2, 8)

        def forward(self, ids):
            return self.embedding(ids) * 2

    return _trace(tmp_path / "types.tm", TokenTypes(), np.zeros((1, 6), np.int32))


def test_embedding_ids_stay_in_the_table(token_type_tm, tmp_path, capsys):
    onnx_path = str(tmp_path / "types.onnx")
    assert main(["export", token_type_tm, "-o", onnx_path, "-q"]) == 0
    assert main(["validate", onnx_path, "--tm", token_type_tm, "--runs", "3", "-q"]) == 0
    out = capsys.readouterr().out
    assert "ids in [0, 2) (indexes 'embedding.weight'" in out and "PASS" in out


def test_runtime_failure_is_exit_2_not_a_mismatch(token_type_tm, tmp_path, capsys):
    onnx_path = str(tmp_path / "types.onnx")
    assert main(["export", token_type_tm, "-o", onnx_path, "-q"]) == 0
    capsys.readouterr()
    assert main(["validate", onnx_path, "--tm", token_type_tm, "--int-range", "0,1000",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed to run" in err, err


def test_bench_times_megengine_beside_onnxruntime(megengine, tmp_path, capsys):
    from models.nets import ConvBnReluNet

    tm_path = _trace(tmp_path / "net.tm", ConvBnReluNet(), np.ones((1, 3, 16, 16), np.float32))
    onnx_path = str(tmp_path / "net.onnx")
    assert main(["export", tm_path, "-o", onnx_path, "-q"]) == 0
    capsys.readouterr()
    assert main(["bench", onnx_path, "--tm", tm_path, "--runs", "3", "--warmup", "1",
                 "-q"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 2 and rows[1].startswith(f"{tm_path} (MegEngine)")
    assert float(rows[1].split()[-1].rstrip("x")) > 0
