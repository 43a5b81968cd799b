"""The ``model`` section of a job, one typed config per task, and the registry that types it (torch-free).

``TASK_CONFIGS`` maps the job's ``task`` key to the config class of its ``model`` section; the torch side
(``trainer.tasks.TASKS``) maps the same name to the ``Task`` that trains it. Every such config satisfies
``ModelConfig``: what the job's checks (trainer/job.py) ask of a model section without knowing its task
(the modalities paired segment by segment, Cross-CPC's prediction steps, the in-batch negative terms, whether
the task trains on padded windows). The model code (trainer/models/*.py) imports its config from here.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol


class ModelConfig(Protocol):
    """What the job (trainer/job.py) asks of the ``model`` section of any task, without knowing the task."""

    modalities: tuple[str, ...]
    feature_dims: dict[str, int]        # derived from the data source by trainer.job.resolve_job
    spatial_patches: dict[str, int]
    pads: ClassVar[bool]                # the task trains on clips padded to the window (data.decode.min_seconds)

    def aligned_modalities(self) -> tuple[str, ...]:
        """The modalities the model pairs segment by segment: their inputs need as many segments."""

    def cpc_steps(self) -> int:
        """Cross-CPC's prediction steps K (0: no Cross-CPC): a clip needs more seconds than that."""

    def in_batch_negative_terms(self) -> list[str]:
        """The loss terms whose negatives are the other clips of the rank's own batch."""


def default_feature_dims() -> dict[str, int]:
    """Channel dim c per modality of the paper's backbones: VGGish audio, VGG-19 video (and image: a frame encoder
    applied to one image), BERT text. A job replaces them with its source's (trainer/job.py)."""
    return {"audio": 128, "video": 512, "image": 512, "text": 768}


def default_spatial_patches() -> dict[str, int]:
    """Patches p per segment of the modalities that keep a spatial map: VGG-19 pool5 is 7×7."""
    return {"video": 49}


