"""Text encoder (BERT-like incl. MiniLM, or CLIP text) with its own tokenizer.

Captions -> token features ``(b l d)`` and a padding mask ``(b l)`` (True = real token), padded to
the longest caption of the batch (at most ``max_text_length``). The seeds used BERT word features
(768-d per token, seed 000 §B.1). ``pooling: mean|cls`` instead returns one sentence vector per
caption as a length-1 sequence ``(b 1 d)``: masked mean of the tokens (the sentence-transformers
embedding) or the model's sentence token (BERT: the first token; CLIP text: the end-of-text token,
the last real token with right padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from trainer.backbones.base import FrozenEncoder
from trainer.configs.backbones import BackboneConfig, resolve_model_path


def load_tokenizer(cfg: BackboneConfig) -> PreTrainedTokenizerBase:
    """``tokenizer`` (dir / hub id, or a WordPiece ``.txt`` vocab), else the model's own tokenizer."""
    source = cfg.tokenizer or cfg.name_or_path
    if source is None:
        raise ValueError(f"text ({cfg.family}): a model built from `config` needs `tokenizer` "
                         f"(a tokenizer dir, hub id or WordPiece vocab .txt)")
    if source.endswith(".txt"):
        return BertTokenizer(vocab=source)
    revision = cfg.revision if cfg.tokenizer is None else None
    return AutoTokenizer.from_pretrained(resolve_model_path(source), revision=revision)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(b l d), (b l) -> (b d)``: mean over the real tokens only."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TextBackbone(FrozenEncoder):
    """``captions list[str]`` -> ``(tokens (b l d) float32, mask (b l) bool)``."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str = "cpu"):
        super().__init__(cfg, device)
        self.tokenizer = load_tokenizer(cfg)
        mc = self.model.config
        self.max_length = min(cfg.max_text_length, mc.max_position_embeddings)
        if len(self.tokenizer) > mc.vocab_size:
            raise ValueError(f"text ({cfg.family}): the tokenizer has {len(self.tokenizer)} tokens but the model's "
                             f"vocab_size is {mc.vocab_size}; pair the model with its own tokenizer")

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError("text: expected a list of caption strings")
        enc = self.tokenizer(list(captions), padding=self.cfg.text_padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=self.wants_hidden_states)
        return self.hidden(out)

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenize(captions)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.inference_mode():
            tokens = self.chunked(self._encode, ids, mask).float()     # (b l d)
            pooling = self.cfg.resolved_pooling
            if pooling == "mean":
                tokens = masked_mean(tokens, mask).unsqueeze(1)
            elif pooling == "cls" and self.cfg.family == "clip_text":
                tokens = tokens[torch.arange(tokens.shape[0]), mask.sum(dim=1) - 1].unsqueeze(1)
            elif pooling == "cls":
                tokens = tokens[:, :1]
        if pooling != "tokens":
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.finish(tokens), mask.bool()
