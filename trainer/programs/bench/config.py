"""Configs and named choices of the benchmarks that their command lines document (trainer/programs/bench/parsers.py),
torch-free: the benchmarks' modules import torch, and ``cmg bench ... --help`` must answer at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from trainer.configs.eval import ProbeConfig
from trainer.configs.model import COMETConfig, CoarseConfig, UniCodeConfig

@dataclass
class PretrainConfig:
    """The bench's optimisation schedule (the same for every row of a table)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    # CLUB estimators' Adam lr; 0 = ``lr``: the paper trains encoders and estimators at one rate (4e-4, seed 000
    # App. B.1). An estimator slower than the encoders lags and the encoders exploit it: FCCID's clip-level CLUB
    # bound (64 pairs per step) can then run off to large negative values (``--club-lr 4e-4`` shows it).
    club_lr: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    @property
    def estimator_lr(self) -> float:
        return self.club_lr or self.lr


# Per-segment kinds of the label chain: (video has the event, audio has the event)
KINDS = ((True, True), (False, True), (True, False), (False, False))


PROMPT_TEMPLATES = (   # {noun} / {verb}: the class's own words; everything else is shared filler
    "there is a {noun} and {verb} can be heard",
    "the sound of {verb} while a {noun} is seen",
    "someone {verb} and a {noun} is there",
)


@dataclass
class SyntheticFeatureConfig:
    """The world and the clip statistics. Scales are in units of the event prototype's RMS (1)."""

    classes: int = 10
    segments: int = 10
    audio_dim: int = 64
    video_dim: int = 64
    text_dim: int = 32
    event_dim: int = 16
    nuisance_dim: int = 16
    render_hidden: int = 128            # width of each modality's random rendering network
    segment_jitter: float = 0.3         # per-segment deviation of an event latent from its prototype
    background_scale: float = 1.0       # RMS of the unrelated latent of a background segment
    nuisance_scale: float = 2.0         # per-clip nuisance RMS: stronger than the event on purpose
    nuisance_drift: float = 0.2         # per-segment deviation of the nuisance from its clip value
    sensor_noise: float = 0.1           # iid noise on every feature entry (features have unit RMS)
    kind_start: tuple[float, float, float, float] = (0.5, 0.15, 0.15, 0.2)   # both, audio, video, background
    kind_stay: float = 0.6              # probability that segment t+1 keeps the kind of segment t
    text: bool = False                  # also render text prompts (tokens ``text``, mask ``text_mask``)
    text_length: int = 0                # tokens per caption after zero-padding; 0 = the call's longest prompt
    world_seed: int = 0

    def __post_init__(self) -> None:
        if self.classes < 2 or self.segments < 2:
            raise ValueError(f"need >= 2 classes and >= 2 segments, got {self.classes}, {self.segments}")
        if len(self.kind_start) != len(KINDS) or abs(sum(self.kind_start) - 1.0) > 1e-6 or min(self.kind_start) < 0:
            raise ValueError(f"kind_start must be 4 probabilities summing to 1, got {self.kind_start}")
        if not 0.0 <= self.kind_stay <= 1.0:
            raise ValueError(f"kind_stay must be in [0, 1], got {self.kind_stay}")
        longest = max(len(t.split()) for t in PROMPT_TEMPLATES)
        if self.text_length and self.text_length < longest:
            raise ValueError(f"text_length {self.text_length} is shorter than the longest prompt ({longest} words)")


# The world grid of the benchmarks' sweeps (``--worlds``): changes to the defaults above. Nuisance 1-4x the
# event, 5-15 classes, labels that switch more or less often between segments, more or fewer segments where
# audio and video carry the event together.
WORLDS: dict[str, dict[str, object]] = {
    "default": {},                                                       # K=10, nuisance x2, stay 0.6, 50 % both
    "easy": {"classes": 5, "nuisance_scale": 1.0},
    "nuisance4": {"nuisance_scale": 4.0},
    "k15_choppy": {"classes": 15, "nuisance_scale": 3.0, "kind_stay": 0.4},
    "k15_sticky_apart": {"classes": 15, "kind_stay": 0.8, "kind_start": (0.3, 0.25, 0.25, 0.2)},
}


PAIR_NAMES = {"vt": "video", "at": "audio", "it": "image", "st": "speech"}


@dataclass
class ContinualWorldConfig:
    base: SyntheticFeatureConfig = field(default_factory=lambda: SyntheticFeatureConfig(text=True))
    image_dim: int = 64
    speech_dim: int = 64
    still_noise: float = 0.05          # per-segment noise of an image held still (relative to unit feature RMS)


@dataclass(frozen=True)
class Method:
    """One row: COMET's components on (True) or off; ``comet=False`` is DCID fine-tuned sequentially."""

    name: str
    comet: bool = True
    adapter: bool = True
    pseudo_modality: bool = True
    mixture: bool = True
    gate_loss: bool = True
    ewc: bool = True
    specific_layers: bool = True

    def model_config(self, base: COMETConfig, new_codes: int) -> COMETConfig:
        if not self.comet:
            return dataclasses.replace(base, use_adapter=False, use_pseudo_modality=False, use_gate_loss=False,
                                       use_ewc=False)
        return dataclasses.replace(
            base, use_adapter=self.adapter, use_pseudo_modality=self.pseudo_modality, use_gate_loss=self.gate_loss,
            use_ewc=self.ewc,
            adapter=dataclasses.replace(base.adapter, mixture=self.mixture, specific_layers=self.specific_layers),
            replay=dataclasses.replace(base.replay, new_codes=new_codes))


METHODS = {m.name: m for m in (
    Method("dcid", comet=False),
    Method("comet"),
    Method("comet_no_moe", adapter=False),
    Method("comet_no_pm", pseudo_modality=False),
    Method("comet_single", mixture=False),
    Method("comet_no_gate", gate_loss=False),
    Method("comet_no_ewc", ewc=False),
    Method("comet_no_sl", specific_layers=False),
)}


@dataclass
class ContinualConfig:
    world: ContinualWorldConfig = field(default_factory=ContinualWorldConfig)
    order: tuple[str, ...] = ("vt", "at", "it")
    phase_clips: int = 2048
    downstream_clips: int = 1200
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    phase_seed: int = 11             # phase i's corpus uses phase_seed + i
    downstream_seed: int = 2
    cross_seed: int = 3              # the second corpus of AVE→AVVP
    num_codes: int = 64
    new_codes: int = 32              # K2 per later phase (COMET)
    train: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=800))
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    model_overrides: tuple[str, ...] = ()   # key=value on every phase's COMETConfig, e.g. loss.ewc=10


