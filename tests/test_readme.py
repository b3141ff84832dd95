"""The README's and docs/*.md's Python examples run as written (in a fresh interpreter, from the
repo root, in the order the README links the docs), and their tables list every registered
transform; every docs/*.md is linked from the README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# the reference sections moved out of the README, in the order the README links them
DOCS = [ROOT / link for link in dict.fromkeys(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))]
TEXT = "\n".join([README] + [doc.read_text() for doc in DOCS])
TRANSFORMS_DOC = (ROOT / "docs" / "transforms.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def test_readme_links_every_doc():
    assert sorted(DOCS) == sorted((ROOT / "docs").glob("*.md")), "a docs/*.md the README misses"


def test_readme_python_blocks_run(megengine, tmp_path):
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(python_blocks()))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_readme_lists_every_transform():
    from tm2onnx.transforms import describe

    for name, doc in describe():
        assert f"`{name}`" in TRANSFORMS_DOC, f"docs/transforms.md's table lacks {name}"


def test_readme_commands_exist():
    from tm2onnx.commands import COMMANDS

    for command in re.findall(r"^tm2onnx (\w+)", TEXT, flags=re.MULTILINE):
        assert command in COMMANDS, command
