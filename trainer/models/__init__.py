"""Model math of the trainer: modality-keyed modules, losses and the shared MM-EMA quantizer."""

from trainer.models.quantizer import MMEMAQuantizer, QuantizeOutput, QuantizerConfig

__all__ = ["MMEMAQuantizer", "QuantizeOutput", "QuantizerConfig"]
from trainer.models.unicode import LossConfig, UniCodeConfig, UniCodeModel  # noqa: E402
__all__ += ["LossConfig", "UniCodeConfig", "UniCodeModel"]  # noqa: E402
