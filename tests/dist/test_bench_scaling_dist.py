"""trainer.programs.bench.scaling's collective recorder in a real 2-rank gloo run: every collective of a training
step is attributed to its role, with its size."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from dist_utils import init_gloo, run_ranks  # noqa: E402
from trainer.programs.bench.scaling import NEGATIVES, QUANTIZER, STOP_FLAG, CollectiveRecorder  # noqa: E402


def _recorder_worker(rank, world, port, out_dir):
    import torch.distributed as tdist

    from trainer import distributed
    from trainer.models.quantizer import MMEMAQuantizer
    from trainer.configs.model import QuantizerConfig
    from trainer.runtime import StopRequest

    original = tdist.all_reduce
    recorder = CollectiveRecorder().install()
    assert tdist.all_reduce is not original
    init_gloo(rank, world, port)
    quantizer = MMEMAQuantizer(QuantizerConfig(num_codes=4, dim=2), ("audio", "video")).train()
    semantic = {m: torch.randn(3, 2, 2) for m in ("audio", "video")}
    quantizer.maybe_init_(semantic)                                   # one all_gather per modality
    quantizer.accumulate_(semantic, {m: quantizer.quantize(z).codes for m, z in semantic.items()})
    quantizer.step_()                                                 # the one MM-EMA all_reduce
    club = torch.nn.Linear(3, 2)
    club(torch.ones(1, 3)).sum().backward()
    distributed.average_gradients_(club.parameters())                 # CLUB averaging: one flat all_reduce
    distributed.gather_rows([torch.ones(2, 3), torch.ones(2, 1, 2)])  # global negatives: one packed all_gather
    assert not StopRequest().agreed_or_file(out_dir / "no-such-file")
    gathered = [None] * world
    tdist.all_gather_object(gathered, rank)                           # calls all_gather inside: counted once
    assert gathered == list(range(world))
    recorder.uninstall()
    assert tdist.all_reduce is original
    (out_dir / f"events{rank}.json").write_text(json.dumps(recorder.events))


@pytest.mark.slow
def test_recorder_attributes_collectives_in_two_ranks(tmp_path):
    run_ranks(_recorder_worker, 2, tmp_path, timeout=60)
    for rank in range(2):
        events = json.loads((tmp_path / f"events{rank}.json").read_text())
        roles = [(e["op"], e["role"], e["bytes"]) for e in events]
        assert roles == [
            ("all_gather", "quantizer codebook init all_gather", 2 * 3 * 2 * 2 * 4),   # gathered (2 ranks x b t d)
            ("all_gather", "quantizer codebook init all_gather", 2 * 3 * 2 * 2 * 4),
            ("all_reduce", QUANTIZER, (2 * 4 + 4 * 2) * 4),                            # counts (k m) + sums (m d)
            ("all_reduce", "CLUB gradient averaging", (3 * 2 + 2) * 4),
            ("all_gather", NEGATIVES, 2 * 2 * (3 + 2) * 4),                            # 2 ranks x b x packed row
            ("all_reduce", STOP_FLAG, 8),
            ("all_gather_object", "other", 0),
        ], roles
        assert all(e["seconds"] >= 0 for e in events)
