"""The demo's config (``python -m trainer.programs.demo``), torch-free: ``cmg bench e2e --help`` reads its defaults,
and the demo's module imports torch (through shards.synth)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shards.config import SynthConfig
from trainer.configs.load import REPO_ROOT

@dataclass
class DemoConfig:
    data_dir: str = "demo_data"
    # the pretraining corpus: unlabelled clips of a 5-event world (synth seed 0)
    pretrain: SynthConfig = field(default_factory=lambda: SynthConfig(num_clips=256, classes=5, seconds=10, seed=0,
                                                                       size=64, unlabelled=True))
    # the downstream corpus: other clips of the same world, labelled per second (synth seed 1)
    downstream: SynthConfig = field(default_factory=lambda: SynthConfig(num_clips=120, classes=5, seconds=10, seed=1,
                                                                         size=64))
    shard_max_count: int = 16
    job_config: str = str(REPO_ROOT / "launch" / "configs" / "demo.yaml")
    accelerate_config: str = str(REPO_ROOT / "launch" / "accelerate" / "cpu_zero2.yaml")
    processes: int = 2
    run_dir: str = "runs/demo"
    overrides: tuple[str, ...] = ()     # key=value on the job config (e.g. run.max_steps=100)
