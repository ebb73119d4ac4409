"""Child processes that are always stopped by their pid, with their output in a log file.

Used for the demo's broker and daemon, the tests' daemon processes and the benchmarks: one
place that knows the stop sequence (SIGTERM, wait, SIGKILL) so nothing is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["ChildProcess"]


class ChildProcess:
    """`argv` running with stdout and stderr appended to `log_path`.

    `new_session` puts it in its own session, so a Ctrl-C in the terminal reaches only the
    parent, which then stops its children in order.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 env: dict[str, str] | None = None, new_session: bool = False) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop/wait)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for the exit (raises subprocess.TimeoutExpired); closes the log once it ended."""
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL when it has not exited within `timeout_s`; returns the code."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)
