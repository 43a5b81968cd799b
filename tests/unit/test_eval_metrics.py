"""Downstream metrics, heads and the probe protocol on hand-made cases (trainer/eval)."""

import math

import pytest
import torch

from trainer.eval.heads import EventClassifier, HeadConfig, SegmentTagger
from trainer.eval.metrics import accuracy, class_precision_at_k, micro_prf, multi_hot, recall_at_k
from trainer.eval.probes import (
    CodeSplit, ProbeConfig, _fit, classification_probe, code_agreement, cross_dataset_probe, localisation_probe,
    map_classes, zero_shot_retrieval,
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- metrics
def test_multi_hot_maps_background_to_no_class():
    labels = torch.tensor([[0, -1, 2]])
    assert multi_hot(labels, 3).tolist() == [[[True, False, False], [False, False, False], [False, False, True]]]
    with pytest.raises(ValueError, match=r"labels must be in \[-1, 2\]"):
        multi_hot(torch.tensor([3]), 3)


def test_accuracy_from_indices_and_from_scores():
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(torch.tensor([0, 1, 2, 1]), labels) == 0.75
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.6]])   # argmax 0, 1, 0, 1
    assert accuracy(scores, labels) == 0.75
    with pytest.raises(ValueError, match="differ"):
        accuracy(torch.tensor([0, 1]), labels)


def test_micro_prf_counts_every_segment_including_empty_predictions():
    # one clip, 4 segments, 3 classes. truth: {0}, {} (background), {1, 2}, {1}
    # prediction: {0, 1}, {2}, {} (empty), {1}
    target = multi_hot(torch.tensor([[0, -1, -1, 1]]), 3)
    target[0, 2, 1] = target[0, 2, 2] = True
    predicted = torch.zeros(1, 4, 3, dtype=torch.bool)
    predicted[0, 0, 0] = predicted[0, 0, 1] = True
    predicted[0, 1, 2] = True
    predicted[0, 3, 1] = True
    prf = micro_prf(predicted, target)
    # tp: (0,c0), (3,c1) = 2; fp: (0,c1), (1,c2) = 2; fn: the empty segment's c1 and c2 = 2
    assert (prf.true_positives, prf.false_positives, prf.false_negatives) == (2, 2, 2)
    assert prf.precision == 0.5 and prf.recall == 0.5 and prf.f1 == 0.5
    # micro is not the mean of per-segment F1s (2/3, 0, 0, 1 -> 0.4167)
    assert not math.isclose(prf.f1, (2 / 3 + 0 + 0 + 1) / 4)


def test_micro_prf_all_empty_predictions_and_zero_division():
    target = multi_hot(torch.tensor([[1, -1, 0]]), 2)
    prf = micro_prf(torch.zeros_like(target), target)
    assert (prf.true_positives, prf.false_positives, prf.false_negatives) == (0, 0, 2)
    assert (prf.precision, prf.recall, prf.f1) == (0.0, 0.0, 0.0)
    prf = micro_prf(target, target)
    assert (prf.precision, prf.recall, prf.f1) == (1.0, 1.0, 1.0)


def test_recall_at_k_hand_ranked_with_ties_counted_against_the_query():
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.3],    # relevant 0 ranks first
                               [0.2, 0.4, 0.8, 0.9],    # relevant 1 ranks third
                               [0.5, 0.5, 0.5, 0.5]])   # all tied: relevant 2 counts as last
    recall = recall_at_k(similarity, torch.tensor([0, 1, 2]), ks=(1, 2, 3, 4))
    assert recall == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 1.0})


