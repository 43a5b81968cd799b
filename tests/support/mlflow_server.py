"""A real ``mlflow server`` for tests: sqlite backend, proxied artifacts, loopback only, one worker.

    with MlflowServer(tmp_path) as server:          # or server.start() ... server.stop()
        client = MlflowClient(server.url)

    @pytest.fixture(scope="module")
    def mlflow_server(tmp_path_factory):
        with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
            yield server

- ``--workers 1`` and ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: two processes and about 0.5 GB
  instead of ten and 1.9 GB (shared/notes/env_feasibility.md §6);
- artifacts go through the server (``--artifacts-destination``), as they would from a cluster node;
- the server runs in its own session, so ``stop`` ends it and its uvicorn worker together by killing
  the process group (SIGTERM, then SIGKILL after ``stop_timeout``);
- ``start`` waits for ``GET /health`` and fails with the tail of the server log if the server exits
  or is not ready within ``timeout`` seconds (``start(wait=False)``: returns at once; ``wait_healthy`` and
  ``wait_for_output`` wait for an answer or a line of output);
- ``command`` replaces the ``mlflow server`` command line (e.g. ``python -m trainer.programs.mlflow_ui RUN_DIR``),
  without the settings above (its own); it must listen on ``port``. Its output is in ``log_path``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dist_utils import free_port


class MlflowServer:
    def __init__(self, root: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 command: list[str] | None = None) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port if port is not None else free_port()
        self.command = command
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0, wait: bool = True) -> MlflowServer:
        """Start the server; with ``wait``, return once it answers (``wait_healthy``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        if self.command is None:
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        cmd = self.command or [sys.executable, "-m", "mlflow", "server",
                               "--backend-store-uri", f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
                               "--artifacts-destination", str((self.root / "artifacts").resolve()),
                               "--host", self.host, "--port", str(self.port), "--workers", "1"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          cwd=self.root, start_new_session=True)
        return self.wait_healthy(timeout) if wait else self

    def wait_healthy(self, timeout: float = 120.0) -> MlflowServer:
        return self._wait(self.healthy, timeout, "healthy")

    def wait_for_output(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """The first match of ``pattern`` (a multi-line regex) in the server's output, once it is there."""
        self._wait(lambda: re.search(pattern, self.log_tail(1_000_000), re.M), timeout, f"printing {pattern!r}")
        return re.search(pattern, self.log_tail(1_000_000), re.M)

    def _wait(self, done, timeout: float, what: str) -> MlflowServer:
        deadline = time.monotonic() + timeout
        while not done():
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self._proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mlflow server not {what} after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self, stop_timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # start_new_session=True made the server a group leader: its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=stop_timeout)
        # Whatever is left of the group (a worker still shutting down, or a server ignoring SIGTERM).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> MlflowServer:   # a server started with start(wait=False) is not started again
        return self.start() if self._proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
