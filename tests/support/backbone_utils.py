"""Tiny random-init backbones (nothing is downloaded) and the offline guard, shared by the backbone tests
(tests/unit/test_backbones.py, tests/dist/test_backbones_dist.py).

Its fixtures are registered for the whole suite (``pytest_plugins`` in tests/conftest.py): a test names them. A
module whose every test must run with connections refused opts in with
``pytestmark = pytest.mark.usefixtures("no_network")``. ``trainer.backbones`` (transformers) is imported where a
config is built, not here: every pytest run imports this module.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import socket  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    from trainer.backbones import BackboneConfig, BackbonesConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "dog", "barks", "car", "engine", "loud",
         "violin", "is", "playing", ".", "##s"] + list("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly (the tests must work fully offline)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return str(path)


def tiny_config(family: str, vocab: str | None = None, **overrides) -> BackboneConfig:
    from trainer.backbones import BackboneConfig

    configs = {
        "clip_vision": dict(image_size=32, patch_size=8, **TINY),
        "vit": dict(image_size=32, patch_size=8, **TINY),
        "ast": dict(num_mel_bins=64, max_length=100, patch_size=16, frequency_stride=16, time_stride=16, **TINY),
        "wav2vec2": dict(conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, **TINY),
        "hubert": dict(conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4, **TINY),
        "whisper": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                        max_source_positions=50, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1),
        "bert": dict(vocab_size=len(WORDS), max_position_embeddings=64, **TINY),
        "clip_text": dict(vocab_size=len(WORDS), max_position_embeddings=32, bos_token_id=2, eos_token_id=3,
                          pad_token_id=0, **TINY),
    }
    fields = dict(family=family, config=configs[family])
    if family in ("bert", "clip_text"):
        fields["tokenizer"] = vocab
    fields.update(overrides)
    return BackboneConfig(**fields)


def random_video(b=2, t=3, f=2, h=40, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, f, h, w, 3), dtype=torch.uint8, generator=g)


def random_audio(b=2, t=3, s=16000, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(b, t, s, generator=g)


CAPTIONS = ["a dog barks .", "the loud car engine is playing a violin", "a violin"]


def tiny_backbones(vocab: str) -> BackbonesConfig:
    from trainer.backbones import BackbonesConfig

    return BackbonesConfig(video=tiny_config("clip_vision", pooling="patch"), audio=tiny_config("ast"),
                           text=tiny_config("bert", vocab))
