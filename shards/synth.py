"""Synthetic audio-visual clips, and pair corpora of the same events, with known per-second, per-modality ground truth.

    python -m shards.synth --out DIR --num-clips N --classes K --seconds 10 --seed S \
        [--fps 8 --size 96 --sr 16000] [--wav] [--unlabelled] [--pairs image+text|audio+text|image+audio|video+text]

writes, per clip ``KEY``: ``KEY.mp4`` (H.264 video + AAC audio), ``KEY.txt`` (a caption) and
``KEY.json`` (labels), plus ``KEY.wav`` (the same audio as 16-bit PCM) with ``--wav``. With
``--unlabelled`` only the media are written (no txt, no json): a pretraining corpus as users have it,
the same clips as without the flag.

With ``--pairs``, each item is a pair of one event (``KEY.json`` labels it as a clip is labelled), the way image-text,
audio-text, image-sound and video-text corpora come: ``KEY.jpg`` (one frame of the class's square on the item's
background), ``KEY.wav`` (the item's audio track: the class's chord on its seconds), ``KEY.mp4`` (the video track,
silent) and ``KEY.txt`` with two captions, one per line, that describe only the modality they pair with (the square's
colour for an image, its motion too for a video, the chord for audio). The events are the clip world's classes
(``event_classes``: the same colours and chords), so a model trained on clips and one trained on pairs code the same
events (a continual chain on them has a measurable answer).

Event signatures (recoverable from one decoded second, see tests/unit/test_synth_shards.py):
- video: class c draws a square of side size/3 in the fully saturated colour of hue 360°·c/K, moving
  along a class-specific path (``MOTIONS[c mod 6]``, faster for every further 6 classes). The background
  is grey (R = G = B), so the saturated pixels of a frame are exactly the event's square.
- audio: class c plays a major triad with root f_c = round(220·8^(c/(K−1))) Hz (log-spaced over three
  octaves, 220..1760 Hz): partials f, 5/4·f, 3/2·f with amplitudes 1, 0.5, 0.4, so the strongest
  spectral peak of an event second is f_c.
Nuisance, drawn per clip independently of the label (what a specific encoder / CLUB has to absorb):
- video: background brightness and a drifting grey stripe texture (contrast, frequency, angle, drift);
- audio: loudness (overall gain) and timbre (2nd/3rd harmonic weights of the chord, level and
  colour of a background noise).
Labels (AVVP style): per second and per modality the clip's event class, or -1 for background. A
sticky Markov chain over {both, audio only, video only, background} gives contiguous runs of each
kind; every clip has at least one second with the event in both modalities. ``clip_label`` is the
clip's event class (one per clip, AVE style). Captions come from a few templates per class, filled
with the class's colour, motion and chord (seed 000 §B.3 style), one template chosen per clip.

Everything is a function of (seed, clip index, K, media parameters): the same command writes the
same bytes (x264 runs single-threaded for this).
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shards.parsers import synth_parser
from shards.config import PAIR_KINDS, SynthConfig
from shards.media import encode_mp4, encode_wav
from trainer.data.decode import BACKGROUND

MOTIONS = (
    "circling clockwise",
    "circling counter-clockwise",
    "sliding left and right",
    "bobbing up and down",
    "bouncing along the diagonal",
    "tracing a figure eight",
)
COLOUR_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring-green",
                "cyan", "azure", "blue", "violet", "magenta", "rose")  # hue 0°, 30°, ..., 330°
CHORD = ((1.0, 1.0), (1.25, 0.5), (1.5, 0.4))  # (frequency ratio to the root, amplitude)
ROOT_LOW_HZ, ROOT_OCTAVES = 220.0, 3
CAPTION_TEMPLATES = (  # {square} is "a red square" / "an orange square"; {Square} capitalises it
    "{Square} is {motion} while {sound} plays.",
    "There is {square} {motion}, and {sound} can be heard.",
    "The sound of {sound} accompanies {square} {motion}.",
    "Someone plays {sound} as {square} keeps {motion}.",
)
# per modality a caption describes: a few words each (the tiny test backbones read 10 tokens of a caption, and
# these are words of their vocabulary: launch/configs/backbones/tiny-wordpiece-vocab.txt)
PAIR_CAPTIONS = {
    "image": ("{Square}.", "There is {square}.", "{Square}, static."),
    "audio": ("A {hz} hz chord.", "The {hz} hz chord plays.", "One can hear a {hz} hz chord."),
    "video": ("{Square} is {motion}.", "{Square} {motion}.", "There is {square} {motion}."),
}
# Per-second kinds of the label chain: (video has the event, audio has the event)
KINDS = ((True, True), (False, True), (True, False), (False, False))
KIND_START = (0.5, 0.15, 0.15, 0.2)  # both, audio only, video only, background
KIND_STAY = 0.6  # probability that second t+1 keeps the kind of second t


@dataclass(frozen=True)
class EventClass:
    index: int
    rgb: tuple[int, int, int]
    colour: str
    motion: str
    speed_hz: float  # revolutions of the motion path per second
    root_hz: int

    @property
    def name(self) -> str:
        return f"{self.colour} square {self.motion} with a {self.root_hz} Hz chord"

    @property
    def square(self) -> str:
        return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.colour} square"

    @property
    def sound(self) -> str:
        register = "low" if self.root_hz < 440 else "mid-range" if self.root_hz < 880 else "high"
        return f"a {register} {self.root_hz} Hz chord"


@dataclass
class ClipPlan:
    """Everything random about one clip, drawn before any rendering."""

    index: int
    key: str
    clip_label: int
    video_labels: list[int]
    audio_labels: list[int]
    caption: str
    nuisance: dict[str, float] = field(default_factory=dict)


def hue_rgb(hue_deg: float) -> tuple[int, int, int]:
    """Fully saturated, full-value colour of ``hue_deg`` (HSV with S = V = 1) as 0..255 RGB."""
    h = (hue_deg % 360.0) / 60.0
    x = 1.0 - abs(h % 2.0 - 1.0)
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
    return round(255 * r), round(255 * g), round(255 * b)


def event_classes(k: int) -> list[EventClass]:
    if k < 1:
        raise ValueError(f"need at least one class, got {k}")
    classes = []
    for c in range(k):
        hue = 360.0 * c / k
        ratio = c / (k - 1) if k > 1 else 0.0
        classes.append(EventClass(
            index=c,
            rgb=hue_rgb(hue),
            colour=COLOUR_NAMES[round(hue / 30.0) % 12],
            motion=MOTIONS[c % len(MOTIONS)],
            speed_hz=0.5 * (1 + c // len(MOTIONS)),
            root_hz=round(ROOT_LOW_HZ * 2.0 ** (ROOT_OCTAVES * ratio)),
        ))
    return classes


def clip_key(seed: int, index: int) -> str:
    return f"s{seed}_{index:06d}"


def _label_kinds(rng: np.random.Generator, seconds: int) -> list[int]:
    kinds = [int(rng.choice(len(KINDS), p=KIND_START))]
    for _ in range(seconds - 1):
        kinds.append(kinds[-1] if rng.random() < KIND_STAY else int(rng.choice(len(KINDS), p=KIND_START)))
    if 0 not in kinds:
        kinds[int(rng.integers(seconds))] = 0
    return kinds


def plan_clip(cfg: SynthConfig, index: int, cls: EventClass) -> ClipPlan:
    rng = np.random.default_rng([cfg.seed, index])
    kinds = _label_kinds(rng, cfg.seconds)
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    nuisance = {
        "brightness": float(rng.uniform(50, 200)),
        "texture_contrast": float(rng.uniform(0, 40)),
        "texture_cycles": float(rng.uniform(1, 4)),
        "texture_angle": float(rng.uniform(0, math.pi)),
        "texture_drift_hz": float(rng.uniform(-0.5, 0.5)),
        "loudness": float(rng.uniform(0.25, 0.9)),
        "harmonic2": float(rng.uniform(0, 0.35)),
        "harmonic3": float(rng.uniform(0, 0.35)),
        "noise_level": float(rng.uniform(0.02, 0.1)),
        "noise_cutoff_hz": float(rng.uniform(500, 6000)),
    }
    return ClipPlan(
        index=index,
        key=clip_key(cfg.seed, index),
        clip_label=cls.index,
        video_labels=[cls.index if KINDS[k][0] else BACKGROUND for k in kinds],
        audio_labels=[cls.index if KINDS[k][1] else BACKGROUND for k in kinds],
        caption=template.format(square=cls.square, Square=cls.square.capitalize(), motion=cls.motion, sound=cls.sound),
        nuisance={name: round(value, 4) for name, value in nuisance.items()},
    )


def square_centre(cls: EventClass, t: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) in pixels of the class's square at times ``t`` (s); y grows downwards."""
    theta = 2 * np.pi * cls.speed_hz * t
    c, r = size / 2, size / 4  # radius size/4 and half side size/6 keep the square inside the frame
    s, co = np.sin(theta), np.cos(theta)
    paths = {
        "circling clockwise": (c + r * co, c + r * s),
        "circling counter-clockwise": (c + r * co, c - r * s),
        "sliding left and right": (c + r * s, c + 0 * s),
        "bobbing up and down": (c + 0 * s, c + r * s),
        "bouncing along the diagonal": (c + r * s, c + r * s),
        "tracing a figure eight": (c + r * s, c + 0.5 * r * np.sin(2 * theta)),
    }
    return paths[cls.motion]


