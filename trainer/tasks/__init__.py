"""Task objects: a batch of features in, ``(loss, metrics)`` out, so the training loop stays generic.

``TASKS`` maps the job config's ``task`` key to the typed config of its ``model`` section and the task class.
A task class takes that config and exposes: ``model`` (the nn.Module the engine wraps, with a ``quantizer``
submodule), ``forward_module``, ``prepare_batch``, ``compute_loss``, ``after_optimizer_step_``,
``code_usage_``, ``replicated_state``, ``state_dict``/``load_state_dict`` and ``to``.

Optional phase hooks (continual learning; trainer/loop.py calls them only when the task defines them):
- ``begin_phase_(previous, extra) -> model config``: right after ``run.init_from`` was loaded into the model
  (``load_model_weights``) and before the optimiser and engine exist, so the task may still grow the model.
  ``previous`` is the checkpoint directory that was loaded, ``extra`` the dict the previous phase's
  ``extra_state`` handed over (``{}`` if none). Returns the model config as the phase now stands; the loop writes
  that one into every checkpoint's meta.json (it is what rebuilds the model later).
- ``end_phase_(batches, device) -> metrics``: once, after the last optimizer step and before the final
  checkpoint, with the run's batch iterator (this phase's data) and device; collective (every rank calls it).
  Its metrics are logged at the final step.
- ``extra_state() -> dict``: tensors (and containers of them) for the next phase; when non-empty, rank 0 writes
  it into each checkpoint as ``task_extra.pt`` (read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.models.comet import COMETConfig
from trainer.models.fccid import FCCIDConfig
from trainer.models.unicode import UniCodeConfig
from trainer.tasks.comet import COMETTask
from trainer.tasks.fccid import FCCIDTask
from trainer.tasks.unicode import UniCodeTask


@dataclass(frozen=True)
class TaskSpec:
    config: type        # dataclass of the job's `model` section
    task: type          # built as task(config)


TASKS: dict[str, TaskSpec] = {
    "unicode": TaskSpec(UniCodeConfig, UniCodeTask),
    "fccid": TaskSpec(FCCIDConfig, FCCIDTask),
    "comet": TaskSpec(COMETConfig, COMETTask),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "COMETTask", "FCCIDTask", "TaskSpec", "UniCodeTask", "task_spec"]
