"""Audio encoders with their own feature extraction, run batched on the model's device.

Families and the input each model expects (settings from the model's preprocessor_config.json, or
the feature extractor's defaults for a config-built model, updated with ``processor:``):
- ``ast``: Kaldi-style log-mel filterbank (25 ms Hann window, 10 ms hop, DC removal, pre-emphasis
  0.97, 512-point FFT, Kaldi mel scale from 20 Hz), padded/truncated to ``max_length`` frames,
  normalised as (x - mean) / (2 std) -> ``input_values (n frames mel)``.
- ``wav2vec2`` / ``hubert``: the raw wave, zero-mean unit-variance per window if ``do_normalize``.
- ``whisper``: log10-mel (400-point centred STFT, slaney mel to 8 kHz) of the wave zero-padded to
  the encoder's fixed length, clamped to (max - 8), scaled (x + 4) / 4 -> ``input_features (n mel frames)``.
- ``vggish``: VGGish's fixed front end (torchvggish vggish_params.py, mel_features.py): 25 ms periodic-Hann
  frames every 10 ms, |512-point FFT| (magnitude, not power), 64 HTK-mel bands over 125-7500 Hz,
  log(mel + 0.01), cut into examples of 96 frames (0.96 s) with hop 96 -> ``examples (n k 96 64)``; one
  128-d embedding per example.

A window is one 1-s segment (``audio_window: segment``) or the whole clip (``clip``: one forward per clip,
cheaper for models trained on long inputs). Either way each segment's feature is the mean of the encoder
tokens whose centre time falls inside it. For VGGish a segment window holds exactly one example (its first
0.96 s); a clip window gives examples starting every 0.96 s from the clip start, which is how the AVE
features the CMG authors used were cut (10 examples of a 10-s clip, example k <-> second k), and assigns
example k to second k up to 13-s clips (its centre 0.96 k + 0.4875 s drifts out of second k at k = 13).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers.audio_utils import mel_filter_bank

from trainer.backbones.base import FrozenEncoder, load_processor_settings
from trainer.configs.backbones import BackboneConfig

_AST_DEFAULTS = {"sampling_rate": 16000, "do_normalize": True, "mean": -4.2677393, "std": 4.5689974}
_WAVE_DEFAULTS = {"sampling_rate": 16000, "do_normalize": True}
_WHISPER_DEFAULTS = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160}
_VGGISH_DEFAULTS = {"sampling_rate": 16000}   # vggish_params.SAMPLE_RATE

# Kaldi fbank framing used by AST's feature extractor
_KALDI_WINDOW, _KALDI_HOP, _KALDI_FFT, _KALDI_PREEMPHASIS = 400, 160, 512, 0.97
_KALDI_MEL_FLOOR = 1.192092955078125e-07   # float32 epsilon, the floor before the log


def kaldi_log_mel(wave: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """``(n s)`` wave -> ``(n frames mel)`` natural-log mel energies, frames = 1 + (s - 400) // 160."""
    frames = wave.unfold(-1, _KALDI_WINDOW, _KALDI_HOP)                  # (n frames 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)                  # remove DC offset per frame
    # pre-emphasis inside each frame; Kaldi scales the first sample by (1 - 0.97)
    frames = torch.cat([frames[..., :1] * (1 - _KALDI_PREEMPHASIS),
                        frames[..., 1:] - _KALDI_PREEMPHASIS * frames[..., :-1]], dim=-1)
    window = torch.hann_window(_KALDI_WINDOW, periodic=False, dtype=wave.dtype, device=wave.device)
    power = torch.fft.rfft(frames * window, n=_KALDI_FFT).abs().pow(2)  # (n frames 257)
    return (power @ mel_filters).clamp(min=_KALDI_MEL_FLOOR).log()


# VGGish framing (vggish_params.py: STFT_WINDOW_LENGTH_SECONDS 0.025, STFT_HOP_LENGTH_SECONDS 0.010 at 16 kHz;
# mel_features.py: FFT length = the next power of two of the window), mel range and log offset
_VGGISH_WINDOW, _VGGISH_HOP, _VGGISH_FFT = 400, 160, 512
_VGGISH_MEL_MIN_HZ, _VGGISH_MEL_MAX_HZ, _VGGISH_LOG_OFFSET = 125.0, 7500.0, 0.01


