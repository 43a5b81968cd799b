"""Seeded feature-level generator with known structure: the data of ``python -m trainer.programs.bench.fidelity``.

It stands in for frozen-backbone features (VGGish audio, VGG-19 video) of an AVE / AVVP-like corpus,
so that what a pretrained unified codebook must recover, and what it must ignore, is known exactly:

- events: K classes, each with a prototype ``μ_c`` in an ``event_dim`` latent space that both modalities
  share. A clip has one event class (its AVE clip label). Per 1-s segment and per modality the event is
  present or not (AVVP-style labels, −1 = background), drawn from a sticky Markov chain over the kinds
  {both, audio only, video only, background}: audio and video share the event only part of the time.
  A present segment carries ``μ_c`` plus per-segment jitter; a background segment carries an
  unrelated latent drawn independently per modality (nothing cross-modal to find there);
- nuisance: per clip and per modality a ``nuisance_dim`` latent (loudness / timbre / scene look), drawn
  independently of the event and of the other modality, ``nuisance_scale`` times stronger than the
  event, drifting slightly over the segments. It is what the specific encoder and CLUB should take away
  from the semantic path;
- modality gap: each modality renders its (event, nuisance) latents through its own fixed random
  one-hidden-layer tanh network into its own feature space (``audio_dim``, ``video_dim``), plus sensor
  noise, so the two modalities' raw features live in unrelated coordinates and the event and nuisance
  are entangled inside each feature vector;
- optional text (for FCCID-style runs): a few prompt templates per class (seed 000 §B.3 style) whose
  tokens are rendered as fixed random word embeddings plus noise; every other word is shared filler.
  Captions are zero-padded to the longest prompt of the call, or to ``text_length`` tokens (Uni-Code's
  AVT setting pairs token l with segment l, so there the caption must have T tokens, as in seed 001).

Everything about the "world" (prototypes, rendering networks, word table) comes from ``world_seed``;
the clips of one call come from its ``seed``. Two calls with different seeds are two datasets of the
same world (pretraining corpus vs downstream corpus); equal arguments give bit-identical tensors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trainer.eval.frozen_codes import LabelledFeatures
from trainer.programs.bench.config import KINDS, PROMPT_TEMPLATES, SyntheticFeatureConfig, WORLDS

BACKGROUND = -1
FILLER_WORDS = ("the", "a", "of", "is", "and", "there", "sound", "someone", "can", "be", "heard", "seen", "while")


def world_config(name: str, base: SyntheticFeatureConfig | None = None) -> SyntheticFeatureConfig:
    """``base`` (default: the defaults) with the changes of world ``name`` of ``WORLDS``."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose from {list(WORLDS)}")
    return dataclasses.replace(base or SyntheticFeatureConfig(), **WORLDS[name])


@dataclass
class SyntheticSet(LabelledFeatures):
    """``n`` clips: ``features`` is a feature batch as ``UniCodeTask.prepare_batch`` reads it (audio ``(n t da)``,
    video ``(n t dv)`` [, text ``(n l dt)``, text_mask ``(n l)``]), labels as in ``LabelledFeatures``; plus
    the ground truth the bench's diagnostics need."""

    nuisance: dict[str, Tensor] = field(default_factory=dict)   # audio / video: (n t nuisance_dim) true latents
    prompts: list[str] = field(default_factory=list)            # the clip's prompt (only with cfg.text)

    def subset(self, index: Tensor) -> SyntheticSet:
        """The clips at ``index`` (1-d int64), in that order."""
        base = super().subset(index)
        return SyntheticSet(base.features, base.segment_labels, base.clip_label, base.keys,
                            nuisance={k: v[index] for k, v in self.nuisance.items()},
                            prompts=[self.prompts[i] for i in index.tolist()] if self.prompts else [])


