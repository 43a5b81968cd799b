"""The command lines of the shards programs (``cmg shards synth|write|inspect|convert|extract``, ``python -m
shards.<name>``), built without importing them: their modules import torch (webdataset does), and ``--help`` must
answer at once (trainer/programs/cmg.py). Each program parses its arguments with its parser here; defaults are those
of the programs' torch-free configs (shards/config.py, trainer/configs/data.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shards.config import PAIR_KINDS, SynthConfig
from trainer.help_text import HelpFormatter, module_docstring
from trainer.configs.data import DecodeConfig


def _parser(name: str, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m shards.{name}", formatter_class=HelpFormatter,
                                   description=module_docstring(f"shards.{name}").split("\n\n")[0], **kwargs)


def synth_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    p = _parser("synth")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--num-clips", type=int, default=d.num_clips)
    p.add_argument("--classes", type=int, default=d.classes)
    p.add_argument("--seconds", type=int, default=d.seconds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fps", type=int, default=d.fps)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--sr", type=int, default=d.sample_rate, help="audio sample rate (Hz)")
    p.add_argument("--wav", action="store_true", help="also write KEY.wav (16-bit PCM)")
    p.add_argument("--unlabelled", action="store_true", help="write the media only: no KEY.txt, no KEY.json")
    p.add_argument("--pairs", default="", choices=("", *PAIR_KINDS),
                   help="write pairs of one event each (jpg/wav/silent mp4 + captions) instead of clips")
    return p


def write_parser() -> argparse.ArgumentParser:
    p = _parser("write")
    p.add_argument("--src", required=True, type=Path,
                   help="directory of samples: KEY.mp4, KEY.wav/.flac, KEY.jpg/.jpeg/.png/.webp, KEY.txt, KEY.json")
    p.add_argument("--out", required=True, help="shard pattern, e.g. 'OUT/train-%%06d.tar'")
    p.add_argument("--modalities", default="video,audio",
                   help="comma list every sample must give: video, audio, image, text (e.g. image,text)")
    p.add_argument("--captions", type=Path, default=None,
                   help="captions from a .csv/.tsv (header row) or .jsonl file instead of KEY.txt files")
    p.add_argument("--key-column", default="key", help="the caption file's column of stems or file names")
    p.add_argument("--caption-column", action="append", default=None,
                   help="a caption column (repeat for several: Clotho's caption_1 ... caption_5; default: caption)")
    p.add_argument("--delimiter", default=None, help="CSV separator (default: ',' for .csv, tab for .tsv)")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard at most")
    p.add_argument("--max-size", type=float, default=1e9, help="bytes per shard (approximate upper bound)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave undecodable and unpaired samples out (listed in the manifest)")
    return p


def inspect_parser() -> argparse.ArgumentParser:
    p = _parser("inspect")
    p.add_argument("urls", nargs="+",
                   help="shard URLs: brace patterns ('OUT/train-{000000..000003}.tar'), globs or several paths")
    p.add_argument("--manifest", default=None,
                   help="manifest.json to check counts against (default: next to the shards)")
    p.add_argument("--members", action="store_true", help="print the member and modality sets of every sample")
    p.add_argument("--seconds", type=float, default=None,
                   help="flag video or audio shorter than this (the decode.seconds of the training config)")
    return p


def extract_parser() -> argparse.ArgumentParser:
    d = DecodeConfig()
    p = _parser("extract")
    p.add_argument("--src", required=True, help="clip shards, brace pattern, e.g. 'clips/train-{000000..000009}.tar'")
    p.add_argument("--backbones", required=True, help="backbones YAML, e.g. launch/configs/backbones/tiny.yaml")
    p.add_argument("--out", required=True, help="feature shard pattern, e.g. 'feats/train-%%06d.tar'")
    p.add_argument("--batch-size", type=int, default=16, help="clips per backbone batch")
    p.add_argument("--num-workers", type=int, default=2, help="decoding DataLoader workers per rank")
    p.add_argument("--seconds", type=int, default=d.seconds)
    p.add_argument("--frames-per-segment", type=int, default=d.frames_per_segment)
    p.add_argument("--frame-size", type=int, default=d.frame_size)
    p.add_argument("--sample-rate", type=int, default=d.sample_rate)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored feature dtype")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    return p


def convert_parser() -> argparse.ArgumentParser:
    p = _parser("convert")
    sets = p.add_subparsers(dest="set", required=True, metavar="SET")

    def add_set(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = sets.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        sub.add_argument("--out", required=True, help="output directory (shards, manifest.json, convert-state.json)")
        sub.add_argument("--clips-per-shard", type=int, default=256, help="clips per shard")
        sub.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored feature dtype")
        sub.add_argument("--skip-bad", action="store_true", help="leave unusable clips out (listed) instead of failing")
        sub.add_argument("--text-backbones", default="", help="backbones YAML: encode the prompts into text.npy")
        sub.add_argument("--max-shards", type=int, default=None, help="stop after N new shards (rerun to continue)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        return sub

    for name, what in (("vggsound-avel", "VGGSound-AVEL 24K/40K/81K (the pretraining sets)"),
                       ("ucf-vggsound", "one side of UCF101 <-> VGGSound: UCF101 video or VGGSound audio")):
        sub = add_set(name, what)
        sub.add_argument("--meta", required=True, help="CSV with columns category, video_id[, split] (81K: id)")
        sub.add_argument("--categories", required=name == "ucf-vggsound", default="",
                         help="class names, one a line (index = line number); not for the 81K list")
        sub.add_argument("--audio-dir", default="", help="directory of <video_id>.zip audio features")
        sub.add_argument("--video-dir", default="", help="directory of <video_id>.zip video features")
        if name == "vggsound-avel":
            sub.add_argument("--label-dir", default="", help="directory of <video_id>.zip AVC labels (10, 1); "
                             "without it every second carries the clip's class")
            sub.add_argument("--prompts", default="", help="label -> prompt CSV: the caption (text modality)")
        sub.add_argument("--split", default="all", help="split of the rows when the CSV has no split column")
    sub = add_set("avvp", "AVVP: features with per-modality onset/offset annotations")
    sub.add_argument("--audio-annotations", required=True, help="TSV of the audible events")
    sub.add_argument("--visual-annotations", required=True, help="TSV of the visible events")
    sub.add_argument("--categories", required=True, help="AVVP_Categories.txt")
    sub.add_argument("--audio-dir", default="", help="directory of <youtube id>.zip audio features")
    sub.add_argument("--video-dir", default="", help="directory of <youtube id>.zip video features")
    sub.add_argument("--split", default="all", help="split the clips are recorded under")
    for name, what in (("mscoco", "MSCOCO image-caption retrieval set (image features read as video)"),
                       ("clotho", "Clotho audio-caption retrieval set (5 captions per audio)"),
                       ("flickrsound", "FlickrSound image-audio retrieval set"),
                       ("msvd", "MSVD video-caption retrieval set"),
                       ("valor32k", "VALOR32K audio-video-caption set")):
        sub = add_set(name, f"{what}: one zip of a pickled array per item (trainer/data/released_pairs.py)")
        if name == "flickrsound":
            sub.add_argument("--meta", required=True, help="CSV with a filename column (test.csv)")
        else:
            sub.add_argument("--captions", required=True, help={
                "mscoco": "JSON with annotations [{image_id, caption}] (val_part_1.json)",
                "clotho": "CSV with columns file_name, caption_1..caption_5",
                "msvd": "CSV with columns video_name, caption (a row per caption)",
                "valor32k": "JSON list of {video_id, desc} (desc_test.json)"}[name])
        if name in ("mscoco", "flickrsound", "msvd", "valor32k"):
            sub.add_argument("--video-dir", required=True, help="directory of <id>.zip video (or image) features")
        if name in ("clotho", "flickrsound", "valor32k"):
            sub.add_argument("--audio-dir", required=True, help="directory of <id>.zip audio features")
        sub.add_argument("--split", default="test", help="split the items are recorded under")
    sub = add_set("ave", "AVE: h5 features, labels and order files")
    sub.add_argument("--root", required=True, help="directory of visual_feature.h5 and audio_feature.h5")
    sub.add_argument("--labels", default="labels.h5", help="labels h5 (relative to --root, or absolute)")
    sub.add_argument("--order", default="{split}_order.h5", help="order h5 per split (relative to --root, or absolute)")
    sub.add_argument("--splits", default="train,val,test", help="comma list of splits")
    sub.add_argument("--categories", default="", help="class names of the label columns (default: AVE's 28)")
    return p
