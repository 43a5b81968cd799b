"""The task registry: ``TASKS`` maps the job config's ``task`` key to the task class (a ``trainer.tasks.base.Task``,
built as ``task(config)``); the config class of the task's ``model`` section is registered under the same name in
the torch-free ``trainer.configs.model.TASK_CONFIGS``, which types the job config before anything imports torch.

A new task is one module (its ``Task``; its config in a torch-free module) plus one line in each registry; nothing
else in the trainer names a task (tests/unit/test_task_contract.py runs every registered task through the same
contract).
"""

from __future__ import annotations

from trainer.configs.model import model_config_class
from trainer.tasks.base import Task
from trainer.tasks.comet import COMETTask
from trainer.tasks.fccid import FCCIDTask
from trainer.tasks.unicode import UniCodeTask

TASKS: dict[str, type[Task]] = {
    "unicode": UniCodeTask,
    "fccid": FCCIDTask,
    "comet": COMETTask,
}


def task_class(name: str) -> type[Task]:
    model_config_class(name)   # an unknown task: the KeyError naming the known ones (the two registries list the same)
    return TASKS[name]


__all__ = ["TASKS", "COMETTask", "FCCIDTask", "Task", "UniCodeTask", "task_class"]
