"""Explicit decoders: one raw WebDataset sample (member suffix -> bytes) to arrays.

A sample holds any subset of the modalities (named string keys, ``SAMPLE_MODALITIES``), each from its members:
    video       mp4                     decord VideoReader: a window of ``decode.seconds`` one-second segments
    audio       wav or flac, else the mp4's audio track (decord AudioReader): the same window's seconds
    image       jpg, jpeg, png or webp  Pillow (those four formats only): one image, one segment
    text        txt                     the caption: utf-8, one caption per line (several lines: several
                                        captions of one item; ``decode_sample`` picks one, ``sample_seed``)
and optionally
    json        labels: {"clip_label": int, "video_labels": [int]*L, "audio_labels": [int]*L, ...}
A job names the modalities it reads (``modalities``); a sample that lacks one of them, or whose member for it
does not decode, is skipped. Members the job does not read are not decoded (a wav beside the mp4 of an image
job, say) and are counted as ignored. Pretraining data are unlabelled: a sample without a json member has no
labels (every per-segment label and the clip label are BACKGROUND, ``ClipLabels.labelled`` is False), one
without a txt member has caption None. An optional member that is present must still decode.
Every other member is ignored: it is never handed to any decoder, so ``.pyd``/``.pickle``/``.pth``
members are never unpickled. Metadata keys that webdataset adds (``__key__``, ``__url__``) are read
as strings.

Clips of any length (``decode_sample``): a clip of S seconds (``clip_seconds``: its whole seconds, and a last partial
second from half a second on) gives a window of T = ``decode.seconds`` seconds. A longer clip gives a window at a
start of whole seconds drawn from a digest of (``sample_seed``, key) — the stream's seed is (``data.seed``, epoch),
so every epoch trains on another window of a long clip, the same on every run and after a resume; without a seed
the window starts at 0. A shorter clip of at least ``decode.min_seconds`` seconds gives its S seconds, which
``collate_samples`` pads to T with zeros and a ``segment_mask`` (trainer/models/inputs.py says what a padded
second is to the model); below that it is skipped as ``too_short``. Windows start on whole seconds so that the
seconds a job trains on are the very seconds ``cmg encode`` codes (every second from 0).

A sample that cannot be decoded raises ``CorruptSample`` whose ``reason`` is one of ``SKIP_REASONS``
and whose message names the shard, the key and the member; the stream counts these by reason. The decoders of one
member's bytes (mp4, wav/flac, images) and ``CorruptSample`` are in trainer/data/media_decoders.py; this module reads
a sample: its members, labels and captions, the window of seconds, and the decoded sample.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.configs.data import DecodeConfig
from trainer.data.media_decoders import (
    NO_AUDIO_STREAM, CorruptSample, clip_seconds, decode_image, decode_whole_audio, decode_whole_video, open_video,
    read_audio, read_frames, read_image, read_seconds, video_length,
)

if TYPE_CHECKING:
    from trainer.data.cache import DecodeCache

BACKGROUND = -1  # label of a second without an event in that modality
VIDEO, AUDIO, IMAGE, TEXT = "video", "audio", "image", "text"
MEDIA_MODALITIES = (VIDEO, AUDIO, IMAGE)       # decoded to arrays (the batch's uint8 / float32 tensors)
SAMPLE_MODALITIES = (*MEDIA_MODALITIES, TEXT)  # text: the caption, a string the text backbone tokenises
CLIP_MODALITIES = (VIDEO, AUDIO)               # what a clip job reads unless it names others
TIMED_MODALITIES = (VIDEO, AUDIO)              # decoded as a window of one-second segments; an image is one
VIDEO_MEMBER, LABEL_MEMBER, CAPTION_MEMBER = "mp4", "json", "txt"
AUDIO_MEMBERS = ("wav", "flac")  # separate audio, in order of preference
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
OPTIONAL_MEMBERS = (LABEL_MEMBER, CAPTION_MEMBER)
# every member the stream reads, in the order member sets are written ("mp4+wav+json+txt", "jpg+txt")
MEMBER_ORDER = (VIDEO_MEMBER, *AUDIO_MEMBERS, *IMAGE_MEMBERS, *OPTIONAL_MEMBERS)
KNOWN_MEMBERS = frozenset(MEMBER_ORDER)
META_KEYS = frozenset({"__key__", "__url__", "__local_path__"})


def check_modalities(modalities: Collection[str], where: str) -> tuple[str, ...]:
    """``modalities`` as a tuple in ``SAMPLE_MODALITIES`` order; ``ValueError`` naming ``where`` unless they are
    distinct names from ``SAMPLE_MODALITIES``, at least one."""
    names = list(modalities)
    if not names or len(set(names)) < len(names) or any(m not in SAMPLE_MODALITIES for m in names):
        raise ValueError(f"{where}: {names} must be distinct names from {list(SAMPLE_MODALITIES)}, at least one")
    return tuple(m for m in SAMPLE_MODALITIES if m in names)


def segments_of(modalities: Collection[str], cfg: DecodeConfig) -> int:
    """The one-second segments a sample of ``modalities`` is decoded to: ``decode.seconds`` with video or audio, one
    for an image alone (with or without its caption). Its per-segment labels have that length."""
    return cfg.seconds if any(m in modalities for m in TIMED_MODALITIES) else 1


@dataclass
class ClipLabels:
    video: np.ndarray  # (t) int64, class index or BACKGROUND
    audio: np.ndarray  # (t) int64
    clip: int  # the clip's event class (BACKGROUND: none)
    num_classes: int | None
    labelled: bool = True  # False: the sample has no json member, and every label above is BACKGROUND

    @classmethod
    def unlabelled(cls, seconds: int) -> ClipLabels:
        """The labels of a clip without a json member: ``seconds`` seconds of BACKGROUND, no clip class."""
        return cls(np.full(seconds, BACKGROUND, np.int64), np.full(seconds, BACKGROUND, np.int64), BACKGROUND, None,
                   labelled=False)


@dataclass
class DecodedSample:
    key: str
    # the job's media modalities: video (t f h w 3) uint8, audio (t s) float32, image (h w 3) uint8
    media: dict[str, np.ndarray]
    caption: str | None  # None: no txt member (of several captions, the one picked)
    labels: ClipLabels  # of the media's segments (BACKGROUND on padding)
    # the real segments of the media: video and audio hold decode.seconds segments, of which the first ``seconds``
    # are the clip's and the rest zero padding (a clip shorter than the window); 1 for an image alone
    seconds: int
    ignored_members: int  # members present but never decoded
    url: str  # the shard it was read from ("" outside a shard)


@dataclass
class SampleInfo:
    """What ``probe_sample`` learns about a sample (for the shard writer's manifest and the inspector)."""

    modalities: tuple[str, ...]  # what the sample can give, in SAMPLE_MODALITIES order
    seconds: float | None  # video duration (frames / fps), else the audio's; None: an image alone
    fps: float | None  # None: no video
    width: int | None  # of the video, else of the image
    height: int | None
    audio_seconds: float | None  # None: no audio (no wav/flac, and an mp4 without a track)
    label_seconds: int | None  # None: no json member
    num_classes: int | None
    captions: int  # lines of the txt member (0: none)


def member_where(sample: Mapping[str, Any], member: str) -> str:
    """``shard:key.member`` (or ``key.member`` without a shard URL): where error messages point."""
    key = sample.get("__key__", "?")
    url = sample.get("__url__")
    return f"{url}:{key}.{member}" if url else f"{key}.{member}"


def unknown_members(sample: Mapping[str, Any]) -> list[str]:
    return sorted(m for m in sample if m not in KNOWN_MEMBERS and m not in META_KEYS)


def member_set(sample: Mapping[str, Any]) -> str:
    """The sample's members joined by "+": those the stream reads in ``MEMBER_ORDER``, then any others sorted
    (e.g. "mp4+json+txt", "mp4", "mp4+wav+pyd")."""
    return "+".join([m for m in MEMBER_ORDER if m in sample] + unknown_members(sample))


def check_member(sample: Mapping[str, Any], member: str) -> None:
    """Raise ``CorruptSample`` (missing_member / empty_member) unless ``member`` holds some raw bytes."""
    if member not in sample:
        raise CorruptSample("missing_member", member_where(sample, member), "member missing")
    data = sample[member]
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{member_where(sample, member)}: expected raw bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise CorruptSample("empty_member", member_where(sample, member), "member is empty")


def _audio_member(sample: Mapping[str, Any]) -> str:
    return next((m for m in AUDIO_MEMBERS if m in sample), VIDEO_MEMBER)


def _image_member(sample: Mapping[str, Any], beside_video: bool = False) -> str:
    """The sample's one image member; ``CorruptSample`` if it has none, several, or (unless ``beside_video``) an mp4
    beside it: a job that reads the image cannot tell which of the two the sample meant."""
    images = [m for m in IMAGE_MEMBERS if m in sample]
    if not images:
        raise CorruptSample("missing_member", member_where(sample, "|".join(IMAGE_MEMBERS)),
                            f"no image member ({', '.join(IMAGE_MEMBERS)})")
    if len(images) > 1 or (VIDEO_MEMBER in sample and not beside_video):
        both = images + ([VIDEO_MEMBER] if VIDEO_MEMBER in sample else [])
        raise CorruptSample("conflicting_members", member_where(sample, "+".join(both)),
                            "the job reads one image, the sample has " + " and ".join(both))
    return images[0]


def media_members(sample: Mapping[str, Any], modalities: Collection[str],
                  image_beside_video: bool = False) -> dict[str, str]:
    """Modality -> the member it is decoded from (``text``: txt), for the ``modalities`` a job reads; raises
    ``CorruptSample`` unless each of those members and every optional member present holds some bytes, or where the
    members disagree (``_image_member``; ``image_beside_video``: a probe's view, a clip with its thumbnail)."""
    source = {VIDEO: lambda: VIDEO_MEMBER, AUDIO: lambda: _audio_member(sample),
              IMAGE: lambda: _image_member(sample, image_beside_video), TEXT: lambda: CAPTION_MEMBER}
    members = {m: source[m]() for m in modalities}
    for member in [*members.values(), *(m for m in OPTIONAL_MEMBERS if m in sample and m not in members.values())]:
        check_member(sample, member)
    return members


def sample_modalities(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """The modalities a raw sample's members name (an mp4 counts as audio too: whether it has a track shows only
    when it is decoded, ``probe_sample``)."""
    has = {VIDEO: VIDEO_MEMBER in sample, AUDIO: VIDEO_MEMBER in sample or any(m in sample for m in AUDIO_MEMBERS),
           IMAGE: any(m in sample for m in IMAGE_MEMBERS), TEXT: CAPTION_MEMBER in sample}
    return tuple(m for m in SAMPLE_MODALITIES if has[m])


def _label_list(obj: dict, name: str, num_classes: int | None, where: str) -> list[int]:
    values = obj.get(name)
    if not isinstance(values, list) or not values:
        raise CorruptSample("bad_json", where, f"key '{name}' must be a non-empty list of ints")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < BACKGROUND:
            raise CorruptSample("bad_json", where, f"key '{name}': {v!r} is not a class index or {BACKGROUND}")
        if num_classes is not None and v >= num_classes:
            raise CorruptSample("bad_json", where, f"key '{name}': {v} >= num_classes {num_classes}")
    return values


def parse_labels(data: bytes, where: str) -> ClipLabels:
    """All per-second labels of a clip from its json member (full length, not cut to T)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptSample("bad_json", where, f"not valid JSON ({err!r})") from err
    if not isinstance(obj, dict):
        raise CorruptSample("bad_json", where, f"top level must be an object, got {type(obj).__name__}")
    num_classes = obj.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise CorruptSample("bad_json", where, f"key 'num_classes': {num_classes!r} is not a positive int")
    clip = obj.get("clip_label")
    if not isinstance(clip, int) or isinstance(clip, bool) or clip < 0 or (num_classes and clip >= num_classes):
        raise CorruptSample("bad_json", where, f"key 'clip_label': {clip!r} is not a class index")
    video = _label_list(obj, "video_labels", num_classes, where)
    audio = _label_list(obj, "audio_labels", num_classes, where)
    if len(video) != len(audio):
        raise CorruptSample("bad_json", where, f"video_labels has {len(video)} seconds, audio_labels {len(audio)}")
    return ClipLabels(np.array(video, np.int64), np.array(audio, np.int64), clip, num_classes)


def decode_labels(data: bytes, seconds: int, where: str) -> ClipLabels:
    """Labels of the first ``seconds`` seconds."""
    labels = parse_labels(data, where)
    if len(labels.video) < seconds:
        raise CorruptSample("bad_json", where, f"labels cover {len(labels.video)} s, need {seconds} s")
    return ClipLabels(labels.video[:seconds], labels.audio[:seconds], labels.clip, labels.num_classes)


def sample_labels(sample: Mapping[str, Any], seconds: int) -> ClipLabels:
    """Labels of the first ``seconds`` seconds from the sample's json member, or ``ClipLabels.unlabelled``."""
    if LABEL_MEMBER not in sample:
        return ClipLabels.unlabelled(seconds)
    return decode_labels(sample[LABEL_MEMBER], seconds, member_where(sample, LABEL_MEMBER))


def decode_captions(data: bytes, where: str) -> list[str]:
    """A txt member's captions: its non-blank lines, stripped (an item of AudioCaps, Clotho, Flickr30k or MSCOCO
    has several; ``shards.write`` writes them one per line)."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CorruptSample("bad_text", where, f"not utf-8 ({err})") from err
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise CorruptSample("bad_text", where, "caption is blank")
    return captions


def pick_caption(captions: list[str], key: str, seed: int | None) -> str:
    """One of an item's captions: the first with ``seed`` None (coding, evaluation), else the one a digest of
    (``seed``, ``key``) picks. The stream passes a seed of (``data.seed``, epoch): each epoch trains on another of
    an item's captions, the same on every run and after a resume."""
    if seed is None or len(captions) == 1:
        return captions[0]
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return captions[int.from_bytes(digest[:8], "little") % len(captions)]


def sample_captions(sample: Mapping[str, Any]) -> list[str]:
    """Every caption of the sample's txt member, in order ([] without one)."""
    if CAPTION_MEMBER not in sample:
        return []
    return decode_captions(sample[CAPTION_MEMBER], member_where(sample, CAPTION_MEMBER))


def sample_caption(sample: Mapping[str, Any], seed: int | None = None) -> str | None:
    """The sample's caption (of several, the one ``pick_caption`` picks with ``seed``), or None without a txt member."""
    captions = sample_captions(sample)
    return pick_caption(captions, str(sample.get("__key__")), seed) if captions else None


def window_start(choices: int, key: str, seed: int | None) -> int:
    """The first second of a training window, of ``choices`` possible ones: 0 with ``seed`` None, else the one a
    digest of (``seed``, ``key``) picks (independent of ``pick_caption``'s)."""
    if seed is None or choices == 1:
        return 0
    digest = hashlib.sha256(f"{seed}\0{key}\0window".encode()).digest()
    return int.from_bytes(digest[:8], "little") % choices


def clip_window(seconds: int, where: str, cfg: DecodeConfig, key: str, seed: int | None) -> tuple[int, int]:
    """(start, count): the seconds of a clip of ``seconds`` that training reads (module docstring)."""
    if seconds < cfg.shortest:
        hint = ("decode.min_seconds; lower it to pad shorter clips" if cfg.min_seconds is not None else
                "decode.seconds; set decode.min_seconds to pad shorter clips to the window with a mask")
        raise CorruptSample("too_short", where, f"the clip has {seconds} s, training reads at least {cfg.shortest} s "
                                                f"({hint})")
    count = min(seconds, cfg.seconds)
    return window_start(seconds - count + 1, key, seed), count


@dataclass
class WholeClip:
    """Every second of one sample, as ``decode_whole_sample`` decodes it for coding (not for training). A media
    stream the sample lacks is None (an mp4 without an audio track, an audio+text or image+text sample)."""

    key: str
    video: np.ndarray | None  # (t f h w 3) uint8, t = clip_seconds of the video's duration
    audio: np.ndarray | None  # (t s) float32: the video's t seconds, else the track's own
    image: np.ndarray | None  # (h w 3) uint8
    captions: tuple[str, ...]  # every caption of the txt member, in order (): none
    labels: ClipLabels  # of the t seconds (BACKGROUND past the json's last second; 1 for an image alone)
    url: str

    @property
    def caption(self) -> str | None:
        """The caption a clip is coded with: the first of several (None: no txt member)."""
        return self.captions[0] if self.captions else None


def decode_whole_sample(sample: Mapping[str, Any], cfg: DecodeConfig,
                        modalities: Collection[str] = CLIP_MODALITIES) -> WholeClip:
    """Decode every second of one raw sample for coding, of the media streams of ``modalities`` it has; raises
    ``CorruptSample``.

    A sample needs one of the media streams ``modalities`` name ("missing_member" naming them otherwise), and with
    ``text`` among them its captions (all of them; a clip is coded with the first); a media stream it lacks is None,
    coded without. The audio (a wav/flac member, else the mp4's track) is cut or zero-padded to the video's seconds
    where there is a video; an mp4 without an audio track gives ``audio=None`` instead of a skip. An image is one
    segment."""
    wanted = [m for m in MEDIA_MODALITIES if m in modalities]
    have = [m for m in wanted if m in sample_modalities(sample)]
    if not have:
        members = {VIDEO: VIDEO_MEMBER, AUDIO: "|".join((*AUDIO_MEMBERS, VIDEO_MEMBER)), IMAGE: "|".join(IMAGE_MEMBERS)}
        raise CorruptSample("missing_member", member_where(sample, "|".join(members[m] for m in wanted)),
                            f"no member of {', '.join(wanted)}")
    members = media_members(sample, [*have, *([TEXT] if TEXT in modalities else [])])
    captions = tuple(sample_captions(sample))
    labels = parse_labels(sample[LABEL_MEMBER], member_where(sample, LABEL_MEMBER)) if LABEL_MEMBER in sample else None
    video = audio = image = None
    if IMAGE in members:
        image = decode_image(sample[members[IMAGE]], cfg, member_where(sample, members[IMAGE]))
    if VIDEO in members:
        video = decode_whole_video(sample[VIDEO_MEMBER], cfg, member_where(sample, VIDEO_MEMBER))
    if AUDIO in members:
        try:
            audio = decode_whole_audio(sample[members[AUDIO]], cfg, member_where(sample, members[AUDIO]),
                                       None if video is None else len(video))
        except CorruptSample as err:
            if members[AUDIO] != VIDEO_MEMBER or NO_AUDIO_STREAM not in err.detail:
                raise
    if video is None and audio is None and image is None:   # an mp4 of an audio-only job without its track
        raise CorruptSample("bad_audio", member_where(sample, VIDEO_MEMBER), "the mp4 has no audio track")
    seconds = len(video) if video is not None else len(audio) if audio is not None else 1
    return WholeClip(str(sample.get("__key__")), video, audio, image, captions, _fitted_labels(labels, seconds),
                     str(sample.get("__url__", "")))


def _fitted_labels(labels: ClipLabels | None, seconds: int) -> ClipLabels:
    """The labels of a whole clip of ``seconds``: the json's, cut or extended with BACKGROUND to them."""
    if labels is None:
        return ClipLabels.unlabelled(seconds)
    fit = [np.pad(v[:seconds], (0, max(0, seconds - len(v))), constant_values=BACKGROUND)
           for v in (labels.video, labels.audio)]
    return ClipLabels(fit[0], fit[1], labels.clip, labels.num_classes)


# (clip seconds S, where) -> (start, count): the seconds of a clip that ``_decode_media`` decodes
SecondsPick = Callable[[int, str], tuple[int, int]]


def _whole_clip(seconds: int, where: str) -> tuple[int, int]:
    del where
    return 0, seconds


def _decode_media(sample: Mapping[str, Any], members: Mapping[str, str], cfg: DecodeConfig,
                  pick: SecondsPick) -> tuple[dict[str, np.ndarray], int, int]:
    """(media, start, count): the image, and the seconds ``pick`` chooses of the video and the audio (unpadded).
    The clip's seconds are the video's where there is one; its audio track must then last until the video's end
    but for ``audio_shortfall_s``. (0, 1) for an image alone."""
    media: dict[str, np.ndarray] = {}
    start, count, duration = 0, 1, None
    if IMAGE in members:
        media[IMAGE] = decode_image(sample[members[IMAGE]], cfg, member_where(sample, members[IMAGE]))
    if VIDEO in members:
        where = member_where(sample, members[VIDEO])
        reader = open_video(sample[members[VIDEO]], where, cfg.frame_size)
        fps, frames = video_length(reader, where)
        duration = frames / fps
        start, count = pick(clip_seconds(duration), where)
        media[VIDEO] = read_seconds(reader, fps, frames, start, count, cfg, where)
    if AUDIO in members:
        where, rate = member_where(sample, members[AUDIO]), cfg.sample_rate
        wave = read_audio(sample[members[AUDIO]], rate, where)
        if duration is None:
            start, count = pick(clip_seconds(len(wave) / rate), where)
        elif len(wave) < (duration - cfg.audio_shortfall_s) * rate:
            raise CorruptSample("too_short", where, f"{len(wave) / rate:.2f} s of audio in a clip of {duration:.2f} s "
                                                    f"(up to decode.audio_shortfall_s={cfg.audio_shortfall_s} s less "
                                                    "is zero-padded)")
        # AAC adds encoder padding at the end (decord returns ~0.05 s extra): the window's samples, zero-padded
        part = wave[start * rate:(start + count) * rate]
        media[AUDIO] = np.pad(part, (0, count * rate - len(part))).reshape(count, rate).astype(np.float32, copy=False)
    return media, start, count


def _window_labels(labels: ClipLabels | None, start: int, count: int, segments: int, where: str) -> ClipLabels:
    """The labels of the seconds [start, start + count), BACKGROUND on the padding up to ``segments``."""
    if labels is None:
        return ClipLabels.unlabelled(segments)
    if len(labels.video) < start + count:
        raise CorruptSample("bad_json", where, f"labels cover {len(labels.video)} s, the window reads seconds "
                                               f"{start}..{start + count - 1}")
    fit = [np.pad(v[start:start + count], (0, segments - count), constant_values=BACKGROUND)
           for v in (labels.video, labels.audio)]
    return ClipLabels(fit[0], fit[1], labels.clip, labels.num_classes)


def decode_sample(sample: Mapping[str, Any], cfg: DecodeConfig, modalities: Collection[str] = CLIP_MODALITIES,
                  cache: DecodeCache | None = None, sample_seed: int | None = None,
                  whole: bool = False) -> DecodedSample:
    """Decode the ``modalities`` a job reads from one raw sample; raises ``CorruptSample`` (cheap members are checked
    first). With ``text`` among them the sample needs a txt member ("missing_member"), otherwise a caption is read
    where present (None without); of several captions, ``pick_caption`` picks one with ``sample_seed``, which also
    places the window in a long clip (module docstring). Without a json member the sample has no labels
    (``ClipLabels.unlabelled``). With a ``cache`` (trainer/data/cache.py), the whole clip is decoded once, kept, and
    each window cut from it: the same arrays as a decode of the window alone. ``whole``: every second of the clip
    instead of a window (evaluation: unpadded, any length; the first of several captions; the json's labels cut or
    extended with BACKGROUND to them, as ``decode_whole_sample`` does)."""
    members = media_members(sample, modalities)
    key, where_labels = str(sample.get("__key__")), member_where(sample, LABEL_MEMBER)
    labels = parse_labels(sample[LABEL_MEMBER], where_labels) if LABEL_MEMBER in sample else None
    caption = sample_caption(sample, None if whole else sample_seed)     # coding reads the first of several
    window = _whole_clip if whole else functools.partial(clip_window, cfg=cfg, key=key, seed=sample_seed)
    timed = [m for m in modalities if m in TIMED_MODALITIES]
    if cache is None:
        media, start, count = _decode_media(sample, members, cfg, window)
    else:
        media = cache.load(sample, [m for m in modalities if m in MEDIA_MODALITIES])
        if media is None:
            media = _decode_media(sample, members, cfg, _whole_clip)[0]
            cache.save(sample, media)
        start, count = window(len(media[timed[0]]), member_where(sample, members[timed[0]])) if timed else (0, 1)
        media = {m: a[start:start + count] if m in timed else a for m, a in media.items()}
    if whole:
        labels = _fitted_labels(labels, count)
    else:
        segments = segments_of(modalities, cfg)
        media = {m: np.pad(a, [(0, segments - count)] + [(0, 0)] * (a.ndim - 1)) if m in timed else a
                 for m, a in media.items()}
        labels = _window_labels(labels, start, count, segments, where_labels)
    ignored = len(unknown_members(sample)) + sum(
        m in KNOWN_MEMBERS and m not in members.values() and m not in OPTIONAL_MEMBERS for m in sample)
    return DecodedSample(key, media, caption, labels, count, ignored, str(sample.get("__url__", "")))


def _probe_video(sample: Mapping[str, Any]) -> tuple[float, float, int, int]:
    """(seconds, fps, width, height) of the mp4: opened at its native size, one frame per second and the last one
    decoded (a truncated stream fails there)."""
    where = member_where(sample, VIDEO_MEMBER)
    reader = open_video(sample[VIDEO_MEMBER], where)
    fps, frames = reader.get_avg_fps(), len(reader)
    if frames == 0 or not fps > 0:
        raise CorruptSample("bad_video", where, f"{frames} frames at {fps} fps")
    seconds = frames / fps
    indices = sorted({min(frames - 1, int((t + 0.5) * fps)) for t in range(math.ceil(seconds))} | {frames - 1})
    height, width = read_frames(reader, indices, where).shape[1:3]
    return seconds, fps, int(width), int(height)


def probe_sample(sample: Mapping[str, Any], sample_rate: int = DecodeConfig.sample_rate) -> SampleInfo:
    """Check that every member the stream reads decodes, and measure the sample (raises ``CorruptSample``).

    Reads the json and the caption where present, the video (``_probe_video``), the image, and the whole audio
    (a wav/flac member, else the mp4's track: an mp4 without one is a sample without audio). A sample that names no
    modality (a json alone, say) is "missing_member"."""
    named = sample_modalities(sample)
    if not named:
        raise CorruptSample("missing_member", member_where(sample, "*"), "no member of any modality (mp4, "
                            f"{', '.join(AUDIO_MEMBERS)}, {', '.join(IMAGE_MEMBERS)}, txt)")
    media_members(sample, named, image_beside_video=True)
    where_labels = member_where(sample, LABEL_MEMBER)
    labels = parse_labels(sample[LABEL_MEMBER], where_labels) if LABEL_MEMBER in sample else None
    captions = len(decode_captions(sample[CAPTION_MEMBER], member_where(sample, CAPTION_MEMBER))) \
        if CAPTION_MEMBER in sample else 0
    seconds = fps = width = height = audio_seconds = None
    if VIDEO in named:
        seconds, fps, width, height = _probe_video(sample)
    if IMAGE in named:
        member = _image_member(sample, beside_video=True)
        width, height = read_image(sample[member], member_where(sample, member)).size
    audio_member = _audio_member(sample)
    try:
        if AUDIO in named:
            wave = read_audio(sample[audio_member], sample_rate, member_where(sample, audio_member))
            audio_seconds = len(wave) / sample_rate
    except CorruptSample as err:
        if audio_member != VIDEO_MEMBER or NO_AUDIO_STREAM not in err.detail:
            raise
    seconds = seconds if seconds is not None else audio_seconds
    if labels is not None and seconds is not None and len(labels.video) > math.ceil(seconds - 1e-6):
        raise CorruptSample("bad_json", where_labels,
                            f"labels cover {len(labels.video)} s but the sample lasts {seconds:.2f} s")
    modalities = tuple(m for m in named if m != AUDIO or audio_seconds is not None)
    label_seconds, num_classes = (None, None) if labels is None else (len(labels.video), labels.num_classes)
    return SampleInfo(modalities, seconds, fps, width, height, audio_seconds, label_seconds, num_classes, captions)
