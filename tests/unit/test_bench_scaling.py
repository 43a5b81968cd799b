"""Checks of trainer.programs.bench.scaling's measurement code (hand-computed values). The recorder in a real 2-rank
gloo run is checked in tests/dist/test_bench_scaling_dist.py."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from trainer.programs.bench.scaling import (  # noqa: E402
    QUANTIZER, STOP_FLAG, analyse_rank, read_throughput, write_feature_shards,
)


def _event(role, start, seconds, nbytes=4, op="all_reduce"):
    return {"op": op, "role": role, "start": start, "seconds": seconds, "bytes": nbytes, "async": False}


def test_analyse_rank_splits_steps_at_stop_flags():
    club, metrics = "CLUB gradient averaging", "logged metrics mean (log steps)"
    events = [
        _event("DeepSpeed runtime/engine.py:_broadcast_model", 0.0, 0.1, op="broadcast"),   # set-up
        _event(QUANTIZER, 1.0, 0.01, 400), _event(STOP_FLAG, 1.5, 0.5, 8),                  # step 1 -> ends at 2.0
        _event(QUANTIZER, 2.5, 0.02, 400), _event(club, 2.6, 0.1, 100), _event(club, 2.8, 0.1, 100),
        _event(metrics, 3.0, 0.05, 96), _event(STOP_FLAG, 3.5, 0.5, 8),                     # step 2 -> ends at 4.0
        _event(QUANTIZER, 4.5, 0.04, 400), _event(club, 4.6, 0.1, 300), _event(club, 4.7, 0.1, 300),
        _event(STOP_FLAG, 5.0, 1.0, 8),                                                     # step 3 -> ends at 6.0
        _event("checkpoint save", 6.5, 0.2, 0, op="barrier"),                               # after the last step
    ]
    record = {"rank": 0, "events": events, "probe_s": {QUANTIZER: [0.001, 0.003, 0.002]}}
    got = analyse_rank(record, first_measured_step=2)
    assert got.steps == 2 and got.step_ms == pytest.approx(2000.0)
    assert set(got.roles) == {QUANTIZER, club, metrics, STOP_FLAG}          # neither set-up nor checkpoint
    q = got.roles[QUANTIZER]
    assert (q.calls_per_step, q.calls_range, q.bytes_per_call) == (1.0, (1, 1), 400)
    assert q.ms_per_step == pytest.approx(30.0) and q.share == pytest.approx(0.06 / 4.0)
    assert q.alone_ms == pytest.approx(2.0)
    c = got.roles[club]
    assert (c.calls_per_step, c.bytes_per_call) == (2.0, 200) and c.share == pytest.approx(0.4 / 4.0)
    assert c.alone_ms != c.alone_ms                                         # not probed -> nan
    m = got.roles[metrics]
    assert (m.calls_per_step, m.calls_range) == (0.5, (0, 1)) and m.share == pytest.approx(0.05 / 4.0)
    s = got.roles[STOP_FLAG]
    assert s.ms_per_step == pytest.approx(750.0) and s.share == pytest.approx(1.5 / 4.0)
    assert analyse_rank(record, first_measured_step=3).steps == 1
    with pytest.raises(ValueError, match="3 steps recorded, cannot measure from step 4"):
        analyse_rank(record, first_measured_step=4)
    with pytest.raises(ValueError, match="must be >= 2"):
        analyse_rank(record, first_measured_step=1)


def test_read_throughput_drops_the_first_window(tmp_path):
    rows = [{"step": 4, "perf/step_s": 1.0}, {"step": 8, "perf/step_s": 0.5}, {"step": 10, "perf/step_s": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_throughput(tmp_path, "global", ranks=2, global_batch=160, wall_s=9.0, load=1.5)
    assert got.steps == 6 and got.step_s == pytest.approx(2.5 / 6) and got.clips_per_s == pytest.approx(384.0)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(SystemExit, match="1 log windows"):
        read_throughput(tmp_path, "global", ranks=2, global_batch=160, wall_s=9.0, load=1.5)


def test_feature_shards_read_back_through_the_stream(tmp_path):
    from trainer.data.stream import ClipStream
    from trainer.configs.data import DataConfig

    urls = write_feature_shards(tmp_path, clips=6, clips_per_shard=4)
    assert urls.endswith("train-{000000..000001}.tar")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [4, 2] and manifest["total"] == 6
    stream = ClipStream(DataConfig(urls=urls, kind="features", feature_modalities=["audio", "video"], batch_size=3,
                                   num_workers=0, shuffle_buffer=0))
    batches = list(stream)
    assert len(batches) == 2
    assert batches[0]["audio"].shape == (3, 10, 128) and batches[0]["video"].shape == (3, 10, 49, 512)
    assert batches[0]["video"].dtype == torch.float32
    assert sorted(k for b in batches for k in b["key"]) == [f"clip{i:06d}" for i in range(6)]
