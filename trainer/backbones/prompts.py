"""Class labels -> descriptive sentences for the text modality (seed 000 §B.3).

The seeds wrote several prompt templates per event class ("The roar of a high-speed race car
engine.", "The race car is running on the road and making a loud engine sound.", ...) and let each
clip pick one at random. Here a class uses its hand-written sentences from ``per_class`` when given,
else the generic ``templates`` filled with the label. The pick is a pure function of (seed, epoch,
clip key), so every rank, worker and resumed run makes the same choice without sharing an RNG.
Captions that come with the shards are used as they are; prompts are for label-only datasets.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "The sound of {label}.",
    "A video of {label}.",
    "There is {label} in this scene.",
    "You can see and hear {label}.",
    "A clip in which {label} can be heard.",
)


@dataclass
class PromptConfig:
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    per_class: dict[str, list[str]] = field(default_factory=dict)   # label -> hand-written sentences
    seed: int = 0


class LabelPrompts:
    def __init__(self, cfg: PromptConfig | None = None):
        self.cfg = cfg or PromptConfig()
        if not self.cfg.templates or any("{label}" not in t for t in self.cfg.templates):
            raise ValueError("prompts: every template must contain '{label}' and there must be at least one")
        for label, sentences in self.cfg.per_class.items():
            if not sentences:
                raise ValueError(f"prompts: per_class[{label!r}] is empty")

    def sentences(self, label: str) -> list[str]:
        """Every sentence a clip of class ``label`` may get."""
        if label in self.cfg.per_class:
            return list(self.cfg.per_class[label])
        readable = label.replace("_", " ").strip()   # dataset labels are often snake_case ids
        return [t.format(label=readable) for t in self.cfg.templates]

    def choose(self, label: str, key: str, epoch: int = 0) -> str:
        """The sentence of clip ``key`` in ``epoch``: a stable hash, identical in every process."""
        options = self.sentences(label)
        digest = zlib.crc32(f"{self.cfg.seed}/{epoch}/{key}".encode())
        return options[digest % len(options)]

    def captions(self, labels: Sequence[str], keys: Sequence[str], epoch: int = 0) -> list[str]:
        if len(labels) != len(keys):
            raise ValueError(f"prompts: {len(labels)} labels but {len(keys)} keys")
        return [self.choose(label, key, epoch) for label, key in zip(labels, keys)]