@dataclass
class EncoderConfig:
    semantic_dim: int = 256               # D (appendix B.1: 256 for every modality)
    specific_dim: int = 256               # d̄ (appendix B.1: T × 256 for audio and text)
    layers: int = 2
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    positional: Literal["none", "learned", "sinusoidal"] = "none"
    max_len: int = 64                     # segments covered by the learned positional table
    se_reduction: int = 16                # SE gating bottleneck: c -> c / se_reduction -> c
    pool_hidden: int = 128                # spatial attention pooling scorer width
    specific_hidden: int = 256
    spatial_specific_channels: int = 64   # per-patch width of the spatial specific encoder
    decoder_hidden: int = 256

    def __post_init__(self) -> None:
        if self.semantic_dim % self.heads:
            raise ValueError(f"semantic_dim {self.semantic_dim} is not divisible by heads {self.heads}")
        if self.positional not in ("none", "learned", "sinusoidal"):
            raise ValueError(f"positional must be 'none', 'learned' or 'sinusoidal', got {self.positional!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class QuantizerConfig:
    """The shared codebook and its MM-EMA update; defaults are the paper's (seed 001 §4.3, seed 000 §B)."""

    num_codes: int = 400          # M
    dim: int = 256                # D
    decay: float = 0.99           # gamma of MM-EMA (CMG eq. 7)
    epsilon: float = 1e-5         # Laplace smoothing of N (preserves sum N); > 0 so unused codes never divide by 0
    # "data": codebook from the first global batch (ema_count 1) | "uniform": authors' init (+-1/M, count 0)
    init: Literal["data", "uniform"] = "data"
    # "joint": one MM-EMA step per training step (eq. 7) | "sequential": authors' code, one EMA step per
    # modality (compat option) | "plain": ablation "w/o MM-EMA", EMA of every modality's own z, no r term
    ema_mode: Literal["joint", "sequential", "plain"] = "joint"
    # "cross_attention": parameter-free scaled dot-product attention of z^m over the partner's segments of
    # the same clip (paper) | "paired": the partner's z at the same (clip, segment) (authors' code)
    r_source: Literal["cross_attention", "paired"] = "cross_attention"
    reset: bool = True            # code reset (CMG §4.3)
    # "all": keep a code only if EVERY modality used it within reset_steps (paper) | "any": authors' code
    reset_rule: Literal["all", "any"] = "all"
    reset_steps: int = 200        # N_re, counted in training steps
    reset_noise: float = 0.01     # noise RMS relative to the copied code's RMS
    seed: int = 0                 # seeds the reset/init generator identically on all ranks

    def __post_init__(self) -> None:
        if self.num_codes < 2:
            raise ValueError(f"quantizer.num_codes must be >= 2, got {self.num_codes}")
        if self.dim < 1:
            raise ValueError(f"quantizer.dim must be >= 1, got {self.dim}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"quantizer.decay must be in [0, 1), got {self.decay}")
        if self.epsilon <= 0.0:
            raise ValueError(f"quantizer.epsilon must be > 0, got {self.epsilon}")
        if self.reset_steps < 1:
            raise ValueError(f"quantizer.reset_steps must be >= 1, got {self.reset_steps}")
        if self.reset_noise < 0.0:
            raise ValueError(f"quantizer.reset_noise must be >= 0, got {self.reset_noise}")


@dataclass
class CPCConfig:
    prediction_steps: int | None = None   # K; None = the paper's choice: 2 for AV, 1 for three modalities
    lstm_layers: int = 1                  # paper: 1; authors' code: 2 (compatibility option)
    normalize_over: Literal["targets", "contexts"] = "targets"   # "contexts" = authors' code
    same_modality_weight: float = 0.0     # authors' code adds a→a terms with weight 0.1
    seed: int = 0                         # seeds the task's generator that draws t (identical on all ranks)

    def __post_init__(self) -> None:
        if self.prediction_steps is not None and self.prediction_steps < 1:
            raise ValueError(f"prediction_steps must be >= 1 or None, got {self.prediction_steps}")
        if self.lstm_layers < 1:
            raise ValueError(f"lstm_layers must be >= 1, got {self.lstm_layers}")
        if self.normalize_over not in ("targets", "contexts"):
            raise ValueError(f"normalize_over must be 'targets' or 'contexts', got {self.normalize_over!r}")

    def steps_for(self, num_modalities: int) -> int:
        """K: explicit, or appendix B.1's default (2 for two modalities, 1 for three or more)."""
        if self.prediction_steps is not None:
            return self.prediction_steps
        return 2 if num_modalities == 2 else 1


@dataclass
class CLUBConfig:
    hidden_dim: int = 256
    lr: float = 4e-4          # appendix B.1 learning rate
    inner_steps: int = 5      # appendix B.1: "the first forward will be updated 5 times"
    # True: the main loss takes max(bound, 0). Mutual information is never negative, so a negative vCLUB value
    # is the estimator's error (q_θ lags behind encoders that moved); minimising it further rewards the
    # encoders for fooling q_θ, and the bound has no floor (see COMETConfig, where this is on).
    nonnegative: bool = False

    def __post_init__(self) -> None:
        if self.hidden_dim < 1 or self.inner_steps < 0 or self.lr <= 0:
            raise ValueError(f"CLUBConfig needs hidden_dim >= 1, inner_steps >= 0, lr > 0; got {self}")


@dataclass
class LossConfig:
    """Weights of L = L_recon + L_commit + L_cpc + L_cmcm + L_MI (CMG §4.4: all 1) and of eq. 8.

    ``mi`` is 0.1, not the paper's 1 (docs/diagnosis.md §2): the vCLUB bound pushes the semantic features
    with a force that does not shrink with the true MI, and at weight 1 it outweighed Cross-CPC early in
    training and emptied z (full Uni-Code below "w/o CLUB" on 4 of 5 synthetic worlds, by up to 32 points).
    At 0.1 it still takes nuisance out of z and no world is worse than without CLUB.
    """

    recon: float = 1.0
    commit: float = 1.0
    cpc: float = 1.0
    cmcm: float = 1.0
    mi: float = 0.1
    commit_self: float = 0.25       # β (eq. 8); authors' code: 2β = 0.5
    commit_partner: float = 0.125   # β/2, spread as a mean over partners; authors' code: β = 0.25


@dataclass
class UniCodeConfig:
    """Model and task configuration of Uni-Code pretraining.

    Ablation switches (CMG Table 2): ``use_club``, ``use_cpc``, ``quantizer.ema_mode="plain"`` (w/o MM-EMA),
    ``quantizer.reset=False``, ``use_cmcm``. ``variant="baseline"`` is seed 001 §4.1: reconstruction + EMA VQ
    + plain commitment β||z − sg e||², with no CLUB, Cross-CPC, CMCM, MM-EMA or reset (it overrides those
    fields; see ``effective``). A switched-off term is absent from the loss and its parameters are never built.

    ``negatives``: where the in-batch negatives of Cross-CPC, CMCM and the CLUB bound come from: "global" (every
    rank's rows: N ranks train what one process on the global batch trains) or "local" (this rank's batch);
    trainer/tasks/base.py says how.
    """

    modalities: tuple[str, ...] = ("audio", "video")
    variant: Literal["full", "baseline"] = "full"
    feature_dims: dict[str, int] = field(default_factory=default_feature_dims)       # channel dim c per modality
    spatial_patches: dict[str, int] = field(default_factory=default_spatial_patches)  # p for spatial-map inputs
    use_club: bool = True
    use_cpc: bool = True
    use_cmcm: bool = True
    negatives: Literal["local", "global"] = "global"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    cpc: CPCConfig = field(default_factory=CPCConfig)
    club: CLUBConfig = field(default_factory=CLUBConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if len(self.modalities) < 1 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names, got {list(self.modalities)}")
        missing = [m for m in self.modalities if m not in self.feature_dims]
        if missing:
            raise ValueError(f"feature_dims has no entry for modalities {missing}")
        if self.variant not in ("full", "baseline"):
            raise ValueError(f"variant must be 'full' or 'baseline', got {self.variant!r}")
        if self.negatives not in ("local", "global"):
            raise ValueError(f"negatives must be 'local' or 'global', got {self.negatives!r}")
        if self.quantizer.dim != self.encoder.semantic_dim:
            raise ValueError(f"quantizer.dim {self.quantizer.dim} must equal encoder.semantic_dim "
                             f"{self.encoder.semantic_dim}")
        if self.variant == "full" and (self.use_cpc or self.use_cmcm) and len(self.modalities) < 2:
            raise ValueError("Cross-CPC and CMCM pair modalities: they need at least two")

    def effective(self) -> UniCodeConfig:
        """The config with ``variant`` applied: "full" unchanged, "baseline" = seed 001 §4.1."""
        if self.variant == "full":
            return self
        return dataclasses.replace(
            self,
            use_club=False, use_cpc=False, use_cmcm=False,
            quantizer=dataclasses.replace(self.quantizer, ema_mode="plain", reset=False),
            loss=dataclasses.replace(self.loss, commit_partner=0.0),
        )

    pads: ClassVar[bool] = True

    def aligned_modalities(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    def cpc_steps(self) -> int:
        eff = self.effective()
        return eff.cpc.steps_for(len(eff.modalities)) if eff.use_cpc else 0

    def in_batch_negative_terms(self) -> list[str]:
        eff = self.effective()   # COMET's pseudo-modality term is a Cross-CPC term
        return [name for name, on in (("CLUB", eff.use_club), ("Cross-CPC", eff.use_cpc), ("CMCM", eff.use_cmcm))
                if on]


FINE_MODALITIES = ("audio", "video")   # segment-aligned: the fine level
TEXT = "text"                          # holistic: coarse level only
# modality -> its coarse side (the paper's av / te): owner of the projection P, Φ_c, Ψ_c and the coarse CLUB
COARSE_SIDE = {"audio": "audiovisual", "video": "audiovisual", TEXT: "text"}
# CLUB estimator -> the FCCIDConfig switch (seed 003 Table 5 column) that builds it
CLUB_SWITCHES = {"fine_audio": "a_club", "fine_video": "v_club",
                 "coarse_audiovisual": "av_club", "coarse_text": "te_club"}


@dataclass
class CoarseConfig:
    """The coarse level (CCID): projections P, coarse general Φ_c and specific Ψ_c encoders, InfoNCE."""

    hidden_dim: int = 256         # width of the Φ_c / Ψ_c MLPs
    specific_dim: int = 256       # d̄_c of c̄
    # τ of the cosine InfoNCE. seed 003 §4.2 writes 1.0, but the authors' code calls info-nce-pytorch's
    # InfoNCE() without arguments, whose default is 0.1 in every release that accepts its two-argument call
    # (docs/diagnosis.md §3); at 1.0 the loss stays near chance on cosine scores in [-1, 1].
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_dim < 1 or self.specific_dim < 1:
            raise ValueError(f"coarse.hidden_dim and coarse.specific_dim must be >= 1, got {self}")
        if self.temperature <= 0:
            raise ValueError(f"coarse.temperature must be > 0, got {self.temperature}")


@dataclass
class FCCIDLossConfig(LossConfig):
    """Weights of seed 003 eq. 10: L_recon + L_commit + L_cmcm + (L_cpc + L_nce) + (CLUB_f + CLUB_c).

    ``mi`` weighs L_MImin = CLUB_fine + CLUB_coarse; the commitment weights are Uni-Code's (CMG eq. 8),
    applied to the clip codes of audio, video and text.
    """

    nce: float = 1.0


@dataclass
class FCCIDConfig:
    """Model and task configuration of FCCID pretraining (audio, video, text; seed 003 App. C).

    Ablation switches (seed 003 Table 5): ``a_club``, ``v_club`` (fine CLUB of audio / video), ``av_club``,
    ``te_club`` (coarse CLUB of the audio-visual / text side). A switched-off term is absent from the loss
    and its estimator is never built. ``encoder`` configures the fine encoders Φ_f, Ψ_f and the decoders;
    ``negatives``: where the in-batch negatives of CPC, CLUB, CMCM and InfoNCE come from, as in
    ``UniCodeConfig``.
    """

    # FCCID is defined for exactly these three (seed 003 App. C); a field so that every resolved config
    # (meta.json, config.yaml) names its modalities like Uni-Code's does
    modalities: tuple[str, ...] = (*FINE_MODALITIES, TEXT)
    feature_dims: dict[str, int] = field(default_factory=default_feature_dims)       # channel dim c per modality
    spatial_patches: dict[str, int] = field(default_factory=default_spatial_patches)  # p for spatial-map inputs
    a_club: bool = True
    v_club: bool = True
    av_club: bool = True
    te_club: bool = True
    negatives: Literal["local", "global"] = "global"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    cpc: CPCConfig = field(default_factory=CPCConfig)
    club: CLUBConfig = field(default_factory=CLUBConfig)
    loss: FCCIDLossConfig = field(default_factory=FCCIDLossConfig)

    @property
    def club_estimators(self) -> tuple[str, ...]:
        """The CLUB estimators switched on (keys of ``CLUB_SWITCHES``)."""
        return tuple(name for name, switch in CLUB_SWITCHES.items() if getattr(self, switch))

    def __post_init__(self) -> None:
        if set(self.modalities) != {*FINE_MODALITIES, TEXT} or len(self.modalities) != 3:
            raise ValueError(f"modalities: FCCID pairs audio and video at the fine level and adds text at the "
                             f"coarse level; it needs exactly {[*FINE_MODALITIES, TEXT]}, got {list(self.modalities)}")
        self.modalities = (*FINE_MODALITIES, TEXT)
        missing = [m for m in self.modalities if m not in self.feature_dims]
        if missing:
            raise ValueError(f"feature_dims has no entry for modalities {missing}")
        if TEXT in self.spatial_patches:
            raise ValueError("spatial_patches: text is a token sequence, it cannot be a spatial map")
        if self.negatives not in ("local", "global"):
            raise ValueError(f"negatives must be 'local' or 'global', got {self.negatives!r}")
        if self.quantizer.dim != self.encoder.semantic_dim:
            raise ValueError(f"quantizer.dim {self.quantizer.dim} must equal encoder.semantic_dim "
                             f"{self.encoder.semantic_dim}")

    pads: ClassVar[bool] = True

    def aligned_modalities(self) -> tuple[str, ...]:
        """Audio and video: text meets them at the coarse level, a mean over segments."""
        return FINE_MODALITIES

    def cpc_steps(self) -> int:
        return self.cpc.steps_for(len(FINE_MODALITIES))

    def in_batch_negative_terms(self) -> list[str]:
        """InfoNCE, Cross-CPC and CMCM always; CLUB when an estimator is on."""
        return ["InfoNCE", "Cross-CPC", "CMCM"] + (["CLUB"] if self.club_estimators else [])


@dataclass
class AdapterConfig:
    """CMoE-Adapter structure (seed 004 §3.2) and its Table 6 switches."""

    experts: int = 6                 # O (seed 004 Fig. 2: 6 is best)
    mixture: bool = True             # False: "MoE -> single adapter": one expert, no router (so no gate loss)
    specific_layers: bool = True     # False: ablation "SL": experts have only their common layer
    # True: the common layers start at zero like the specific ones, so the residual adapter starts as the identity
    # (y = x) and a first phase starts exactly as Uni-Code ("identical to traditional CMG", seed 004 §3.3). With
    # nn.Linear's random init the continual bench's phase-1 video codes lost 8 points of in-modality accuracy and
    # 11 of localisation F1 (88.0 / 66.8 vs 96.0 / 78.4, seed 0), and their sharing with text.
    identity_init: bool = True
    # True: a modality carried over from an earlier phase is encoded by a frozen snapshot of the whole adapter
    # (common layers, router, its specific layer) as that phase left it, so its inputs to the codebook never drift
    # however the shared layers move for later pairs (seed 004 §3.2 wants "the Encoder's encoding ability for
    # previous modalities [to remain] unchanged"); EWC then keeps the mediator's path in place. False: carried
    # modalities go through the live adapter, protected by EWC alone. In the continual bench (seeds 0/1) the
    # snapshot lifted COMET's unseen-pair Avg from 74.5/69.4 to 80.8/83.2 after phase 2 and from 64.5/61.2 to
    # 73.4/79.3 after phase 3, and cut the video–text forgetting from 30.1/29.1 to 19.0/9.5 points.
    freeze_carried: bool = True

    def __post_init__(self) -> None:
        if self.experts < 1:
            raise ValueError(f"adapter.experts must be >= 1, got {self.experts}")

    @property
    def num_experts(self) -> int:
        return self.experts if self.mixture else 1


@dataclass
class ReplayConfig:
    """Dynamic codebook expansion and pseudo-modality replay (seed 004 §3.3)."""

    mediator: str = "text"           # modality present in every phase (B of the paper)
    # codes appended to the inherited codebook when this phase starts from a previous one (K2; 0 in phase 1)
    new_codes: int = 0
    # An inherited code is "close enough" to a mediator vector z when ||z − e||² <= match_threshold · ||z||²
    # (a relative squared distance, so the rule does not depend on the feature scale); else the nearest new code
    # is taken. 0.5 admits codes within ~41° of z for equal norms.
    match_threshold: float = 0.5
    new_code_weight: float = 0.1     # weight of pseudo-modality positions quantised to new codes (old: 1)
    # True: inherited codes are never reset (no data of this phase keeps a carried modality's codes in use). Off
    # by default: in the continual bench trainer/programs/bench/continual_features.py it kept the carried video on
    # codes the new pair never used, and the unseen pair's Avg after phases 2 / 3 fell from 80.8 / 73.4 to 68.8 / 60.4
    # (seed 0) and from 83.2 / 79.3 to 60.6 / 56.0 (seed 1)
    protect_inherited: bool = False
    # Where the appended codes start. "data": at the phase's first training step, on the mediator's vectors of
    # the global batch farthest from every inherited code (greedy farthest-point selection), so they stand for
    # what the old codebook does not cover in the modality that bridges the phases (the new modality's encoder
    # is still random then: codes placed on its vectors would give it a private corner of the codebook);
    # "copies": perturbed copies of inherited codes (MMEMAQuantizer.expand_ alone), which sit next to the codes
    # they copy and split their data.
    new_code_init: Literal["data", "copies"] = "data"

    def __post_init__(self) -> None:
        if self.new_codes < 0:
            raise ValueError(f"replay.new_codes must be >= 0, got {self.new_codes}")
        if self.match_threshold < 0.0 or not 0.0 <= self.new_code_weight <= 1.0:
            raise ValueError(f"replay needs match_threshold >= 0 and new_code_weight in [0, 1], got "
                             f"{self.match_threshold}, {self.new_code_weight}")


@dataclass
class EWCConfig:
    """Elastic weight consolidation of the adapter (seed 004 eq. 6); λ is ``COMETLossConfig.ewc``."""

    fisher_batches: int = 16         # batches of the phase's data (per rank) the diagonal Fisher is averaged over
    # "mean": each phase's Fisher is divided by its mean entry before it joins the running sum, so λ does not
    # depend on the loss scale (a reparametrisation of λ); "none": the raw Fisher, as eq. 6 writes it
    normalize: Literal["mean", "none"] = "mean"
    # also consolidate the router: the paper names only the common and activated specific layers, but the router
    # is shared too, and its drift re-mixes the experts of modalities no later phase trains
    include_router: bool = False

    def __post_init__(self) -> None:
        if self.fisher_batches < 1:
            raise ValueError(f"ewc.fisher_batches must be >= 1, got {self.fisher_batches}")


@dataclass
class COMETLossConfig(LossConfig):
    """Uni-Code's weights plus COMET's: L = L_CMG + gate · L_gate + (ewc/2) · Σ F (θ − θ*)² + pm · L_pm."""

    gate: float = 0.01               # load balancing (eq. 5)
    ewc: float = 100.0               # λ of eq. 6 (with ewc.normalize = "mean": per unit mean Fisher)
    pm: float = 1.0                  # pseudo-modality Cross-CPC


@dataclass
class COMETConfig(UniCodeConfig):
    """Uni-Code's model config plus the adapter, replay and EWC, and what earlier phases left behind.

    Ablation switches (seed 004 Table 6): ``use_pseudo_modality`` (PM), ``adapter.mixture`` (MoE -> single
    adapter), ``use_gate_loss``, ``use_ewc``, ``adapter.specific_layers`` (SL), and ``use_adapter=False``, which
    removes the adapter altogether: the paper's "w/o MoE" row, which "also eliminates" the gate loss, EWC and
    SL, when PM stays on; with PM off too it is plain DCID fine-tuned phase after phase (the baseline of seed 004
    Table 1), still carrying earlier modalities' encoders for evaluation.

    ``carried`` and the ``carried_*`` maps are written by the task when a phase starts from a previous one
    (``COMETTask.begin_phase_``), never by hand: they end up in the checkpoint's meta.json.
    """

    loss: COMETLossConfig = field(default_factory=COMETLossConfig)
    # the MI bound clamped at 0 (CLUBConfig.nonnegative): without it the text path of the continual bench's third
    # phase drove the bound to −9…−19 against a lagging estimator, the router collapsed and every pair fell to chance
    club: CLUBConfig = field(default_factory=lambda: CLUBConfig(nonnegative=True))
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    ewc: EWCConfig = field(default_factory=EWCConfig)
    use_adapter: bool = True
    use_pseudo_modality: bool = True
    use_gate_loss: bool = True
    use_ewc: bool = True
    rename: dict[str, str] = field(default_factory=dict)          # data stream -> model modality, e.g. {video: image}
    carried: tuple[str, ...] = ()                                 # model modalities of earlier phases (frozen)
    carried_feature_dims: dict[str, int] = field(default_factory=dict)
    carried_spatial_patches: dict[str, int] = field(default_factory=dict)
    # COMET's gate balance, pseudo-modality Cross-CPC and per-clip Fisher take no segment mask (yet): whole windows
    pads: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.carried = tuple(self.carried)
        unknown = sorted(set(self.rename) - set(self.modalities))
        if unknown:
            raise ValueError(f"rename maps {unknown}, which are not among modalities {list(self.modalities)}")
        names = self.model_modalities
        if len(set(names)) != len(names) or set(self.rename.values()) & set(self.modalities):
            raise ValueError(f"rename {self.rename} must give distinct names that are not data modalities "
                             f"({list(self.modalities)})")
        if set(self.carried) & set(names) or len(set(self.carried)) != len(self.carried):
            raise ValueError(f"carried {list(self.carried)} must be distinct and not trained in this phase "
                             f"({list(names)})")
        missing = [m for m in self.carried if m not in self.carried_feature_dims]
        if missing:
            raise ValueError(f"carried_feature_dims has no entry for carried modalities {missing}")
        if self.use_pseudo_modality and self.replay.new_codes and self.replay.mediator not in names:
            raise ValueError(f"pseudo-modality replay needs the mediator '{self.replay.mediator}' among this "
                             f"phase's modalities {list(names)}")

    @property
    def model_modalities(self) -> tuple[str, ...]:
        """The modalities this phase trains, by their model names (``rename`` applied)."""
        return tuple(self.rename.get(m, m) for m in self.modalities)

    @property
    def known_modalities(self) -> tuple[str, ...]:
        """Every modality the model can encode: this phase's, then those carried from earlier phases."""
        return self.model_modalities + self.carried

    def core(self) -> UniCodeConfig:
        """The Uni-Code config of the model's trained part: model names, with the carried modalities' feature
        shapes merged in (``UniCodeModel._input`` then checks their inputs too)."""
        dims = {self.rename.get(m, m): d for m, d in self.feature_dims.items() if m in self.modalities}
        patches = {self.rename.get(m, m): p for m, p in self.spatial_patches.items() if m in self.modalities}
        return UniCodeConfig(
            modalities=self.model_modalities, variant=self.variant,
            feature_dims=dims | self.carried_feature_dims, spatial_patches=patches | self.carried_spatial_patches,
            use_club=self.use_club, use_cpc=self.use_cpc, use_cmcm=self.use_cmcm, encoder=self.encoder,
            quantizer=self.quantizer, cpc=self.cpc, club=self.club, loss=self.loss)


# the job's `task` key -> the config class of its `model` section (trainer.tasks.TASKS: the same names -> Task)
TASK_CONFIGS: dict[str, type[ModelConfig]] = {
    "unicode": UniCodeConfig,
    "fccid": FCCIDConfig,
    "comet": COMETConfig,
}


def model_config_class(task: str) -> type[ModelConfig]:
    """The config class of the ``model`` section of ``task``; ``KeyError`` naming the known tasks otherwise."""
    if task not in TASK_CONFIGS:
        close = difflib.get_close_matches(task, TASK_CONFIGS, n=1) if isinstance(task, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown task {task!r} (config key 'task'); {hint}known: {sorted(TASK_CONFIGS)}")
    return TASK_CONFIGS[task]
