"""Task objects: a batch of features in, ``(loss, metrics)`` out, so the training loop stays generic.

``TASKS`` maps the job config's ``task`` key to the typed config of its ``model`` section and the task class.
A task class takes that config and exposes: ``model`` (the nn.Module the engine wraps, with a ``quantizer``
submodule), ``forward_module``, ``prepare_batch``, ``compute_loss``, ``after_optimizer_step_``,
``code_usage_``, ``replicated_state``, ``state_dict``/``load_state_dict`` and ``to``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.models.fccid import FCCIDConfig
from trainer.models.unicode import UniCodeConfig
from trainer.tasks.fccid import FCCIDTask
from trainer.tasks.unicode import UniCodeTask


@dataclass(frozen=True)
class TaskSpec:
    config: type        # dataclass of the job's `model` section
    task: type          # built as task(config)


TASKS: dict[str, TaskSpec] = {
    "unicode": TaskSpec(UniCodeConfig, UniCodeTask),
    "fccid": TaskSpec(FCCIDConfig, FCCIDTask),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "FCCIDTask", "TaskSpec", "UniCodeTask", "task_spec"]
