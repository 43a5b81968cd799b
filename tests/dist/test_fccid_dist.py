"""FCCID on 2 ranks (gloo, fork workers) against one process on the global batch, training on every term of eq. 10:
replicated state bit-identical, and equal to one process."""

from pathlib import Path

import pytest
import torch
from dist_utils import assert_two_ranks_match_global_batch, init_gloo, run_ranks
from fccid_utils import DIMS, L, small_cfg

from trainer import distributed
from trainer.configs.model import CLUBConfig, FCCIDLossConfig, QuantizerConfig
from trainer.tasks import FCCIDTask

GLOBAL_BATCH, DIST_T, STEPS = 8, 4, 6
IN_BATCH_TERMS = ("cmcm", "cpc", "nce", "mi")


def _dist_batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    lengths = torch.randint(1, L + 1, (GLOBAL_BATCH,), generator=g)
    return {"audio": torch.randn(GLOBAL_BATCH, DIST_T, DIMS["audio"], generator=g),
            "video": torch.randn(GLOBAL_BATCH, DIST_T, 2, 2, DIMS["video"], generator=g),
            "text": torch.randn(GLOBAL_BATCH, L, DIMS["text"], generator=g),
            "text_mask": torch.arange(L) < lengths.unsqueeze(1)}


def _dist_train(rank: int, world: int) -> dict:
    # Every term of eq. 10: the in-batch ones over global negatives (the default), the per-sample ones averaged
    # over ranks; both give the global-batch gradient (tests/dist/test_unicode_dist.py says why SGD).
    cfg = small_cfg(quantizer=QuantizerConfig(num_codes=16, dim=16, reset_steps=2),
                    club=CLUBConfig(hidden_dim=16, inner_steps=3, lr=1e-2))
    torch.manual_seed(0)
    task = FCCIDTask(cfg)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1, momentum=0.9)   # see test_unicode_dist: not Adam
    per_step = []
    for step in range(STEPS):
        local = {k: v.chunk(world)[rank] for k, v in _dist_batch(step).items()}
        loss, metrics = task.compute_loss(task.prepare_batch(local), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients_(task.model.parameters())
        optimizer.step()
        per_step.append({**{k: metrics[k] for k in ("recon", "commit", *IN_BATCH_TERMS)}, **task.after_optimizer_step_()})
    return {"model": {k: v for k, v in task.model.state_dict().items() if not k.startswith("quantizer.")},
            "quantizer": task.model.quantizer.state_dict(), "club": task.club.state_dict(), "per_step": per_step}


def _dist_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    if world > 1:
        init_gloo(rank, world, port)
    torch.save(_dist_train(rank, world), out_dir / f"world{world}_rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_match_each_other_bitwise_and_one_process_on_the_global_batch(tmp_path):
    run_ranks(_dist_worker, 2, tmp_path, timeout=120)
    run_ranks(_dist_worker, 1, tmp_path, timeout=120)
    r0, r1, ref = (torch.load(tmp_path / f"world{w}_rank{r}.pt", weights_only=True)
                   for w, r in ((2, 0), (2, 1), (1, 0)))
    assert sum(int(s["codebook/resets"]) for s in ref["per_step"]) > 0, "the run must include code resets"
    assert_two_ranks_match_global_batch(r0, r1, ref, global_terms=IN_BATCH_TERMS)