def vggish_log_mel(wave: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """``(n s)`` wave -> ``(n frames mel)`` log-mel, frames = 1 + (s - 400) // 160 (no padding)."""
    frames = wave.unfold(-1, _VGGISH_WINDOW, _VGGISH_HOP)                   # (n frames 400)
    window = torch.hann_window(_VGGISH_WINDOW, periodic=True, dtype=wave.dtype, device=wave.device)
    magnitude = torch.fft.rfft(frames * window, n=_VGGISH_FFT).abs()       # (n frames 257)
    return (magnitude @ mel_filters + _VGGISH_LOG_OFFSET).log()


def vggish_examples(log_mel: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(n frames mel)`` -> ``(n k num_frames mel)``: back-to-back examples, k = frames // num_frames; the
    frames after the last whole example are dropped (vggish_input.waveform_to_examples)."""
    if log_mel.shape[1] < num_frames:
        raise ValueError(f"audio (vggish): a window of {log_mel.shape[1]} frames is shorter than one "
                         f"{num_frames}-frame example; VGGish needs at least 0.975 s of audio")
    return log_mel.unfold(1, num_frames, num_frames).transpose(-1, -2)


def whisper_log_mel(wave: torch.Tensor, mel_filters: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``(n s)`` wave -> ``(n mel s//hop)`` Whisper log-mel (per-row max - 8 floor, (x + 4) / 4)."""
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    stft = torch.stft(wave, n_fft, hop, window=window, return_complex=True)   # centred, reflect-padded
    power = stft[..., :-1].abs().pow(2)                                  # drop the last frame, as Whisper does
    log_spec = (mel_filters.T @ power).clamp(min=1e-10).log10()          # (n mel frames)
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def zero_mean_unit_var(wave: torch.Tensor) -> torch.Tensor:
    """Per-row normalisation of the wav2vec2 feature extractor: (x - mean) / sqrt(var + 1e-7)."""
    mean = wave.mean(dim=-1, keepdim=True)
    var = wave.var(dim=-1, unbiased=False, keepdim=True)
    return (wave - mean) / torch.sqrt(var + 1e-7)


def segment_pooling_weights(token_times: torch.Tensor, valid_seconds: float, segment_seconds: float,
                            num_segments: int) -> torch.Tensor:
    """``(t k)`` weights averaging, per segment, the tokens whose centre time lies in it.

    ``token_times`` (k): centre of each token in seconds from the window start; tokens at or past
    ``valid_seconds`` cover padding and get no weight. Raises if a segment receives no token.
    """
    segment = torch.floor(token_times / segment_seconds).long()
    keep = (token_times < valid_seconds) & (segment < num_segments)
    onehot = torch.zeros(num_segments, token_times.numel(), dtype=torch.float32)
    onehot[segment[keep], torch.nonzero(keep).squeeze(1)] = 1.0
    counts = onehot.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        empty = torch.nonzero(counts.squeeze(1) == 0).squeeze(1).tolist()
        raise ValueError(f"audio: segments {empty} receive no encoder token (window of {valid_seconds:.2f} s, "
                         f"{token_times.numel()} tokens); use audio_window 'segment' or a model whose input "
                         f"covers the clip")
    return onehot / counts


class AudioBackbone(FrozenEncoder):
    """``audio (b t s) float32`` at ``sample_rate`` -> ``(b t d)``."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str = "cpu"):
        super().__init__(cfg, device)
        defaults = {"ast": _AST_DEFAULTS, "whisper": _WHISPER_DEFAULTS,
                    "vggish": _VGGISH_DEFAULTS}.get(cfg.family, _WAVE_DEFAULTS)
        self.settings: dict[str, Any] = defaults | load_processor_settings(cfg)
        if self.settings["sampling_rate"] != cfg.sample_rate:
            raise ValueError(f"audio: the {cfg.family} feature extractor expects {self.settings['sampling_rate']} Hz "
                             f"but the decoded audio is {cfg.sample_rate} Hz (sample_rate in the backbone config)")
        if cfg.resolved_pooling == "cls" and cfg.family != "ast":
            raise ValueError(f"audio: pooling 'cls' needs a model with a CLS token (ast), not {cfg.family}")
        mc = self.model.config
        if cfg.family == "ast":
            with warnings.catch_warnings():
                # AST's 128 Kaldi mel bins over 257 FFT bins leave the lowest filters empty; its own
                # feature extractor builds the same bank (and warns the same), so keep it as is
                warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
                filters = mel_filter_bank(num_frequency_bins=_KALDI_FFT // 2 + 1, num_mel_filters=mc.num_mel_bins,
                                          min_frequency=20, max_frequency=cfg.sample_rate // 2,
                                          sampling_rate=cfg.sample_rate, norm=None, mel_scale="kaldi",
                                          triangularize_in_mel_space=True)
        elif cfg.family == "whisper":
            filters = mel_filter_bank(num_frequency_bins=1 + self.settings["n_fft"] // 2,
                                      num_mel_filters=mc.num_mel_bins, min_frequency=0.0, max_frequency=8000.0,
                                      sampling_rate=cfg.sample_rate, norm="slaney", mel_scale="slaney")
        elif cfg.family == "vggish":
            # mel_features.spectrogram_to_mel_matrix: triangles in mel space on the 1127 ln(1 + f/700) scale
            # (transformers calls it "kaldi"), band edges evenly spaced in mel, no area normalisation
            filters = mel_filter_bank(num_frequency_bins=_VGGISH_FFT // 2 + 1, num_mel_filters=mc.num_bands,
                                      min_frequency=_VGGISH_MEL_MIN_HZ, max_frequency=_VGGISH_MEL_MAX_HZ,
                                      sampling_rate=cfg.sample_rate, norm=None, mel_scale="kaldi",
                                      triangularize_in_mel_space=True)
        else:
            filters = None
        self.mel_filters = None if filters is None else torch.tensor(filters, dtype=torch.float32,
                                                                     device=self.device)

    def model_inputs(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(n s)`` float wave on the device -> the keyword inputs of the model."""
        mc, s = self.model.config, self.settings
        if self.cfg.family == "ast":
            mel = kaldi_log_mel(wave, self.mel_filters)
            frames = mel.shape[1]
            if frames < mc.max_length:   # zero frames after the log, as the feature extractor pads
                mel = torch.nn.functional.pad(mel, (0, 0, 0, mc.max_length - frames))
            mel = mel[:, :mc.max_length]
            if s["do_normalize"]:
                mel = (mel - s["mean"]) / (2 * s["std"])
            return {"input_values": mel}
        if self.cfg.family == "vggish":
            return {"examples": vggish_examples(vggish_log_mel(wave, self.mel_filters), mc.num_frames)}
        if self.cfg.family == "whisper":
            samples = self.whisper_frames() * s["hop_length"]
            wave = torch.nn.functional.pad(wave, (0, max(0, samples - wave.shape[1])))[:, :samples]
            return {"input_features": whisper_log_mel(wave, self.mel_filters, s["n_fft"], s["hop_length"])}
        return {"input_values": zero_mean_unit_var(wave) if s["do_normalize"] else wave}

    def whisper_frames(self) -> int:
        # the encoder only accepts exactly 2 * max_source_positions mel frames (conv2 has stride 2)
        return 2 * self.model.config.max_source_positions

    def token_times(self, num_samples: int) -> tuple[torch.Tensor, int]:
        """Centre time (s) of each content token of a window of ``num_samples``, and how many special
        tokens precede them in the encoder output."""
        mc, sr = self.model.config, self.cfg.sample_rate
        if self.cfg.family == "ast":
            f_dim = (mc.num_mel_bins - mc.patch_size) // mc.frequency_stride + 1
            t_dim = (mc.max_length - mc.patch_size) // mc.time_stride + 1
            # patch column c spans frames c*ts .. c*ts+P-1; frame j is centred at j*hop + window/2 samples
            centre_frame = torch.arange(t_dim) * mc.time_stride + (mc.patch_size - 1) / 2
            column_times = (centre_frame * _KALDI_HOP + _KALDI_WINDOW / 2) / sr
            return column_times.repeat(f_dim), 2     # tokens are frequency-major: (f t) flattened
        if self.cfg.family == "vggish":
            # example i spans frames i*F .. i*F+F-1, i.e. samples i*F*hop .. (i*F+F-1)*hop + window
            frames = 1 + (num_samples - _VGGISH_WINDOW) // _VGGISH_HOP
            span = (mc.num_frames - 1) * _VGGISH_HOP + _VGGISH_WINDOW
            starts = torch.arange(frames // mc.num_frames) * mc.num_frames * _VGGISH_HOP
            return (starts + span / 2) / sr, 0
        if self.cfg.family == "whisper":
            # centred STFT: frame j sits at j*hop; conv2 (stride 2) makes token i sit at frame 2i
            hop = self.settings["hop_length"]
            return torch.arange(self.whisper_frames() // 2) * 2 * hop / sr, 0
        # wav2vec2 / hubert conv stack: total stride and receptive field from the config
        stride, field, count = 1, 1, num_samples
        for kernel, step in zip(mc.conv_kernel, mc.conv_stride):
            field += (kernel - 1) * stride
            stride *= step
            count = (count - kernel) // step + 1
        return (torch.arange(count) * stride + (field - 1) / 2) / sr, 0

    def _encode_windows(self, wave: torch.Tensor, num_segments: int) -> torch.Tensor:
        """``(n s)`` windows of ``num_segments`` segments each -> ``(n num_segments d)``."""
        inputs = {k: v.to(self.dtype) for k, v in self.model_inputs(wave.to(self.device).float()).items()}
        if self.cfg.family == "vggish":
            h = self.model(**inputs)                                    # (n k d): one embedding per example
        else:
            h = self.hidden(self.model(**inputs, output_hidden_states=self.wants_hidden_states))   # (n k d)
        if self.cfg.resolved_pooling == "cls":
            # AST's own pooler averages its two leading tokens (CLS and distillation)
            return ((h[:, 0] + h[:, 1]) / 2).unsqueeze(1)
        samples = wave.shape[1]
        times, specials = self.token_times(samples)
        sr = self.cfg.sample_rate
        weights = segment_pooling_weights(times, samples / sr, samples / sr / num_segments, num_segments)
        content = h[:, specials:specials + times.numel()].float()
        return torch.einsum("tk,nkd->ntd", weights.to(content.device), content)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if not audio.is_floating_point() or audio.dim() != 3:
            raise ValueError(f"audio: expected float (b t s) at {self.cfg.sample_rate} Hz, "
                             f"got {audio.dtype} {tuple(audio.shape)}")
        b, t, s = audio.shape
        with torch.inference_mode():
            if self.cfg.audio_window == "segment":
                feats = self.chunked(lambda w: self._encode_windows(w, 1), audio.reshape(b * t, s))
            else:
                feats = self.chunked(lambda w: self._encode_windows(w, t), audio.reshape(b, t * s))
        return self.finish(feats.reshape(b, t, -1))
