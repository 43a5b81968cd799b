"""``python -m shards.bench``'s supply/demand table: the demo workload measured through the job's own config."""

from __future__ import annotations

import re

import pytest

from shards import bench


@pytest.mark.slow
def test_supply_and_demand_row_of_the_demo_workload(capsys):
    assert bench.main(["--clips", "4", "--repeats", "1", "--workers", "1", "--workloads", "demo", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| demo "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "10 s 8 fps 64 px" and cells[2] == "10 x 2 @ 32" and cells[3] == "16"   # demo.yaml's decode
    step_s, backbones_s, consumes, decode, pyav, cores = map(float, cells[4:])
    assert step_s > 0 and backbones_s > 0                      # clip shards: the tiny backbones run in the trainer
    assert consumes == pytest.approx(16 / (step_s + backbones_s), rel=0.02)
    assert cores == pytest.approx(consumes / decode, rel=0.02)
    assert decode > pyav > 0                                   # decoding T x F frames beats a full decode
    assert re.search(r"PyAV full decode \(all frames \+ audio\) +\|", out)
