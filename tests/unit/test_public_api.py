"""The public surface: ``__all__`` lists exactly the public names, sorted, and each resolves."""

from __future__ import annotations

import inspect

import ocycle_dist


def isort_key(name: str) -> tuple[int, str]:
    """The order of ruff's RUF022 (isort-style): CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted():
    assert ocycle_dist.__all__ == sorted(ocycle_dist.__all__, key=isort_key)
    assert len(set(ocycle_dist.__all__)) == len(ocycle_dist.__all__)


def test_all_is_exactly_the_public_names():
    public = {
        name
        for name in dir(ocycle_dist)
        if not name.startswith("_") and not inspect.ismodule(getattr(ocycle_dist, name))
    }
    assert set(ocycle_dist.__all__) == public | {"__version__"}


def test_every_name_resolves():
    namespace: dict[str, object] = {}
    exec("from ocycle_dist import *", namespace)  # the star import is what __all__ serves
    for name in ocycle_dist.__all__:
        assert namespace[name] is getattr(ocycle_dist, name)


def test_the_core_names_are_public():
    for name in ("BufferEmit", "NumpyEmit", "ListEmit", "NumpyIO", "ListIO", "Tap", "Chunk", "Stats", "OcycleError"):
        assert name in ocycle_dist.__all__
    assert isinstance(ocycle_dist.__version__, str)
    assert issubclass(ocycle_dist.ConfigError, ocycle_dist.OcycleError)
