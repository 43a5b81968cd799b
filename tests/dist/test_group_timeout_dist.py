"""``trainer.distributed.set_new_group_timeout``: a process group created after it (as DeepSpeed creates its clone
of the world group) fails a collective that a stalled rank never joins within that timeout, not torch's 30 min."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
from dist_utils import init_gloo, run_ranks

from trainer import distributed


def _worker(rank: int, world: int, port: int, tmp_path) -> None:
    import torch.distributed as dist

    init_gloo(rank, world, port)
    distributed.set_new_group_timeout(timedelta(seconds=3))
    group = dist.new_group(ranks=list(range(world)))                 # what deepspeed.utils.groups does
    if rank == 1:                                                    # the stalled rank: never joins
        time.sleep(12)
        return
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        dist.all_reduce(torch.ones(4), group=group)
    waited = time.monotonic() - start
    assert 2.0 < waited < 10.0, f"the collective failed after {waited:.1f} s, not the 3 s timeout"


@pytest.mark.slow
def test_a_new_group_times_out_like_the_world_group(tmp_path):
    run_ranks(_worker, 2, tmp_path, timeout=60)
