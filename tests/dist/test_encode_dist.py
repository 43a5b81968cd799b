"""``cmg encode`` over two ranks (two processes with RANK / WORLD_SIZE, as accelerate launch and torchrun set them):
the ranks split the units, rank 0 waits for the other's and assembles the output, which equals one rank's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from encode_utils import clip_corpus, train_run
from job_utils import REPO

from trainer.programs.encode import read_codes


@pytest.mark.slow
def test_two_ranks_split_the_units_and_write_what_one_rank_writes(tmp_path):
    corpus = clip_corpus(tmp_path / "data")
    run = train_run(tmp_path / "run", corpus, "unicode")
    base = [sys.executable, "-m", "trainer.programs.encode", str(run), str(corpus.clips), "--clips-per-shard", "3",
            "--num-workers", "1", "--no-progress", "--merge-timeout", "120"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([*base, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    ranks = [subprocess.Popen([*base, "--out", str(tmp_path / "two")], env=env | {"RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=180) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [err for _, err in outputs]
    assert "rank 0/2: 5 clips" in outputs[0][0] and "rank 1/2: 3 clips" in outputs[1][0]   # units 0, 2 | 1 (3+3+2)
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "two")]
    assert manifests[0]["shards"] == manifests[1]["shards"] and manifests[1]["total"] == len(corpus.keys)
    rows = [list(read_codes([str(p) for p in sorted((tmp_path / name).glob("codes-*.tar"))], ["audio", "video"]))
            for name in ("one", "two")]
    assert [r["key"] for r in rows[0]] == [r["key"] for r in rows[1]] == corpus.keys
    for a, b in zip(*rows):
        for name in ("audio.codes", "video.codes", "audio.z", "video.z"):
            np.testing.assert_array_equal(a[name], b[name])