class _Renderer:
    """A fixed random network ``(... l) -> (... d)``: W2 tanh(W1 x + b1), output scaled to unit RMS."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, generator: torch.Generator):
        self.w1 = torch.randn(in_dim, hidden, generator=generator) / math.sqrt(in_dim)
        self.b1 = 0.5 * torch.randn(hidden, generator=generator)
        self.w2 = torch.randn(hidden, out_dim, generator=generator) / math.sqrt(hidden)
        self.scale = 1.0

    def __call__(self, latent: Tensor) -> Tensor:
        return torch.tanh(latent @ self.w1 + self.b1) @ self.w2 * self.scale


class SyntheticWorld:
    """Prototypes, per-modality renderers and the word table of one ``world_seed``; ``sample`` draws clips."""

    def __init__(self, cfg: SyntheticFeatureConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.world_seed)
        # Unit-RMS prototypes, pushed apart: random Gaussian vectors in 16 dims are nearly orthogonal already
        self.prototypes = torch.randn(cfg.classes, cfg.event_dim, generator=g)
        self.prototypes *= math.sqrt(cfg.event_dim) / self.prototypes.norm(dim=1, keepdim=True)
        latent = cfg.event_dim + cfg.nuisance_dim
        dims = {"audio": cfg.audio_dim, "video": cfg.video_dim}
        self.renderers = {m: _Renderer(latent, cfg.render_hidden, d, g) for m, d in dims.items()}
        self.vocabulary = list(FILLER_WORDS) + [f"noun{c}" for c in range(cfg.classes)] + \
            [f"verb{c}" for c in range(cfg.classes)]
        self.word_vectors = torch.randn(len(self.vocabulary), cfg.text_dim, generator=g)
        # Calibrate every renderer to unit feature RMS on latents of the configured statistics
        probe = self._sample_latents(2048, torch.Generator().manual_seed(cfg.world_seed + 1))
        for m, render in self.renderers.items():
            render.scale = 1.0 / render(probe[m]).pow(2).mean().sqrt().item()

    def prompt(self, cls: int, template: int) -> str:
        return PROMPT_TEMPLATES[template].format(noun=f"noun{cls}", verb=f"verb{cls}")

    def _sample_latents(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        """Calibration latents ``(n l)``: half events, half background, with the configured nuisance."""
        cfg = self.cfg
        cls = torch.randint(cfg.classes, (n,), generator=g)
        events = self.prototypes[cls] + cfg.segment_jitter * torch.randn(n, cfg.event_dim, generator=g)
        background = cfg.background_scale * torch.randn(n, cfg.event_dim, generator=g)
        semantic = torch.where(torch.arange(n).unsqueeze(1) % 2 == 0, events, background)
        nuisance = cfg.nuisance_scale * torch.randn(n, cfg.nuisance_dim, generator=g)
        return {m: torch.cat([semantic, nuisance], dim=1) for m in self.renderers}

    def _kinds(self, n: int, g: torch.Generator) -> Tensor:
        """``(n t)`` kind indices of the sticky chain; every clip gets at least one 'both' segment."""
        cfg = self.cfg
        start = torch.tensor(cfg.kind_start)
        kinds = torch.empty(n, cfg.segments, dtype=torch.int64)
        kinds[:, 0] = torch.multinomial(start, n, replacement=True, generator=g)
        for t in range(1, cfg.segments):
            stay = torch.rand(n, generator=g) < cfg.kind_stay
            fresh = torch.multinomial(start, n, replacement=True, generator=g)
            kinds[:, t] = torch.where(stay, kinds[:, t - 1], fresh)
        forced = torch.randint(cfg.segments, (n,), generator=g)
        no_both = ~(kinds == 0).any(dim=1)
        kinds[no_both, forced[no_both]] = 0
        return kinds

    def sample(self, num_clips: int, seed: int) -> SyntheticSet:
        """``num_clips`` clips with balanced classes (a seeded permutation of 0..K−1 repeated)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        n, t = num_clips, cfg.segments
        clip_label = (torch.arange(n) % cfg.classes)[torch.randperm(n, generator=g)]
        kinds = self._kinds(n, g)
        presence = {"video": torch.tensor([k[0] for k in KINDS])[kinds],
                    "audio": torch.tensor([k[1] for k in KINDS])[kinds]}
        features, labels, nuisance = {}, {}, {}
        for m in ("audio", "video"):
            events = self.prototypes[clip_label].unsqueeze(1) + \
                cfg.segment_jitter * torch.randn(n, t, cfg.event_dim, generator=g)
            background = cfg.background_scale * torch.randn(n, t, cfg.event_dim, generator=g)
            semantic = torch.where(presence[m].unsqueeze(-1), events, background)
            per_clip = cfg.nuisance_scale * torch.randn(n, 1, cfg.nuisance_dim, generator=g)
            nuisance[m] = per_clip + cfg.nuisance_drift * torch.randn(n, t, cfg.nuisance_dim, generator=g)
            rendered = self.renderers[m](torch.cat([semantic, nuisance[m]], dim=-1))
            features[m] = rendered + cfg.sensor_noise * torch.randn(rendered.shape, generator=g)
            labels[m] = torch.where(presence[m], clip_label.unsqueeze(1), torch.full_like(kinds, BACKGROUND))
        prompts: list[str] = []
        if cfg.text:
            templates = torch.randint(len(PROMPT_TEMPLATES), (n,), generator=g).tolist()
            prompts = [self.prompt(int(c), k) for c, k in zip(clip_label.tolist(), templates)]
            features["text"], features["text_mask"] = self._render_text(prompts, g)
        return SyntheticSet(features, labels, clip_label, [f"{seed}:{i}" for i in range(n)], nuisance=nuisance,
                            prompts=prompts)

    def _render_text(self, prompts: list[str], g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Prompts -> word-vector tokens ``(n l dt)`` + noise, zero-padded, and the mask ``(n l)``."""
        index = {w: i for i, w in enumerate(self.vocabulary)}
        words = [p.split() for p in prompts]
        longest = self.cfg.text_length or max(len(w) for w in words)
        tokens = torch.zeros(len(prompts), longest, self.cfg.text_dim)
        mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for i, sentence in enumerate(words):
            ids = torch.tensor([index[w] for w in sentence])
            tokens[i, :len(sentence)] = self.word_vectors[ids]
            mask[i, :len(sentence)] = True
        tokens += self.cfg.sensor_noise * torch.randn(tokens.shape, generator=g) * mask.unsqueeze(-1)
        return tokens, mask
