"""Downstream metrics, heads, the probe protocols, the shared-class lists and the seed tables on hand-made cases
(trainer/eval)."""

import itertools
import math

import pytest
import torch

from comet_utils import comet_config
from trainer.eval.heads import EventClassifier, SegmentTagger
from trainer.configs.eval import HeadConfig, ProbeConfig
from trainer.eval.metrics import accuracy, class_precision_at_k, micro_prf, multi_hot, recall_at_k
from trainer.eval.paper import PAPER_HEADS, PAPER_TABLES, SEED001_TABLE3, checkpoint_stage, checkpoint_switches, \
    paper_tables, render_table, table_metrics
from trainer.eval.probes import (
    CodeSplit, _fit, class_retrieval, classification_probe, code_agreement, cross_dataset_classification,
    cross_dataset_probe, localisation_probe, map_classes, paired_clip_retrieval,
)
from trainer.models.comet import COMETModel


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


def test_recall_at_k_hand_ranked_with_ties_in_random_order():
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.3],    # relevant 0 ranks first
                               [0.2, 0.4, 0.8, 0.9],    # relevant 1 ranks third
                               [0.5, 0.5, 0.5, 0.5]])   # all tied: relevant 2 ranks 1st..4th with 1/4 each
    recall = recall_at_k(similarity, torch.tensor([0, 1, 2]), ks=(1, 2, 3, 4))
    assert recall == pytest.approx({1: (1 + 0 + 1 / 4) / 3, 2: (1 + 0 + 2 / 4) / 3, 3: (1 + 1 + 3 / 4) / 3, 4: 1.0})


def test_recall_at_k_with_several_relevant_items_and_ties_by_hand():
    # query 0: matches 1 and 3; item 0 (no match) scores above both, item 3 ties with item 2 (no match) at 0.6:
    #   a = 1, e = 1, r = 1 -> R@1 = 0; R@2 = 1 - P(X >= 1) = 1 - 1/2; R@3 = 1
    # query 1: matches 0 and 2, both tied with items 1 and 3 at 0.5: a = 0, e = 2, r = 2 -> R@1 = 1 - 2/4 = 1/2,
    #   R@2 = 1 - (2/4)(1/3) = 5/6, R@3 = 1
    # query 2: one match, item 3, scoring first: 1 for every k
    similarity = torch.tensor([[0.9, 0.4, 0.6, 0.6],
                               [0.5, 0.5, 0.5, 0.5],
                               [0.1, 0.2, 0.3, 0.4]])
    relevant = torch.tensor([[False, True, False, True],
                             [True, False, True, False],
                             [False, False, False, True]])
    recall = recall_at_k(similarity, relevant, ks=(1, 2, 3))
    assert recall == pytest.approx({1: (0 + 1 / 2 + 1) / 3, 2: (1 / 2 + 5 / 6 + 1) / 3, 3: 1.0})
    # the expectation over tie orders equals the mean over every order of the tied items
    orders = list(itertools.permutations(range(4)))
    hits = 0.0
    for order in orders:                       # a tiny epsilon per position breaks ties in this order
        broken = similarity[1] + 1e-6 * torch.tensor([3 - order.index(j) for j in range(4)], dtype=torch.float32)
        ranked = broken.argsort(descending=True)
        hits += float(relevant[1][ranked[:2]].any())
    assert hits / len(orders) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no relevant item"):
        recall_at_k(similarity, torch.zeros(3, 4, dtype=torch.bool))


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
class _LinearHead(torch.nn.Linear):
    """A probe head's interface (codes, real segments) on a plain linear map."""

    def forward(self, x, real=None):
        return super().forward(x)


