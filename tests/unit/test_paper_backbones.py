"""The CMG papers' own backbones: VGG-19 pool5 (video), VGGish (audio), BERT-base (text).

Shapes per segment, the VGGish front end against numbers computed by hand and a numpy transcription of
torchvggish's mel_features.py, torchvision / torchvggish state-dict keys loading through a backbones YAML,
``weights_only`` refusing pickled objects, weight fingerprints, PCA post-processing, and extraction to feature
shards. Every model is random-init (seeded) or loaded from a file written here; nothing is downloaded (the
official weights cannot be checked in this suite).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from backbone_utils import random_audio, random_video  # noqa: E402
from feature_utils import DECODE, SECONDS  # noqa: E402

from shards.extract import extract  # noqa: E402
from trainer.backbones import BackboneConfig, FrozenBackbones, load_backbone, load_backbones_config  # noqa: E402
from trainer.backbones.audio import AudioBackbone, vggish_examples, vggish_log_mel  # noqa: E402
from trainer.backbones.video import VideoBackbone  # noqa: E402
from trainer.backbones.vgg import VGG, VGGConfig, VGGish, VGGishConfig  # noqa: E402
from trainer.data.stream import ClipStream
from trainer.configs.data import DataConfig

pytestmark = pytest.mark.usefixtures("no_network")   # connections refused (tests/support/backbone_utils.py)

PAPER_RANDOM = "launch/configs/backbones/paper-random.yaml"
# a narrow VGGish (same front end and framing, 8-d embeddings) for the tests that only look at the audio path
SMALL_VGGISH = {"layers": [8, "M", 8, "M", 8, "M", 8, "M"], "embedding_sizes": [16, 8]}


def hz_to_mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)     # mel_features.hertz_to_mel


# --- shapes of the paper configuration ---

def test_paper_random_shapes_per_segment():
    fb = FrozenBackbones(load_backbones_config(PAPER_RANDOM))
    assert fb.feature_shapes() == {"video": (49, 512), "audio": (128,), "text": (768,)}
    feats = fb.encode({"video": random_video(b=2, t=3, f=1, h=32, w=32), "audio": random_audio(b=2, t=3),
                       "caption": ["a dog barks .", "the loud car engine"]})
    assert feats["video"].shape == (2, 3, 49, 512) and feats["audio"].shape == (2, 3, 128)
    assert feats["text"].shape == (2, 10, 768) and feats["text_mask"].shape == (2, 10)
    assert all(torch.isfinite(v).all() for v in feats.values())
    assert (feats["audio"] >= 0).all()          # VGGish ends in a ReLU: embeddings are non-negative
    assert {m: fb.encoders[m].describe()["model_class"] for m in fb.modalities} == {
        "video": "VGG", "audio": "VGGish", "text": "BertModel"}
    json.dumps(fb.state_dict())                 # the checkpoint record stays JSON


def test_vgg19_patch_cells_and_mean_come_from_pool5():
    enc = VideoBackbone(BackboneConfig(family="vgg19", config={"layers": [8, "M", 16, "M"], "image_size": 32}))
    assert enc.cfg.resolved_pooling == "patch" and enc.feature_shape == (64, 16)        # 32 px / stride 4 = 8x8
    video = random_video(b=1, t=1, f=1, h=32, w=32)
    pool = enc.model(pixel_values=enc.preprocess(video[0, 0]))[0]                        # (16 8 8)
    cells = enc(video)[0, 0]
    torch.testing.assert_close(cells[8 * 2 + 5], pool[:, 2, 5], rtol=0, atol=0)        # cell p = row * 8 + col
    mean = VideoBackbone(BackboneConfig(family="vgg19", config={"layers": [8, "M", 16, "M"], "image_size": 32},
                                        pooling="mean"))
    torch.testing.assert_close(mean(video)[0, 0], pool.mean(dim=(1, 2)), rtol=0, atol=1e-6)
    # ImageNet statistics of torchvision, not the 0.5/0.5 of transformers' "standard" ones
    assert enc.preprocess.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert enc.preprocess.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


# --- the VGGish front end ---

def test_vggish_framing_counts_by_hand():
    enc = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH))
    # 1 s at 16 kHz: 1 + (16000 - 400) // 160 = 98 frames of 25 ms every 10 ms, one 96-frame example
    log_mel = vggish_log_mel(torch.zeros(1, 16000), enc.mel_filters)
    assert log_mel.shape == (1, 98, 64)
    assert vggish_examples(log_mel, 96).shape == (1, 1, 96, 64)
    # silence: log(0 + 0.01) in every band
    torch.testing.assert_close(log_mel, torch.full_like(log_mel, math.log(0.01)))
    # 10 s: 998 frames -> 10 examples (AVE's 10 per clip), 38 frames left over
    assert enc.model_inputs(torch.zeros(1, 160000))["examples"].shape == (1, 10, 96, 64)
    # example k starts at 0.96 k s and spans 95 * 160 + 400 = 15600 samples: centre 0.96 k + 0.4875 s
    times, specials = enc.token_times(160000)
    assert specials == 0
    torch.testing.assert_close(times, torch.arange(10) * 0.96 + 0.4875, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="shorter than one 96-frame example"):
        enc.model_inputs(torch.zeros(1, 15520))    # 95 frames


@pytest.mark.parametrize("freq,band", [(250.0, 3), (6000.0, 58)])
def test_vggish_pure_tone_lands_in_its_mel_band(freq, band):
    # band edges: 66 points evenly spaced in mel from mel(125) = 185.17 to mel(7500) = 2773.33, step 39.818;
    # band i spans edges i .. i+2 and peaks at edge i+1. 250 Hz: mel 344.17 = edge 3.99 -> band 3;
    # 6000 Hz: mel 2545.65 = edge 59.28 -> band 58
    step = (hz_to_mel(7500) - hz_to_mel(125)) / 65
    assert round((hz_to_mel(freq) - hz_to_mel(125)) / step) - 1 == band
    enc = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH))
    t = torch.arange(16000) / 16000
    log_mel = vggish_log_mel(torch.sin(2 * math.pi * freq * t)[None], enc.mel_filters)[0].mean(dim=0)   # (64)
    assert log_mel.argmax().item() == band
    # magnitude, not power: a unit sine through a 400-point Hann window gives |X| = 400 / 4 = 100 at its bin and
    # about 50 at the two next to it; a band sums the bins under its triangle, so log 100 .. log 200
    assert math.log(100) - 0.1 < log_mel[band] < math.log(200) + 0.1
    far = torch.ones(64, dtype=torch.bool)
    far[band - 3:band + 4] = False
    assert log_mel[far].max() < log_mel[band] - 5   # Hann side lobes only: >= 150x less energy 4+ bands away


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """torchvggish mel_features.log_mel_spectrogram with vggish_params' values, transcribed in numpy (float64)."""
    n = 1 + (len(wave) - 400) // 160
    frames = np.stack([wave[i * 160:i * 160 + 400] for i in range(n)])
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann, 512))
    bins_mel = 1127.0 * np.log(1.0 + np.linspace(0.0, 8000.0, 257) / 700.0)
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    weights = np.empty((257, 64))
    for i in range(64):
        lower, centre, upper = edges[i:i + 3]
        weights[:, i] = np.maximum(0.0, np.minimum((bins_mel - lower) / (centre - lower),
                                                   (upper - bins_mel) / (upper - centre)))
    weights[0] = 0.0
    return np.log(magnitude @ weights + 0.01)


