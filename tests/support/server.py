"""Starts real `modelreg-server serve` processes for tests and stops them by PID."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (\S+:\d+)")


class ServerProcess:
    """One server replica on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, startup_timeout: float = 60.0) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelreg_server", "serve", "--listen", "127.0.0.1:0"],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self.address = self._await_address(startup_timeout)

    def _await_address(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buffered = b""
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffered += chunk
            match = _LISTENING.search(buffered.decode(errors="replace"))
            if match:
                return match.group(1)
        self.stop()
        raise RuntimeError(f"server did not start; log:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    @property
    def pid(self) -> int:
        """The server's PID."""
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
