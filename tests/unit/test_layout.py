"""The architecture, checked, layer by layer (docs/layout.md draws them):

- the core (``ocycle_dist``'s top-level modules and ``executors/``) loads no optional dependency, imports
  nothing of the distributed path (``remote/``) at module level, and nothing of the device application
  (``app/``), the child processes (``procs/``) or the test rigs (``testing/``) at all; its one door to
  ``remote/`` is the executor registry, which imports the celery executor when that mode is asked for;
- the library below the application (``remote/``, ``archive/``, ``procs/``) never imports ``app/`` or ``testing/``;
- the device application (``app/``) imports no test rig;
- the package has no import cycle, and every Redis key is spelled in ``remote/protocol.py`` only."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ocycle_dist"
LAYERS = ("app", "archive", "executors", "procs", "remote", "testing")  # the subpackages


def layer(module: str) -> str:
    """``core``, or the subpackage of ``ocycle_dist`` that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "core"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, lazy: bool) -> set[str]:
    """Modules of ocycle_dist imported by the file at ``path``: at module level, and inside functions if ``lazy``."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("ocycle_dist"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ocycle_dist"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != here}


@functools.cache
def graph(*, lazy: bool) -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (read once per run)."""
    return {module_name(p): imports(p, lazy=lazy) for p in PACKAGE.rglob("*.py")}


def test_a_local_emitter_loads_no_optional_dependency() -> None:
    code = (
        "import sys, ocycle_dist as o\n"
        "got = []\n"
        "with o.BufferEmit(lambda v, t0: got.append(v), 4, clip=True, mode='thread') as b:\n"
        "    b.write(b'abcdefgh')\n"
        "with o.ListEmit(lambda v, t0: got.append(v), 2) as l:\n"
        "    l.write([1, 2, 3])\n"
        "assert len(got) == 3, got\n"
        "print(' '.join(sorted(m for m in ('celery', 'kombu', 'redis', 'msgpack', 'numpy') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_the_layers_are_the_ones_drawn() -> None:
    found = {layer(m) for m in graph(lazy=False)}
    assert found == {"core", *LAYERS}, "a new subpackage: give it a layer here and a line in docs/layout.md"
    assert {"emit", "windows", "errors"} <= {m.split(".")[-1] for m in graph(lazy=False) if layer(m) == "core"}


def test_the_core_imports_nothing_of_the_distributed_path_at_module_level() -> None:
    g = graph(lazy=False)
    for name, deps in g.items():
        if layer(name) in ("core", "executors"):
            bad = {m for m in deps if layer(m) not in ("core", "executors")}
            assert not bad, f"{name} imports {bad}"


def test_the_core_never_imports_the_application_the_child_processes_or_the_rigs() -> None:
    g = graph(lazy=True)  # not even inside a function
    doors = set()
    for name, deps in g.items():
        if layer(name) in ("core", "executors"):
            bad = {m for m in deps if layer(m) in ("app", "archive", "procs", "testing")}
            assert not bad, f"{name} imports {bad}"
            doors |= {(name, m) for m in deps if layer(m) == "remote"}
    assert doors == {
        ("ocycle_dist.executors", "ocycle_dist.remote.executor"),
        ("ocycle_dist.executors", "ocycle_dist.remote.settings"),
    }, "the core reaches remote/ through the executor registry alone (mode='celery')"


def test_the_library_below_the_application_imports_neither_the_application_nor_the_rigs() -> None:
    g = graph(lazy=True)
    for name, deps in g.items():
        if layer(name) in ("remote", "archive", "procs"):
            bad = {m for m in deps if layer(m) in ("app", "testing")}
            assert not bad, f"{name} imports {bad}"


def test_the_application_imports_no_test_rig() -> None:
    g = graph(lazy=True)
    app = [name for name in g if layer(name) == "app"]
    assert {"ocycle_dist.app.cli", "ocycle_dist.app.stream", "ocycle_dist.app.embedded"} <= set(app)
    for name in app:
        bad = {m for m in g[name] if layer(m) == "testing"}
        assert not bad, f"{name} imports {bad}"


def test_no_import_cycle_inside_the_package() -> None:
    g = graph(lazy=True)  # an import inside a function closes a cycle too
    for start in g:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in g.get(node, ()):
                if nxt == start:
                    raise AssertionError("import cycle: " + " -> ".join([*path, nxt]))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))


def test_every_redis_key_is_spelled_in_the_protocol_module_only() -> None:
    spelled = [
        p.relative_to(PACKAGE.parent)
        for p in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "workers").rglob("*.py")]
        if p.name != "protocol.py" and ('"ocycle:' in p.read_text() or "'ocycle:" in p.read_text())
    ]
    assert spelled == []


# pickle.dumps(NumpyEmit(itemgetter(0), 8, clip=True, hop=4, rate=16000.0, mode="thread", npool=2,
# policy="drop_oldest", stream="mic", dtype="int16", shape=(2,)), protocol=4), made by the flat layout (0.2.0)
FLAT_LAYOUT_PICKLE = bytes.fromhex(
    "80049521010000000000008c106f6379636c655f646973742e656d6974948c094e756d7079456d69749493942981947d9428"
    "8c0863616c6c6261636b948c086f70657261746f72948c0a6974656d6765747465729493944b00859452948c0473697a6594"
    "4b088c08617362756666657294898c04636c697094888c0773616d706c6572944e8c046d6f6465948c06746872656164948c"
    "056e706f6f6c944b028c076f6e5f646f6e65944e8c036e6577944e8c03686f70944b048c0472617465944740cf4000000000"
    "008c086f6e5f6572726f72944e8c0c6d61785f696e666c69676874944d00018c06706f6c696379948c0b64726f705f6f6c64"
    "657374948c0673747265616d948c036d6963948c056474797065948c05696e743136948c057368617065944b02859475622e"
)


def test_an_emitter_pickled_by_the_flat_layout_still_loads() -> None:
    import pickle

    import numpy as np

    import ocycle_dist as ocycle

    e = pickle.loads(FLAT_LAYOUT_PICKLE)
    try:
        assert isinstance(e, ocycle.NumpyEmit)
        assert e.callback(np.array([7, 8])) == 7
        assert (e.size, e.hop, e.clip, e.rate, e.mode, e.npool, e.policy, e.stream) == (
            8, 4, True, 16000.0, "thread", 2, "drop_oldest", "mic"
        )  # fmt: skip
        got: list[object] = []
        e.callback = lambda value, t0: value[0]  # the pickled itemgetter shows the callback survives; run a 2-arg one
        e.on_done = got.append
        e.write(np.arange(24, dtype=np.int16).reshape(12, 2), t0=1.0)
        assert e.wait(10)
        assert [list(row) for row in got] == [[0, 1], [8, 9]]  # itemgetter(0) of each 8-row window, hop 4
    finally:
        e.close()
