"""Task objects: a batch of features in, ``(loss, metrics)`` out, so the training loop stays generic."""

from trainer.tasks.unicode import UniCodeTask

__all__ = ["UniCodeTask"]
