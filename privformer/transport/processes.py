"""One ready-file handshake for every privformer server process.

A server binds its socket itself (port 0 picks a free port) and, once it listens, calls
``announce_port``, which writes the bound port to the ready file atomically (write a temporary
file, rename). ``ChildProcess`` is the parent's side: it starts ``python -m privformer.cli.main
ARGS --ready-file F``, waits for F, and stops the child on exit. The demo, the API's private
modes, the tests and the benchmarks all start servers through it, so none races for a port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from privformer.errors import PrivformerError


def announce_port(ready_file: str | Path | None, port: int) -> None:
    """Write ``port`` to ``ready_file`` (if given) in one atomic rename."""
    if ready_file:
        tmp = Path(str(ready_file) + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(ready_file)


class ChildProcess:
    """``privformer ARGS`` in a child process that announces its port; a context manager.

    ``port`` is the announced port once ``__enter__`` returns; ``log()`` is the child's output.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        startup_timeout_s: float = 180.0,
        log_file: str | Path | None = None,
        wrapper: Sequence[str] = (),
    ):
        """``wrapper``: a command prefix the child runs under (e.g. ``ip netns exec NS``)."""
        self.args, self.timeout = list(args), startup_timeout_s
        self.wrapper = list(wrapper)
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log: IO[str] | None = None
        self._log_path: Path | None = None
        self._workdir: Path | None = None
        self._final_log: str | None = None

    def __enter__(self) -> Self:
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix="privformer-child-"))
        ready = workdir / "port"
        self._log_path = Path(self.log_file or workdir / "child.log")
        self._log = self._log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "privformer.cli.main",
                *self.args,
                "--ready-file",
                str(ready),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + self.timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise PrivformerError(
                    f"`privformer {' '.join(self.args[:2])}` exited ({self.proc.returncode}): "
                    f"{self.log()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.__exit__()
                raise PrivformerError(
                    f"`privformer {' '.join(self.args[:2])}` did not start within {self.timeout} s"
                )
            time.sleep(0.05)
        self.port = int(ready.read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            # The ready file (and the log, unless the caller named one) live here: keep the
            # log's text for ``log()`` and leave nothing behind in the temp folder.
            if self.log_file is None:
                self._final_log = self.log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return self._log_path.read_text() if self._log_path and self._log_path.exists() else ""
