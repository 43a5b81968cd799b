"""Global negatives through trainer/main.py under ZeRO-2: 2 ranks × B/2 train what 1 process × B trains.

The data makes every step's global batch the same clips in the same order for any world size: two feature
shards of B/2 clips, no in-shard shuffle, one logical worker per rank. One process reads shard o[0] then o[1]
into one batch of B; two ranks read o[0] and o[1] into batches of B/2 that gather, in rank order, into the
same B rows. Every step's loss terms (logged from rank 0, averaged over ranks) must then agree with the single
process, and so must the trained model, with ``model.negatives=global`` (the default). With ``local`` they must
not: CPC, CMCM and the CLUB bound then score each rank's clips against its half batch only.

Per-term gradients, one forward at a time, are checked in tests/dist/test_negatives_dist.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from job_utils import DEMO_CONFIG, REPO, final_model, job_env, read_metrics
from numerics import COMPOUNDED_ULPS, assert_reordered_close

from trainer.programs.bench.scaling import write_feature_shards
from trainer.programs.harness import free_port, run_child

GLOBAL_BATCH, STEPS = 8, 4
TERMS = ("loss", "recon", "commit", "cpc", "cmcm", "mi")
IN_BATCH = ("cpc", "cmcm", "mi")


@pytest.fixture(scope="module")
def feature_urls(tmp_path_factory) -> str:
    return write_feature_shards(tmp_path_factory.mktemp("features"), clips=GLOBAL_BATCH,
                                clips_per_shard=GLOBAL_BATCH // 2, shapes={"audio": (16,), "video": (4, 24)},
                                segments=4)


def train(run_dir: Path, urls: str, processes: int, negatives: str) -> list[dict]:
    """The demo config on the feature shards through `python -m trainer.programs.supervisor` (cpu_zero2.yaml,
    ZeRO-2)."""
    args = ["--config", str(DEMO_CONFIG), f"run.dir={run_dir}", f"run.max_steps={STEPS}", "run.progress=false",
            "data.kind=features", "data.feature_modalities=[audio,video]", f"data.urls={urls}",
            f"data.batch_size={GLOBAL_BATCH // processes}", "data.num_workers=0", "data.shuffle_buffer=0",
            "tracking.log_every=1", "tracking.flush_interval_s=0", f"model.negatives={negatives}",
            "model.encoder.dropout=0.0",          # dropout masks come from per-rank RNG streams
            "model.quantizer.reset_steps=2"]      # resets within the 4 steps: they draw from the global batch too
    run_child([sys.executable, "-m", "trainer.programs.supervisor", "--config_file",
               str(REPO / "launch" / "accelerate" / "cpu_zero2.yaml"), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), str(REPO / "trainer" / "main.py"), *args],
              f"{processes}-process job", cwd=REPO, env=job_env(), timeout=300)
    return read_metrics(run_dir)


@pytest.mark.slow
@pytest.mark.numerics
def test_two_ranks_with_global_negatives_train_what_one_process_trains_and_local_ones_do_not(tmp_path,
                                                                                           feature_urls):
    one = train(tmp_path / "one", feature_urls, 1, "global")
    two = train(tmp_path / "two", feature_urls, 2, "global")
    local = train(tmp_path / "local", feature_urls, 2, "local")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    assert sum(r["codebook/resets"] for r in one) > 0, "the runs should include code resets"
    for a, b in zip(one, two):
        for term in TERMS:
            assert_reordered_close(b[term], a[term], ulps=COMPOUNDED_ULPS, what=f"step {a['step']} {term}")
    # The codebook is the EMA of every step's z: it agrees only if the encoders trained alike. (Not every weight is
    # compared: a few have an exactly-zero gradient, e.g. the bias of a softmax scorer, and Adam turns their
    # rounding noise into ±lr steps in either run; tests/dist/test_codebook_dist.py compares weights under SGD.)
    reference, model = final_model(tmp_path / "one"), final_model(tmp_path / "two")
    for name in ("quantizer.codebook", "quantizer.ema_count", "quantizer.ema_sum"):
        assert_reordered_close(model[name], reference[name], ulps=COMPOUNDED_ULPS, what=name)
    assert torch.equal(model["quantizer.last_used"], reference["quantizer.last_used"])   # same resets, same steps
    # local negatives: the very first step already scores against half the candidates
    for term in IN_BATCH:
        assert local[0][term] != pytest.approx(one[0][term], rel=1e-3), (term, local[0][term], one[0][term])