def test_fit_keeps_the_weights_of_the_best_validation_epoch():
    head = _LinearHead(2, 1)
    snapshots, scores = [], iter([0.2, 0.9, 0.5, 0.9])

    def validate(h):
        snapshots.append({k: v.clone() for k, v in h.state_dict().items()})
        return next(scores)

    x, y = torch.randn(8, 2), torch.randn(8, 1)
    epoch, best = _fit(head, x, y, lambda out, target, real: torch.nn.functional.mse_loss(out, target), validate,
                       ProbeConfig(epochs=4, batch_size=4), torch.Generator().manual_seed(0))
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
    assert paired_clip_retrieval(split, "video") == {1: 1.0, 5: 1.0, 10: 1.0}
    split.vectors["text"] = audio.mean(1, keepdim=True).expand(12, 3, 8)            # 3 "tokens", no time axis
    assert paired_clip_retrieval(split, "text") == {1: 1.0, 5: 1.0, 10: 1.0}           # matched on clip means
    split.vectors["video"] = split.vectors["video"][torch.roll(torch.arange(12), 1)]   # pairs broken
    assert paired_clip_retrieval(split, "video", ks=(1,))[1] == 0.0


def test_retrieval_aligned_per_segment_or_by_clip_means():
    # text_i = audio_i with its two positions swapped: the clip means match, the per-position pairs do not.
    # aligned: S = [[0, 1], [1, 0]] (mean_t cos) -> each query picks the wrong clip; clip means: cos = 1 for the
    # own clip vs 0.75 / (0.7071 · 1.1180) = 0.9487 for the other -> each picks its own.
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 0.0]]])
    split = CodeSplit({"audio": audio, "text": audio.flip(1)}, {}, {}, torch.zeros(2, dtype=torch.int64))
    assert paired_clip_retrieval(split, "text", ks=(1,)) == {1: 0.0}                 # equal lengths: aligned
    assert paired_clip_retrieval(split, "text", ks=(1,), aligned=False) == {1: 1.0}
    split.vectors["text"] = torch.cat([split.vectors["text"], torch.zeros(2, 1, 2)], 1)
    with pytest.raises(ValueError, match="aligned retrieval needs equal segments"):
        paired_clip_retrieval(split, "text", aligned=True)


def test_code_agreement_per_class_over_cells_where_both_carry_the_event():
    labels_audio = torch.tensor([[0, 0, 1, -1]])
    labels_video = torch.tensor([[0, 0, 1, 1]])        # the last cell: only video carries class 1
    split = CodeSplit({}, {"audio": torch.tensor([[5, 6, 7, 9]]), "video": torch.tensor([[5, 2, 7, 9]])},
                      {"audio": labels_audio, "video": labels_video}, torch.tensor([0]))
    per_class, overall = code_agreement(split, "audio", "video", 3)
    assert per_class[:2] == [0.5, 1.0] and math.isnan(per_class[2]) and overall == pytest.approx(2 / 3)
    # the evaluation (trainer/eval/downstream.py) scores every split together: cells add up over the clips of both
    agreeing = CodeSplit({}, {"audio": torch.tensor([[3, 3, 4, 4]]), "video": torch.tensor([[3, 3, 4, 4]])},
                         {"audio": torch.tensor([[2, 2, -1, -1]]), "video": torch.tensor([[2, 2, -1, -1]])},
                         torch.tensor([2]))
    both = CodeSplit.concat([split, agreeing])
    assert len(both) == 2 and both.indices["audio"].tolist() == [[5, 6, 7, 9], [3, 3, 4, 4]]
    per_class, overall = code_agreement(both, "audio", "video", 3)
    assert per_class == [0.5, 1.0, 1.0] and overall == pytest.approx(4 / 5)


def test_map_classes_keeps_shared_classes_only():
    second = torch.tensor([[2, 0, -1, 1]])             # dataset-2 classes
    assert map_classes(second, {0: 2, 3: 1}).tolist() == [[0, -1, -1, 3]]


