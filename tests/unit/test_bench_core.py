"""trainer.programs.bench.core's FLOP accounting, against hand-computed counts."""

import torch

from trainer.programs.bench.core import counted_flops, matmul_flops_per_s


def test_flop_counter_counts_a_matmul_and_its_backward_by_hand():
    a, b = torch.randn(64, 32, requires_grad=True), torch.randn(32, 16)
    assert counted_flops(lambda: torch.mm(a, b)) == 2 * 64 * 32 * 16
    # backward of a @ b with respect to a: grad (64 16) @ b.T (16 32), one more matmul of the same size
    assert counted_flops(lambda: torch.mm(a, b).sum().backward()) == 2 * (2 * 64 * 32 * 16)


def test_matmul_speed_is_a_positive_rate():
    assert matmul_flops_per_s(size=128, repeats=2) > 0
