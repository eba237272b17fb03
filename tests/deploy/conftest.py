"""The deployment test's harness: a Docker engine, the images, compose projects, and the figures it prints.

``make test-deploy`` runs ``tests/deploy`` (CI runs it after ``make test``); a plain ``pytest`` leaves it out
(it needs root and a container engine, and takes minutes): it is collected only with ``OCYCLE_DEPLOY_TEST=1``.

The engine: ``deploy/engine.sh start`` installs Debian's docker.io and docker-compose when missing and
starts ``dockerd`` when none answers; a daemon started here is stopped at the end. Without an engine the
tests are skipped, except under ``CI=true``, where that is a failure. The images: ``deploy/make-base-images.sh``
(present, else pulled, else made from Debian packages: once per machine), the host's extra CA certificates
(Debian's local-CA folder) copied into the build context, then ``compose build`` (its layers cached).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
BUILD_CAS = ROOT / "deploy" / "ca-certificates"

collect_ignore_glob = [] if os.environ.get("OCYCLE_DEPLOY_TEST") == "1" else ["test_*.py"]

FIGURES: list[str] = []


def figure(line: str) -> None:
    """A measured figure, printed at the end of the run (and as it comes, with -s)."""
    FIGURES.append(line)
    print(f"deploy: {line}", flush=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("deployment figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def sh(*args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
       cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a command; its output in the assertion message when it fails."""
    proc = subprocess.run(list(args), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


class Compose:
    """One compose project (``-p``) of the repository's files, driven with ``docker compose`` or ``docker-compose``."""

    def __init__(self, command: list[str], project: str, files: tuple[str, ...], env: dict[str, str]) -> None:
        self.command, self.project, self.files, self.env = command, project, files, env

    def argv(self, *args: str) -> list[str]:
        return [*self.command, "-p", self.project, *(a for f in self.files for a in ("-f", f)), *args]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(*args), timeout=timeout, check=check, env=self.env)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), cwd=ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)  # fmt: skip

    def containers(self, service: str, *, oneoff: bool = False) -> list[str]:
        """Names of the service's running containers (``oneoff``: those of ``run``)."""
        labels = {"project": self.project, "service": service, "oneoff": "True" if oneoff else "False"}
        filters = [a for k, v in labels.items() for a in ("--filter", f"label=com.docker.compose.{k}={v}")]
        out = sh("docker", "ps", "--format", "{{.Names}}", *filters).stdout
        return sorted(out.split())

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)


def in_container(container: str, code: str, timeout: float = 30) -> str:
    """Run Python ``code`` in a running container; its stdout."""
    return sh("docker", "exec", container, "python3", "-c", code, timeout=timeout).stdout


def scrape(container: str, port: int) -> str:
    """The Prometheus text a process in ``container`` serves on ``port`` (fetched from inside: nothing published)."""
    return in_container(container, f"import urllib.request; print(urllib.request.urlopen("
                                   f"'http://127.0.0.1:{port}/metrics', timeout=10).read().decode())")  # fmt: skip


def _fail_or_skip(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def compose_command() -> Iterator[list[str]]:
    """An engine that answers (installed and started when missing) and the compose command to use."""
    if os.geteuid() != 0 and not shutil.which("docker"):
        _fail_or_skip("no docker and not root: cannot install an engine")
    state = Path(tempfile.mkdtemp(prefix="ocycle-engine-")) / "dockerd.pid"
    env = {"OCYCLE_DOCKERD_STATE": str(state)}
    started = time.monotonic()
    proc = sh("sh", str(ROOT / "deploy" / "engine.sh"), "start", check=False, env=env, timeout=900)
    if proc.returncode != 0:
        _fail_or_skip(f"no container engine could be started: {proc.stderr[-2000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("compose: "), proc.stdout
    figure(f"engine ready in {time.monotonic() - started:.1f} s ({'started here' if state.exists() else 'running'}),"
           f" compose command: {line.split(': ', 1)[1]}")  # fmt: skip
    try:
        yield line.split(": ", 1)[1].split()
    finally:
        sh("sh", str(ROOT / "deploy" / "engine.sh"), "stop", check=False, env=env, timeout=120)


@pytest.fixture(scope="session")
def images(compose_command: list[str]) -> str:
    """The base images (made from Debian packages when they cannot be pulled) and the stack's image, built."""
    started = time.monotonic()
    proc = sh("sh", str(ROOT / "deploy" / "make-base-images.sh"), timeout=1200)
    figure(f"base images ready in {time.monotonic() - started:.1f} s: {' | '.join(proc.stdout.split(chr(10))[:2])}")
    copied = []
    for cert in sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []:
        shutil.copy(cert, BUILD_CAS / cert.name)
        copied.append(cert.name)
    started = time.monotonic()
    Compose(compose_command, "ocycledeploy", ("docker-compose.yml",), {})("build", timeout=1800)
    figure(f"image built in {time.monotonic() - started:.1f} s (extra CA certificates trusted: {len(copied)})")
    return "ocycle-dist:latest"
