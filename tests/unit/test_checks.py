"""One rule per kind of value (ocycle_dist/checks.py), the same wherever a caller passes one."""

from __future__ import annotations

import math
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.app.consumers import parse_consumer
from ocycle_dist.checks import finite, queue_name
from ocycle_dist.errors import ConfigError


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, -0.5, "1", None, [1]])
def test_a_finite_non_negative_number_is_a_real_number_not_a_bool_nan_or_infinite(value: Any) -> None:
    assert not finite(value)


def test_finite_bounds() -> None:
    assert finite(0) and finite(0.0) and finite(10**6) and finite(2.5)
    assert not finite(0, above=0) and finite(1e-9, above=0)
    assert finite(1e9 - 1, below=1e9) and not finite(1e9, below=1e9)
    assert not finite(0.5, least=1.0) and finite(1.0, least=1.0)


@pytest.mark.parametrize("name", ["", " ", "a b", "a,b", "tab\there", "q" * 201, 42, b"q"])  # (None: the default)
def test_a_queue_name_refused_by_one_caller_is_refused_by_every_caller(name: Any) -> None:
    with pytest.raises(ConfigError) as excinfo:
        queue_name(name)
    assert excinfo.value.param == "queue"
    with pytest.raises(ConfigError) as excinfo:  # an emitter's queue=
        ocycle.BufferEmit("tests.echo", 4, mode="celery", broker="redis://127.0.0.1:1/0", queue=name)
    assert excinfo.value.param == "queue"
    if isinstance(name, str) and name and ":" not in name:
        with pytest.raises(ConfigError) as excinfo:  # a stream's --consumer task:seconds:queue
            parse_consumer(f"workers.tasks.spl:0.5:{name}")
        assert excinfo.value.param == "queue"


@pytest.mark.parametrize("name", ["q", "spl", "model-2", "a.b_c", "q" * 200])
def test_a_good_queue_name_passes_everywhere(name: str) -> None:
    assert queue_name(name) == name
    assert parse_consumer(f"workers.tasks.spl:0.5:{name}").queue == name