def test_class_precision_at_k_hand_ranked_with_ties_against_the_query():
    gallery_class = torch.tensor([0, 1, 0, 2])
    similarity = torch.tensor([[0.9, 0.8, 0.7, 0.1],    # class 0: ranks 0 (hit), 1 (miss), 2 (hit), 3 (miss)
                               [0.5, 0.5, 0.5, 0.5],    # class 0, all tied: both misses rank first
                               [0.1, 0.2, 0.3, 0.4]])   # class 2: its only match ranks first
    precision = class_precision_at_k(similarity, torch.tensor([0, 0, 2]), gallery_class, ks=(1, 2, 3))
    assert precision == pytest.approx({1: (1 + 0 + 1) / 3, 2: (1 / 2 + 0 + 1 / 2) / 3, 3: (2 / 3 + 1 / 3 + 1 / 3) / 3})
    with pytest.raises(ValueError, match="does not match"):
        class_precision_at_k(similarity, torch.tensor([0, 0]), gallery_class)


# ---------------------------------------------------------------- heads
def _identity_head(cls):
    head = cls(2, 2, HeadConfig(hidden_dim=2))
    with torch.no_grad():
        for layer in (head.layers[0], head.layers[3]):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    return head


def test_event_classifier_is_two_linear_layers_then_max_over_segments():
    head = _identity_head(EventClassifier)
    codes = torch.tensor([[[1.0, -1.0], [0.0, 3.0], [-2.0, 2.0]]])   # (b t d)
    assert head.segment_logits(codes).tolist() == [[[1.0, 0.0], [0.0, 3.0], [0.0, 2.0]]]   # relu between layers
    assert head(codes).tolist() == [[1.0, 3.0]]
    assert _identity_head(SegmentTagger)(codes).shape == (1, 3, 2)


# ---------------------------------------------------------------- protocol
def test_fit_keeps_the_weights_of_the_best_validation_epoch():
    head = torch.nn.Linear(2, 1)
    snapshots, scores = [], iter([0.2, 0.9, 0.5, 0.9])

    def validate(h):
        snapshots.append({k: v.clone() for k, v in h.state_dict().items()})
        return next(scores)

    x, y = torch.randn(8, 2), torch.randn(8, 1)
    epoch, best = _fit(head, x, y, torch.nn.functional.mse_loss, validate, ProbeConfig(epochs=4, batch_size=4),
                       torch.Generator().manual_seed(0))
    assert (epoch, best) == (2, 0.9)                                  # the first epoch reaching the best score
    assert all(torch.equal(head.state_dict()[k], snapshots[1][k]) for k in snapshots[1])
    assert not torch.equal(head.weight, snapshots[3]["weight"])       # training went on after epoch 2


