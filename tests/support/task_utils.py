"""Continual phases for tests: phase checkpoints (as the main job writes them) and phases files (as the continual
launcher, trainer/programs/continual.py and slurm/continual.sh, reads them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from trainer.checkpoint_format import CheckpointManager, CheckpointMeta
from trainer.checkpoint import save_rank_state, write_model_state, write_task_extra
from trainer.configs.load import to_dict


def write_phase(run_dir: Path, task, model_cfg, step: int) -> Path:
    """A complete checkpoint of a COMET ``task`` (model file, meta.json with ``model_config``, the task's hand-over)
    as the main job writes it at the end of a continual phase; returns the checkpoint directory."""
    def write(tmp: Path) -> None:
        write_model_state(tmp, task.model.state_dict())
        extra = task.extra_state()
        if extra:
            write_task_extra(tmp, extra)
        save_rank_state(tmp, {})

    return CheckpointManager(Path(run_dir) / "checkpoints").save(
        step, write, CheckpointMeta(step, 1, task="comet", model_config=to_dict(model_cfg)))


def write_phases(path: Path, phases: list[dict], **top) -> Path:
    """A phases file at ``path`` for the continual launcher: the demo config, ``phases``, other top-level keys."""
    path.write_text(yaml.safe_dump({"config": "launch/configs/demo.yaml", "phases": phases, **top}))
    return path
