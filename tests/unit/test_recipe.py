"""The demo's recipe is one rule for every world (docs/recipe_sweep.md): the codebook is sized for the world's
events (``world_codes``), and ``launch/configs/demo.yaml`` holds that size for ``make demo``'s world, so the demo and
the sweep's pages train the same recipe."""

from trainer.configs.load import load_config
from trainer.configs.job import JobConfig
from trainer.programs.bench.e2e import E2E_WORLD, world_classes, world_codes
from trainer.programs.config import DemoConfig


def test_the_demo_config_has_the_codebook_the_rule_gives_its_world():
    demo = DemoConfig()
    assert demo.pretrain.classes == demo.downstream.classes == world_classes("demo", 0, demo) == 5
    assert load_config(JobConfig, demo.job_config).model.quantizer.num_codes == world_codes(5) == 12


def test_the_e2e_world_gets_the_codebook_of_its_events():
    assert world_classes("e2e", 0, DemoConfig()) == E2E_WORLD["classes"] == 4
    assert world_codes(4) == 10
    assert world_classes("per-seed", 7, DemoConfig()) == 7
