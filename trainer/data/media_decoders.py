"""The decoders of one member's bytes: mp4 video frames and audio tracks (decord), wav/flac audio (decord), images
(Pillow: JPEG, PNG and WebP only), each raising ``CorruptSample`` with the reason and the member's place
(``shard:key.member``). What a sample is, its members, labels, captions and the window of seconds a job reads are in
trainer/data/decode.py, which calls these.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import sys
import tempfile

import decord
import numpy as np
from decord import AudioReader, VideoReader
from PIL import Image

from trainer.configs.data import DecodeConfig

# ffmpeg inside decord logs every corrupt input to stderr; the stream reports corrupt samples itself
decord.logging.set_level(decord.logging.QUIET)

# too_short: a clip shorter than decode.min_seconds, or an audio track that stops more than audio_shortfall_s
# before its clip's video; conflicting_members: members that
# disagree about the modality a job reads (an image member and an mp4, or two image members, where the job
# reads an image); bad_feature: a feature-shard ``.npy`` member that is unreadable or has the wrong shape
# (trainer/data/features.py)
SKIP_REASONS = ("missing_member", "empty_member", "bad_video", "bad_audio", "bad_image", "bad_json", "bad_text",
                "bad_feature", "too_short", "conflicting_members")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")   # what Pillow may read an image member as (never GIF, TIFF, ...)


class CorruptSample(ValueError):
    """A sample the pipeline skips; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, where: str, detail: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{where}: {reason}: {detail}")
        self.reason, self.where, self.detail = reason, where, detail


def segment_frame_indices(fps: float, seconds: int, per_segment: int, start: int = 0) -> list[int]:
    """Frame indices, segment-major, of the seconds [start, start + seconds): frame j of segment t is
    floor((t + (j + 0.5)/F)·fps).

    The F samples sit at the centres of F equal slices of the second, so F = fps picks every frame.
    """
    return [int(math.floor((t + (j + 0.5) / per_segment) * fps))
            for t in range(start, start + seconds) for j in range(per_segment)]