# ---------------------------------------------------------------- cross-dataset classification
def _one_modality(modality: str, labels: list[int], codes: torch.Tensor) -> CodeSplit:
    """Clips of one modality whose every segment (T = 3) has the code vector ``codes[label]``."""
    label = torch.tensor(labels)
    return CodeSplit({modality: codes[label].unsqueeze(1).expand(-1, 3, -1).clone()},
                     {modality: torch.zeros(len(labels), 3, dtype=torch.int64)},
                     {modality: label.unsqueeze(1).expand(-1, 3).clone()}, label)


@pytest.mark.parametrize("shuffled", [False, True])
def test_cross_dataset_classification_through_shared_codes(shuffled):
    # UCF has classes 0..3 (3 is not shared), VGGSound 0..4 (1 and 2 are not shared); shared concept k has code e_k,
    # every unshared class e_3. UCF class c is concept c; VGGSound class 3 / 0 / 4 is concept 0 / 1 / 2 (class_map),
    # or with ``shuffled`` concept 1 / 2 / 0: every VGGSound clip then carries another class's code
    codes = torch.eye(4)
    class_map = {0: 3, 1: 0, 2: 4}
    vgg_concept = [2, 3, 3, 1, 0] if shuffled else [1, 3, 3, 0, 2]
    ucf = {name: _one_modality("video", [0, 1, 2, 3] * 4, codes) for name in ("train", "val", "test")}
    vgg = {name: _one_modality("audio", [0, 1, 2, 3, 4] * 3, codes[vgg_concept]) for name in ("train", "val", "test")}
    cfg = ProbeConfig(epochs=40, batch_size=8, lr=1e-2)
    v_to_a = cross_dataset_classification(ucf, vgg["test"], "video", "audio", class_map, cfg)
    a_to_v = cross_dataset_classification(vgg, ucf["test"], "audio", "video", {b: a for a, b in class_map.items()}, cfg)
    assert (v_to_a.task, v_to_a.direction, a_to_v.direction) == ("ucf_vgg", "V→A", "A→V")
    assert v_to_a.in_modality == a_to_v.in_modality == 1.0
    assert (v_to_a.cross, a_to_v.cross) == ((0.0, 0.0) if shuffled else (1.0, 1.0))
    with pytest.raises(ValueError, match=r"no clip of a shared class in \['train', 'val', 'test', 'dataset 2 test'\]"):
        cross_dataset_classification(ucf, vgg["test"], "video", "audio", {7: 7}, cfg)
    with pytest.raises(KeyError, match="dataset 2 has no codes for 'video'"):
        cross_dataset_classification(ucf, vgg["test"], "video", "video", class_map, cfg)


