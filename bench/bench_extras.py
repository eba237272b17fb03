"""What each extra brings: packages, installed size, and the import time and RSS of a streaming producer.

Run from the repository root, in the test virtualenv (``make deps``; needs redis-server)::

    python bench/bench_extras.py                          # device, mic, worker, demo
    python bench/bench_extras.py --extras device,demo --runs 3 --imports 10

For each extra, a new virtualenv (``python -m venv``, from this interpreter's base Python) gets
``pip install '<a copy of the sources>[extra]'``, as a device or a worker host would. Then, in it:

- **packages**: the distributions installed, the project included (pip and setuptools, which every
  virtualenv has, are not counted);
- **installed**: the bytes on disk of its ``site-packages``, compiled ``.pyc`` files included (pip's and
  setuptools' not counted);
- **RSS**: ``--runs`` producers (5, after a first one not counted), each a new process of that virtualenv's Python
  (its working directory outside the repository, so the installed package is the one imported), stream the
  demo's 12 s signal (a FLAC file) through the three default consumers (``ocycle-dist stream FILE --broker
  URL``) to one real redis-server and one ``celery -A workers worker`` (both started by this script, from
  this interpreter: the workers are installed separately). *RSS* is the producer's peak resident set
  (``VmHWM``) once every chunk is done. Each run must end with exit code 0; the table also says whether
  celery, kombu or onnxruntime were loaded;
- **import**: ``--imports`` new processes (20) import what that stream runs on (:data:`IMPORTS`); the time
  of those imports, the interpreter's own start left out.

The runs go round-robin over the virtualenvs so that the machine's noise falls on all of them alike; medians,
with the range, and ratios to ``demo`` (the producer install of before: ``mic`` pulled ``demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from ocycle_dist.app.sources import synthetic  # noqa: E402
from ocycle_dist.testing import RedisServer, Worker  # noqa: E402

RATE = 16000
REFERENCE = "demo"
NOT_COUNTED = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")
# what `ocycle-dist stream FILE` runs on: the command, the sources, the celery-mode executor and its clients
IMPORTS = (
    "ocycle_dist.app.cli",
    "ocycle_dist.app.stream",
    "ocycle_dist.remote.executor",
    "ocycle_dist.app.embedded",
    "ocycle_dist.app.demo",
    "soundfile",
    "redis",
    "hiredis",
)

IMPORT_CHILD = """
import importlib, time
t = time.perf_counter()
for name in {imports!r}:
    importlib.import_module(name)
print(time.perf_counter() - t)
"""
STREAM_CHILD = """
import json, sys
from ocycle_dist.app.cli import main
code = main(["stream", {path!r}, "--broker", {url!r}, "-q", "--progress", "0", "--id", {prefix!r}])
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
heavy = [m for m in ("celery", "kombu", "onnxruntime") if m in sys.modules]
print(json.dumps({{"code": code, "hwm": hwm, "heavy": heavy}}))
"""


def copy_sources(dest: Path) -> Path:
    """The project's sources, as an sdist would carry them."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
    for name in ("ocycle_dist", "workers"):
        shutil.copytree(REPO / name, dest / name, ignore=junk)
    return dest


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def make_venv(folder: Path, src: Path, extra: str) -> Path:
    venv = folder / extra
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[{extra}]"]
    proc = subprocess.run(cmd, cwd=folder, env=clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip install '.[{extra}]' failed:\n{proc.stderr[-3000:]}")
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def footprint(venv: Path) -> tuple[list[str], int]:
    """The distributions installed (names) and the bytes their files take, pip's and setuptools' left out."""
    code = "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'] for d in m.distributions())))"
    py = str(venv / "bin" / "python")
    out = subprocess.run([py, "-c", code], cwd=venv, env=clean_env(), capture_output=True, text=True, check=True)
    names = [n for n in out.stdout.split() if n.lower() not in ("pip", "setuptools")]
    size = 0
    for entry in site_packages(venv).iterdir():
        if entry.name.startswith(NOT_COUNTED):
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()]
        size += sum(p.stat().st_size for p in files)
    return names, size


