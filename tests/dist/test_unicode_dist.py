"""2 ranks (gloo, fork workers) vs 1 process on the concatenated global batch, training on every Uni-Code term.

What is compared, and why it can be exact: with global-batch negatives (``model.negatives="global"``, the
default) every rank computes CPC, CMCM and the CLUB bound over the gathered global batch and keeps the gradient
of its own rows (tests/dist/test_negatives_dist.py checks each term's value and gradient on its own); the
per-sample terms, reconstruction and commitment, average over ranks to the global-batch gradient. Then, after
N steps that include code resets:
- quantizer buffers (codebook, EMA counts/sums, usage clock, step, reset-generator state): MM-EMA sums the
  ranks' counts and sums with one all_reduce, so both ranks apply the same update;
- CLUB estimator weights: their own objective (log-likelihood of the paired (z, z̄)) is per-sample, and
  their gradients are averaged across ranks before each inner Adam step;
- every model parameter (plain SGD with momentum, gradients averaged by one all_reduce per step)
are bit-identical on both ranks and equal up to the reordering of sums (tests/support/numerics.py) to one process that saw the whole batch each step
(r_source "paired" as the issue asks, and the default "cross_attention", which is per clip too).
Step statistics (resets, codes used) agree exactly.

The model optimiser is SGD, not Adam: some gradients are exactly zero in exact arithmetic (attention key
biases, the bias of a softmax scorer) and only rounding noise in practice; Adam divides that noise by its
own magnitude and turns it into ±lr steps, in one process as much as in two, so it would test Adam's
noise amplification rather than distributed exactness.
"""

import pytest
import torch
from dist_utils import assert_two_ranks_match_global_batch, init_gloo, run_ranks
from unicode_utils import small_unicode_config, unicode_batch

from trainer import distributed
from trainer.tasks import UniCodeTask

GLOBAL_BATCH, STEPS = 8, 6


def _train(rank: int, world: int, r_source: str, padded: bool) -> dict:
    torch.manual_seed(0)                                     # identical initial weights on every rank
    task = UniCodeTask(small_unicode_config(r_source))
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1, momentum=0.9)
    per_step = []
    for step in range(STEPS):
        local = {k: v.chunk(world)[rank] for k, v in unicode_batch(step, GLOBAL_BATCH, padded).items()}
        loss, metrics = task.compute_loss(local, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients_(task.model.parameters())
        optimizer.step()
        stats = task.after_optimizer_step_()
        per_step.append({**{k: metrics[k] for k in ("recon", "commit", "cpc", "cmcm", "mi")}, **stats})
    return {
        "model": {k: v for k, v in task.model.state_dict().items() if not k.startswith("quantizer.")},
        "quantizer": task.model.quantizer.state_dict(),
        "club": task.club.state_dict(),
        "per_step": per_step,
    }


def _worker(rank: int, world: int, port: int, out_dir, r_source: str, padded: bool) -> None:
    if world > 1:
        init_gloo(rank, world, port)
    torch.save(_train(rank, world, r_source, padded), out_dir / f"world{world}_rank{rank}.pt")


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("r_source, padded", [("paired", False), ("cross_attention", False),
                                              ("cross_attention", True)])
def test_two_ranks_match_each_other_bitwise_and_one_process_on_the_global_batch(tmp_path, r_source, padded):
    """``padded``: clips of 3 or 4 real segments with a ``segment_mask`` (trainer/models/inputs.py): the mask is
    gathered with the in-batch negatives, and the masked statistics are reduced like the others."""
    run_ranks(_worker, 2, tmp_path, r_source, padded, timeout=120)
    run_ranks(_worker, 1, tmp_path, r_source, padded, timeout=120)
    r0, r1 = _load(tmp_path / "world2_rank0.pt"), _load(tmp_path / "world2_rank1.pt")
    ref = _load(tmp_path / "world1_rank0.pt")

    resets = sum(int(s["codebook/resets"]) for s in ref["per_step"])
    assert resets > 0, "the run must include code resets"
    assert_two_ranks_match_global_batch(r0, r1, ref, global_terms=("cpc", "cmcm", "mi"))
