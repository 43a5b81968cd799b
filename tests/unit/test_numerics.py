"""tests/support/numerics.py: the reordered-sum tolerance, on hand-computed values and on a real reordering."""

import pytest
import torch
from numerics import ONE_PASS_ULPS, COMPOUNDED_ULPS, assert_reordered_close, reordered_tolerance


def test_tolerance_is_ulps_of_the_dtype_at_the_magnitude():
    assert reordered_tolerance(4.0, 64) == 64 * 2.0 ** -23 * 4.0           # float32 eps = 2^-23
    assert reordered_tolerance(1.0, 1, torch.float64) == 2.0 ** -52
    assert reordered_tolerance(2.0, 8, torch.bfloat16) == 8 * 2.0 ** -7 * 2.0
    assert COMPOUNDED_ULPS > ONE_PASS_ULPS


def test_a_sum_in_another_order_differs_but_within_one_pass():
    x = torch.tensor([1e8, 1.0, -1e8])                          # float32: ulp(1e8) = 8, so 1e8 + 1 rounds to 1e8
    first, second = (x[0] + x[1]) + x[2], (x[0] + x[2]) + x[1]   # the same three terms in two orders
    assert (first.item(), second.item()) == (0.0, 1.0)          # rounding does differ: this is what the rule is for
    assert_reordered_close(first, second, scale=x.abs().sum().item())   # 1 is 0.04 ulps of sum |x| = 2e8 + 1
    with pytest.raises(AssertionError):
        assert_reordered_close(first, second)                   # at the magnitude of the results it is not close


def test_a_real_difference_fails_with_a_message_in_ulps():
    with pytest.raises(AssertionError, match=r"loss: differ by .* ulps of 5"):
        assert_reordered_close(5.0, 5.001, what="loss")
    with pytest.raises(AssertionError, match="shapes"):
        assert_reordered_close(torch.zeros(2), torch.zeros(3))


def test_tensors_are_compared_at_their_largest_entry():
    big = torch.tensor([1000.0, 1e-3])
    assert_reordered_close(big, big + torch.tensor([0.0, 1e-3]))   # 1e-3 is 8 ulps of 1000: within one pass
    with pytest.raises(AssertionError):
        assert_reordered_close(big, big + torch.tensor([0.0, 1.0]))


def test_zero_is_compared_exactly():
    assert_reordered_close(0.0, 0.0)
    with pytest.raises(AssertionError):
        assert_reordered_close(0.0, 1e-30)
