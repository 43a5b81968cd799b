"""Uni-Code and FCCID on 2 ranks (gloo, fork workers) against one process on the concatenated global batch, training
on every term of the model (FCCID: every term of eq. 10).

What is compared, and why it can be exact: with global-batch negatives (``model.negatives="global"``, the
default) every rank computes the in-batch terms (CPC, CMCM, the CLUB bound; FCCID's InfoNCE too) over the gathered
global batch and keeps the gradient of its own rows (tests/dist/test_negatives_dist.py checks each term's value and
gradient on its own); the per-sample terms, reconstruction and commitment, average over ranks to the global-batch
gradient. Then, after N steps that include code resets:
- quantizer buffers (codebook, EMA counts/sums, usage clock, step, reset-generator state): MM-EMA sums the
  ranks' counts and sums with one all_reduce, so both ranks apply the same update;
- CLUB estimator weights: their own objective (log-likelihood of the paired (z, z̄)) is per-sample, and
  their gradients are averaged across ranks before each inner Adam step;
- every model parameter (plain SGD with momentum, gradients averaged by one all_reduce per step)
are bit-identical on both ranks and equal up to the reordering of sums (tests/support/numerics.py) to one process
that saw the whole batch each step (Uni-Code with r_source "paired" as the issue asks, and the default
"cross_attention", which is per clip too; FCCID with the default). Step statistics (resets, codes used) agree
exactly.

The model optimiser is SGD, not Adam: some gradients are exactly zero in exact arithmetic (attention key
biases, the bias of a softmax scorer) and only rounding noise in practice; Adam divides that noise by its
own magnitude and turns it into ±lr steps, in one process as much as in two, so it would test Adam's
noise amplification rather than distributed exactness.
"""

from pathlib import Path

import pytest
import torch
from dist_utils import assert_two_ranks_match_global_batch, init_gloo, run_ranks
from fccid_utils import fccid_batch, small_cfg
from unicode_utils import small_unicode_config, unicode_batch

from trainer import distributed
from trainer.tasks import FCCIDTask, UniCodeTask

GLOBAL_BATCH, STEPS = 8, 6
# the terms computed over the global batch (global negatives), by model
IN_BATCH_TERMS = {"unicode": ("cpc", "cmcm", "mi"), "fccid": ("cmcm", "cpc", "nce", "mi")}


def _task(kind: str, r_source: str) -> UniCodeTask | FCCIDTask:
    """FCCID gets Uni-Code's toy codebook and CLUB (16 codes reset after 2 idle steps, 3 inner steps)."""
    unicode = small_unicode_config(r_source)
    if kind == "unicode":
        return UniCodeTask(unicode)
    return FCCIDTask(small_cfg(quantizer=unicode.quantizer, club=unicode.club))


def _global_batch(kind: str, step: int, padded: bool) -> dict[str, torch.Tensor]:
    if kind == "unicode":
        return unicode_batch(step, GLOBAL_BATCH, padded)
    return fccid_batch(GLOBAL_BATCH, seed=1000 + step)


def _train(rank: int, world: int, kind: str, r_source: str, padded: bool) -> dict:
    torch.manual_seed(0)                                     # identical initial weights on every rank
    task = _task(kind, r_source)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1, momentum=0.9)
    per_step = []
    for step in range(STEPS):
        local = {k: v.chunk(world)[rank] for k, v in _global_batch(kind, step, padded).items()}
        loss, metrics = task.compute_loss(task.prepare_batch(local), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients_(task.model.parameters())
        optimizer.step()
        stats = task.after_optimizer_step_()
        per_step.append({**{k: metrics[k] for k in ("recon", "commit", *IN_BATCH_TERMS[kind])}, **stats})
    return {
        "model": {k: v for k, v in task.model.state_dict().items() if not k.startswith("quantizer.")},
        "quantizer": task.model.quantizer.state_dict(),
        "club": task.club.state_dict(),
        "per_step": per_step,
    }


def _worker(rank: int, world: int, port: int, out_dir: Path, kind: str, r_source: str, padded: bool) -> None:
    if world > 1:
        init_gloo(rank, world, port)
    torch.save(_train(rank, world, kind, r_source, padded), out_dir / f"world{world}_rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("kind, r_source, padded", [("unicode", "paired", False),
                                                    ("unicode", "cross_attention", False),
                                                    ("unicode", "cross_attention", True),
                                                    ("fccid", "cross_attention", False)])
def test_two_ranks_match_each_other_bitwise_and_one_process_on_the_global_batch(tmp_path, kind, r_source, padded):
    """``padded``: clips of 3 or 4 real segments with a ``segment_mask`` (trainer/models/inputs.py): the mask is
    gathered with the in-batch negatives, and the masked statistics are reduced like the others. FCCID's captions
    are padded in every case (``text_mask``)."""
    run_ranks(_worker, 2, tmp_path, kind, r_source, padded, timeout=120)
    run_ranks(_worker, 1, tmp_path, kind, r_source, padded, timeout=120)
    r0, r1, ref = (torch.load(tmp_path / f"world{w}_rank{r}.pt", weights_only=True)
                   for w, r in ((2, 0), (2, 1), (1, 0)))
    assert sum(int(s["codebook/resets"]) for s in ref["per_step"]) > 0, "the run must include code resets"
    assert_two_ranks_match_global_batch(r0, r1, ref, global_terms=IN_BATCH_TERMS[kind])
