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


@dataclass(frozen=True)
class TaskSpec:
    config: type        # dataclass of the job's `model` section
    task: type          # built as task(config)
    # the modalities of a `model` section that the model pairs segment by segment (FCCID meets text at the coarse
    # level, a mean over segments); a job checks that their inputs have as many segments (trainer/job.py)
    aligned: Callable[[Any], tuple[str, ...]] = every_modality


TASKS: dict[str, TaskSpec] = {
    "unicode": TaskSpec(UniCodeConfig, UniCodeTask),
    "fccid": TaskSpec(FCCIDConfig, FCCIDTask, all_but_text),
    "comet": TaskSpec(COMETConfig, COMETTask),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "COMETTask", "FCCIDTask", "Task", "TaskSpec", "UniCodeTask", "task_spec"]