# ---------------------------------------------------------------- retrieval
def _unit(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def test_retrieval_in_both_directions_ranks_rows_and_columns():
    # audio at 0° and 30°, video at 10° and 80° (T = 1): cos = [[0.985, 0.940], [0.174, 0.643]] (video × audio).
    # video→audio: each row's largest entry is its own clip; audio→video: column 1's largest is video 0
    audio = torch.stack([_unit(0), _unit(30)]).unsqueeze(1)
    video = torch.stack([_unit(10), _unit(80)]).unsqueeze(1)
    split = CodeSplit({"audio": audio, "video": video}, {}, {}, torch.zeros(2, dtype=torch.int64))
    assert paired_clip_retrieval(split, "video", "audio", ks=(1, 2)) == {1: 1.0, 2: 1.0}
    assert paired_clip_retrieval(split, "audio", "video", ks=(1, 2)) == {1: 0.5, 2: 1.0}


def test_class_retrieval_precision_at_k_by_hand():
    # text (gallery): classes 0, 0, 1, 1 at 0°, 0°, 90°, 90°; video (queries) at 0°, 36.9°, 45°, 53.1°. A fifth clip
    # without a class (−1) would be every class-0 query's best match: it takes no part.
    # video 0, 1, 3 rank their own class first (P@1 = P@2 = 1, P@3 = 2/3); video 2 ties everything, and ties rank
    # the other class first (0, 0, 1/3)
    text = torch.stack([_unit(0), _unit(0), _unit(90), _unit(90), _unit(0)]).unsqueeze(1)
    video = torch.stack([_unit(0), _unit(36.87), _unit(45), _unit(53.13), _unit(0)]).unsqueeze(1)
    split = CodeSplit({"text": text, "video": video}, {}, {}, torch.tensor([0, 0, 1, 1, -1]))
    assert class_retrieval(split, "video", "text", ks=(1, 2, 3)) == pytest.approx({1: 3 / 4, 2: 3 / 4, 3: 7 / 12})
    # text→video: the text at 0° ranks video 0, 1 (class 0), then 2, 3; the text at 90° ranks video 3, 2 (class 1),
    # then 1: every query scores (1, 1, 2/3)
    assert class_retrieval(split, "text", "video", ks=(1, 2, 3)) == pytest.approx({1: 1.0, 2: 1.0, 3: 2 / 3})


def test_seen_pairs_of_a_continual_model_go_through_the_mediator():
    # phase 3 of VT -> AT -> IT: image–text trained now, video and audio carried from phases paired with text
    model = COMETModel(comet_config(("image", "text"), carried=("video", "audio"),
                                    carried_feature_dims={"video": 12, "audio": 8}))
    seen = model.trained_pairs
    assert seen == {frozenset(p) for p in (("image", "text"), ("video", "text"), ("audio", "text"))}
    assert frozenset(("video", "audio")) not in seen and frozenset(("image", "audio")) not in seen


# ---------------------------------------------------------------- the seeds' settings and tables
def test_paper_head_settings_are_seed_000_b2():
    assert {t: (c.lr, c.batch_size, c.epochs) for t, c in PAPER_HEADS.items()} == {
        "classification": (2.5e-4, 256, 30), "localisation": (2.5e-4, 256, 50), "cross_dataset": (2.5e-4, 256, 50),
        "ucf_vgg": (2.5e-4, 256, 30)}


def _report(probes: dict[tuple[str, str], tuple[float, float]], **extra) -> dict:
    return {"task": "unicode", "step": 7, "toc": None, **extra,
            "probes": [{"task": t, "direction": d, "cross": c, "in_modality": i} for (t, d), (c, i) in probes.items()]}


TABLE3_SNAPSHOT = """\
seed 001 Table 3: ablations of audio-visual-text pretraining (VGGSound-AVEL 40K)
                               AVE           AVVP        AVE→AVVP   UCF(v)↔VGG(a)
CLUB CPC EMA Reset cmcm       V→A    A→V    V→A    A→V    V→A    A→V    V→A    A→V
----------------------------------------------------------------------------------
-  ✓  ✓  ✓  ✓                50.2   51.8   62.4   66.2   50.1   51.2   9.87   9.59
✓  -  ✓  ✓  ✓                43.8   49.2   59.3   61.1   45.5   50.6   60.6   54.6
✓  ✓  -  ✓  ✓                52.9   49.9   62.0   67.3   48.1   46.8   66.5   60.5
✓  ✓  -  -  ✓                33.0   35.5   56.7   61.2    7.4   12.6   43.3   35.2
✓  ✓  ✓  -  ✓                50.8   47.8   56.4   61.1   47.9   50.4   60.0   49.8
✓  ✓  ✓  ✓  -                52.4   54.5   57.5   72.9   50.5   48.7   69.9   59.7
✓  ✓  ✓  ✓  ✓                54.1   55.0   63.4   71.0   53.0   52.4   67.1   60.6
labelled modality            64.8   65.8   71.0   72.9      -      -   80.0   85.4
----------------------------------------------------------------------------------
✓  -  ✓  ✓  ✓ ◀              50.0   25.0   40.0   60.0      —      —      —      —
labelled modality ◀          90.0   75.0   80.0   70.0      —      —      —      —
◀ = this checkpoint (unicode, step 7). AVE and UCF↔VGG: accuracy; AVVP and AVE→AVVP: micro F1. 'labelled \
modality' = the head scored on the modality it was trained on (AVE→AVVP: on AVVP)"""


def test_paper_tables_layout_and_this_checkpoints_numbers():
    # AVE and AVVP given (no second dataset, no UCF/VGGSound): the other columns read "—"
    report = _report({("classification", "V→A"): (0.5, 0.9), ("classification", "A→V"): (0.25, 0.75),
                      ("localisation", "V→A"): (0.4, 0.8), ("localisation", "A→V"): (0.6, 0.7)},
                     switches=checkpoint_switches({"use_club": True, "use_cpc": False, "use_cmcm": True,
                                                   "quantizer": {"ema_mode": "joint", "reset": True}}))
    assert render_table(SEED001_TABLE3, report) == TABLE3_SNAPSHOT
    table1, _, seed003, _ = (render_table(t, report, "24K").splitlines() for t in PAPER_TABLES)
    assert table1[1].split() == ["24K", "AVE", "24K", "AVVP", "40K", "AVE", "40K", "AVVP", "81K", "AVE", "81K", "AVVP"]
    assert table1[-2].split() == ["this", "checkpoint", "◀", "50.0", "25.0", "40.0", "60.0", *["—"] * 8]
    assert [line.split()[0] for line in seed003[4:15]] == ["CODIS", "TURN", "CMCM", "SimMMDG", "DCID", "FCCID",
                                                          "CODIS+TOC", "TURN+TOC", "CMCM+TOC", "DCID+TOC", "FCCID+TOC"]
    assert seed003[4].split()[-1] == "39.9" and seed003[-2].split()[-1] == "—"       # Avg. of all eight only
    metrics = table_metrics(report, "24K")
    assert metrics["paper/seed001_table1/ours/24K/AVE/V_to_A"] == 50.0
    assert metrics["paper/seed001_table3/labelled/AVVP/A_to_V"] == 70.0
    assert not any("40K" in k or "UCF_VGG" in k or k.endswith("/Avg") for k in metrics)
    full = _report({(t, d): (0.5, 0.5) for t in ("classification", "localisation", "cross_dataset", "ucf_vgg")
                    for d in ("V→A", "A→V")})
    assert table_metrics(full)["paper/seed003_table1/ours/Avg"] == 50.0
    assert checkpoint_switches({"variant": "baseline", "use_club": True}) == dict.fromkeys(
        ("CLUB", "Cross-CPC", "MM-EMA", "Reset code", "L_cmcm"), False)


def _zero_shot(pair: str, forward: tuple[float, float, float], backward: tuple[float, float, float]) -> dict:
    first, second = pair.split("↔")
    directions = {f"{first}→{second}": dict(zip(("R@1", "R@5", "R@10"), forward)),
                  f"{second}→{first}": dict(zip(("R@1", "R@5", "R@10"), backward))}
    ks = ("R@1", "R@5", "R@10")
    return {"directions": directions, "mean": {k: (a + b) / 2 for k, a, b in zip(ks, forward, backward)}}


def test_retrieval_tables_take_each_sets_numbers_and_the_stage_of_the_checkpoint():
    # MSCOCO's images through the video encoder (as the authors feed them), the text first; Clotho audio↔text; a set
    # with two pairs fills no column
    datasets = {"mscoco": {"pairs": {"text↔video": _zero_shot("text↔video", (0.02, 0.10, 0.20), (0.04, 0.12, 0.30))}},
                "clotho": {"pairs": {"audio↔text": _zero_shot("audio↔text", (0.05, 0.15, 0.25), (0.07, 0.17, 0.27))}},
                "valor": {"pairs": {"audio↔text": _zero_shot("audio↔text", (1, 1, 1), (1, 1, 1)),
                                    "video↔text": _zero_shot("video↔text", (1, 1, 1), (1, 1, 1))}}}
    report = _report({}, zero_shot_retrieval={"datasets": datasets}, stage=checkpoint_stage({"carried": ["video"]}))
    assert report["stage"] == "Second Stage" and checkpoint_stage({}) == "First Stage"
    tables = {t.key: t for t in paper_tables(report)}
    assert set(tables) == {"seed001_table1", "seed001_table3", "seed003_table1", "seed003_table2",
                           "seed004_table1_second", "seed004_table2_second", "seed004_table3_second"}   # MSCOCO: 3rd
    unseen = render_table(tables["seed004_table1_second"], report).splitlines()
    # the paper prints the Avg. 17.69
    assert unseen[4].split() == ["TURN", "16.62", "15.36", "16.51", "17.12", "20.15", "20.38", "17.7"]
    seed003 = render_table(tables["seed003_table2"], report).splitlines()
    assert seed003[1].split() == ["MSCOCO", "(I↔T)", "Clotho", "(A↔T)", "FlickrSound", "(I↔A)"]
    assert seed003[4].split() == ["CMCM", "0.5", "4.2", "7.2", "1.62", "8.04", "14.87", "2.2", "9.8", "15.6", "7.1"]
    assert seed003[-2].split() == ["this", "checkpoint", "◀", "3.0", "11.0", "25.0", "6.0", "16.0", "26.0",
                                   *["—"] * 4]
    clotho = render_table(tables["seed004_table3_second"], report).splitlines()
    assert clotho[4].split()[:2] == ["TURN", "6.22"] and clotho[4].split()[-1] == "19.8"       # the paper's 19.83
    assert clotho[-2].split() == ["this", "checkpoint", "◀", "7.0", "17.0", "27.0", "5.0", "15.0", "25.0", "16.0"]
    metrics = table_metrics(report)
    assert metrics["paper/seed003_table2/ours/Clotho/clotho/R@5"] == pytest.approx(16.0)
    assert metrics["paper/seed004_table3_second/ours/clotho/clotho/text_to_X/R@1"] == pytest.approx(7.0)
    assert metrics["paper/seed004_table3_second/ours/Avg"] == pytest.approx(16.0)
    assert not any(k.startswith("paper/seed004_table2") for k in metrics)      # no video↔text data given


def test_heads_losses_and_f1_read_only_the_real_segments_of_whole_clips():
    """Whole clips padded to the longest (CodeSplit.mask): the clip head's max, the per-segment loss and the
    per-segment F1 ignore what the padding holds."""
    from trainer.eval.probes import _segment_bce, _tag_f1

    torch.manual_seed(0)
    head = EventClassifier(4, 3, HeadConfig(hidden_dim=8))
    x = torch.randn(2, 5, 4)
    real = torch.tensor([[True, True, True, False, False], [True] * 5])
    garbage = x.clone()
    garbage[0, 3:] = 100 * torch.randn(2, 4)
    assert torch.allclose(head(garbage, real)[0], head(x[:1, :3])[0])
    assert torch.allclose(head(garbage, real)[1], head(x[1:])[0])
    logits, labels = head.segment_logits(garbage), torch.tensor([[0, 1, -1, -1, -1], [2, 2, -1, 0, 1]])
    targets = torch.nn.functional.one_hot(labels.clamp_min(0), 3).float() * (labels >= 0).unsqueeze(-1)
    flat = torch.cat([logits[0, :3], logits[1]]), torch.cat([targets[0, :3], targets[1]])
    assert torch.allclose(_segment_bce(logits, targets, real),
                          torch.nn.functional.binary_cross_entropy_with_logits(*flat))
    ours = _tag_f1(logits, labels, 3, 0.5, real)
    theirs = _tag_f1(torch.cat([logits[0, :3], logits[1]]), torch.cat([labels[0, :3], labels[1]]), 3, 0.5)
    assert (ours.precision, ours.recall, ours.f1) == (theirs.precision, theirs.recall, theirs.f1)
