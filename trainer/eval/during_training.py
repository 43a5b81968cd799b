"""A quick downstream probe during pretraining (``eval.every``), and what ``run.keep_best`` ranks checkpoints by.

The CMG authors choose the pretraining checkpoint by a downstream score: the best one appears early (seed 001
§5 and their released logs pick an early epoch). So every ``eval.every`` steps the job writes a checkpoint and
rank 0 probes it the way ``python -m trainer.programs.evaluate`` does (ALGORITHMS.md §5): the checkpoint's frozen model
encodes a labelled validation set, a classifier head is trained on one modality's codes (its epoch chosen on that
modality's validation part) and scored on the other modality's test part. Only the cross-modal accuracies are
computed (``eval/accuracy_<source>_to_<target>`` for each ordered pair of audio and video the model encodes, and
their mean ``eval/accuracy_cross_mean``): the classification protocol of seed 001 Table 1, cheap enough to run
in a few seconds on a few hundred clips.

The validation clips are read and passed through the job's frozen backbones once (the first probe) and kept in
memory; each probe then only encodes them with the new checkpoint and trains the small heads. The probe leaves
every RNG of the process as it found it, so a run with probes resumes as exactly as one without.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import TYPE_CHECKING
from trainer.configs.eval import TrainingProbeConfig

if TYPE_CHECKING:   # the job config (trainer/job.py) holds TrainingProbeConfig: keep this module light to import
    from trainer.configs.data import DataConfig
    from trainer.eval.frozen_codes import LabelledFeatures

PROBED_MODALITIES = ("audio", "video")
METRIC_PREFIX = "eval/accuracy_"
MEAN_METRIC = "eval/accuracy_cross_mean"


def probe_metric_names(modalities: tuple[str, ...]) -> list[str]:
    """The metrics a probe of a model encoding ``modalities`` logs (what ``run.keep_best`` may name)."""
    probed = [m for m in PROBED_MODALITIES if m in modalities]
    pairs = [f"{METRIC_PREFIX}{a}_to_{b}" for a, b in itertools.permutations(probed, 2)]
    return [*pairs, MEAN_METRIC] if pairs else []


class TrainingProbe:
    """Probes checkpoints of a job on ``cfg``'s validation shards (rank 0 only; not collective)."""

    def __init__(self, cfg: TrainingProbeConfig, data: DataConfig, backbones=None):
        self.cfg = cfg
        self.data = dataclasses.replace(data, urls=cfg.urls, kind=cfg.kind, manifest=cfg.manifest)
        self.backbones = backbones
        self._parts: dict[str, LabelledFeatures] | None = None

    def _validation_parts(self, modalities: tuple[str, ...]) -> dict[str, LabelledFeatures]:
        from trainer.eval.frozen_codes import read_shard_features, split_indices

        if self._parts is None:
            clips = read_shard_features(self.data, modalities, self.backbones)
            self._parts = {name: clips.subset(index) for name, index in
                           split_indices(len(clips), self.cfg.split, self.cfg.split_seed).items()}
        return self._parts

    def __call__(self, checkpoint: Path) -> dict[str, float]:
        """The probe metrics (accuracy, %) of ``checkpoint``."""
        from trainer.eval.frozen_codes import encode_split, load_pretrained
        from trainer.eval.probes import classification_probe
        from trainer.configs.eval import ProbeConfig

        model = load_pretrained(checkpoint).model
        modalities = tuple(m for m in PROBED_MODALITIES if m in model.downstream_modalities)
        parts = self._validation_parts(modalities)
        splits = {name: encode_split(model, part, modalities) for name, part in parts.items()}
        classes = 1 + max(int(part.clip_label.max()) for part in parts.values())
        probe = ProbeConfig(epochs=self.cfg.epochs, batch_size=self.cfg.batch_size, lr=self.cfg.lr)
        metrics = {f"{METRIC_PREFIX}{a}_to_{b}": 100.0 * classification_probe(splits, a, b, classes, probe).cross
                   for a, b in itertools.permutations(modalities, 2)}
        metrics[MEAN_METRIC] = sum(metrics.values()) / len(metrics)
        return metrics
