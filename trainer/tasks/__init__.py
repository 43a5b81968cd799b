"""The task registry: ``TASKS`` maps the job config's ``task`` key to the typed config of its ``model`` section
and the task class (a ``trainer.tasks.base.Task``, built as ``task(config)``).

A new task is one module (its config, model and ``Task``) plus one line here; nothing else in the trainer
names a task (tests/unit/test_task_contract.py runs every registered task through the same contract).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.models.comet import COMETConfig
from trainer.models.fccid import FCCIDConfig
from trainer.models.unicode import UniCodeConfig
from trainer.tasks.base import Task
from trainer.tasks.comet import COMETTask
from trainer.tasks.fccid import FCCIDTask
from trainer.tasks.unicode import UniCodeTask


def every_modality(model: Any) -> tuple[str, ...]:
    return tuple(model.modalities)


def all_but_text(model: Any) -> tuple[str, ...]:
    return tuple(m for m in model.modalities if m != "text")


def unicode_cpc_steps(model: UniCodeConfig) -> int:
    eff = model.effective()
    return eff.cpc.steps_for(len(eff.modalities)) if eff.use_cpc else 0


def fccid_cpc_steps(model: FCCIDConfig) -> int:
    return model.cpc.steps_for(len(all_but_text(model)))


@dataclass(frozen=True)
class TaskSpec:
    config: type        # dataclass of the job's `model` section
    task: type          # built as task(config)
    # the modalities of a `model` section that the model pairs segment by segment (FCCID meets text at the coarse
    # level, a mean over segments); a job checks that their inputs have as many segments (trainer/job.py)
    aligned: Callable[[Any], tuple[str, ...]] = every_modality
    # the Cross-CPC prediction steps K of a `model` section (0: no Cross-CPC); a clip needs more seconds than that
    cpc_steps: Callable[[Any], int] = unicode_cpc_steps
    # whether the task trains on clips padded to the window (``segment_mask``, data.decode.min_seconds)
    pads: bool = True


TASKS: dict[str, TaskSpec] = {
    "unicode": TaskSpec(UniCodeConfig, UniCodeTask),
    "fccid": TaskSpec(FCCIDConfig, FCCIDTask, all_but_text, fccid_cpc_steps),
    # COMET's gate balance, pseudo-modality Cross-CPC and per-clip Fisher take no segment mask (yet): whole windows
    "comet": TaskSpec(COMETConfig, COMETTask, pads=False),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "COMETTask", "FCCIDTask", "Task", "TaskSpec", "UniCodeTask", "task_spec"]
