"""A child process in its own process group, its output in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Proc:
    """A child started in a new session (its own process group), so that killing it takes its children too.

    Args:
        name: a label for messages.
        argv: the command.
        log: the file its stdout and stderr are appended to.
        env: its environment (default: this process's).
        cwd: its working directory.
    """

    def __init__(
        self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Any = None
    ) -> None:
        self.name, self.argv, self.log, self.env, self.cwd = name, argv, log, env, cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,  # never the parent's: e.g. `ocycle-dist stream -` reads its stdin
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, *, graceful: bool = True, timeout: float = 20.0) -> None:
        """SIGTERM (when ``graceful``), then SIGKILL after ``timeout``; also kills children left in the group."""
        if self.popen is None:
            return
        steps = ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)) if graceful else ((signal.SIGKILL, 5.0),)
        for sig, grace in steps:
            if self.popen.poll() is not None:
                break
            self.signal(sig)
            try:
                self.popen.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self.signal(signal.SIGKILL)  # pool children left behind in the group

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; raise if this process exits first or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.alive():
                raise RuntimeError(f"{what}: {self.name} exited with code {self.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)
