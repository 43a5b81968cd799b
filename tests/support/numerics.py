"""How closely two floating-point results must agree: the one place the suite says it (tests/README.md, "Numerics").

Two kinds of comparison, and nothing in between:

- **Bit-exact** (``torch.equal`` / ``==``): the same operations in the same order on the same kernels. Replicated
  state across the ranks of one run (every rank applies the same update to the same reduced numbers), a resume on
  the same world size, the same program run twice on one machine. Any difference is a bug, on every CPU.
- **Reordered** (``assert_reordered_close``): the same mathematics summed in another order. Two ranks against one
  process (the all-reduce adds two half-batch sums; one process adds the whole batch), ZeRO-2 against ZeRO-3
  (all-reduce against reduce-scatter), compiled against eager (fused kernels), a resume on another world size. The
  order also depends on the CPU: ATen's kernels are compiled per SIMD width (AVX-512, AVX2, none: the
  ``ATEN_CPU_CAPABILITY`` levels of tests/README.md) and MKL/oneDNN pick their blocking per ISA, so which of two
  orders rounds up moves from one machine to the next. A fixed absolute tolerance such as 1e-6 on a loss of about
  5 is two float32 ulps: it passes or fails by the luck of the machine.

The reordered tolerance is derived from the dtype and the magnitude, never a bare number:

    |actual − expected| ≤ ulps · eps(dtype) · scale

``scale`` is the magnitude of the compared quantity (for a scalar the larger of the two values; for a tensor its
largest entry, because a sum's rounding error is proportional to the sum of the magnitudes of its terms, not to the
one entry that happens to be small). Why these ``ulps``: each of the n − 1 additions of a sum of n terms rounds with
a relative error of at most u = eps/2, and each rounding is carried by at most Σ|x_i|, so two summation orders differ
by at most about 2·(n − 1)·u·Σ|x_i|, and by about √n·u·Σ|x_i| in practice, since the roundings are independent. The
longest reductions in these tests have n ≤ 256 (feature dims, batch × time), so one pass stays within
``ONE_PASS_ULPS`` = 64 ulps of the magnitude (4 × the √n estimate, a quarter of the worst case). ``COMPOUNDED_ULPS``
allows 64 times more where differences compound: a quantity several training steps downstream of a reordered pass
carries it through every update (SGD's momentum, the EMA, Adam's normalisation of near-zero gradients), and a
compiled step also evaluates exp, log and tanh with inductor's own vectorised code (1-2 ulps off ATen's per call),
through every layer of the forward and the backward. The difference grows with the steps, and most where a
tensor's own magnitude understates that of the terms its update sums: a bias that starts at zero, and an attention
key bias, whose gradient is zero in exact arithmetic and rounding noise of the activations' magnitude in practice.
The largest measured, Uni-Code's 2 ranks against 1 process on padded clips at the ``avx2`` level, climbs about
200 ulps a step (420 after one step, 1296 after the test's 6, 1925 after 8), where the same run at the other levels
stays under 10: the budget is 3 times the test's value. Both budgets are checked against what the three kernel
levels give on one machine: set ``CMG_TOLERANCE_LOG=file.jsonl`` and every comparison appends the ulps it used;
tests/README.md holds the largest values measured.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

ONE_PASS_ULPS = 64        # the same forward/backward pass in two orders
COMPOUNDED_ULPS = 4096    # after a few training steps from a reordered pass, or compiled against eager


def _as_tensor(value: Any) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float32)


def reordered_tolerance(scale: float, ulps: int = ONE_PASS_ULPS, dtype: torch.dtype = torch.float32) -> float:
    """``ulps`` units in the last place of ``dtype`` at magnitude ``scale``: the allowed difference."""
    return ulps * torch.finfo(dtype).eps * scale


def assert_reordered_close(actual: Any, expected: Any, *, ulps: int = ONE_PASS_ULPS, scale: float | None = None,
                           what: str = "") -> None:
    """Assert that two results of the same computation summed in another order agree (the module docstring's rule).

    ``actual``/``expected``: tensors of one shape, or Python floats. ``scale`` defaults to the larger magnitude of
    the two (largest entry of a tensor); pass the magnitude of the quantity explicitly when the compared values are
    differences or averages of larger terms.
    """
    a, b = _as_tensor(actual), _as_tensor(expected)
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}"
    dtype = a.dtype if a.is_floating_point() else torch.float32
    a, b = a.double(), b.double()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    magnitude = max(a.abs().max().item(), b.abs().max().item()) if a.numel() else 0.0
    scale = magnitude if scale is None else scale
    tolerance = reordered_tolerance(scale, ulps, dtype)
    used = diff / (torch.finfo(dtype).eps * scale) if scale > 0 else (0.0 if diff == 0 else math.inf)
    log = os.environ.get("CMG_TOLERANCE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "what": what,
                                "budget_ulps": ulps, "used_ulps": used,
                                "kernels": os.environ.get("ATEN_CPU_CAPABILITY", "native")}) + "\n")
    assert diff <= tolerance, (f"{what}: differ by {diff:.3g} = {used:.1f} ulps of {scale:.3g} "
                               f"(allowed {ulps} ulps of {dtype} for a reordered sum; tests/support/numerics.py)")
