"""cmg-trainer: pretraining, evaluation and use of multimodal shared-codebook models (Uni-Code, FCCID, COMET).

    from trainer import CMGModel      # a trained model: clips in, codes out (trainer/pretrained.py)

Importing the package itself imports nothing heavy (``CMGModel`` is loaded on first use), so ``python -m trainer`` and
the ``cmg`` command start without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.pretrained import CMGModel

__all__ = ["CMGModel"]


def __getattr__(name: str):
    if name == "CMGModel":
        from trainer.pretrained import CMGModel

        return CMGModel
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
