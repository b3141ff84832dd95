"""Silence MegEngine's C++ "Failed to load CUDA driver" banner, which goes straight to file
descriptor 2 and ignores every logging setting, while keeping any other stderr output."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

_BANNER_MARKERS = ("Failed to load CUDA driver", "failed to load cuda func", "works under CPU mode",
                   "To use CUDA mode", "discuss.megengine.org.cn", "++++++++++")


def _is_banner(line: str) -> bool:
    return any(marker in line for marker in _BANNER_MARKERS)


@contextlib.contextmanager
def quiet_megengine() -> Iterator[None]:
    """Redirect fd 2 to a temp file for the block; replay every line that is not the banner."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if line.strip() and not _is_banner(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def silence_megengine_banner() -> None:
    """Import MegEngine and touch the device once with fd 2 redirected: the banner appears only
    on the first device use in a process, so later output needs no redirection."""
    with quiet_megengine():
        import megengine

        (megengine.Tensor([0.0]) + 1).numpy()
