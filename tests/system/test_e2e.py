"""The product path end to end on a world the demo does not use: unlabelled clips -> shards -> 2-process ZeRO-2
``trainer/main.py`` with the demo's config (its codebook sized for this world's 4 events, as the recipe sizes it:
``trainer.programs.bench.e2e.world_codes``) -> ``python -m trainer.programs.evaluate`` on held-out labelled clips.

It checks the margin the demo's recipe keeps on every run of its sweep (``trainer.programs.demo.MARGIN``;
docs/recipe_sweep.md): the e2e world, one of the sweep's seeds at one of its CPU kernel levels, pinned so that the
trajectory does not depend on whether this machine has AVX-512. What still differs between two CPUs of that level
(MKL's blocking per CPU model) moves the run like another seed would, and the sweep shows that every seed at that
level keeps the margin, so a rounding difference cannot take the run below the demo's targets.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from trainer.programs.bench.e2e import E2E_WORLD, corpora, run_one, world_codes  # noqa: E402
from trainer.programs.config import DemoConfig
from trainer.programs.kernels import kernel_env  # noqa: E402

SEED = 0          # one of the sweep's seeds (docs/results/recipe_e2e.md lists this run)
KERNELS = "avx2"  # one of the sweep's kernel levels, and one that every x86-64 CPU of the last decade has


@pytest.mark.slow
def test_main_job_learns_a_unified_codebook_on_another_world(tmp_path):
    demo = DemoConfig()
    urls = corpora(tmp_path / "data", E2E_WORLD["classes"], E2E_WORLD["seed"], demo)   # the sweep's --world e2e
    codes = f"model.quantizer.num_codes={world_codes(E2E_WORLD['classes'])}"          # the recipe's, for 4 events
    result = run_one("full", 2, urls, tmp_path / "run", (f"run.seed={SEED}", f"data.seed={SEED}", codes), demo,
                     kernel_env(KERNELS))
    assert result["classes"] == 4
    missed = [t for t in result["margin"] if not t["met"]]
    assert not missed, result
    assert all(t["met"] for t in result["targets"])       # the margin is stricter than every target
