"""Checks of ``python -m shards.bench``'s stream figures (hand-computed values); the bench's supply/demand table runs in
tests/system/test_shards_bench.py."""

from __future__ import annotations

import pytest

from shards.bench import STREAM_BATCH, steady_row, steady_rate, stream_per_worker


def test_steady_rate_starts_once_every_worker_delivered_a_batch():
    # 2 workers, batches of 4: a slow start (0.9 s to the first two batches), then a batch every 0.1 s
    arrivals = [(0.9, 4), (1.0, 4), (1.1, 4), (1.2, 4), (1.3, 4), (1.4, 2)]
    # counted: the 4 batches after the second (14 clips) over 1.4 - 1.0 s; the start-up is not
    assert steady_rate(arrivals, 2) == pytest.approx(14 / 0.4)
    assert steady_rate(arrivals, 1) == pytest.approx(18 / 0.5)


def test_steady_rate_needs_two_batches_from_every_worker():
    assert steady_rate([(1.0, 4), (1.1, 4), (1.2, 4)], 2) is None
    assert steady_rate([(1.0, 4), (1.1, 4)], 1) == pytest.approx(40.0)


def test_the_stream_per_worker_against_decode_sample():
    result = {"workers": 2, "cores": 2, "stream_row": "stream", "steady_row": steady_row(2),
              "rates": {"decode_sample (one worker's work)": 50.0, "stream": 60.0, steady_row(2): 90.0}}
    lines = stream_per_worker(result)
    assert lines[0] == "ClipStream per worker, whole epoch: 30.0 clips/s = 0.60 x decode_sample's 50.0"
    assert lines[1] == "ClipStream per worker, steady state: 45.0 clips/s = 0.90 x decode_sample's 50.0"
    assert "sharing cores" in lines[2]                       # 2 workers + the main process on 2 cores
    del result["rates"][steady_row(2)]                       # too short an epoch: said, not guessed
    assert f">= {4 * STREAM_BATCH}" in stream_per_worker(result)[1]
    del result["steady_row"]                                 # a JSON written before the steady state was measured
    assert len(stream_per_worker(result | {"cores": 16})) == 2
