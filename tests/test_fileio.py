"""Outputs never destroy input: -o equal to the input (also through a hard link), device
nodes and symlinks are refused; modes are kept; temp files vanish on errors, SIGTERM and
SIGINT, and stale ones are removed; every OS error is one line with exit 2."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import parse_model
from tm2onnx.cli import main
from tm2onnx.fileio import TEMP_MARK, FileError, write_atomic

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
    c = Constant<value = float[1] {2.0}>()
    t = Mul(x, c)
    y = Relu(t)
}"""


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "in.onnx"
    path.write_bytes(parse_model(MODEL).SerializeToString())
    return path


def _optimize(src: Path, out: str | Path, *extra: str) -> int:
    return main(["optimize", str(src), "-o", str(out), "--passes", "cleanup", "-q", *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and "Traceback" not in err, err
    return err


def test_output_equal_to_input_is_refused_unless_in_place(onnx_file, tmp_path, capsys):
    before = onnx_file.read_bytes()
    link = tmp_path / "hard.onnx"
    os.link(onnx_file, link)
    for target in (onnx_file, link, tmp_path / "." / "in.onnx"):
        assert _optimize(onnx_file, target) == 2
        assert "--in-place" in _one_line_error(capsys)
        assert onnx_file.read_bytes() == before
    assert _optimize(onnx_file, onnx_file, "--in-place") == 0
    assert onnx_file.read_bytes() != before  # cleanup folded the Constant


def test_export_onto_its_own_tm_is_refused(megengine, tmp_path, capsys):
    tm_file = Path(__file__).resolve().parents[1] / "models" / "conv_bn_relu.tm"
    copy = tmp_path / "net.tm"
    copy.write_bytes(tm_file.read_bytes())
    assert main(["export", str(copy), "-o", str(copy), "-q"]) == 2
    assert "refusing to overwrite" in _one_line_error(capsys)
    assert copy.read_bytes() == tm_file.read_bytes()


def _special_files(tmp_path: Path) -> list[Path]:
    # Never the real /dev/null: a regression would replace the machine's own device node.
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    nodes = [fifo]
    device = tmp_path / "null.onnx"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        nodes.append(device)
    except PermissionError:  # not root: the fifo covers the same refusal
        pass
    return nodes


def test_device_nodes_symlinks_and_directories_are_not_replaced(onnx_file, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    symlink = tmp_path / "link.onnx"
    symlink.symlink_to(victim)
    special = _special_files(tmp_path)
    for target in (*special, symlink, tmp_path):
        assert _optimize(onnx_file, target) == 2
        _one_line_error(capsys)
    assert all(not stat.S_ISREG(os.lstat(path).st_mode) for path in special)
    assert symlink.is_symlink() and victim.read_text() == "keep me"


def test_mode_of_existing_file_is_kept_and_new_files_follow_umask(onnx_file, tmp_path):
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    assert _optimize(onnx_file, existing) == 0
    assert stat.S_IMODE(existing.stat().st_mode) == 0o644
    old = os.umask(0o027)
    try:
        assert _optimize(onnx_file, tmp_path / "new.onnx") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.onnx").stat().st_mode) == 0o640


def test_stale_temp_files_of_dead_runs_are_removed(onnx_file, tmp_path):
    target = tmp_path / "out.onnx"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".out.onnx{TEMP_MARK}{dead}-0badf00d"
    stale.write_bytes(b"half a model")
    unrelated = tmp_path / ".out.onnx.swp"
    unrelated.write_bytes(b"not ours")
    assert _optimize(onnx_file, target) == 0
    assert not stale.exists() and unrelated.exists()


@pytest.mark.parametrize("signum, code", [("SIGTERM", 128 + 15), ("SIGINT", 130)])
def test_signal_during_write_leaves_no_temp_file(tmp_path, signum, code):
    script = textwrap.dedent(f"""
        import os, signal, sys
        from tm2onnx.fileio import write_atomic
        def write(stream):
            stream.write(b"partial")
            os.kill(os.getpid(), signal.{signum})
            stream.write(b"never")
        try:
            write_atomic({str(tmp_path / "out.onnx")!r}, write)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=False)
    assert result.returncode == code, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_os_errors_while_writing_are_one_line(onnx_file, tmp_path, monkeypatch, capsys, error):
    def fail(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", fail)
    assert _optimize(onnx_file, tmp_path / "out.onnx") == 2
    assert os.strerror(error) in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_real_path_errors_are_one_line(onnx_file, tmp_path, capsys):
    parent_file = tmp_path / "file"
    parent_file.write_text("x")
    for target, reason in ((parent_file / "out.onnx", "Not a directory"),
                           (tmp_path / ("n" * 300 + ".onnx"), "File name too long"),
                           (parent_file / "deeper" / "out.onnx", "Not a directory"),
                           ("/sys/out.onnx", "Permission denied")):
        assert _optimize(onnx_file, target) == 2
        assert reason in _one_line_error(capsys)


def test_write_atomic_makes_missing_parents_and_raises_file_errors(tmp_path):
    write_atomic(tmp_path / "new" / "dir" / "x", lambda stream: stream.write(b"ok"))
    assert (tmp_path / "new" / "dir" / "x").read_bytes() == b"ok"
    (tmp_path / "file").write_text("")
    with pytest.raises(FileError) as info:
        write_atomic(tmp_path / "file" / "x", lambda stream: None)
    assert isinstance(info.value, OSError)
    assert "\n" not in str(info.value)