def import_time(venv: Path, cwd: Path) -> float:
    code = IMPORT_CHILD.format(imports=IMPORTS)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"the imports failed in {venv.name}:\n{proc.stderr[-3000:]}")
    return float(proc.stdout)


def produce(venv: Path, path: Path, url: str, prefix: str, cwd: Path) -> dict:
    code = STREAM_CHILD.format(path=str(path), url=url, prefix=prefix)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the producer in {venv.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["code"] != 0:
        raise SystemExit(f"the producer in {venv.name} exited {result['code']}:\n{proc.stderr[-3000:]}")
    return result


def spread(xs: list[float], unit: float, digits: int) -> str:
    med = statistics.median(xs) / unit
    if len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(xs) / unit:.{digits}f}-{max(xs) / unit:.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--extras", default="device,mic,worker,demo", help="comma-separated (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="streaming producers per extra (default 5)")
    parser.add_argument("--imports", type=int, default=20, help="import timings per extra (default 20)")
    args = parser.parse_args()
    extras = [e for e in args.extras.split(",") if e]
    if REFERENCE not in extras:
        extras.append(REFERENCE)
    folder = Path(tempfile.mkdtemp(prefix="ocycle-bench-extras-"))
    try:
        src = copy_sources(folder / "src")
        audio = folder / "twelve.flac"
        sf.write(audio, np.concatenate(list(synthetic(12.0, RATE))), RATE)
        venvs, sizes = {}, {}
        for extra in extras:
            t = time.perf_counter()
            venvs[extra] = make_venv(folder, src, extra)
            sizes[extra] = footprint(venvs[extra])
            print(f"made {extra}: {len(sizes[extra][0])} packages in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        runs: dict[str, list[dict]] = {e: [] for e in extras}
        archive = folder / "archive"
        with RedisServer() as server:
            worker = Worker(
                server.url,
                name="bench-extras",
                queues="celery,spl,model,archive",
                concurrency=2,
                env={"OCYCLE_ARCHIVE_DIR": str(archive)},
                cwd=REPO,
            )
            worker.start(timeout=120)
            try:
                for i in range(args.runs + 1):  # the first one warms the disk cache up: not counted
                    for extra in extras:
                        result = produce(venvs[extra], audio, server.url, f"{extra}-{i}", folder)
                        if i:
                            runs[extra].append(result)
            finally:
                worker.stop(timeout=30)
        imports: dict[str, list[float]] = {e: [] for e in extras}
        for _ in range(args.imports):
            for extra in extras:
                imports[extra].append(import_time(venvs[extra], folder))
        print(f"\n### What each extra brings (Python {platform.python_version()}, {platform.machine()})\n")
        print(
            f"RSS: `ocycle-dist stream` of a 12 s file, three consumers, real redis-server and worker, {args.runs}"
            f" runs each; import: {args.imports} runs each; median (range), ratios to `{REFERENCE}`.\n"
        )
        header = ["extra", "packages", "installed", "import", "RSS", "celery/kombu/onnxruntime loaded"]
        print("| " + " | ".join(header) + " |")
        print("|---|---:|---:|---:|---:|---|")
        ref_n, ref_size = len(sizes[REFERENCE][0]), sizes[REFERENCE][1]
        ref_imp = statistics.median(imports[REFERENCE])
        ref_rss = statistics.median(r["hwm"] for r in runs[REFERENCE])
        for extra in extras:
            names, size = sizes[extra]
            rss = [r["hwm"] for r in runs[extra]]
            heavy = sorted({m for r in runs[extra] for m in r["heavy"]})
            print(
                f"| `{extra}` | {len(names)} ({len(names) / ref_n:.2f}x) | {size / 1e6:.0f} MB ({size / ref_size:.2f}x)"
                f" | {spread(imports[extra], 1e-3, 0)} ms ({statistics.median(imports[extra]) / ref_imp:.2f}x)"
                f" | {spread(rss, 1e6, 1)} MB ({statistics.median(rss) / ref_rss:.2f}x)"
                f" | {', '.join(heavy) or 'none'} |"
            )
        print()
        for extra in extras:
            print(f"- `{extra}`: {', '.join(sorted(sizes[extra][0], key=str.lower))}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
