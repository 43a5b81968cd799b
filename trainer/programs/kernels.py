"""Run a command on a chosen CPU kernel level: what the same code computes on a CPU of another kind.

    python -m trainer.programs.kernels avx2 -- .venv/bin/python -m pytest tests/dist
    make test KERNELS=avx2                       # the whole suite, as a machine without AVX-512 runs it

PyTorch's CPU kernels are compiled once per SIMD level and one is picked at start-up (``ATEN_CPU_CAPABILITY``);
MKL (the fp32 matmuls) and oneDNN pick their own code paths per instruction set. Capping all three reproduces, on
this machine, the kernels of a CPU without AVX-512 (``avx2``: AMD EPYC Zen 2-4, Intel before Skylake-SP) or of any
x86-64 (``default``: SSE4 at most). The width of a kernel's vectors decides the order in which it sums, so the
rounding of every reduction, and through it a training trajectory, moves from one level to the next
(tests/support/numerics.py says what the tests allow for that; docs/recipe_sweep.md shows what it does to the demo).
A level above what the CPU has is refused by ATen (it falls back to the best it has), so ``native`` is the only
level that depends on the machine.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile

KERNEL_LEVELS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def kernel_env(level: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the variables of kernel level ``level``; the caps of the
    other levels are removed, so ``native`` really is the machine's own.

    A capped level also gets an inductor cache of its own (``TORCHINDUCTOR_CACHE_DIR`` + ``-<level>``): inductor's
    cache key does not include the cap, and a kernel compiled at another level failed to run (``run.compile`` tests at
    ``avx2`` after a native run: "tuple args required")."""
    if level not in KERNEL_LEVELS:
        raise SystemExit(f"unknown kernel level {level!r}; choose from {', '.join(KERNEL_LEVELS)}")
    env = dict(os.environ if base is None else base)
    for name in {name for caps in KERNEL_LEVELS.values() for name in caps}:
        env.pop(name, None)
    if level == "native":
        return env
    default_cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")   # inductor's own
    cache = env.get("TORCHINDUCTOR_CACHE_DIR") or default_cache
    return {**env, **KERNEL_LEVELS[level], "TORCHINDUCTOR_CACHE_DIR": f"{cache}-{level}"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    level, command = args[0], args[1:]
    if command[0] == "--":
        command = command[1:]
    env = kernel_env(level)
    print(f"[kernels] {level}: {' '.join(f'{k}={v}' for k, v in KERNEL_LEVELS[level].items()) or 'no caps'}",
          file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
    return 127   # not reached: execvpe replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
