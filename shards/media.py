"""Encoding raw frames and samples into media bytes (PyAV for mp4, the stdlib for wav).

The mp4 layout is what decord reads: H.264 (libx264, yuv420p) video and AAC audio. decord cannot
read PCM inside mp4 (shared/notes/env_feasibility.md §4), so PCM only ever travels as a separate wav.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np

# AAC frames hold 1024 samples; feeding the encoder frames of that size keeps pts arithmetic trivial
AAC_FRAME = 1024


def encode_mp4(
    frames: np.ndarray,
    audio: np.ndarray | None,
    fps: int,
    sample_rate: int,
    crf: int = 18,
) -> bytes:
    """Encode ``frames`` (n h w 3) uint8 RGB and optional mono ``audio`` (s) float32 in [-1, 1].

    One keyframe per second (``g = fps``) so decoders can seek to any second cheaply. Same inputs give
    the same bytes: x264 runs single-threaded and without macroblock-tree rate control (measured here:
    with mbtree on, 5-13 of 20-40 repeated encodes of the same frames in one process differed; with
    mbtree=0, 0 of 90). ``audio=None`` writes a video-only mp4 (to test the missing-audio-track path).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (n h w 3) uint8, got {frames.dtype} {frames.shape}")
    n, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {width}x{height}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"g": str(fps), "preset": "veryfast", "crf": str(crf), "threads": "1",
                         "x264-params": "mbtree=0"}
        track = None
        if audio is not None:
            track = container.add_stream("aac", rate=sample_rate)
            track.layout = "mono"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if track is not None:
            samples = np.ascontiguousarray(audio, dtype=np.float32)
            for start in range(0, len(samples), AAC_FRAME):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + AAC_FRAME], format="fltp", layout="mono")
                chunk.sample_rate = sample_rate
                chunk.pts = start
                for packet in track.encode(chunk):
                    container.mux(packet)
            for packet in track.encode():
                container.mux(packet)
    return buf.getvalue()


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 ``audio`` (s) in [-1, 1] -> 16-bit PCM wav bytes."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()
