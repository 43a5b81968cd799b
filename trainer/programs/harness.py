"""What the programs of ``trainer.programs`` (the demo, the continual-chain driver, the benchmarks) share.

The library (everything in ``trainer`` outside ``trainer.programs``) never imports this module. It imports
nothing but the standard library, so a program (or a test helper) can use it before torch is loaded.

- ``REPO``: the repository root (configs, ``trainer/main.py``; where the jobs run);
- ``free_port``: a TCP port for ``accelerate launch --main_process_port`` or a test server;
- ``run_child`` / ``run_json_child``: a child process whose failure ends the program with a message naming
  the command, its exit code and the tails of its output;
- ``fan_out``: independent calls (each typically waiting on a child process) a few at a time, results in order;
- ``Target`` and ``print_targets`` / ``verdict``: a target or claim checked against its bound, printed as a
  ``[MET]`` / ``[NOT MET]`` line;
- ``mean``, ``half_range``: the numbers of a "mean ± half range" table cell over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- child processes

def run_child(cmd: Sequence[str], what: str, *, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to the end with its output captured; on a non-zero exit code raise ``SystemExit`` with
    ``what``, the exit code, the command and the tails of its stdout and stderr."""
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n"
                         f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-6000:]}")
    return done


def run_json_child(cmd: Sequence[str], what: str) -> Any:
    """``run_child``; the JSON the child printed on the last line of its stdout."""
    return json.loads(run_child(cmd, what).stdout.strip().splitlines()[-1])


def fan_out(calls: Iterable[Callable[[], T]], jobs: int) -> list[T]:
    """Every call of ``calls`` on a pool of ``jobs`` threads (at least one); their results in the calls' order.
    The calls must be independent (each typically waits on its own child process)."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda call: call(), calls))


# ---------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """A target or claim a program checks: ``value`` against ``bound``; ``detail`` = the numbers its line shows
    (default: the value and the bound)."""

    text: str
    value: float
    bound: float
    strict: bool = False          # met when value > bound (else value >= bound)
    detail: str = ""

    @property
    def met(self) -> bool:
        return self.value > self.bound if self.strict else self.value >= self.bound

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``met``, for a JSON report."""
        return dataclasses.asdict(self) | {"met": self.met}


def verdict(text: str, met: bool, detail: str, qualifier: str = "") -> str:
    """``[MET<qualifier>] text: detail`` (or ``[NOT MET<qualifier>] ...``)."""
    return f"[{'MET' if met else 'NOT MET'}{qualifier}] {text}: {detail}"


def print_targets(targets: Iterable[Target]) -> None:
    """One ``verdict`` line per target."""
    for t in targets:
        print(verdict(t.text, t.met, t.detail or f"{t.value:.2f} (needs {t.bound:.2f})"))


# ---------------------------------------------------------------------- table cells over seeds

def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def half_range(values: Iterable[float]) -> float:
    """``(max − min) / 2``: the ± of a table cell over seeds (0 for one seed)."""
    values = list(values)
    return (max(values) - min(values)) / 2