def test_vggish_front_end_matches_mel_features_transcription():
    enc = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH))
    wave = 0.3 * np.random.default_rng(0).standard_normal(2 * 16000)
    ref = reference_log_mel(wave)                                                  # (198 64)
    ours = enc.model_inputs(torch.tensor(wave, dtype=torch.float32)[None])["examples"][0]
    assert ours.shape == (2, 96, 64)                                               # 198 frames -> 2 examples
    torch.testing.assert_close(ours.double(), torch.tensor(ref[:192]).reshape(2, 96, 64), rtol=0, atol=1e-4)


def test_vggish_windows_cut_examples_like_ave():
    enc = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH))
    clip = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH, audio_window="clip"))
    audio = random_audio(b=1, t=3)
    segment, whole = enc(audio)[0], clip(audio)[0]
    wave = audio.reshape(-1)

    def embed(start: int) -> torch.Tensor:     # the example whose frames start at sample `start`
        examples = vggish_examples(vggish_log_mel(wave[None, start:start + 15600], enc.mel_filters), 96)
        return enc.model(examples)[0, 0]

    with torch.inference_mode():
        for k in range(3):
            # clip window: example k starts at 0.96 k s (sample 15360 k); segment window: at second k
            torch.testing.assert_close(whole[k], embed(15360 * k), rtol=0, atol=1e-5)
            torch.testing.assert_close(segment[k], embed(16000 * k), rtol=0, atol=1e-5)
    torch.testing.assert_close(whole[0], segment[0], rtol=0, atol=0)
    # 14-s clips: example 13 is centred at 12.9675 s, so second 13 would get no example
    with pytest.raises(ValueError, match=r"segments \[13\] receive no encoder token"):
        clip(random_audio(b=1, t=14))


# --- state dicts of the public ports ---

VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]   # cfgs["E"]: conv+ReLU pairs, pools
VGGISH_CONVS = [0, 3, 6, 8, 11, 13]


