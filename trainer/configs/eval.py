"""Configs of evaluation: the job's probe during pretraining (its ``eval`` section), the downstream heads and
probes, TOC, and where ``python -m trainer.programs.evaluate`` reads a dataset from (torch-free; the code that runs
them is trainer/eval/, trainer/eval/toc.py and trainer/programs/evaluate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# the protocols of python -m trainer.programs.evaluate (--tasks)
TASKS = ("classification", "localisation", "cross_dataset", "ucf_vgg", "retrieval", "class_retrieval",
         "zero_shot_retrieval")
PRETRAIN_SETS = ("24K", "40K", "81K")       # the VGGSound-AVEL pretraining subsets of seed 001 Table 1


@dataclass
class TrainingProbeConfig:
    """``eval`` section of a job: the downstream probe during pretraining (off unless ``every`` > 0)."""

    every: int = 0                     # optimizer steps between probes (0 = off), each on the checkpoint of its step
    # labelled validation shards (json members with labels), brace patterns
    urls: str = field(default="", metadata={"path": True})
    kind: Literal["clips", "features"] = "clips"   # must be data.kind: clips go through the job's backbones
    manifest: str = field(default="", metadata={"path": True})   # "" = manifest.json next to the shards
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)   # of the validation clips: head train / epoch choice / score
    split_seed: int = 0
    epochs: int = 10                   # head training epochs (the best on the source's part is kept)
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"eval.every must be >= 0 (0 = off), got {self.every}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"eval needs epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, "
                             f"{self.lr}")


@dataclass
class HeadConfig:
    hidden_dim: int = 128
    dropout: float = 0.0      # between the two layers (the frozen encoder itself never runs dropout)

    def __post_init__(self) -> None:
        if self.hidden_dim < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HeadConfig needs hidden_dim >= 1 and dropout in [0, 1), got {self}")


@dataclass
class ProbeConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    threshold: float = 0.5            # sigmoid threshold of the multi-label heads
    seed: int = 0                     # head init, batch order and dropout (the caller's RNG is left alone)
    head: HeadConfig = field(default_factory=HeadConfig)
    # the fewest optimizer steps an epoch should take (0: no minimum). A small train split at a large batch gives a
    # step or two an epoch, and such a head can stay at chance (trainer/eval/probes.py ``head_schedule``)
    min_steps_per_epoch: int = 0
    adapt_batch: bool = True          # below it: a smaller batch; False: batch_size as set, and a warning

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.min_steps_per_epoch < 0:
            raise ValueError(f"ProbeConfig needs epochs >= 1, batch_size >= 1, lr > 0, min_steps_per_epoch >= 0; "
                             f"got {self}")


@dataclass
class TOCConfig:
    dims: int = 128             # Q, dimensions kept (seed 003: 128 of 256)
    balance: float = 0.3        # λ of eq. 17
    normalize: bool = True      # L2-normalise the codes first (the paper's assumption for eq. 15)

    def __post_init__(self) -> None:
        if self.dims < 1 or not 0.0 <= self.balance <= 1.0:
            raise ValueError(f"TOC needs dims >= 1 and balance (λ) in [0, 1], got {self}")


@dataclass
class SourceConfig:
    """Where one labelled downstream dataset comes from ("" = the pretraining run's setting)."""

    urls: str = ""                                        # clip or feature shards
    kind: Literal["", "clips", "features"] = ""
    backbones: str = ""                                   # backbones YAML for clip shards
    public: str = ""                                      # public AVE layout root (dir of h5 files or a .npz)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)   # train/val/test fractions when no official split
    split_seed: int = 0
