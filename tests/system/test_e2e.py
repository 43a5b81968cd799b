"""The product path end to end on a world the demo does not use: unlabelled clips -> shards -> 2-process ZeRO-2
``trainer/main.py`` with the demo's config -> ``python -m trainer.evaluate`` on held-out labelled clips. The
demo's targets must hold here too (trainer.programs.bench.e2e runs more seeds and the baseline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from trainer.programs.bench.e2e import corpora, run_one  # noqa: E402
from trainer.programs.demo import DemoConfig  # noqa: E402


@pytest.mark.slow
def test_main_job_learns_a_unified_codebook_on_another_world(tmp_path):
    demo = DemoConfig()
    urls = corpora(tmp_path / "data", classes=4, seed=3, demo=demo)      # 4 events, synth seeds 16 / 17
    result = run_one("full", 2, urls, tmp_path / "run", ("run.seed=3", "data.seed=3"), demo)
    assert result["classes"] == 4
    missed = [t for t in result["targets"] if not t["met"]]
    assert not missed, result
