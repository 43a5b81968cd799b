"""2 ranks x 2 DataLoader workers over gloo: disjoint shards, every sample once per epoch, equal batches --
for clip shards and for the feature shards ``shards.extract`` makes of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import webdataset as wds

from dist_utils import init_gloo, run_ranks

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shards.extract import extract  # noqa: E402
from shards.synth import SynthConfig, synthesise  # noqa: E402
from shards.write import write_shards  # noqa: E402
from trainer import distributed  # noqa: E402
from trainer.data.collate import COUNTER_NAMES
from trainer.data.stream import ClipStream
from trainer.configs.data import DataConfig, DecodeConfig

WORLD, WORKERS, BATCH, EPOCHS = 2, 2, 2, 2
DECODE = DecodeConfig(seconds=2, frames_per_segment=2, frame_size=32)


def _rank_worker(rank: int, world: int, port: int, urls: str, kind: str, out: str) -> None:
    init_gloo(rank, world, port)
    stream = ClipStream(DataConfig(urls=urls, kind=kind, batch_size=BATCH, num_workers=WORKERS, shuffle_buffer=4,
                                   decode=DECODE))
    assert (stream.rank, stream.world_size) == (rank, world)  # taken from the process group
    epochs = []
    for epoch in range(EPOCHS):
        shards = [url for plan in stream.plan(epoch)[1] for url in plan.shards]
        batches = list(stream)
        epochs.append({
            "shards": shards,
            "batches": len(batches),
            "sizes": sorted({len(b["key"]) for b in batches}),
            "keys": [k for b in batches for k, pad in zip(b["key"], b["is_pad"].tolist()) if not pad],
            "pads": int(sum(int(b["is_pad"].sum()) for b in batches)),
        })
    resampled = ClipStream(DataConfig(urls=urls, kind=kind, batch_size=BATCH, num_workers=WORKERS, resampled=True,
                                      epoch_batches=3, decode=DECODE))
    report = {
        "epochs": epochs,
        "skips": stream.skip_totals(all_reduce_fn=distributed.all_reduce_sum_),  # summed over both ranks
        "resampled_batches": len(list(resampled)),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def _corrupt_first_sample(shard: Path, member: str, data: bytes) -> str:
    """Replace ``member`` of the shard's first sample by ``data`` (the manifest still counts it); its key."""
    samples = list(wds.tarfile_to_samples()(iter([{"url": str(shard)}])))
    samples[0][member] = data
    with wds.TarWriter(str(shard), encoder=False) as sink:
        for sample in samples:
            sink.write({k: v for k, v in sample.items() if k != "__url__"})
    return samples[0]["__key__"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clips", "features"])
def test_two_ranks_two_workers_cover_each_sample_once_with_equal_batches(tmp_path, kind):
    src = tmp_path / "clips"
    keys = synthesise(SynthConfig(num_clips=13, classes=3, seconds=2, size=32, seed=5), src, progress=False)
    out = tmp_path / "shards"
    # 5 shards of 3,3,3,3,1 samples: one rank gets 3 shards, the other 2, so their own batch counts differ
    write_shards(src, f"{out}/train-%06d.tar", max_count=3, progress=False)
    # one sample of shard 3 has a garbage json; a feature stream also meets a truncated .npy in shard 1
    corrupt = {_corrupt_first_sample(out / "train-000003.tar", "json", b"{oops")}
    urls = f"{out}/train-{{000000..000004}}.tar"
    if kind == "features":
        extract(urls, "launch/configs/backbones/tiny.yaml", f"{tmp_path}/feats/f-%06d.tar", batch_size=4,
                num_workers=0, decode=DECODE, rank=0, world_size=1, progress=False)  # skips the garbage json
        urls = f"{tmp_path}/feats/f-{{000000..000004}}.tar"
        corrupt.add(_corrupt_first_sample(tmp_path / "feats" / "f-000001.tar", "audio.npy", b"\x93NUMPY\x01"))
    good = sorted(set(keys) - corrupt)
    assert len(good) == (12 if kind == "clips" else 11)

    run_ranks(_rank_worker, WORLD, urls, kind, str(tmp_path), timeout=90)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][epoch] for r in reports]
        assert not set(per_rank[0]["shards"]) & set(per_rank[1]["shards"])  # disjoint shard assignment
        assert len(per_rank[0]["shards"]) + len(per_rank[1]["shards"]) == 5
        assert per_rank[0]["batches"] == per_rank[1]["batches"] > 0  # equal batch counts: no hang
        assert per_rank[0]["sizes"] == per_rank[1]["sizes"] == [BATCH]
        delivered = per_rank[0]["keys"] + per_rank[1]["keys"]
        assert sorted(delivered) == good  # every good sample exactly once (not counting marked padding)
        slots = sum(p["batches"] for p in per_rank) * BATCH
        assert slots == len(good) + sum(p["pads"] for p in per_rank)
    assert [r["epochs"][0]["shards"] for r in reports] != [r["epochs"][1]["shards"] for r in reports]
    reason = "bad_json" if kind == "clips" else "bad_feature"  # feature shards hold no clip with a bad json
    for report in reports:  # the all-reduced counters agree on both ranks: one corrupt sample per epoch
        assert report["skips"] == {name: EPOCHS if name == reason else 0 for name in COUNTER_NAMES}
        assert report["resampled_batches"] == 3