@dataclass(frozen=True)
class Row:
    """One line of the synthetic tables.

    Seed 001 Table 2 rows switch Uni-Code components off (the baseline is §4.1's own variant); seed 003
    Table 1 rows choose the method (``task``), add the text modality (``text``), switch FCCID's coarse CLUB
    terms or its InfoNCE temperature, or read another row's model through TOC (``toc_of``: the name of that
    row; such a row pretrains nothing itself).
    """

    name: str
    club: bool = True
    cpc: bool = True
    mm_ema: bool = True
    reset: bool = True
    cmcm: bool = True
    baseline: bool = False
    task: Literal["unicode", "fccid"] = "unicode"
    text: bool = False
    toc_of: str = ""
    coarse_club: bool = True      # FCCID's AV_CLUB and TE_CLUB (seed 003 Table 5 columns 3-4)
    temperature: float = CoarseConfig.temperature   # FCCID's InfoNCE τ (0.1: the authors' code; seed 003's text: 1.0)

    @property
    def in_table2(self) -> bool:
        """A seed 001 Table 2 row: audio-visual Uni-Code, codes read in full."""
        return self.task == "unicode" and not self.text and not self.toc_of

    @property
    def pretrained(self) -> str:
        """The row whose pretraining this row's codes come from (itself, or its TOC base)."""
        return self.toc_of or self.name

    def model_config(self, base: UniCodeConfig) -> UniCodeConfig:
        """``base`` with this row's Table 2 components switched off."""
        if self.baseline:
            return dataclasses.replace(base, variant="baseline")
        quantizer, loss = base.quantizer, base.loss
        if not self.mm_ema:   # w/o MM-EMA: plain EMA of each modality's own z and the plain commitment (eq. 3)
            quantizer = dataclasses.replace(quantizer, ema_mode="plain")
            loss = dataclasses.replace(loss, commit_partner=0.0)
        quantizer = dataclasses.replace(quantizer, reset=self.reset and base.quantizer.reset)
        return dataclasses.replace(base, use_club=self.club, use_cpc=self.cpc, use_cmcm=self.cmcm,
                                   quantizer=quantizer, loss=loss)


ROWS = {row.name: row for row in (
    Row("baseline", baseline=True),
    Row("no_club", club=False),
    Row("no_cpc", cpc=False),
    Row("no_club_cpc", club=False, cpc=False),
    Row("no_mm_ema", mm_ema=False),
    Row("no_reset", reset=False),
    Row("no_cmcm", cmcm=False),
    Row("no_mm_ema_reset", mm_ema=False, reset=False),
    Row("full"),
    Row("unicode_avt", text=True),
    Row("fccid", task="fccid", text=True),
    Row("fccid_fine_club", task="fccid", text=True, coarse_club=False),
    Row("fccid_tau1", task="fccid", text=True, temperature=1.0),
    Row("unicode_avt_toc", toc_of="unicode_avt"),
    Row("fccid_toc", toc_of="fccid"),
)}


TABLE1 = ("full", "unicode_avt", "fccid", "fccid_fine_club", "fccid_tau1", "unicode_avt_toc", "fccid_toc")


CLAIM_ROWS = ("baseline", "full", "no_cpc", "no_club", "unicode_avt", "fccid")   # what the claims need


ROW_GROUPS = {"all": tuple(ROWS), "table1": TABLE1, "table2": tuple(n for n, r in ROWS.items() if r.in_table2),
              "claims": CLAIM_ROWS}


# core: the model configs it times (modalities, variant)
CORE_CONFIGS = {
    "av": (("audio", "video"), "full"),
    "avt": (("audio", "video", "text"), "full"),
    "av-baseline": (("audio", "video"), "baseline"),
}
# e2e: its rows (job overrides) and the worlds it trains on
E2E_ROWS = {"full": (), "baseline": ("model.variant=baseline",)}
E2E_WORLDS = ("per-seed", "demo", "e2e")
# pairs: the pair corpora it trains and evaluates on
PAIRS = ("video+text", "audio+text", "image+text")
# scaling: the accelerate and job configs it launches (relative to the repository root)
DEFAULT_ACCELERATE_CONFIG = "launch/accelerate/cpu_zero2.yaml"
DEFAULT_JOB_CONFIG = "launch/configs/pretrain_av.yaml"
