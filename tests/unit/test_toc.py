"""TOC (trainer/eval/toc.py): the closed form against ALGORITHMS.md §6 and against brute force; the command
(trainer/programs/toc_report.py)."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from trainer.checkpoint_format import write_manifest
from trainer.checkpoint import write_model_state
from trainer.eval.toc import cosine_summary, toc_scores
from trainer.configs.eval import TOCConfig
from trainer.programs.toc_report import main


def test_spec_numbers_without_normalisation():
    # ALGORITHMS.md §6: E = [[1,0],[2,1],[3,-1]] -> S = [3.6667, -0.3333], V = [1, 1], U = [-2.2667, 0.5333]
    e = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]])
    scores = toc_scores(e, TOCConfig(dims=1, balance=0.3, normalize=False))
    assert scores.similarity.tolist() == pytest.approx([11 / 3, -1 / 3], abs=1e-6)
    assert scores.variance.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert scores.score.tolist() == pytest.approx([0.3 - 0.7 * 11 / 3, 0.3 + 0.7 / 3], abs=1e-6)
    assert scores.score.tolist() == pytest.approx([-2.2667, 0.5333], abs=1e-4)
    assert scores.selected.tolist() == [1]


def _brute_force(e: torch.Tensor, balance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S, V, U by explicit loops over code pairs (no algebraic shortcut)."""
    m, d = e.shape
    s, v = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for k in range(d):
        pairs = [e[i, k] * e[j, k] for i in range(m) for j in range(m) if i != j]
        s[k] = sum(pairs) / len(pairs)
        mean = sum(e[i, k] for i in range(m)) / m
        v[k] = sum((e[i, k] - mean) ** 2 for i in range(m)) / (m - 1)
    return s, v, balance * v - (1 - balance) * s


@pytest.mark.parametrize("normalize", [False, True])
def test_closed_form_equals_brute_force_and_picks_the_best_subset(normalize):
    e = torch.randn(7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    cfg = TOCConfig(dims=3, balance=0.3, normalize=normalize)
    scores = toc_scores(e, cfg)
    s, v, u = _brute_force(F.normalize(e, dim=1) if normalize else e, cfg.balance)
    torch.testing.assert_close(scores.similarity.double(), s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.variance.double(), v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.score.double(), u, rtol=1e-5, atol=1e-6)
    # the kept set maximises Σ_k U_k over all subsets of size Q (seed 003 eq. 17 selection)
    best = max(itertools.combinations(range(6), 3), key=lambda dims: float(u[list(dims)].sum()))
    assert sorted(scores.selected.tolist()) == sorted(best)


def test_similarity_of_kept_dimensions_adds_up_to_the_mean_pairwise_dot_product():
    # seed 003 eq. 15: for unit codes, mean_{i≠j} <e_i ⊙ F, e_j ⊙ F> = Σ_{k∈F} S_k
    e = F.normalize(torch.randn(9, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    scores = toc_scores(e, TOCConfig(dims=2, normalize=False))
    kept = scores.selected
    dots = e[:, kept] @ e[:, kept].T
    mean_off_diagonal = (dots.sum() - dots.diagonal().sum()) / (9 * 8)
    assert float(scores.similarity[kept].sum()) == pytest.approx(float(mean_off_diagonal), abs=1e-6)


def test_cosine_summary_hand_computed():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])    # pairwise cosines 0, 1/√2, 1/√2
    summary = cosine_summary(e)
    assert summary["mean"] == pytest.approx(2 ** 0.5 / 3)
    assert summary["max"] == pytest.approx(2 ** -0.5)
    assert summary["share_above_0.5"] == pytest.approx(2 / 3)
    assert cosine_summary(e, torch.tensor([0]))["share_above_0.5"] == pytest.approx(1 / 3)   # (1, 0, 1) on dim 0


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        toc_scores(torch.ones(4, 2), TOCConfig(dims=3))
    with pytest.raises(ValueError, match="at least|m >= 2"):
        toc_scores(torch.ones(1, 2), TOCConfig(dims=1))
    with pytest.raises(ValueError, match="balance"):
        TOCConfig(dims=1, balance=1.5)


def _fake_checkpoint(root, codebook):
    ckpt = root / "checkpoints" / "step_00000007"
    ckpt.mkdir(parents=True)
    write_model_state(ckpt, {"quantizer.codebook": codebook, "quantizer.ema_count": torch.ones(len(codebook))})
    (ckpt / "meta.json").write_text(json.dumps({"step": 7, "world_size": 1}))
    write_manifest(ckpt)
    (root / "checkpoints" / "latest").write_text(ckpt.name)
    return ckpt


def test_command_prints_scores_and_before_after_summary(tmp_path, capsys):
    e = torch.tensor([[1.0, 0.0, 0.2], [2.0, 1.0, 0.1], [3.0, -1.0, 0.3]])
    _fake_checkpoint(tmp_path, e)
    assert main([str(tmp_path), "--q", "1", "--no-normalize", "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert "codebook 3 x 3, keep Q=1" in out and "kept dimensions: [1]" in out
    first_row = out.splitlines()[2].split()
    assert first_row[:2] == ["1", "1"] and float(first_row[4]) == pytest.approx(0.5333, abs=1e-4)
    assert "before (all 3 dims)" in out and "after TOC (1 dims)" in out


def test_command_names_a_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
