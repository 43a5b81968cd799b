"""VGG-19 (frames) and VGGish (log-mel examples): the CMG papers' feature extractors, as plain torch modules.

Module layouts follow the public PyTorch ports so their state dicts load key for key:
- ``VGG``: torchvision's ``features`` Sequential (torchvision/models/vgg.py, ``make_layers(cfgs["E"])``): a 3x3
  conv (padding 1) + ReLU per integer of ``layers``, a 2x2 max-pool per "M", so module indices, and with them
  the ``features.<i>.weight`` keys of ``vgg19-dcbb9e9d.pth``, are torchvision's. The output is the last pool's
  map (pool5: 512 x 7 x 7 at 224 px); torchvision's ``avgpool`` and ``classifier`` head are not built.
- ``VGGish``: torchvggish's ``VGG`` (torchvggish/vggish.py): a one-channel VGG stack over a 96-frame x 64-band
  log-mel example, flattened channels-last (the TF checkpoint's order) into ``embeddings``: Linear layers to
  4096, 4096 and 128, each followed by a ReLU, the last one included as in torchvggish (the released AVE audio
  features are >= 0 with most entries exactly 0: taken after that ReLU). ``pproc`` (optional) is torchvggish's
  ``Postprocessor``: the AudioSet PCA + whitening and 8-bit quantisation (vggish_postprocess.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

VGG19_LAYERS: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]   # torchvision cfgs["E"]
VGGISH_LAYERS: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]   # torchvggish make_layers

# vggish_params.py: the PCA output is clipped to [-2, 2] and mapped onto 0..255
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0


def _stride(layers: list[int | str]) -> int:
    return 2 ** layers.count("M")


def _channels(layers: list[int | str]) -> int:
    return [v for v in layers if v != "M"][-1]


@dataclass
class VGGConfig:
    layers: list[int | str] = field(default_factory=lambda: list(VGG19_LAYERS))
    image_size: int = 224

    @property
    def hidden_size(self) -> int:
        return _channels(self.layers)

    @property
    def patch_size(self) -> int:
        """Pixels per side of one cell of the output map: the stack's total stride (32 for VGG-19)."""
        return _stride(self.layers)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"vgg19: image_size {self.image_size} is not a multiple of the stride {self.patch_size}")


@dataclass
class VGGishConfig:
    layers: list[int | str] = field(default_factory=lambda: list(VGGISH_LAYERS))
    embedding_sizes: list[int] = field(default_factory=lambda: [4096, 4096, 128])
    num_frames: int = 96    # vggish_params.NUM_FRAMES: 10-ms frames per example (0.96 s)
    num_bands: int = 64     # vggish_params.NUM_BANDS: mel bands

    @property
    def hidden_size(self) -> int:
        return self.embedding_sizes[-1]

    def __post_init__(self) -> None:
        stride = _stride(self.layers)
        if self.num_frames % stride or self.num_bands % stride:
            raise ValueError(f"vggish: num_frames {self.num_frames} and num_bands {self.num_bands} must be multiples "
                             f"of the conv stack's stride {stride}")


def init_weights(module: nn.Module) -> None:
    """torchvision's VGG init (``VGG._initialize_weights``): kaiming-normal convs (fan_out), N(0, 0.01) linears,
    zero biases. Only random-init backbones keep it; PyTorch's default init would shrink activations ~100x
    over the 16 convs of VGG-19."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def conv_stack(layers: list[int | str], in_channels: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for v in layers:
        if v == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*modules)


class VGG(nn.Module):
    """``pixel_values (n 3 s s)`` -> the last pool's map ``(n d s/32 s/32)`` (VGG-19 at 224 px: pool5, 512x7x7)."""

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        self.features = conv_stack(config.layers, in_channels=3)
        init_weights(self)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)


class VGGishPostprocess(nn.Module):
    """PCA with whitening, then 8-bit quantisation: ``(n 128)`` -> values in 0..255 (vggish_postprocess.py)."""

    def __init__(self, size: int):
        super().__init__()
        # torchvggish's names; the means are a column vector there too
        self.register_buffer("pca_eigen_vectors", torch.zeros(size, size))
        self.register_buffer("pca_means", torch.zeros(size, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        pca = (x - self.pca_means.float().T) @ self.pca_eigen_vectors.float().T
        clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VGGish(nn.Module):
    """``examples (... num_frames num_bands)`` log-mel -> ``(... 128)`` embeddings (PCA-quantised if ``pproc``)."""

    def __init__(self, config: VGGishConfig):
        super().__init__()
        self.config = config
        self.features = conv_stack(config.layers, in_channels=1)
        stride = _stride(config.layers)
        width = _channels(config.layers) * (config.num_frames // stride) * (config.num_bands // stride)
        modules: list[nn.Module] = []
        for size in config.embedding_sizes:
            modules += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        self.embeddings = nn.Sequential(*modules)
        init_weights(self)
        self.pproc: VGGishPostprocess | None = None     # set by the loader when PCA parameters are given

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        lead = examples.shape[:-2]
        x = self.features(examples.reshape(-1, 1, *examples.shape[-2:]))      # (n c frames/16 bands/16)
        x = self.embeddings(x.permute(0, 2, 3, 1).flatten(1))                 # channels-last, as TF flattened
        if self.pproc is not None:
            x = self.pproc(x)
        return x.reshape(*lead, -1)
