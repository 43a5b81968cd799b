"""COMET on 2 ranks (gloo, fork workers): codebook expansion and the EWC Fisher are identical on both ranks and
equal to one process on the global batch."""

from __future__ import annotations

import pytest
import torch
from comet_utils import comet_batch, comet_config, identity, trained_quantizer
from dist_utils import init_gloo, run_ranks
from numerics import COMPOUNDED_ULPS, assert_reordered_close

from trainer import distributed
from trainer.tasks.comet import COMETTask


def _expand_on_two_ranks(rank: int, world: int, port: int) -> None:
    init_gloo(rank, world, port)
    q = trained_quantizer(distributed.all_reduce_sum_, slice(2 * rank, 2 * rank + 2))
    q.expand_(3)
    buffers = torch.cat([q.codebook.flatten(), q.ema_sum.flatten(), q.ema_count, q.last_used.flatten().float(),
                         torch.tensor([q.stats_accumulator.numel()], dtype=torch.float32)])
    both = distributed.all_gather_cat(buffers.unsqueeze(0))
    assert torch.equal(both[0], both[1])                             # bit-identical on both ranks
    reference = trained_quantizer()                                  # one process on the whole batch
    reference.expand_(3)
    assert_reordered_close(q.codebook, reference.codebook, ulps=COMPOUNDED_ULPS, what="codebook")
    assert torch.equal(q.last_used, reference.last_used)


@pytest.mark.slow
def test_expansion_is_identical_on_two_ranks():
    run_ranks(_expand_on_two_ranks, 2, timeout=60)


GLOBAL = 8


def _fisher(rank: int, world: int, all_reduce) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    task = COMETTask(comet_config(), all_reduce_fn=all_reduce)
    batch = comet_batch(("video", "text"), b=GLOBAL, seed=3)
    local = GLOBAL // world
    task.end_phase_(iter([{m: v[rank * local:(rank + 1) * local] for m, v in batch.items()}]), "cpu")
    return task.extra_state()["ewc_fisher"]


def _fisher_on_two_ranks(rank: int, world: int, port: int) -> None:
    init_gloo(rank, world, port)
    fisher = _fisher(rank, world, distributed.all_reduce_sum_)
    flat = torch.cat([fisher[n].flatten() for n in sorted(fisher)])
    both = distributed.all_gather_cat(flat.unsqueeze(0))
    assert torch.equal(both[0], both[1])                            # identical on every rank
    reference = _fisher(0, 1, identity)                              # one process, the whole global batch
    for n in fisher:
        assert_reordered_close(fisher[n], reference[n], what=n)


@pytest.mark.slow
def test_fisher_is_identical_across_ranks_and_equals_one_process_on_the_global_batch():
    run_ranks(_fisher_on_two_ranks, 2, timeout=90)