def _split(n_per_class: int, classes: int, permute_target: bool, seed: int) -> CodeSplit:
    """Video codes = one-hot of the class; audio codes the same, or a fixed permutation of the classes."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(classes).repeat(n_per_class)
    segments = torch.where(torch.rand(len(label), 4, generator=g) < 0.7, label.unsqueeze(1), -1)
    segments[:, 0] = label
    video = torch.nn.functional.one_hot(segments + 1, classes + 1).float()[..., 1:]       # background -> 0 vector
    shuffled = torch.roll(torch.arange(classes), 1) if permute_target else torch.arange(classes)
    audio = torch.nn.functional.one_hot(torch.where(segments >= 0, shuffled[segments.clamp_min(0)], -1) + 1,
                                        classes + 1).float()[..., 1:]
    return CodeSplit({"video": video, "audio": audio}, {"video": segments.argmax(-1), "audio": segments.argmax(-1)},
                     {"video": segments, "audio": segments.clone()}, label)


@pytest.mark.parametrize("permute_target", [False, True])
def test_probes_transfer_exactly_when_modalities_share_codes(permute_target):
    splits = {name: _split(6, 4, permute_target, seed) for seed, name in enumerate(("train", "val", "test"))}
    cfg = ProbeConfig(epochs=40, batch_size=8, lr=1e-2)
    cls = classification_probe(splits, "video", "audio", 4, cfg)
    loc = localisation_probe(splits, "video", "audio", 4, cfg)
    assert cls.in_modality == 1.0 and loc.in_modality == 1.0 and cls.direction == "V→A"
    if permute_target:   # the audio codes of class c are video's codes of class c - 1: every clip is misread
        assert cls.cross == 0.0 and loc.cross == 0.0
    else:
        assert cls.cross == 1.0 and loc.cross == 1.0


def test_cross_dataset_probe_chooses_an_epoch_whose_head_localises():
    # argmax accuracy on val is perfect from epoch 2, while every sigmoid is still below 0.5 (F1 0 on dataset
    # 2); the epoch is chosen on the clip-level F1 at the threshold instead
    first = {name: _split(6, 4, False, seed) for seed, name in enumerate(("train", "val", "test"))}
    result = cross_dataset_probe(first, _split(4, 4, False, 5), "video", "audio", 4, {c: c for c in range(4)},
                                 ProbeConfig(epochs=40, batch_size=8, lr=1e-2))
    assert (result.val, result.cross, result.in_modality) == (1.0, 1.0, 1.0) and result.epoch > 2


def test_probe_heads_do_not_touch_the_callers_rng():
    splits = {name: _split(3, 3, False, seed) for seed, name in enumerate(("train", "val", "test"))}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    classification_probe(splits, "video", "audio", 3, ProbeConfig(epochs=2))
    assert torch.equal(torch.rand(3), expected)


def test_zero_shot_retrieval_finds_the_paired_clip():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(12, 5, 8, generator=g)
    split = CodeSplit({"audio": audio, "video": audio + 0.01 * torch.randn(12, 5, 8, generator=g)}, {}, {},
                      torch.zeros(12, dtype=torch.int64))
    assert zero_shot_retrieval(split, "video") == {1: 1.0, 5: 1.0, 10: 1.0}
    split.vectors["text"] = audio.mean(1, keepdim=True).expand(12, 3, 8)            # 3 "tokens", no time axis
    assert zero_shot_retrieval(split, "text") == {1: 1.0, 5: 1.0, 10: 1.0}           # matched on clip means
    split.vectors["video"] = split.vectors["video"][torch.roll(torch.arange(12), 1)]   # pairs broken
    assert zero_shot_retrieval(split, "video", ks=(1,))[1] == 0.0


def test_retrieval_aligned_per_segment_or_by_clip_means():
    # text_i = audio_i with its two positions swapped: the clip means match, the per-position pairs do not.
    # aligned: S = [[0, 1], [1, 0]] (mean_t cos) -> each query picks the wrong clip; clip means: cos = 1 for the
    # own clip vs 0.75 / (0.7071 · 1.1180) = 0.9487 for the other -> each picks its own.
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 0.0]]])
    split = CodeSplit({"audio": audio, "text": audio.flip(1)}, {}, {}, torch.zeros(2, dtype=torch.int64))
    assert zero_shot_retrieval(split, "text", ks=(1,)) == {1: 0.0}                 # equal lengths: aligned
    assert zero_shot_retrieval(split, "text", ks=(1,), aligned=False) == {1: 1.0}
    split.vectors["text"] = torch.cat([split.vectors["text"], torch.zeros(2, 1, 2)], 1)
    with pytest.raises(ValueError, match="aligned retrieval needs equal segments"):
        zero_shot_retrieval(split, "text", aligned=True)


def test_code_agreement_per_class_over_cells_where_both_carry_the_event():
    labels_audio = torch.tensor([[0, 0, 1, -1]])
    labels_video = torch.tensor([[0, 0, 1, 1]])        # the last cell: only video carries class 1
    split = CodeSplit({}, {"audio": torch.tensor([[5, 6, 7, 9]]), "video": torch.tensor([[5, 2, 7, 9]])},
                      {"audio": labels_audio, "video": labels_video}, torch.tensor([0]))
    per_class, overall = code_agreement(split, "audio", "video", 3)
    assert per_class[:2] == [0.5, 1.0] and math.isnan(per_class[2]) and overall == pytest.approx(2 / 3)


def test_map_classes_keeps_shared_classes_only():
    second = torch.tensor([[2, 0, -1, 1]])             # dataset-2 classes
    assert map_classes(second, {0: 2, 3: 1}).tolist() == [[0, -1, -1, 3]]
