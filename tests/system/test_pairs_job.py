"""The real job on pair shards (trainer/main.py on ``shards.synth --pairs`` items packed by ``shards.write``): an
image-text and an audio-text job train through the product's path, the image through its own backbone as one
segment repeated along its caption's tokens, and resume exactly; ``cmg encode`` then codes the same shards (an image
as one segment, a 10-s audio as 10), as the API does, and ``trainer.programs.evaluate --tasks zero_shot_retrieval``
ranks them (every caption of an item, both directions) as the API's codes rank them. Whether such runs learn is measured
by ``python -m trainer.programs.bench.pairs`` (docs/results/pairs.md)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from job_utils import REPO, read_metrics, run_job

from trainer.programs.encode import EXIT_OK
from trainer.programs.encode import main as encode_main
from trainer.eval.metrics import recall_at_k
from trainer.eval.retrieval import pooled
from trainer.programs.evaluate import main as evaluate_main
from trainer.pretrained import CMGModel

from shards.synth import SynthConfig, synthesise
from shards.write import write_shards
from trainer.checkpoint_format import CheckpointManager, read_meta
from trainer.programs.bench.pairs import PAIR_JOBS

ITEMS = 8
SECONDS = 10   # audio seconds as many as a caption's tokens (launch/configs/backbones/tiny.yaml: 10)


def pair_shards(root: Path, kind: str) -> str:
    synthesise(SynthConfig(num_clips=ITEMS, classes=3, seconds=SECONDS, size=32, seed=3, pairs=kind, unlabelled=True),
               root / "items", progress=False)
    manifest = write_shards(root / "items", f"{root}/shards/train-%06d.tar", max_count=2, progress=False,
                            modalities=tuple(kind.split("+")))
    assert manifest.total == ITEMS
    return f"{root}/shards/train-{{000000..000003}}.tar"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image+text", "audio+text"])
def test_a_pair_job_trains_on_its_two_modalities_and_resumes_exactly(tmp_path, kind):
    urls = pair_shards(tmp_path / "data", kind)
    overrides = [*(o.replace("backbones=", f"backbones={REPO}/") for o in PAIR_JOBS[kind]),
                 "model.quantizer.reset_steps=2", f"data.decode.seconds={SECONDS}"]
    reference, split = tmp_path / "reference", tmp_path / "split"
    run_job(reference, urls, overrides=["run.max_steps=4", *overrides])
    run_job(split, urls, overrides=["run.max_steps=2", *overrides])
    run_job(split, urls, overrides=["run.max_steps=4", *overrides])            # resumes at step 2
    rows = read_metrics(reference)
    first, second = kind.split("+")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(f"cmcm_{first}_{second}" in r and f"recon_{first}" in r and r["data/skipped"] == 0 for r in rows)
    assert {r["step"]: r["loss"] for r in read_metrics(split)} == {r["step"]: r["loss"] for r in rows}
    meta = read_meta(CheckpointManager(reference / "checkpoints").latest())
    assert tuple(meta.model_config["modalities"]) == (first, second)

    out = tmp_path / "codes.npz"
    assert encode_main([str(reference), urls, "--out", str(out), "--num-workers", "0", "--no-progress"]) == EXIT_OK
    table = np.load(out, allow_pickle=False)
    assert table[f"{first}.codes"].shape == (ITEMS, 1 if first == "image" else SECONDS)
    assert (table[f"{first}.codes"] >= 0).all() and table[f"{second}.codes"].shape[0] == ITEMS
    samples = sorted(wds.WebDataset(urls, shardshuffle=False), key=lambda s: s["__key__"])
    order = np.argsort(table["key"])
    model = CMGModel.from_pretrained(reference)
    member = "jpg" if first == "image" else "wav"
    api = model.encode(**{first: [s[member] for s in samples]})[first]
    assert torch.equal(api.codes, torch.from_numpy(table[f"{first}.codes"][order]))
    # the items' folder itself (KEY.jpg or KEY.wav with KEY.txt): the same codes as their shards
    files = tmp_path / "files.npz"
    assert encode_main([str(reference), str(tmp_path / "data" / "items"), "--out", str(files), "--num-workers", "0",
                        "--no-progress"]) == EXIT_OK
    from_files = np.load(files, allow_pickle=False)
    assert sorted(from_files["key"]) == sorted(table["key"])
    for m in (first, second):
        assert np.array_equal(from_files[f"{m}.codes"][np.argsort(from_files["key"])], table[f"{m}.codes"][order])

    # zero-shot retrieval on the same items through trainer.programs.evaluate: both captions of every item are queries
    # and relevant gallery rows, and the numbers are those of the API's codes pooled and ranked here
    report = tmp_path / "retrieval.json"
    assert evaluate_main([str(reference), "--tasks", "zero_shot_retrieval", "--data", urls, "--no-tracking",
                          "--json", str(report)]) == 0
    zero_shot = json.loads(report.read_text())["zero_shot_retrieval"]["datasets"]["data"]
    forward, backward = f"{first}→{second}", f"{second}→{first}"
    scores = zero_shot["pairs"][f"{first}↔{second}"]
    assert zero_shot["items"] == ITEMS and scores["items"] == ITEMS and scores["seen"] and scores["without"] == 0
    assert scores["queries"] == {forward: ITEMS, backward: 2 * ITEMS}          # synth writes two captions an item
    captions = [(i, c) for i, s in enumerate(samples) for c in s["txt"].decode().splitlines() if c.strip()]
    text = model.encode(text=[c for _, c in captions])[second]
    media = torch.stack([pooled(type(api)(*(getattr(api, f)[i] if getattr(api, f) is not None else None
                                            for f in ("codes", "quantized", "semantic", "mask"))))
                         for i in range(ITEMS)])
    words = torch.stack([pooled(type(text)(text.codes[j], text.quantized[j], text.semantic[j], text.mask[j]))
                         for j in range(len(captions))])
    similarity = torch.nn.functional.normalize(media, dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
    relevant = torch.arange(ITEMS)[:, None] == torch.tensor([i for i, _ in captions])[None, :]
    for direction, (sim, rel) in {forward: (similarity, relevant), backward: (similarity.T, relevant.T)}.items():
        expected = {f"R@{k}": v for k, v in recall_at_k(sim, rel).items()}
        assert scores["directions"][direction] == pytest.approx(expected, abs=1e-9), direction
    assert scores["chance"][forward]["R@1"] == pytest.approx(2 / (2 * ITEMS))    # 2 of 16 captions relevant
    assert scores["chance"][backward]["R@5"] == pytest.approx(5 / ITEMS)
    # TOC: the same protocol on the dimensions it keeps; --retrieval-data names the set
    assert evaluate_main([str(reference), "--tasks", "zero_shot_retrieval", "--retrieval-data", f"pairs={urls}",
                          "--no-tracking", "--toc", "4", "--json", str(report)]) == 0
    toc = json.loads(report.read_text())
    assert len(toc["toc"]["dims"]) == 4
    assert toc["zero_shot_retrieval"]["datasets"]["pairs"]["pairs"][f"{first}↔{second}"]["items"] == ITEMS