def test_module_layouts_have_the_public_key_names():
    vgg = VGG(VGGConfig()).state_dict()
    assert list(vgg) == [f"features.{i}.{p}" for i in VGG19_CONVS for p in ("weight", "bias")]
    assert vgg["features.0.weight"].shape == (64, 3, 3, 3) and vgg["features.34.weight"].shape == (512, 512, 3, 3)
    vggish = VGGish(VGGishConfig()).state_dict()
    assert list(vggish) == ([f"features.{i}.{p}" for i in VGGISH_CONVS for p in ("weight", "bias")]
                            + [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")])
    assert vggish["embeddings.0.weight"].shape == (4096, 512 * 6 * 4)   # pool4 of a 96x64 example: 6x4x512
    assert vggish["embeddings.4.weight"].shape == (128, 4096)


SOURCES = {"vgg19-a.pth": BackboneConfig(family="vgg19", config={}, seed=0),
           "vgg19-b.pth": BackboneConfig(family="vgg19", config={}, seed=1),
           "vggish.pth": BackboneConfig(family="vggish", config={}, seed=2, audio_window="clip")}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> Path:
    """Files laid out like the official ones, from the seeded random models of ``SOURCES``: torchvision's vgg19
    (features + a classifier head; the head is shrunk here, it is never loaded) twice, torchvggish's vggish."""
    root = tmp_path_factory.mktemp("weights")
    head = {f"classifier.{i}.{p}": torch.randn(4) for i in (0, 3, 6) for p in ("weight", "bias")}
    for name, cfg in SOURCES.items():
        state = load_backbone(cfg).model.state_dict()
        torch.save(state | head if cfg.family == "vgg19" else state, root / name)
    return root


def test_official_key_layouts_load_through_the_yaml(weight_files):
    (weight_files / "paper.yaml").write_text(
        "video: {family: vgg19, name_or_path: ./vgg19-a.pth}\n"
        "audio: {family: vggish, name_or_path: ./vggish.pth, audio_window: clip}\n")
    fb = FrozenBackbones(load_backbones_config(weight_files / "paper.yaml"))
    src_video, src_audio = load_backbone(SOURCES["vgg19-a.pth"]), load_backbone(SOURCES["vggish.pth"])
    assert fb.encoders["video"].fingerprint() == src_video.fingerprint()
    assert fb.encoders["audio"].fingerprint() == src_audio.fingerprint()
    video, audio = random_video(b=1, t=2, f=1, h=32, w=32), random_audio(b=1, t=2)
    feats = fb.encode({"video": video, "audio": audio})
    torch.testing.assert_close(feats["video"], src_video(video), rtol=0, atol=0)
    torch.testing.assert_close(feats["audio"], src_audio(audio), rtol=0, atol=0)
    assert feats["video"].shape == (1, 2, 49, 512) and feats["audio"].shape == (1, 2, 128)


def test_fingerprints_differ_between_weight_files(weight_files):
    def loaded(name: str) -> VideoBackbone:
        return VideoBackbone(BackboneConfig(family="vgg19", name_or_path=str(weight_files / name)))

    a, b = loaded("vgg19-a.pth"), loaded("vgg19-b.pth")
    assert a.fingerprint() != b.fingerprint()
    assert loaded("vgg19-a.pth").fingerprint() == a.fingerprint()


def test_state_file_errors_name_the_file(weight_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        VideoBackbone(BackboneConfig(family="vgg19", name_or_path="torchvision/vgg19"))
    # torchvggish's file in the vgg19 slot: no features.2 / .5 ... keys, and features.0 has 1 input channel
    with pytest.raises(ValueError, match=r"(?s)vggish.pth does not fit VGG: .*Missing key\(s\).*features.2.weight"):
        VideoBackbone(BackboneConfig(family="vgg19", name_or_path=str(weight_files / "vggish.pth")))
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(ValueError, match="text.pth is not a plain state dict of tensors"):
        AudioBackbone(BackboneConfig(family="vggish", name_or_path=str(tmp_path / "text.pth")))


UNPICKLED: list[str] = []


def _record_unpickling() -> dict:
    UNPICKLED.append("ran")
    return {}


class Payload:
    """Unpickling this object calls ``_record_unpickling``: a stand-in for code hidden in a weights file."""

    def __reduce__(self):
        return _record_unpickling, ()


@pytest.mark.parametrize("content", ["object", "object array"])
def test_weights_only_refuses_a_pickled_object(content, tmp_path):
    value = Payload() if content == "object" else np.array([Payload()], dtype=object)
    torch.save({"features.0.weight": value}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth is not a plain state dict of tensors: .*Weights only load failed"):
        VideoBackbone(BackboneConfig(family="vgg19", name_or_path=str(tmp_path / "evil.pth")))
    assert UNPICKLED == []


# --- VGGish PCA post-processing (off in paper.yaml) ---

def test_vggish_pca_params_of_torchvggish_layout(tmp_path):
    rng = np.random.default_rng(0)
    eigen = np.linalg.qr(rng.standard_normal((8, 8)))[0] * 3.0          # (out in)
    means = rng.standard_normal(8).astype(np.float32) * 0.01           # stored flat, as torchvggish does
    # torchvggish's file holds numpy arrays, pickled by numpy < 2 (module numpy.core); legacy torch.save format
    buf = io.BytesIO()
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "pca.pth").write_bytes(data)
    (tmp_path / "b.yaml").write_text(f"audio: {{family: vggish, config: {json.dumps(SMALL_VGGISH)}, "
                                     "processor: {pca_params: ./pca.pth}}\n")
    post = FrozenBackbones(load_backbones_config(tmp_path / "b.yaml")).encoders["audio"]
    raw = AudioBackbone(BackboneConfig(family="vggish", config=SMALL_VGGISH))
    audio = random_audio(b=2, t=2)
    got, embeddings = post(audio), raw(audio).double()
    # vggish_postprocess.py: PCA, clip to [-2, 2], map onto 0..255 and round
    pca = (embeddings - torch.tensor(means, dtype=torch.float64)) @ torch.tensor(eigen).T
    want = torch.round((pca.clamp(-2, 2) + 2) * 255 / 4)
    assert torch.equal(got, got.round()) and got.min() >= 0 and got.max() <= 255
    assert (got.double() - want).abs().max() <= 1      # float32 vs float64 may round a .5 the other way
    assert post.fingerprint() != raw.fingerprint()      # the PCA is part of what a checkpoint records


def test_paper_config_errors():
    with pytest.raises(ValueError, match="pooling 'cls' needs a CLS token, which vgg19 has not"):
        BackboneConfig(family="vgg19", config={}, pooling="cls").validate()
    with pytest.raises(ValueError, match="revision and layer must be null"):
        BackboneConfig(family="vggish", config={}, layer=3).validate()
    with pytest.raises(ValueError, match="pca_params is a vggish setting"):
        BackboneConfig(family="ast", config={}, processor={"pca_params": "x.pth"}).validate()
    with pytest.raises(ValueError, match=r"processor takes only pca_params, got \['sampling_rate'\]"):
        BackboneConfig(family="vggish", config={}, processor={"sampling_rate": 8000}).validate()
    with pytest.raises(ValueError, match="vgg19: bad config"):
        VideoBackbone(BackboneConfig(family="vgg19", config={"depth": 19}))


@pytest.mark.parametrize("name", ["paper.yaml", "paper-random.yaml"])
def test_paper_yamls_parse(name):
    cfg = load_backbones_config(f"launch/configs/backbones/{name}")
    assert [(m, c.family) for m, c in cfg.items()] == [("video", "vgg19"), ("audio", "vggish"), ("text", "bert")]
    if name == "paper.yaml":     # weight paths resolve next to the YAML; BERT is a hub id
        assert cfg.video.name_or_path == str(Path("launch/configs/backbones/weights/vgg19-dcbb9e9d.pth").resolve())
        assert cfg.text.name_or_path == "bert-base-uncased"


# --- extraction to feature shards (fixture: tests/support/feature_utils.py) ---

@pytest.mark.slow
def test_extract_with_paper_backbones_equals_on_the_fly(clip_shards, tmp_path):
    # one shard of 2 clips: the property does not depend on the count, and VGG-19 at 224 px is most of the suite's
    # CPU at the default kernel level
    extract(str(clip_shards / "train-000000.tar"), PAPER_RANDOM, str(tmp_path / "f-%06d.tar"), batch_size=2,
            num_workers=0, decode=DECODE, rank=0, world_size=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["feature_shapes"] == {"video": [49, 512], "audio": [128], "text": [768]}
    assert manifest["backbones"]["video"]["model_config"]["image_size"] == 224
    order = dict(batch_size=2, num_workers=0, shuffle_buffer=0, shuffle_shards=False)
    (cached,) = list(ClipStream(DataConfig(urls=str(tmp_path / "f-000000.tar"), kind="features", **order),
                                rank=0, world_size=1))
    (clips,) = list(ClipStream(DataConfig(urls=str(clip_shards / "train-000000.tar"), decode=DECODE, **order),
                               rank=0, world_size=1))
    assert cached["key"] == clips["key"]
    assert cached["video"].shape == (2, SECONDS, 49, 512) and cached["audio"].shape == (2, SECONDS, 128)
    fresh = FrozenBackbones(load_backbones_config(PAPER_RANDOM)).encode(clips)
    for modality in ("video", "audio"):
        torch.testing.assert_close(cached[modality], fresh[modality], rtol=0, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(cached["text"][i][cached["text_mask"][i]],
                                   fresh["text"][i][fresh["text_mask"][i]], rtol=0, atol=1e-5)
