"""Servers as separate OS processes: the nodes of ``mrx demo``, and of the tests and benchmarks.

`ServerProcess` starts a command that prints one ``listening on <URL>`` line
once it serves, waits for that line and reads the URL from it — so a server
can bind port 0 and there is no race for a free port — and drains its
stderr to show when something fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Self

_LISTENING = re.compile(rb"listening on (http://\S+)")


class ServerProcess:
    """A server in its own OS process that prints one "listening on <URL>" line when it is up.

    Use as a context manager, or start()/stop(); `kill` is SIGKILL.
    """

    what = "server"

    def __init__(
        self, argv: list[str], *, listening: re.Pattern[bytes] = _LISTENING, env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.listening = listening
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._stderr: list[bytes] = []

    def start(self, timeout: float = 30.0) -> Self:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=self.cwd
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        found = threading.Event()

        def watch() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                match = self.listening.search(line)
                if match and not found.is_set():
                    self.url = match.group(1).decode()
                    found.set()

        threading.Thread(target=watch, daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise RuntimeError(f"{self.what} did not start within {timeout}s:\n{self.stderr()}")
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush — what a power cut does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
