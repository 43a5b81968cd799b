"""Model math of the trainer: modality-keyed modules, losses and the shared MM-EMA quantizer."""

from trainer.models.quantizer import MMEMAQuantizer, QuantizeOutput
from trainer.configs.model import LossConfig, QuantizerConfig, UniCodeConfig

__all__ = ["MMEMAQuantizer", "QuantizeOutput", "QuantizerConfig"]
from trainer.models.unicode import UniCodeModel
__all__ += ["LossConfig", "UniCodeConfig", "UniCodeModel"]  # noqa: E402
