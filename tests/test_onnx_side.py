"""The core package without MegEngine: ONNX-side commands never import it, and `export` says in
one line what to install (exit 2). Runs in a subprocess where importing MegEngine fails."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import parse_model

# Makes `import megengine` fail (as on Python 3.12), runs the CLI, then reports its exit status
# and whether anything pulled MegEngine in.
RUNNER = """
import json, sys
sys.modules["megengine"] = None
from tm2onnx.cli import main
rc = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.startswith("megengine") and sys.modules[m])
print(json.dumps({"rc": rc, "megengine": loaded}))
"""


def run_cli(*argv: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_onnx_side_commands_never_import_megengine(tmp_path):
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) <float[3] a = {1, 2, 3}, float[3] b = {1, 2, 3}> {
        u = Add (x, a)
        dead = Neg (x)
        y = Mul (u, b)
    }""", ir_version=8)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    src.write_bytes(model.SerializeToString())
    for argv in (["optimize", str(src), "-o", str(out), "--passes", "deploy", "--validate"],
                 ["validate", str(out), "--against", str(src)],
                 ["where", str(src), "--op", "Mul"], ["transforms"]):
        result, stderr = run_cli(*argv, "-q")
        assert result == {"rc": 0, "megengine": []}, (argv, stderr)
    assert out.is_file()


def test_export_without_megengine_says_what_to_install(tmp_path):
    result, stderr = run_cli("export", str(tmp_path / "m.tm"), "-o", str(tmp_path / "m.onnx"))
    assert result["rc"] == 2 and not (tmp_path / "m.onnx").exists()
    [line] = stderr.strip().splitlines()
    assert "export needs MegEngine" in line and 'pip install "tm2onnx[megengine]"' in line


def test_export_stamps_the_lowest_ir_version_its_opset_needs(megengine):
    # Regression: export stamped IR 10 whatever the opset; onnxruntime 1.15 (IR <= 9) refused.
    import tm2onnx
    from models.make_models import build
    from tm2onnx.runtime import random_feeds, run_model

    traced, _ = build("conv_bn_relu")
    for opset, ir_version in ((13, 7), (17, 8)):
        model = tm2onnx.export(traced, opset=opset)
        assert model.ir_version == ir_version
        run_model(model, random_feeds(model, seed=0))  # onnxruntime loads it