@contextlib.contextmanager
def _fd2_captured(lines: list[str]):
    """File descriptor 2 into ``lines`` for the block. decord's C++ VideoReader writes why it cannot open a file
    ("ERROR opening: ..., Invalid data found ...") to fd 2 whatever ``decord.logging``'s level, and raises with
    less ("Error reading N bytes"): the reason goes into the ``CorruptSample`` instead of the job's stderr.
    (Other threads of this process lose their stderr for the ~ms of an open; the decoding workers have none.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines())


def free_unreachable_readers() -> None:
    """Call before forking workers that decode. A decord ``VideoReader`` runs a decoding thread of its own, which it
    joins when it is freed. A reader that only a reference cycle still holds (an exception's traceback keeps its
    frames and their readers, and a frame that keeps the exception closes the cycle) waits for the garbage collector.
    A forked worker inherits such a reader but not its thread: when the worker's collector frees its copy, the join
    waits for a thread that does not exist there, and the worker hangs or dies ("Unexpected segmentation fault
    encountered in worker"; tests/unit/test_stream.py reproduces it). Collected here, in the process that owns the
    threads, the readers stop them."""
    gc.collect()


def open_video(data: bytes, where: str, size: int | None = None) -> VideoReader:
    logged: list[str] = []
    try:
        with _fd2_captured(logged):
            if size is None:
                return VideoReader(io.BytesIO(data), num_threads=1)
            return VideoReader(io.BytesIO(data), num_threads=1, width=size, height=size)
    except Exception as err:  # decord raises RuntimeError / DECORDError on anything it cannot open
        # decord's line is "ERROR opening: <its name for the input>, <ffmpeg's reason>"; the name of an in-memory input
        # is its first bytes, binary: only the reason is kept
        reason = logged[-1].rsplit(", ", 1)[-1] if logged else str(err).splitlines()[0]
        reason = "".join(c for c in reason if c.isprintable())[-200:]
        raise CorruptSample("bad_video", where, f"decord cannot open it ({reason})") from err


def read_frames(reader: VideoReader, indices: list[int], where: str) -> np.ndarray:
    if indices and indices[-1] >= len(reader):
        raise CorruptSample("bad_video", where, f"{len(reader)} frames, need frame {indices[-1]}")
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as err:  # truncated streams fail here, after a successful open
        raise CorruptSample("bad_video", where, f"frame decoding failed ({str(err).splitlines()[0]})") from err


def video_length(reader: VideoReader, where: str) -> tuple[float, int]:
    """(fps, frames) of an opened video that has frames."""
    fps, frames = reader.get_avg_fps(), len(reader)
    if frames == 0 or not fps > 0:
        raise CorruptSample("bad_video", where, f"no frames to decode ({frames} frames at {fps} fps)")
    return fps, frames


def read_seconds(reader: VideoReader, fps: float, frames: int, start: int, count: int, cfg: DecodeConfig,
                  where: str) -> np.ndarray:
    """``(count f h w 3)`` uint8: the seconds [start, start + count) (indices past the last frame read the last one:
    the end of a last partial second)."""
    indices = [min(i, frames - 1) for i in segment_frame_indices(fps, count, cfg.frames_per_segment, start)]
    return read_frames(reader, indices, where).reshape(count, cfg.frames_per_segment, cfg.frame_size,
                                                        cfg.frame_size, 3)


def decode_video(data: bytes, cfg: DecodeConfig, where: str) -> np.ndarray:
    """mp4 bytes -> (t f h w 3) uint8, t = cfg.seconds from the start, f = cfg.frames_per_segment, h = w =
    cfg.frame_size; a clip of fewer seconds (``clip_seconds``) is "too_short"."""
    reader = open_video(data, where, cfg.frame_size)
    fps, frames = video_length(reader, where)
    if clip_seconds(frames / fps) < cfg.seconds:
        raise CorruptSample("too_short", where, f"the clip lasts {frames / fps:.2f} s ({frames} frames at {fps:g} "
                                                f"fps), {cfg.seconds} s are decoded (decode.seconds)")
    return read_seconds(reader, fps, frames, 0, cfg.seconds, cfg, where)


def read_audio(data: bytes, sample_rate: int, where: str) -> np.ndarray:
    logged: list[str] = []
    try:
        with _fd2_captured(logged):   # as for the video: decord's own report of a bad input stays off the terminal
            reader = AudioReader(io.BytesIO(data), sample_rate=sample_rate, mono=True)
    except Exception as err:  # no audio stream, undecodable codec, garbage bytes
        raise CorruptSample("bad_audio", where, f"decord cannot read audio ({str(err).splitlines()[0]})") from err
    # AudioReader decodes the whole track into ``_array`` (channels, samples) when it opens. The public
    # ``reader[:]`` rebuilds it through a Python list of every sample index: 14.6 of 18 ms per 10-s
    # clip measured here. tests/unit/test_stream.py checks that both give the same array.
    wave = reader._array[0]
    if len(wave) == 0:   # a 0-s file, or a header with no samples
        raise CorruptSample("bad_audio", where, "the audio holds no samples")
    return wave


def decode_audio(data: bytes, cfg: DecodeConfig, where: str) -> np.ndarray:
    """mp4/wav/flac bytes -> (t s) float32 mono, s = cfg.sample_rate; resampled by decord."""
    wave = read_audio(data, cfg.sample_rate, where)
    need = cfg.seconds * cfg.sample_rate
    if len(wave) < need - cfg.audio_shortfall_s * cfg.sample_rate:
        raise CorruptSample("too_short", where, f"{len(wave) / cfg.sample_rate:.2f} s of audio, "
                                                f"{cfg.seconds} s are decoded (decode.seconds)")
    # AAC adds encoder padding at the end (decord returns ~0.05 s extra): keep the first T seconds
    wave = np.pad(wave[:need], (0, max(0, need - len(wave))))
    return wave.reshape(cfg.seconds, cfg.sample_rate).astype(np.float32, copy=False)


def clip_seconds(duration: float) -> int:
    """The one-second segments a whole clip of ``duration`` seconds is coded as: its whole seconds, and a last partial
    second from half a second on (a 7.4-s clip gives 7, a 7.5-s one 8); at least 1."""
    return max(1, math.floor(duration + 0.5))


def decode_whole_video(data: bytes, cfg: DecodeConfig, where: str) -> np.ndarray:
    """mp4 bytes -> ``(t f h w 3)`` uint8 for every second of the clip, t = ``clip_seconds`` of its duration (frame
    indices past the last frame read the last frame: the end of a last partial second)."""
    reader = open_video(data, where, cfg.frame_size)
    fps, frames = video_length(reader, where)
    return read_seconds(reader, fps, frames, 0, clip_seconds(frames / fps), cfg, where)


def decode_whole_audio(data: bytes, cfg: DecodeConfig, where: str, seconds: int | None = None) -> np.ndarray:
    """mp4/wav/flac bytes -> ``(t s)`` float32 mono for every second of the track (t = ``clip_seconds`` of its
    duration), or for ``seconds`` seconds (those of the clip's video): cut, or zero-padded past the track's end."""
    wave = read_audio(data, cfg.sample_rate, where)
    seconds = clip_seconds(len(wave) / cfg.sample_rate) if seconds is None else seconds
    need = seconds * cfg.sample_rate
    wave = np.pad(wave[:need], (0, max(0, need - len(wave))))
    return wave.reshape(seconds, cfg.sample_rate).astype(np.float32, copy=False)


NO_AUDIO_STREAM = "Can't find audio stream"   # decord's message for a container without an audio track


def read_image(data: bytes, where: str) -> Image.Image:
    """The member's image, decoded whole, as RGB; Pillow reads JPEG, PNG and WebP only, whatever the suffix."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            size = image.size
            if 0 not in size:
                image.load()   # a truncated or corrupt stream fails here, after the header
                return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:   # UnidentifiedImageError is an OSError
        raise CorruptSample("bad_image", where, f"Pillow cannot decode it ({err})") from err
    raise CorruptSample("bad_image", where, f"{size[0]}x{size[1]} pixels")


def decode_image(data: bytes, cfg: DecodeConfig, where: str) -> np.ndarray:
    """jpg/png/webp bytes -> ``(h w 3)`` uint8 RGB, h = w = ``cfg.frame_size`` (resized bilinearly, aspect not kept, as
    the video's frames are)."""
    rgb = read_image(data, where).resize((cfg.frame_size, cfg.frame_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
