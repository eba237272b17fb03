"""Consumers of `ocycle-dist stream` from flags and TOML files; every mistake is a ConfigError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocycle_dist.app import consumers
from ocycle_dist.app.consumers import Consumer, default_consumers, load_config, parse_consumer, unique_names
from ocycle_dist.errors import ConfigError


def test_a_spec_with_every_field_and_with_empty_ones() -> None:
    assert parse_consumer("workers.tasks.classify:2:model:drop_newest:6") == Consumer(
        "classify", "workers.tasks.classify", 2.0, "model", "drop_newest", 6.0
    )
    assert parse_consumer("workers.tasks.spl:0.5") == Consumer("spl", "workers.tasks.spl", 0.5)
    assert parse_consumer("workers.tasks.classify:2:model::6") == Consumer(
        "classify", "workers.tasks.classify", 2.0, "model", None, 6.0
    )
    assert parse_consumer("echo:1").size(16000) == 16000
    assert parse_consumer("echo:0.01").size(16000) == 160  # the shortest: 100 tasks a second
    with pytest.raises(ConfigError, match=r"seconds=0\.01 is invalid: expected at least one sample at 50 Hz"):
        parse_consumer("echo:0.01").size(50)  # never a chunk of no sample, nor one made up


@pytest.mark.parametrize(
    ("spec", "param", "value"),
    [
        ("workers.tasks.spl", "consumer", "workers.tasks.spl"),
        ("a:1:q:block:2:extra", "consumer", "a:1:q:block:2:extra"),
        (":1", "task", ""),
        ("a b:1", "task", "a b"),
        ("spl:0", "seconds", "0"),
        ("spl:1e-9", "seconds", "1e-9"),  # was a task per sample
        ("spl:-1", "seconds", "-1"),
        ("spl:nan", "seconds", "nan"),
        ("spl:half", "seconds", "half"),
        ("spl:1:a queue", "queue", "a queue"),
        ("spl:1:q:sometimes", "policy", "sometimes"),
        ("spl:1:q:block:0", "expires", "0"),
        ("spl:1:q:block:inf", "expires", "inf"),
    ],
)
def test_a_bad_spec_names_the_parameter_and_value(spec: str, param: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_consumer(spec)
    assert (info.value.param, info.value.value) == (param, value)
    assert str(info.value).startswith(f"{param}={value!r} is invalid: expected ")


def test_names_are_made_unique_for_the_stream_ids() -> None:
    names = [c.name for c in unique_names(parse_consumer(s) for s in ("t.spl:1", "t.spl:2", "u.spl:3", "t.echo:1"))]
    assert names == ["spl", "spl-2", "spl-3", "echo"]


def test_the_default_consumers_are_the_demos() -> None:
    assert [(c.name, c.task, c.seconds, c.queue) for c in default_consumers()] == list(consumers.CONSUMERS)
    assert [c.expires for c in default_consumers()] == [None, consumers.MODEL_EXPIRES, None]


def test_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "consumers.toml"
    path.write_text(
        '[[consumer]]\ntask = "workers.tasks.spl"\nseconds = 0.5\nqueue = "spl"\n\n'
        '[[consumer]]\ntask = "workers.tasks.classify"\nseconds = 2\nqueue = "model"\npolicy = "drop_oldest"\n'
        'expires = 6\nname = "vad"\n\n'
        '[[consumer]]\ntask = "workers.tasks.spl"\nseconds = 1\n'
    )
    assert load_config(path) == [
        Consumer("spl", "workers.tasks.spl", 0.5, "spl"),
        Consumer("vad", "workers.tasks.classify", 2.0, "model", "drop_oldest", 6.0),
        Consumer("spl-2", "workers.tasks.spl", 1.0),
    ]


@pytest.mark.parametrize(
    ("text", "param", "expected"),
    [
        ("[[consumer]\n", "config", "a valid TOML file"),
        ("broker = 'redis://x'\n[[consumer]]\ntask = 'a'\nseconds = 1\n", "config", "only [[consumer]] tables"),
        ("", "config", "at least one [[consumer]] table"),
        ("[consumer]\ntask = 'a'\nseconds = 1\n", "config", "at least one [[consumer]] table"),
        ("[[consumer]]\ntask = 'a'\n", "consumer", "a table with seconds"),
        ("[[consumer]]\ntask = 'a'\nseconds = 1\nsize = 4\n", "consumer", "(not size)"),
        ("[[consumer]]\ntask = 'a'\nseconds = true\n", "seconds", "a number of seconds > 0"),
        ("[[consumer]]\ntask = 3\nseconds = 1\n", "task", "a task name"),
        ("[[consumer]]\ntask = 'a'\nseconds = 1\nname = 'a b'\n", "name", "letters, digits"),
    ],
)
def test_a_bad_toml_file_names_what_is_wrong(tmp_path: Path, text: str, param: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.param == param
    assert expected in str(info.value)


def test_a_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config='.*nope.toml' is invalid: expected a readable TOML file"):
        load_config(tmp_path / "nope.toml")
