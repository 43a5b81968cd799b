"""Zero-shot retrieval (trainer/eval/retrieval.py) on hand-ranked items: several captions per item, ties, both
directions, items lacking one modality, chance and TOC's dimensions."""

import pytest
import torch

from trainer.eval.retrieval import (
    ModalityRows, RetrievalItems, pair_retrieval, pooled, retrieval_sets, zero_shot_retrieval,
)
from trainer.pretrained import Codes


def hand_items() -> RetrievalItems:
    """Three items with audio (one-hot axes) and two captions each, and a fourth with audio only.

    cosine, audio (rows) × captions (columns; t<item><caption>):
                t0a (1,0,0)  t0b (0,1,1)  t1a (1,1,0)  t1b (0,0,1)  t2a (0,1,0)  t2b (1,0,1)
    a0 (1,0,0)      1            0           .707          0            0           .707
    a1 (0,1,0)      0           .707         .707          0            1            0
    a2 (0,0,1)      0           .707          0            1            0           .707
    """
    audio = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    text = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]])
    return RetrievalItems(["a", "b", "c", "d"], {
        "audio": ModalityRows(audio, torch.tensor([0, 1, 2, 3])),
        "text": ModalityRows(text, torch.tensor([0, 0, 1, 1, 2, 2]))})


def test_pair_retrieval_by_hand_with_several_captions_and_ties():
    scores = pair_retrieval(hand_items(), "audio", "text", ks=(1, 2, 3))
    # audio→text (a hit when either caption ranks within k): a0's t0a ranks first; a1's best caption t1a ties with
    # t0b behind t2a (1 above, 1 other tied): R@1 0, R@2 1/2, R@3 1; a2 likewise (t2b ties with t0b behind t1b)
    assert scores["directions"]["audio→text"] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    # text→audio (each caption has one item): t0a 1/1/1; t0b: a0 scores 0 behind a1, a2: 0/0/1; t1a ties a0: ½/1/1;
    # t1b: a1 ties a0 behind a2: 0/½/1; t2a: a2 ties a0 behind a1: 0/½/1; t2b ties a0: ½/1/1
    assert scores["directions"]["text→audio"] == pytest.approx({"R@1": 2 / 6, "R@2": 4 / 6, "R@3": 1.0})
    assert scores["mean"] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    # chance: a query with r relevant of g ranks one of them within k with probability 1 - C(g-r, k) / C(g, k)
    assert scores["chance"]["audio→text"] == pytest.approx({"R@1": 2 / 6, "R@2": 1 - 6 / 15, "R@3": 1 - 4 / 20})
    assert scores["chance"]["text→audio"] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    # the fourth item has no caption: left out of both directions, and counted
    assert scores["items"] == 3 and scores["without"] == 1
    assert scores["queries"] == {"audio→text": 3, "text→audio": 6}


def test_every_pair_is_scored_and_marked_seen_or_unseen():
    items = hand_items()
    items.rows["image"] = ModalityRows(items.rows["audio"].vectors[:3], torch.tensor([0, 1, 2]))
    pairs = zero_shot_retrieval(items, {frozenset(("audio", "text"))}, ks=(1,))
    assert list(pairs) == ["audio↔text", "audio↔image", "text↔image"]
    assert [p["seen"] for p in pairs.values()] == [True, False, False]
    assert pairs["audio↔image"]["mean"] == {"R@1": 1.0}          # the same vectors: each finds its own


def test_toc_keeps_the_selected_dimensions_only():
    # on dimensions 0 and 1 alone a2 = (0, 0) and t1b = (0, 0): their cosines are 0, the ranking changes
    items = hand_items().select_dims(torch.tensor([0, 1]))
    assert items.rows["text"].vectors.shape == (6, 2)
    full = pair_retrieval(hand_items(), "audio", "text", ks=(1,))
    kept = pair_retrieval(items, "audio", "text", ks=(1,))
    assert full["directions"]["audio→text"]["R@1"] == pytest.approx(1 / 3)
    # a0 = (1, 0): its t0a ties with t2b = (1, 0) at 1 -> ½; a1 = (0, 1): t0b and t2a score 1 above its t1a (.707)
    # -> 0; a2 = (0, 0): everything ties at 0, 2 of 6 relevant -> 1/3
    assert kept["directions"]["audio→text"]["R@1"] == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)


def test_pooled_is_the_mean_code_vector_over_real_segments():
    quantized = torch.tensor([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]])
    codes = Codes(torch.tensor([0, 1, -1]), quantized, quantized, torch.tensor([True, True, False]))
    assert torch.equal(pooled(codes), torch.tensor([2.0, 1.0]))
    assert torch.equal(pooled(Codes(codes.codes, quantized[:2], quantized[:2])), torch.tensor([2.0, 1.0]))


def test_fewer_than_two_shared_items_are_refused_naming_the_pair():
    items = hand_items()
    items.rows["text"] = ModalityRows(items.rows["text"].vectors[:2], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="audio↔text: 1 items have both"):
        pair_retrieval(items, "audio", "text")


def test_retrieval_sets_are_named_explicitly_by_their_manifest_or_by_their_folder(tmp_path):
    (tmp_path / "conv").mkdir()
    (tmp_path / "conv" / "manifest.json").write_text('{"shards": [], "released": {"set": "clotho"}}')
    spec = f"coco=a/x-{{0..1}}.tar::{tmp_path}/conv/eval-0.tar::{tmp_path}/flickr/test-0.tar"
    assert retrieval_sets(spec) == [("coco", "a/x-{0..1}.tar"), ("clotho", f"{tmp_path}/conv/eval-0.tar"),
                                    ("flickr", f"{tmp_path}/flickr/test-0.tar")]
    with pytest.raises(ValueError, match="names the set 'coco' twice"):
        retrieval_sets("coco=a.tar::coco=b.tar")
