"""trainer/programs/kernels.py: each CPU kernel level reaches ATen (its capability as torch reports it)."""

import subprocess
import sys

import pytest

from trainer.programs.kernels import KERNEL_LEVELS, kernel_env

CAPABILITY = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]


def _has_avx2() -> bool:
    with open("/proc/cpuinfo") as f:
        return " avx2" in f.read()


def test_a_level_sets_its_caps_and_native_clears_inherited_ones():
    env = kernel_env("default", {"ATEN_CPU_CAPABILITY": "avx2", "PATH": "/bin", "TORCHINDUCTOR_CACHE_DIR": "/c"})
    assert env == {"PATH": "/bin", **KERNEL_LEVELS["default"], "TORCHINDUCTOR_CACHE_DIR": "/c-default"}
    assert kernel_env("native", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "PATH": "/bin"}) == {"PATH": "/bin"}
    with pytest.raises(SystemExit, match="unknown kernel level 'avx9'"):
        kernel_env("avx9")


@pytest.mark.parametrize("level, expected", [("default", "DEFAULT"), ("avx2", "AVX2")])
def test_the_command_runs_with_the_kernels_of_the_level(level, expected):
    if expected == "AVX2" and not _has_avx2():
        pytest.skip("this CPU has no AVX2: ATen falls back to its best level")
    out = subprocess.run([sys.executable, "-m", "trainer.programs.kernels", level, "--", *CAPABILITY],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
    assert f"[kernels] {level}: ATEN_CPU_CAPABILITY=" in out.stderr
    native = subprocess.run([sys.executable, "-m", "trainer.programs.kernels", "native", *CAPABILITY],
                            capture_output=True, text=True, check=True, env=kernel_env(level))
    assert native.stdout.strip() == subprocess.run(CAPABILITY, capture_output=True, text=True, check=True,
                                                   env=kernel_env("native")).stdout.strip()
