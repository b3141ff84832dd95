"""Writes that never destroy what they replace: refuse an output that is an input or not a
regular file, write a recognizable temp file beside it, fsync, rename, keep the old mode, and
clean up on SIGTERM/SIGINT; ONNX models past protobuf's 2 GB limit go to external data."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import onnx

from .errors import Tm2OnnxError

TEMP_MARK = ".tm2onnx-tmp-"  # `.<stem>.tm2onnx-tmp-<pid>-<hex>`: ours, so stale ones may go
# bytes of a temp name besides its stem: ".", TEMP_MARK, a pid (pid_max <= 2**22: 7 digits,
# 10 allowed), "-" and 8 hex digits
_TEMP_EXTRA = 1 + len(TEMP_MARK) + 10 + 1 + 8
_DIGEST = 8  # hex digits of the full name's hash that end a shortened stem
_LIVE_TEMPS: set[str] = set()


class FileError(Tm2OnnxError, OSError):
    """An output cannot be written safely, or the operating system refused a read or write
    (an OSError too, so callers that caught OSError before still do)."""


def os_error(err: OSError, path: str | os.PathLike, doing: str) -> FileError:
    """One line for an OSError (disk full, read-only, permission, name too long, ...)."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    hints = {errno.ENOSPC: "free some space or write elsewhere",
             errno.EROFS: "write to a writable location",
             errno.EACCES: "check the permissions of the file and its directory",
             errno.ENAMETOOLONG: "use a shorter file name",
             errno.ENOTDIR: "a parent of the path is a file, not a directory",
             errno.EEXIST: "a parent of the path is a file, not a directory"}
    return FileError(f"cannot {doing}: {reason}", where=str(path), hint=hints.get(err.errno))


def check_output(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), *,
                 in_place: bool = False) -> Path:
    """The output path, refused when it is a directory, not a regular file (device, fifo,
    symlink), or the same file as one of `inputs` (unless `in_place`)."""
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as err:
        raise os_error(err, target, "inspect the output") from err
    if stat.S_ISDIR(info.st_mode):
        raise FileError("output path is a directory", where=str(target), hint="give a file name")
    if stat.S_ISLNK(info.st_mode):
        raise FileError("output path is a symbolic link; refusing to replace it",
                        where=str(target), hint="write to the link's target or another name")
    if not stat.S_ISREG(info.st_mode):
        raise FileError("output path is not a regular file (a device, fifo or socket); "
                        "refusing to replace it", where=str(target), hint="give a file name")
    for source in inputs:
        if not in_place and _same_file(target, source):
            raise FileError(f"output is the input {source}; refusing to overwrite it",
                            where=str(target), hint="give another -o, or pass --in-place")
    return target


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(stream)` on a temp file beside `path`, fsync it, rename it onto `path`; the
    mode of a file being replaced is kept (a new one follows the umask); the temp file goes
    on any error, SIGTERM or SIGINT; OSErrors become one-line FileErrors."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as before: -o out/new/model.onnx
        remove_stale_temps(path)
        with _temp_beside(path) as (stream, temp):
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            os.chmod(temp, _mode_for(path))
            os.replace(temp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise os_error(err, path, "write the output") from err


def temp_stem(path: Path) -> str:
    """The file name, or where the temp name would pass the directory's NAME_MAX (a legal
    250-byte name), its first characters (whole UTF-8 ones) and `~` plus a hash of the whole
    name: the same for every run, so stale temps are still found, and distinct per name."""
    name = path.name
    budget = _name_max(path.parent) - _TEMP_EXTRA
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= budget:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:_DIGEST]
    room, kept = budget - 1 - _DIGEST, []
    for char in name:  # characters, so a multibyte one is never cut
        room -= len(char.encode("utf-8", "surrogateescape"))
        if room < 0:
            break
        kept.append(char)
    return f"{''.join(kept)}~{digest}"


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such limit
        return 255


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    name = f".{temp_stem(path)}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    temp = str(path.parent / name)
    with _cleanup_on_signals():
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        _LIVE_TEMPS.add(temp)
        try:
            with os.fdopen(fd, "wb") as stream:
                yield stream, temp
        finally:
            _LIVE_TEMPS.discard(temp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems refuse.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete our temp files for `path` left by killed runs (their pid no longer exists)."""
    removed, prefix = [], f".{temp_stem(path)}{TEMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in path.parent.glob(f"{_glob_escape(prefix)}*"):
            pid = entry.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)) and str(entry) not in _LIVE_TEMPS:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours but not live: a leftover of an earlier write in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT raise KeyboardInterrupt-like exits inside the block, so `finally`
    clauses remove the temp files (only possible in the main thread)."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum) if signum == signal.SIGTERM else KeyboardInterrupt()

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---- ONNX models -----------------------------------------------------------------------------
def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def load_onnx(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """The model with its external data read in, and whether it had any."""
    path = Path(path)
    if not path.is_file():
        raise FileError("no such file", where=str(path), hint="pass the path of an .onnx model")
    try:
        model = onnx.load(path, load_external_data=False)
        external = has_external_data(model)
        if external:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except OSError as err:
        raise os_error(err, path, "read the model") from err
    except Exception as err:  # protobuf's DecodeError and friends
        raise FileError(f"not a readable ONNX model: {err}", where=str(path)) from err
    return model, external


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike, *,
              external_data: bool | None = None) -> bool:
    """Write `model` atomically; tensors go to `<name>.data` beside it when `external_data`,
    or (None) when the model would pass protobuf's 2 GB limit. Returns whether they did.
    The caller's model is not modified, and no second copy of the weights is made."""
    from .external import external_header, too_large

    path = Path(path)
    if external_data is None:
        external_data = too_large(model)
    if not external_data:
        write_atomic(path, lambda stream: stream.write(model.SerializeToString()))
        return False
    data_path = path.with_name(path.name + ".data")
    check_output(data_path)
    header: list[onnx.ModelProto] = []
    write_atomic(data_path, lambda stream: header.append(
        external_header(model, stream, data_path.name)))
    write_atomic(path, lambda stream: stream.write(header[0].SerializeToString()))
    return True
