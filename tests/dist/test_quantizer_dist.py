"""MM-EMA quantizer under data parallelism: 2 gloo ranks (fork workers) vs one process.

Each rank sees half of every global batch, split again into two micro-batches (gradient accumulation).
After steps that include data init and code resets, both ranks' state must be bit-identical, and equal
(up to the reordering of its sums: tests/support/numerics.py) to a single process that saw each whole global batch in one call.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_utils import init_gloo, run_ranks
from numerics import COMPOUNDED_ULPS, assert_reordered_close
from trainer import distributed
from trainer.models.quantizer import MMEMAQuantizer
from trainer.configs.model import QuantizerConfig

AV = ("audio", "video")
WORLD, CLIPS, SEGMENTS, STEPS = 2, 8, 3, 8


def _global_batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(11)
    return [{m: torch.randn(CLIPS, SEGMENTS, 8, generator=gen) for m in AV} for _ in range(STEPS)]


def _config(ema_mode: str, r_source: str) -> QuantizerConfig:
    # 48 vectors per global step for 16 codes and N_re = 2: some codes miss a modality for 2 steps -> resets
    return QuantizerConfig(num_codes=16, dim=8, reset_steps=2, ema_mode=ema_mode, r_source=r_source, seed=7)


def _train(q: MMEMAQuantizer, batches, micro_batches: int, reduce_calls: list[int]) -> list[dict]:
    """Training steps as the task runs them; asserts one all_reduce per step_ and none elsewhere."""
    stats = []
    for semantic in batches:
        calls_before = len(reduce_calls)
        for chunk in range(micro_batches):
            part = {m: z.chunk(micro_batches)[chunk] for m, z in semantic.items()}
            q.maybe_init_(part)
            q.accumulate_(part, {m: q.quantize(z).codes for m, z in part.items()})
        assert len(reduce_calls) == calls_before, "all_reduce outside step_"
        stats.append(q.step_())
        assert len(reduce_calls) == calls_before + 1, "step_ must issue exactly one all_reduce"
    return stats


def _rank_worker(rank: int, world: int, port: int, out_dir: Path, cfg: QuantizerConfig, batches) -> None:
    init_gloo(rank, world, port)
    reduce_calls: list[int] = []

    def counting_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        reduce_calls.append(tensor.numel())
        return distributed.all_reduce_sum_(tensor)

    q = MMEMAQuantizer(cfg, AV, counting_all_reduce, distributed.all_gather_cat).train()
    # rank r holds clips [r·B/2, (r+1)·B/2): all_gather_cat puts rank 0's rows first, like the global batch
    local = [{m: z.chunk(world)[rank] for m, z in semantic.items()} for semantic in batches]
    stats = _train(q, local, micro_batches=2, reduce_calls=reduce_calls)
    torch.save({"state": q.state_dict(), "resets": [int(s["resets"]) for s in stats],
                "reduce_sizes": reduce_calls}, out_dir / f"rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("ema_mode, r_source", [("joint", "paired"), ("joint", "cross_attention"),
                                                 ("sequential", "paired")])
def test_two_ranks_bit_identical_and_equal_to_one_process(tmp_path, ema_mode, r_source):
    cfg = _config(ema_mode, r_source)
    batches = _global_batches()
    run_ranks(_rank_worker, WORLD, tmp_path, cfg, batches, timeout=90)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    reference_calls: list[int] = []
    reference = MMEMAQuantizer(cfg, AV, lambda t: reference_calls.append(t.numel()) or t, lambda t: t).train()
    # data init happens at the first forward, i.e. on the all-gathered FIRST micro-batches: rank 0's
    # clips 0-1 then rank 1's clips 4-5 of the first global batch
    reference.maybe_init_({m: torch.cat([z[0:2], z[4:6]]) for m, z in batches[0].items()})
    reference_stats = _train(reference, batches, micro_batches=1, reduce_calls=reference_calls)

    assert sum(ranks[0]["resets"]) > 0, "the run must include code resets"
    assert ranks[0]["resets"] == ranks[1]["resets"] == [int(s["resets"]) for s in reference_stats]
    # one flat fp32 all_reduce per step: counts (k m) + sums (g m d), g = k in sequential mode
    groups = len(AV) if ema_mode == "sequential" else 1
    assert ranks[0]["reduce_sizes"] == [len(AV) * 16 + groups * 16 * 8] * STEPS
    expected = reference.state_dict()
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), f"{name} differs between ranks"
        if value.is_floating_point():
            assert_reordered_close(value, expected[name], ulps=COMPOUNDED_ULPS, what=name)
        else:   # step, last_used, initialized, generator state
            assert torch.equal(value, expected[name]), name
