"""The in-memory feature stream of the synthetic benchmarks (trainer/data/memory.py) and its place in the job."""

import pytest
import torch

from trainer.data.collate import COUNTER_NAMES
from trainer.data.memory import MemoryStream
from trainer.main import main


def _features(n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"audio": torch.randn(n, 3, 4, generator=g), "video": torch.randn(n, 3, 2, 5, generator=g),
            "text": torch.randn(n, 6, 7, generator=g), "text_mask": torch.rand(n, 6, generator=g) > 0.3}


def _rows(batches, key: str = "audio") -> list[torch.Tensor]:
    return [b[key] for b in batches]


def test_ranks_together_see_exactly_the_global_batches_of_one_process():
    features = _features()
    one = list(MemoryStream(features, batch_size=4, seed=3))
    ranks = [list(MemoryStream(features, batch_size=2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2          # 10 clips: two global batches of 4, 2 dropped
    for step, batch in enumerate(one):
        assert torch.equal(torch.cat([ranks[0][step]["audio"], ranks[1][step]["audio"]]), batch["audio"])
    # every clip at most once per epoch, the features of one clip kept together
    seen = torch.cat(_rows(one)).flatten(1)
    assert len({tuple(row.tolist()) for row in seen}) == 8
    batch = one[0]
    assert set(batch) == {"audio", "video", "text", "text_mask", "is_pad", "skipped"}
    assert batch["video"].shape == (4, 3, 2, 5) and batch["text_mask"].dtype == torch.bool
    assert not batch["is_pad"].any() and batch["skipped"].shape == (len(COUNTER_NAMES),)


def test_epochs_reshuffle_and_a_restored_stream_continues_exactly():
    stream = MemoryStream(_features(), batch_size=2, seed=0)
    epoch0 = _rows(stream)
    iterator = iter(stream)
    first = next(iterator)
    state = stream.state_dict()
    rest = _rows(iterator)
    assert state == {"seed": 0, "epoch": 1, "position": 1, "rank": 0, "world_size": 1, "batch_size": 2, "clips": 10}
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, [first["audio"], *rest]))   # epoch 1 is another order
    restored = MemoryStream(_features(), batch_size=2, seed=0)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_rows(restored), rest))
    with pytest.raises(ValueError, match="batch_size=2 but this stream has 5"):
        MemoryStream(_features(), batch_size=5, seed=0).load_state_dict(state)


def test_shapes_and_bad_inputs():
    assert MemoryStream(_features(), 2, 0).feature_shapes == {"audio": (4,), "video": (2, 5), "text": (7,)}
    with pytest.raises(ValueError, match="same number of clips"):
        MemoryStream({"audio": torch.zeros(4, 3, 2), "video": torch.zeros(5, 3, 2)}, 2, 0)
    with pytest.raises(ValueError, match="10 in-memory clips cannot fill one global batch of 4 x 3 ranks"):
        MemoryStream(_features(), 4, 0, rank=0, world_size=3)
    assert MemoryStream(_features(), 2, 0).skip_totals() == dict.fromkeys(COUNTER_NAMES, 0)


def test_a_job_config_cannot_ask_for_in_memory_data(capsys):
    assert main(["data.kind=memory"]) == 2
    assert "kind 'memory' is for programs that pass feature tensors" in capsys.readouterr().err