def render_video(cfg: SynthConfig, plan: ClipPlan, cls: EventClass) -> np.ndarray:
    """Frames (n h w 3) uint8, n = seconds·fps: grey drifting stripes plus the class square."""
    n, size = cfg.seconds * cfg.fps, cfg.size
    nz = plan.nuisance
    t = np.arange(n) / cfg.fps
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along = (xx * math.cos(nz["texture_angle"]) + yy * math.sin(nz["texture_angle"])) / size
    phase = 2 * np.pi * (nz["texture_cycles"] * along[None] + nz["texture_drift_hz"] * t[:, None, None])
    grey = np.clip(nz["brightness"] + nz["texture_contrast"] * np.sin(phase), 0, 255).astype(np.uint8)
    frames = np.repeat(grey[..., None], 3, axis=-1)
    side = max(2, round(size / 3))
    cx, cy = square_centre(cls, t, size)
    for i in range(n):
        if plan.video_labels[int(t[i])] == BACKGROUND:
            continue
        x0, y0 = int(round(cx[i] - side / 2)), int(round(cy[i] - side / 2))
        frames[i, max(y0, 0):y0 + side, max(x0, 0):x0 + side] = cls.rgb
    return frames


def render_audio(cfg: SynthConfig, plan: ClipPlan, cls: EventClass) -> np.ndarray:
    """Mono waveform (s) float32, s = seconds·sample_rate: gated class chord plus coloured noise."""
    sr, n = cfg.sample_rate, cfg.seconds * cfg.sample_rate
    nz = plan.nuisance
    rng = np.random.default_rng([cfg.seed, plan.index, 1])  # the clip's noise stream (not its plan's)
    t = np.arange(n) / sr
    partials = list(CHORD) + [(2.0, nz["harmonic2"]), (3.0, nz["harmonic3"])]
    chord = sum(a * np.sin(2 * np.pi * cls.root_hz * ratio * t) for ratio, a in partials)
    chord /= sum(a for _, a in partials)  # peak <= 1
    # Gate the chord per labelled second; a 10 ms moving average turns the steps into ramps so the
    # on/off edges do not splatter energy over the whole spectrum of the neighbouring seconds.
    gate = np.repeat(np.array([lab != BACKGROUND for lab in plan.audio_labels], dtype=np.float64), sr)
    ramp = max(1, sr // 100)
    gate = np.convolve(gate, np.ones(ramp) / ramp, mode="same")
    # Noise coloured by a first-order low-pass magnitude response |H(f)| = 1/sqrt(1 + (f/fc)^2)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    noise = np.fft.irfft(spectrum / np.sqrt(1 + (freqs / nz["noise_cutoff_hz"]) ** 2), n)
    noise /= noise.std() + 1e-12
    audio = nz["loudness"] * (0.8 * chord * gate + nz["noise_level"] * noise)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def clip_json(cfg: SynthConfig, plan: ClipPlan, cls: EventClass) -> dict:
    return {
        "key": plan.key,
        "seconds": cfg.seconds,
        "fps": cfg.fps,
        "size": cfg.size,
        "sample_rate": cfg.sample_rate,
        "num_classes": cfg.classes,
        "clip_label": plan.clip_label,
        "event": cls.name,
        "video_labels": plan.video_labels,
        "audio_labels": plan.audio_labels,
        "nuisance": plan.nuisance,
        "synth": {"seed": cfg.seed, "rgb": list(cls.rgb), "root_hz": cls.root_hz},
    }


def pair_captions(cfg: SynthConfig, plan: ClipPlan, cls: EventClass) -> list[str]:
    """Two distinct captions of the item's text partner (the pair's other modality), chosen by the item's seed."""
    partner = cfg.pairs.removesuffix("+text")
    templates = PAIR_CAPTIONS[partner]
    rng = np.random.default_rng([cfg.seed, plan.index, 2])
    chosen = rng.choice(len(templates), size=2, replace=False)
    fill = {"square": cls.square, "Square": cls.square.capitalize(), "motion": cls.motion, "hz": cls.root_hz}
    return [templates[int(i)].format(**fill) for i in chosen]


def pair_labels(cfg: SynthConfig, plan: ClipPlan) -> ClipPlan:
    """The item's labels for its pair kind: one segment for an image with its captions; with audio or video,
    ``seconds`` per-second labels, BACKGROUND for a modality the pair lacks, and an image showing its event on every
    second of the sound it pairs with."""
    modalities = set(cfg.pairs.split("+"))
    if not modalities & {"audio", "video"}:
        return replace(plan, video_labels=[plan.clip_label], audio_labels=[BACKGROUND])
    none = [BACKGROUND] * cfg.seconds
    video = [plan.clip_label] * cfg.seconds if "image" in modalities else \
        plan.video_labels if "video" in modalities else none
    return replace(plan, video_labels=video, audio_labels=plan.audio_labels if "audio" in modalities else none)


def write_pair(cfg: SynthConfig, plan: ClipPlan, cls: EventClass, stem: Path) -> None:
    """The files of one pair item (module docstring)."""
    modalities = cfg.pairs.split("+")
    if "image" in modalities:
        still = replace(plan, video_labels=[cls.index])
        frame = render_video(replace(cfg, seconds=1, fps=1), still, cls)[0]
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        stem.with_suffix(".jpg").write_bytes(buf.getvalue())
    if "audio" in modalities:
        stem.with_suffix(".wav").write_bytes(encode_wav(render_audio(cfg, plan, cls), cfg.sample_rate))
    if "video" in modalities:
        stem.with_suffix(".mp4").write_bytes(encode_mp4(render_video(cfg, plan, cls), None, cfg.fps, cfg.sample_rate))
    if "text" in modalities:
        stem.with_suffix(".txt").write_text("\n".join(pair_captions(cfg, plan, cls)) + "\n", encoding="utf-8")
    if not cfg.unlabelled:
        labelled = pair_labels(cfg, plan)
        record = clip_json(replace(cfg, seconds=len(labelled.video_labels)), labelled, cls) | {"pairs": cfg.pairs}
        stem.with_suffix(".json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def synthesise(cfg: SynthConfig, out: Path, progress: bool = True) -> list[str]:
    """Write ``cfg.num_clips`` clips (or pair items) into ``out``; returns their keys in index order."""
    if cfg.num_clips < 1 or cfg.seconds < 1 or cfg.fps < 1 or cfg.sample_rate < 1:
        raise ValueError(f"num_clips, seconds, fps and sample_rate must be >= 1: {cfg}")
    if cfg.size < 6 or cfg.size % 2:
        raise ValueError(f"size must be even and >= 6 (yuv420p, a visible square), got {cfg.size}")
    if cfg.pairs and cfg.pairs not in PAIR_KINDS:
        raise ValueError(f"pairs must be one of {list(PAIR_KINDS)}, got {cfg.pairs!r}")
    classes = event_classes(cfg.classes)
    # Balanced classes: clip i gets entry i of a seeded permutation of (0, 1, ..., K-1, 0, 1, ...)
    clip_labels = np.random.default_rng([cfg.seed]).permutation(np.arange(cfg.num_clips) % cfg.classes)
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for index in tqdm(range(cfg.num_clips), desc="synth", unit="item" if cfg.pairs else "clip", disable=not progress):
        cls = classes[int(clip_labels[index])]
        plan = plan_clip(cfg, index, cls)
        stem = out / plan.key
        keys.append(plan.key)
        if cfg.pairs:
            write_pair(cfg, plan, cls, stem)
            continue
        audio = render_audio(cfg, plan, cls)
        stem.with_suffix(".mp4").write_bytes(encode_mp4(render_video(cfg, plan, cls), audio, cfg.fps, cfg.sample_rate))
        if not cfg.unlabelled:
            stem.with_suffix(".txt").write_text(plan.caption + "\n", encoding="utf-8")
            stem.with_suffix(".json").write_text(json.dumps(clip_json(cfg, plan, cls)) + "\n", encoding="utf-8")
        if cfg.write_wav:
            stem.with_suffix(".wav").write_bytes(encode_wav(audio, cfg.sample_rate))
    return keys


def parse_args(argv: list[str] | None) -> tuple[SynthConfig, Path]:
    a = synth_parser().parse_args(argv)   # torch-free, for `cmg shards synth --help`
    cfg = SynthConfig(num_clips=a.num_clips, classes=a.classes, seconds=a.seconds, seed=a.seed, fps=a.fps,
                      size=a.size, sample_rate=a.sr, write_wav=a.wav, unlabelled=a.unlabelled, pairs=a.pairs)
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    keys = synthesise(cfg, out)
    print(f"wrote {len(keys)} {cfg.pairs + ' items' if cfg.pairs else 'clips'} to {out} ({json.dumps(asdict(cfg))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
