"""Configs of the shard programs that their command lines document (shards/parsers.py), torch-free: importing
``shards.synth`` imports torch (through webdataset), and ``--help`` must answer at once."""

from __future__ import annotations

from dataclasses import dataclass

PAIR_KINDS = ("image+text", "audio+text", "image+audio", "video+text")


@dataclass
class SynthConfig:
    num_clips: int = 16
    classes: int = 5
    seconds: int = 10
    seed: int = 0
    fps: int = 8
    size: int = 96  # frame side in pixels (even: yuv420p)
    sample_rate: int = 16000
    write_wav: bool = False  # also write KEY.wav (PCM) next to the mp4
    unlabelled: bool = False  # write no KEY.txt and no KEY.json: media only
    pairs: str = ""  # "" (clips) or one of PAIR_KINDS: pairs of one event each (module docstring)
